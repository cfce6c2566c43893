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
DEP_CFLAGS  = $(shell $(PKG_CONFIG) --cflags libcurl openssl)
DEP_LIBS    = $(shell $(PKG_CONFIG) --libs libcurl libcrypto)
# A Lua C module never links liblua: the interpreter that loads it provides the API.
SHARED     := -shared -fPIC

BUILD     := build
BUILD_DIR  = $(BUILD)/$(LUA_NAME)
SOURCES   := $(wildcard src/*.c)
HEADERS   := $(wildcard src/*.h)
CORE       = $(BUILD_DIR)/rrpc/core.so

.PHONY: all build deps test test-all demo bench gateway emulator install uninstall clean

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

# Builds every VM of ALL_LUAS, then tests each in turn: a line per VM, then "N passed, N failed".
test-all:
	LUAS="$(ALL_LUAS)" bash scripts/test.sh --all

demo: build
	bash scripts/demo.sh

# Against the official Node.js SDKs (installed from npm into bench/peers) and the ideal.
bench: build
	bash bench/peers/install.sh
	LUA_PATH="./lua/?.lua;./spec/support/?.lua;;" LUA_CPATH="./$(BUILD_DIR)/?.so;;" $(LUA) bench/run.lua

# The OpenResty gateway (examples/openresty) in front of the emulator, in the foreground.
gateway:
	@$(MAKE) -s --no-print-directory build LUA=luajit
	bash scripts/gateway.sh

emulator:
	emulator/run $(if $(PORT),--port $(PORT)) $(if $(DEVICES),--devices $(DEVICES))

install: build
	install -d $(DESTDIR)$(LUA_CMODULE_DIR)/rrpc $(DESTDIR)$(LUA_MODULE_DIR)/rrpc
	install -m 0755 $(CORE) $(DESTDIR)$(LUA_CMODULE_DIR)/rrpc/core.so
	install -m 0644 lua/rrpc.lua $(DESTDIR)$(LUA_MODULE_DIR)/rrpc.lua
	for f in lua/rrpc/*.lua; do install -m 0644 $$f $(DESTDIR)$(LUA_MODULE_DIR)/rrpc/; done

uninstall:
	rm -rf $(DESTDIR)$(LUA_CMODULE_DIR)/rrpc $(DESTDIR)$(LUA_MODULE_DIR)/rrpc $(DESTDIR)$(LUA_MODULE_DIR)/rrpc.lua

clean:
	rm -rf $(BUILD)
