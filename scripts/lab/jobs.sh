#!/usr/bin/env bash
# Lab: the intentions and the Nomad jobs, once the server and both clients are up.
#   jobs.sh SERVER_IP
# Runs "mesh-demo" (api and web, each with a meshgw sidecar), allows web -> api, and runs the mesh gateway
# when this meshgw has the mesh-gateway mode (a later issue adds it; until then it says so and skips it).
set -euo pipefail

SERVER_IP=${1:?usage: jobs.sh SERVER_IP}
SRC=${MESHGW_SRC:-/vagrant}
MESHGW=/usr/local/meshgw/bin/meshgw
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

nomad job run -detach -var "trust_domain=$TRUST_DOMAIN" -var "vault_addr=$VAULT_ADDR" "$SRC/nomad/mesh-demo.nomad.hcl"
say "job mesh-demo submitted"

# The gateway modes are not in meshgw yet: ask this meshgw whether it accepts one before submitting the job.
probe=$(mktemp -d)
printf 'mode: mesh-gateway\nservice: {name: mesh-gateway, port: 1}\ninbound: {bind: 0.0.0.0:8443}\ncertificates: {builtin: {dir: %s}}\n' "$probe" >"$probe/gw.yaml"
# Only a complaint about `mode` itself means "not supported"; anything else is for the job's own config.
if ! "$MESHGW" validate -c "$probe/gw.yaml" 2>&1 | grep -q ': mode: '; then
    nomad job run -detach -var "trust_domain=$TRUST_DOMAIN" -var "vault_addr=$VAULT_ADDR" "$SRC/nomad/mesh-gateway.nomad.hcl"
    say "job mesh-gateway submitted"
else
    say "mesh gateway skipped: this meshgw has no mesh-gateway mode yet (nomad/mesh-gateway.nomad.hcl is ready for it)"
fi
rm -rf "$probe"

cat <<NEXT
lab[jobs]: watch it work:
  nomad job status mesh-demo
  nomad alloc logs -job mesh-demo -task app          # web's calls to api, through both sidecars
  curl -s $CONSUL_HTTP_ADDR/v1/health/connect/api | jq '.[].Service | {ID, Address, Port}'
  consul config delete -kind service-intentions -name api   # then web's calls are refused
NEXT
