#!/usr/bin/env bash
# Installs the official Alibaba Cloud IoT device SDK for Node.js (alibabacloud-iot-device-sdk),
# pinned in package-lock.json, into emulator/device-sdk/node_modules (npm ci), unless that
# is already done for this lockfile. On a machine without node or npm (a fresh Debian 12),
# installs Debian's nodejs and npm first. The specs of spec/mqtt run it in their setup;
# examples/device.js uses what it installs.
# Usage: emulator/device-sdk/install.sh [--force]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

die() {
  echo "device-sdk/install.sh: $*" >&2
  exit 1
}

force=0
case ${1-} in
  '') ;;
  --force) force=1 ;;
  *) die "usage: install.sh [--force]" ;;
esac

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "no node or npm, and no apt-get: install Node.js >= 18 and npm"
  sudo=""
  ((EUID == 0)) || sudo=sudo
  wanted=()
  command -v node >/dev/null 2>&1 || wanted+=(nodejs)
  command -v npm >/dev/null 2>&1 || wanted+=(npm)
  echo "device-sdk/install.sh: installing ${wanted[*]} from the distribution's packages" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
fi

# Current when installed by this script from the same package.json and package-lock.json.
stamp=node_modules/.rrpc-device-sdk-install
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if ((!force)) && [[ -d node_modules && -f $stamp && $(<"$stamp") == "$want" ]]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error >&2
printf '%s\n' "$want" >"$stamp"
node -e 'require("alibabacloud-iot-device-sdk")' || die "the SDK does not load; run install.sh --force"
