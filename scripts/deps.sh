#!/usr/bin/env bash
# Installs, from Debian's packages, whatever rrpc needs that this machine lacks.
# Idempotent: a second run installs nothing. Needs root (or sudo) on Debian 12.
set -euo pipefail

packages=(
  gcc libc6-dev make pkg-config            # build the C core
  lua5.4 liblua5.4-dev                      # the Lua it is built for by default
  lua5.1 liblua5.1-0-dev lua5.3 liblua5.3-dev # and the others it is built and tested for
  luajit2 libluajit2-5.1-dev                # LuaJIT (OpenResty's, as nginx's Lua module uses):
                                            # never Debian's plain luajit, which removes that module
  libcurl4-openssl-dev libssl-dev           # HTTP and signatures
  lua-cjson                                 # response parsing
  lua-busted lua-system                     # specs (Debian's lua-* ship every Lua, 5.1 to 5.4)
  lua-argparse                              # bin/rrpc
  lua-check                                 # make lint (luacheck)
  luarocks                                  # the rockspec
  nginx libnginx-mod-http-lua               # the emulator (nginx with its Lua module)
  redis-server libhiredis-dev lua-nginx-redis # rrpc.quota.redis: the server for the specs,
                                            # hiredis for rrpc.core, lua-resty-redis in nginx
  mosquitto mosquitto-clients              # the emulator's MQTT broker (--mqtt-port) and the specs'
                                            # device clients (mosquitto_pub, mosquitto_sub)
  mosquitto-dev libmosquitto-dev libcjson-dev # its broker plugin (emulator/mqtt): the plugin API,
                                            # the client library's header, the registry's JSON
  curl ca-certificates procps               # the specs' readiness checks and process control
  python3-prometheus-client                 # the specs read rrpc.metrics with Prometheus's parser
  python3-h2                                # spec/client/25: a hostile HTTP/2 server (refused and reset streams)
  clang libclang-rt-dev llvm valgrind       # make fuzz, make check-memory: clang with its
                                            # sanitizer and libFuzzer runtimes, llvm-symbolizer
                                            # and llvm-cov, valgrind
  gnuplot-nox                               # make bench's chart (bench/chart.gp); valgrind above
                                            # also counts its instructions per call (callgrind)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps: installing ${missing[*]}"

# Installing nginx would start a system service on port 80; the emulator needs only the
# binary, so forbid service starts for the duration of the install.
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  added_policy=1
fi
trap '[ -z "$added_policy" ] || $sudo rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
