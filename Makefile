# rrpc: Lua module with a C core (rrpc.core) for the Alibaba Cloud IoT RRpc operation.
# Everything is overridable: make LUA=lua5.4 PREFIX=/usr DESTDIR=/tmp/pkg install

LUA        ?= lua5.4
PKG_CONFIG ?= pkg-config
PREFIX     ?= /usr/local
DESTDIR    ?=
CC         ?= cc

LUA_VERSION      ?= $(shell $(LUA) -e 'io.write((_VERSION:gsub("Lua ", "")))')
LUA_INCLUDE_DIR  ?= $(shell $(PKG_CONFIG) --variable=includedir $(LUA))/$(LUA)
LUA_CMODULE_DIR  ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_MODULE_DIR   ?= $(PREFIX)/share/lua/$(LUA_VERSION)

CFLAGS     ?= -O2 -g
WARNINGS   := -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wshadow -Wno-unused-parameter
# Recursive (=) so that `make deps build` reads them after deps are installed.
DEP_CFLAGS  = $(shell $(PKG_CONFIG) --cflags $(LUA) libcurl openssl)
DEP_LIBS    = $(shell $(PKG_CONFIG) --libs libcurl libcrypto)
# A Lua C module never links liblua: the interpreter that loads it provides the API.
SHARED     := -shared -fPIC

BUILD   := build
SOURCES := $(wildcard src/*.c)
HEADERS := $(wildcard src/*.h)
CORE    := $(BUILD)/rrpc/core.so

.PHONY: all build deps test demo bench emulator install uninstall clean

all: build
build: $(CORE)

$(CORE): $(SOURCES) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARNINGS) -fPIC $(DEP_CFLAGS) -I$(LUA_INCLUDE_DIR) $(SHARED) -o $@ $(SOURCES) $(DEP_LIBS) $(LDFLAGS)

# Installs what is missing from Debian's packages; safe to run again.
deps:
	bash scripts/deps.sh

test: build
	bash scripts/test.sh

demo: build
	bash scripts/demo.sh

# Against the official Node.js SDKs (installed from npm into bench/peers) and the ideal.
bench: build
	bash bench/peers/install.sh
	LUA_PATH="./lua/?.lua;./spec/support/?.lua;;" LUA_CPATH="./build/?.so;;" $(LUA) bench/run.lua

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
