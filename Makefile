# rrpc: Lua module with a C core (rrpc.core) for the Alibaba Cloud IoT RRpc operation.
# Everything is overridable: make LUA=lua5.4 PREFIX=/usr DESTDIR=/tmp/pkg install
#
# One build per VM, each in its own directory (a .so built for one Lua misbehaves in another):
#   make LUA=lua5.1|lua5.3|lua5.4|luajit   --> build/<LUA>/rrpc/core.so
#   make test LUA=...                       the specs under that VM
#   make test-all                           the specs under every VM, then "N passed, N failed"

LUA        ?= lua5.4
PKG_CONFIG ?= pkg-config
PREFIX     ?= /usr/local
DESTDIR    ?=
CC         ?= cc
# What `make test-all` runs, in this order.
ALL_LUAS   ?= lua5.1 lua5.3 lua5.4 luajit

# The VM's name (lua5.4, luajit) names its build directory and its pkg-config module
# (lua5.1, lua5.3, lua5.4, luajit: Debian's luajit2 ships luajit.pc).
LUA_NAME          = $(notdir $(LUA))
# Recursive (=, ?=) so that `make deps build` reads them after deps are installed.
# LuaJIT reports "Lua 5.1": it shares 5.1's module directories.
LUA_VERSION      ?= $(shell $(LUA) -e 'io.write((_VERSION:gsub("Lua ", "")))')
LUA_INCLUDE_DIR  ?= $(patsubst -I%,%,$(firstword $(shell $(PKG_CONFIG) --cflags-only-I $(LUA_NAME))))
LUA_CMODULE_DIR  ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_MODULE_DIR   ?= $(PREFIX)/share/lua/$(LUA_VERSION)

CFLAGS     ?= -O2 -g
WARNINGS   := -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wshadow -Wno-unused-parameter
# The Lua headers first, so that an overridden LUA_INCLUDE_DIR wins.
LUA_CFLAGS  = $(if $(LUA_INCLUDE_DIR),-I$(LUA_INCLUDE_DIR))
DEP_CFLAGS  = $(shell $(PKG_CONFIG) --cflags libcurl openssl hiredis)
DEP_LIBS    = $(shell $(PKG_CONFIG) --libs libcurl libcrypto hiredis)
# A Lua C module never links liblua: the interpreter that loads it provides the API.
SHARED     := -shared -fPIC

BUILD     := build
BUILD_DIR  = $(BUILD)/$(LUA_NAME)
SOURCES   := $(wildcard src/*.c)
HEADERS   := $(wildcard src/*.h)
CORE       = $(BUILD_DIR)/rrpc/core.so

.PHONY: all build deps test test-fast test-all lint demo bench soak gateway emulator install uninstall clean
.PHONY: asan fuzz-build fuzz fuzz-ci fuzz-coverage check-memory check-memory-ci

all: build
build: $(CORE)

$(CORE): $(SOURCES) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARNINGS) -fPIC $(LUA_CFLAGS) $(DEP_CFLAGS) $(SHARED) -o $@ $(SOURCES) $(DEP_LIBS) $(LDFLAGS)

# Installs what is missing from Debian's packages; safe to run again.
deps:
	bash scripts/deps.sh

# busted under $(LUA), with $(BUILD_DIR) on its cpath; ends with "N passed, N failed, N skipped".
# nginx's Lua is LuaJIT: the OpenResty specs load build/luajit/rrpc/core.so into nginx
# whatever VM busted runs under, so that build is made too.
test: build
	$(if $(filter luajit,$(LUA_NAME)),,@$(MAKE) -s --no-print-directory build LUA=luajit)
	LUA=$(LUA_NAME) bash scripts/test.sh

# The specs without the slow groups (#slow: servers under load, nginx, the CLI as a process).
test-fast: build
	LUA=$(LUA_NAME) bash scripts/test.sh --exclude-tags=slow

# luacheck (Debian's lua-check) over every Lua file of the project, with .luacheckrc.
lint:
	luacheck --no-color -q lua bin/rrpc emulator examples spec bench scripts

# Builds every VM of ALL_LUAS, then tests each in turn: a line per VM, then "N passed, N failed".
test-all:
	LUAS="$(ALL_LUAS)" bash scripts/test.sh --all

demo: build
	bash scripts/demo.sh

# Against the official Node.js SDKs (installed from npm into bench/peers), the libcurl
# floor (bench/floor.c) and the ideal; draws bench/results.svg (gnuplot, bench/chart.gp).
# About 4 min. The clients run under Lua 5.4; the gateway's line needs rrpc.core built
# for nginx's LuaJIT.
bench: build $(BUILD)/bench/floor
	@$(MAKE) -s --no-print-directory build LUA=lua5.4
	@$(MAKE) -s --no-print-directory build LUA=luajit
	bash bench/peers/install.sh
	LUA_PATH="./lua/?.lua;./spec/support/?.lua;;" LUA_CPATH="./$(BUILD_DIR)/?.so;;" $(LUA) bench/run.lua

# The libcurl floor the bench compares rrpc with: bare C, the same request bytes.
$(BUILD)/bench/floor: bench/floor.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARNINGS) -o $@ $< $(shell $(PKG_CONFIG) --cflags --libs libcurl)

# 100,000 calls with 1% injected faults through rrpc.each: each accounted for once, RSS flat.
soak:
	bash scripts/soak.sh

# The OpenResty gateway (examples/openresty) in front of the emulator, in the foreground.
gateway:
	@$(MAKE) -s --no-print-directory build LUA=luajit
	bash scripts/gateway.sh

emulator:
	emulator/run $(if $(PORT),--port $(PORT)) $(if $(DEVICES),--devices $(DEVICES)) $(if $(MQTT_PORT),--mqtt-port $(MQTT_PORT))

install: build
	install -d $(DESTDIR)$(LUA_CMODULE_DIR)/rrpc $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/transport $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/cli $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/quota
	install -m 0755 $(CORE) $(DESTDIR)$(LUA_CMODULE_DIR)/rrpc/core.so
	install -m 0644 lua/rrpc.lua $(DESTDIR)$(LUA_MODULE_DIR)/rrpc.lua
	for f in lua/rrpc/*.lua; do install -m 0644 $$f $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/; done
	for f in lua/rrpc/transport/*.lua; do install -m 0644 $$f $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/transport/; done
	for f in lua/rrpc/quota/*.lua; do install -m 0644 $$f $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/quota/; done
	for f in lua/rrpc/cli/*.lua; do install -m 0644 $$f $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/cli/; done
	# the command line, run by the VM whose directories the modules went to
	install -d $(DESTDIR)$(PREFIX)/bin
	sed '1s|.*|#!/usr/bin/env $(LUA_NAME)|' bin/rrpc >$(DESTDIR)$(PREFIX)/bin/rrpc
	chmod 0755 $(DESTDIR)$(PREFIX)/bin/rrpc
	# the emulator, where `rrpc emulator` looks for it when installed
	install -d $(DESTDIR)$(PREFIX)/share/rrpc/emulator/lua/rrpc_emulator
	install -m 0755 emulator/run $(DESTDIR)$(PREFIX)/share/rrpc/emulator/run
	install -m 0644 emulator/nginx.conf.in emulator/devices.json emulator/README.md $(DESTDIR)$(PREFIX)/share/rrpc/emulator/
	install -m 0644 emulator/lua/rrpc_emulator/*.lua $(DESTDIR)$(PREFIX)/share/rrpc/emulator/lua/rrpc_emulator/
	# the MQTT broker's plugin, which emulator/run --mqtt-port builds at start-up
	install -D -m 0644 emulator/mqtt/rrpc_plugin.c $(DESTDIR)$(PREFIX)/share/rrpc/emulator/mqtt/rrpc_plugin.c

uninstall:
	rm -rf $(DESTDIR)$(LUA_CMODULE_DIR)/rrpc $(DESTDIR)$(LUA_MODULE_DIR)/rrpc $(DESTDIR)$(LUA_MODULE_DIR)/rrpc.lua
	rm -rf $(DESTDIR)$(PREFIX)/bin/rrpc $(DESTDIR)$(PREFIX)/share/rrpc

clean:
	rm -rf $(BUILD)

# ---- Memory safety: sanitizers, fuzzing, valgrind (fuzz/README.md) -----------------------
# clang builds, against Lua 5.4: `make deps` installs clang, its sanitizer runtimes, llvm
# and valgrind. Only these binaries link liblua5.4; rrpc/core.so never does.
SAN_CC        ?= clang
LLVM_PROFDATA ?= llvm-profdata
LLVM_COV      ?= llvm-cov
SAN_FLAGS     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LUA54_CFLAGS   = $(shell $(PKG_CONFIG) --cflags lua5.4)
LUA54_LIBS     = $(shell $(PKG_CONFIG) --libs lua5.4)

# build/asan/rrpc/core.so (ASan + UBSan) and build/asan/lua5.4, a Lua 5.4 interpreter with
# the sanitizer runtimes linked in, so that nothing is preloaded into the specs' children.
ASAN_DIR   := $(BUILD)/asan
ASAN_CORE  := $(ASAN_DIR)/rrpc/core.so
ASAN_LUA   := $(ASAN_DIR)/lua5.4

asan: $(ASAN_CORE) $(ASAN_LUA)

$(ASAN_CORE): $(SOURCES) $(HEADERS)
	@mkdir -p $(dir $@)
	$(SAN_CC) -O1 -g $(SAN_FLAGS) $(WARNINGS) -fPIC $(LUA54_CFLAGS) $(DEP_CFLAGS) $(SHARED) -o $@ $(SOURCES) $(DEP_LIBS)

$(ASAN_LUA): fuzz/sanitized_lua.c
	@mkdir -p $(dir $@)
	$(SAN_CC) -O1 -g $(SAN_FLAGS) $(WARNINGS) $(LUA54_CFLAGS) -Wl,-E -o $@ $< $(LUA54_LIBS)

# libFuzzer targets (fuzz/<target>.c) on the real C functions, each with its seed corpus
# fuzz/corpus/<target>/. `make fuzz` runs each for FUZZ_SECONDS; new inputs, logs and crash
# artefacts go to build/fuzz/ (never into fuzz/corpus); fuzz-ci is a short pass.
FUZZ_TARGETS    := percent_encode base64 response sign_v3
FUZZ_SECONDS    ?= 30
FUZZ_CI_SECONDS ?= 5
FUZZ_DIR        ?= $(BUILD)/fuzz
FUZZ_BINS       := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/bin/%)
FUZZ_FLAGS      := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

fuzz-build: $(FUZZ_BINS)

$(FUZZ_DIR)/bin/%: fuzz/%.c fuzz/fuzz.h $(SOURCES) $(HEADERS)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(FUZZ_FLAGS) $(WARNINGS) $(LUA54_CFLAGS) $(DEP_CFLAGS) -Isrc -o $@ $< $(SOURCES) $(LUA54_LIBS) $(DEP_LIBS)

fuzz: fuzz-build
	FUZZ_DIR=$(FUZZ_DIR) bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-ci: fuzz-build
	FUZZ_DIR=$(FUZZ_DIR) bash fuzz/run.sh $(FUZZ_CI_SECONDS) $(FUZZ_TARGETS)

# Line coverage of src/*.c by the corpora (seeds plus what `make fuzz` found), per file.
fuzz-coverage:
	@mkdir -p $(FUZZ_DIR)/cov
	for t in $(FUZZ_TARGETS); do \
	  $(SAN_CC) -g -O0 -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping $(WARNINGS) $(LUA54_CFLAGS) $(DEP_CFLAGS) -Isrc \
	    -o $(FUZZ_DIR)/cov/$$t fuzz/$$t.c $(SOURCES) $(LUA54_LIBS) $(DEP_LIBS) || exit 1; \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	  LLVM_PROFILE_FILE=$(FUZZ_DIR)/cov/$$t.profraw $(FUZZ_DIR)/cov/$$t -runs=0 $(FUZZ_DIR)/corpus/$$t fuzz/corpus/$$t >/dev/null 2>&1 || exit 1; \
	done
	$(LLVM_PROFDATA) merge -o $(FUZZ_DIR)/cov/all.profdata $(FUZZ_TARGETS:%=$(FUZZ_DIR)/cov/%.profraw)
	$(LLVM_COV) report $(FUZZ_DIR)/cov/percent_encode $(FUZZ_TARGETS:%=-object $(FUZZ_DIR)/cov/%) \
	  -instr-profile=$(FUZZ_DIR)/cov/all.profdata $(SOURCES)

# The whole spec suite under ASan+UBSan and under valgrind, and the aggressive-GC passes
# (scripts/check-memory.sh says what each runs); zero errors and zero leaks, or it fails.
# check-memory-ci: the same passes, valgrind on a documented subset of the specs.
check-memory: asan
	@$(MAKE) -s --no-print-directory build LUA=lua5.4
	@$(MAKE) -s --no-print-directory build LUA=luajit
	bash scripts/check-memory.sh

check-memory-ci: asan
	@$(MAKE) -s --no-print-directory build LUA=lua5.4
	@$(MAKE) -s --no-print-directory build LUA=luajit
	bash scripts/check-memory.sh --ci
