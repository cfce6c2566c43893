#!/usr/bin/env bash
# A device in a few lines: mosquitto_sub and mosquitto_pub (and openssl for the password)
# answer every RRpc request to <DeviceName> with the request's own bytes, on the emulator's
# MQTT broker (emulator/run --mqtt-port PORT), over the platform's topics.
#   examples/device.sh <ProductKey> <DeviceName> <DeviceSecret> [PORT (1883)]
set -euo pipefail
(($# >= 3)) || { echo "usage: examples/device.sh <ProductKey> <DeviceName> <DeviceSecret> [port]" >&2; exit 2; }
pk=$1 dn=$2 secret=$3 port=${4:-1883}

# The platform's MQTT credentials for client id <id>: hex HMAC-SHA1 of the signed fields.
credentials() {
  local password
  password=$(printf '%s' "clientId${1}deviceName${dn}productKey${pk}" | openssl dgst -sha1 -hmac "$secret" | awk '{print $NF}')
  options=(-h 127.0.0.1 -p "$port" -i "$1|securemode=3,signmethod=hmacsha1|" -u "$dn&$pk" -P "$password")
}

credentials "$dn"
# -F '%t %x': each request as its topic and its bytes in hex, so that any byte gets through
exec 3< <(exec mosquitto_sub "${options[@]}" -t "/sys/$pk/$dn/rrpc/request/+" -F '%t %x')
subscriber=$!
trap 'kill "$subscriber" 2>/dev/null' EXIT
trap 'exit 143' TERM INT HUP
while read -r topic hex <&3; do
  id=${topic##*/}
  echo "request $id: ${#hex} hex digits" >&2
  credentials "$dn-$id" # one short connection per answer, beside the subscriber's
  printf '%b' "$(sed 's/../\\x&/g' <<<"$hex")" |
    mosquitto_pub "${options[@]}" -t "/sys/$pk/$dn/rrpc/response/$id" -s
done
