#!/usr/bin/env bash
# Lab: the intentions and the Nomad jobs, once the server and both clients are up.
#   jobs.sh SERVER_IP
# Runs "mesh-demo" (api and web, each with a meshgw sidecar), allows web -> api, and runs a mesh gateway on
# every client (meshgw in mode mesh-gateway).
set -euo pipefail

SERVER_IP=${1:?usage: jobs.sh SERVER_IP}
SRC=${MESHGW_SRC:-/vagrant}
export CONSUL_HTTP_ADDR=http://$SERVER_IP:8500 NOMAD_ADDR=http://$SERVER_IP:4646
VAULT_ADDR=http://$SERVER_IP:8200

say() { echo "lab[jobs]: $*"; }

TRUST_DOMAIN=$(curl -fsS "$CONSUL_HTTP_ADDR/v1/connect/ca/roots" | jq -r .TrustDomain)
if [ -z "$TRUST_DOMAIN" ] || [ "$TRUST_DOMAIN" = null ]; then
    echo "jobs.sh: consul has no CA roots yet" >&2
    exit 1
fi

# web may call api; everything else is denied by the default intention policy.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<JSON
{"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}]}
JSON
consul config write "$tmp"
say "intention web -> api: allow"

# The jobs fetch meshgw by an artifact: a wheelhouse (meshgw and its dependencies) served from this host.
WHEELS=/var/lib/meshgw-wheels
rm -rf "$WHEELS" && mkdir -p "$WHEELS/out"
/usr/local/meshgw/bin/python -m pip wheel -q --disable-pip-version-check -w "$WHEELS/build" "$SRC"
tar -C "$WHEELS/build" -czf "$WHEELS/out/meshgw-wheelhouse.tar.gz" .
systemctl stop meshgw-wheels 2>/dev/null || true
systemd-run --unit meshgw-wheels /usr/bin/python3 -m http.server 8000 --directory "$WHEELS/out"
WHEEL_URL=http://$SERVER_IP:8000/meshgw-wheelhouse.tar.gz
say "meshgw wheelhouse served at $WHEEL_URL"

nomad job run -detach -var "trust_domain=$TRUST_DOMAIN" -var "vault_addr=$VAULT_ADDR" \
    -var "meshgw_wheel=$WHEEL_URL" "$SRC/nomad/mesh-demo.nomad.hcl"
say "job mesh-demo submitted"

nomad job run -detach -var "trust_domain=$TRUST_DOMAIN" -var "vault_addr=$VAULT_ADDR" \
    -var "meshgw_wheel=$WHEEL_URL" "$SRC/nomad/mesh-gateway.nomad.hcl"
say "job mesh-gateway submitted"

cat <<NEXT
lab[jobs]: watch it work:
  nomad job status mesh-demo
  nomad alloc logs -job mesh-demo -task app          # web's calls to api, through both sidecars
  curl -s $CONSUL_HTTP_ADDR/v1/health/connect/api | jq '.[].Service | {ID, Address, Port}'
  consul config delete -kind service-intentions -name api   # then web's calls are refused
NEXT
