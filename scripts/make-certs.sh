#!/usr/bin/env bash
# Makes everything TLS and the shared token need, with the openssl CLI:
#   ca.pem / ca-key.pem          a private CA (ten years)
#   server.pem / server-key.pem  the servers' certificate, for the names
#                                arbiter, localhost, 127.0.0.1 and
#                                watcher-1..3 (extra names: CERT_NAMES="a b")
#   client.pem / client-key.pem  a client certificate, for mutual TLS
#   token                        the shared bearer token (32 random bytes, hex)
# Usage: scripts/make-certs.sh DIR   (an existing token is kept; --force
# makes everything again).
set -euo pipefail

force=false
if [[ ${1:-} == --force ]]; then force=true; shift; fi
dir=${1:?usage: scripts/make-certs.sh [--force] DIR}
mkdir -p "$dir"
cd "$dir"

if [[ -f ca.pem && $force == false ]]; then
  echo "make-certs: $dir/ca.pem exists; keeping it (--force to make new ones)" >&2
  exit 0
fi

names="arbiter localhost watcher-1 watcher-2 watcher-3 ${CERT_NAMES:-}"
san="IP:127.0.0.1"
for n in $names; do san="$san,DNS:$n"; done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
  -subj "/CN=restock test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null

issue() { # name cn extendedKeyUsage [san]
  local name=$1 cn=$2 eku=$3 alt=${4:-}
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n $alt ]] && echo "subjectAltName=$alt"
  } >"$tmp/$name.ext"
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" \
    -keyout "$name-key.pem" -out "$tmp/$name.csr" 2>/dev/null
  openssl x509 -req -in "$tmp/$name.csr" -CA ca.pem -CAkey ca-key.pem \
    -CAcreateserial -CAserial "$tmp/ca.srl" -days 825 -sha256 \
    -extfile "$tmp/$name.ext" -out "$name.pem" 2>/dev/null
}
issue server arbiter serverAuth "$san"
issue client restock-client clientAuth

if [[ ! -s token || $force == true ]]; then
  openssl rand -hex 32 >token
fi
# The services run as uid 10001 in the image: readable, not writable.
chmod 644 ./*.pem token
chmod 600 ca-key.pem
echo "make-certs: wrote $(pwd)/{ca,server,client}.pem, their keys and token" >&2
