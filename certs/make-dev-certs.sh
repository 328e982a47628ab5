#!/usr/bin/env bash
# Development PKI for one trust domain and one or more hosts, written under certs/dev/.
#
#   certs/make-dev-certs.sh org-a.example spiffe://org-a.example/cluster/east/gateway [more host ids]
#
# Creates ${CERTS_OUT:-certs/dev}/<domain>/ca.{crt,key} (once) and certs/dev/<domain>/<host>/host.{crt,key},
# using the same code as `gateway init`. Private keys are mode 0600 and git-ignored; never
# commit them. Production hosts use their organization's CA instead.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,8p' "$0"; exit 2
fi
domain=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
gateway=${GATEWAY:-gateway}
out="${CERTS_OUT:-$here/dev}/$domain"
[ -f "$out/ca.key" ] || "$gateway" certs ca --trust-domain "$domain" --out "$out"
for host in "$@"; do
  name=${host#spiffe://*/}; name=${name//\//-}
  "$gateway" certs host --ca "$out" --host-id "$host" --out "$out/$name"
done
