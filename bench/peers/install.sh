#!/usr/bin/env bash
# Installs the official Alibaba Cloud Node.js SDKs pinned in package-lock.json into
# bench/peers/node_modules (npm ci), unless that is already done for this lockfile.
# On a machine without node (e.g. a fresh Debian 12), installs Debian's nodejs and npm
# first (nodejs 18.20.4 and npm 9.2.0 on bookworm; both are enough, see README.md).
# Usage: bench/peers/install.sh [--force]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

force=0
case ${1-} in
  '') ;;
  --force) force=1 ;;
  *) die "usage: install.sh [--force]" ;;
esac

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install Node.js >= 18 and npm yourself"
  echo "install.sh: installing $* from the distribution's packages" >&2
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

if ! command -v node >/dev/null 2>&1; then
  if command -v npm >/dev/null 2>&1; then apt_install nodejs; else apt_install nodejs npm; fi
elif ! command -v npm >/dev/null 2>&1; then
  # node without npm: Debian's nodejs (NodeSource's bundles npm)
  apt_install npm
fi

command -v node >/dev/null 2>&1 || die "still no node after installing it"
command -v npm >/dev/null 2>&1 || die "still no npm after installing it"
major=$(node -p 'process.versions.node.split(".")[0]')
((major >= 18)) || die "Node.js $(node -v) is too old: the SDKs here need >= 18"

# node_modules is current when it was installed by this script from the same
# package.json and package-lock.json (npm ci itself removes an existing node_modules).
stamp=node_modules/.rrpc-bench-install
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if ((!force)) && [[ -d node_modules && -f $stamp && $(<"$stamp") == "$want" ]]; then
  echo "install.sh: node_modules is up to date" >&2
else
  npm ci --no-audit --no-fund
  printf '%s\n' "$want" >"$stamp"
fi

node -e 'require("@alicloud/pop-core"); require("@alicloud/iot20180120");
  require("@alicloud/openapi-client"); require("@alicloud/tea-util")' ||
  die "the SDKs do not load; run install.sh --force"
