#!/usr/bin/env bash
# Lab provisioning, the server VM: Vault (dev mode), a Consul server whose Connect CA is Vault, a Nomad
# server that hands workloads Vault tokens through workload identity, and the Vault PKI role meshgw signs with.
#   server.sh SERVER_IP
# A lab, not production: Vault runs in dev mode (in memory, root token "root", unsealed, plain HTTP) and
# Consul and Nomad run without ACLs or TLS.
set -euo pipefail

SERVER_IP=${1:?usage: server.sh SERVER_IP}
ROOT_TOKEN=root
SRC=${MESHGW_SRC:-/vagrant}
export VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=$ROOT_TOKEN
export CONSUL_HTTP_ADDR=http://127.0.0.1:8500 NOMAD_ADDR=http://127.0.0.1:4646

say() { echo "lab[server]: $*"; }

# wait_for WHAT SECONDS COMMAND...: run COMMAND until it succeeds, for at most SECONDS.
wait_for() {
    local what=$1 deadline=$(($(date +%s) + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "server.sh: timed out waiting for $what" >&2
            exit 1
        fi
        sleep 1
    done
    say "$what: ok"
}

# ------------------------------------------------------------------------------------------ Vault
cat >/etc/systemd/system/vault-dev.service <<UNIT
[Unit]
Description=Vault dev server (lab only: in memory, root token "$ROOT_TOKEN")
After=network-online.target
Wants=network-online.target

[Service]
User=vault
ExecStart=/usr/bin/vault server -dev -dev-root-token-id=$ROOT_TOKEN -dev-listen-address=0.0.0.0:8200
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now vault-dev.service
wait_for "vault unsealed" 60 curl -fsS "$VAULT_ADDR/v1/sys/health"

# ------------------------------------------------------------------------------------------ Consul
# Consul Connect with Vault as its CA (vault-nomad.md §3): Consul mounts connect_root and connect_inter and
# signs every sidecar's leaf with the intermediate. meshgw later signs under the same intermediate.
cat >/etc/consul.d/consul.hcl <<HCL
datacenter       = "dc1"
data_dir         = "/opt/consul"
server           = true
bootstrap_expect = 1
bind_addr        = "$SERVER_IP"
client_addr      = "0.0.0.0"
ui_config {
  enabled = true
}
ports {
  grpc = 8502
}
connect {
  enabled     = true
  ca_provider = "vault"
  ca_config {
    address               = "http://127.0.0.1:8200"
    token                 = "$ROOT_TOKEN"
    root_pki_path         = "connect_root"
    intermediate_pki_path = "connect_inter"
    leaf_cert_ttl         = "72h"
  }
}
HCL
systemctl enable --now consul.service
systemctl restart consul.service
wait_for "consul leader" 90 sh -c "curl -fsS $CONSUL_HTTP_ADDR/v1/status/leader | grep -q ':'"
wait_for "consul CA roots from vault" 90 sh -c "curl -fsS $CONSUL_HTTP_ADDR/v1/connect/ca/roots | jq -e '.TrustDomain != \"\"'"
TRUST_DOMAIN=$(curl -fsS "$CONSUL_HTTP_ADDR/v1/connect/ca/roots" | jq -r .TrustDomain)
say "consul trust domain $TRUST_DOMAIN"

# ------------------------------------------------------------------------------------------ Nomad
cat >/etc/nomad.d/nomad.hcl <<HCL
datacenter = "dc1"
data_dir   = "/opt/nomad/data"
bind_addr  = "0.0.0.0"
advertise {
  http = "$SERVER_IP"
  rpc  = "$SERVER_IP"
  serf = "$SERVER_IP"
}
server {
  enabled          = true
  bootstrap_expect = 1
}
consul {
  address = "127.0.0.1:8500"
}
# Nomad 1.10+: tasks get Vault tokens by logging in with their workload identity (vault-nomad.md §2.3).
vault {
  enabled = true
  address = "http://$SERVER_IP:8200"
  default_identity {
    aud = ["vault.io"]
    ttl = "1h"
  }
}
HCL
systemctl enable --now nomad.service
systemctl restart nomad.service
wait_for "nomad leader" 90 sh -c "curl -fsS $NOMAD_ADDR/v1/status/leader | grep -q ':'"
wait_for "nomad JWKS" 60 curl -fsS "$NOMAD_ADDR/.well-known/jwks.json"

# ------------------------------------------------------------------------------------------ meshgw's PKI role
# scripts/vault-dev-setup.sh, pointed at Consul's intermediate: it keeps the CA Consul made, adds the role
# "meshgw" (SPIFFE URI SANs of Consul's trust domain), the policy, and the JWT auth Nomad logs tasks in with.
MESHGW_PKI_MOUNT=connect_inter \
MESHGW_CA_TTL=8760h \
MESHGW_PKI_ROLE=meshgw \
MESHGW_TRUST_DOMAIN=$TRUST_DOMAIN \
MESHGW_APPROLE_PATH=none \
MESHGW_JWKS_URL=http://$SERVER_IP:4646/.well-known/jwks.json \
MESHGW_JWT_ROLE=meshgw \
MESHGW_TOKEN_PERIOD=30m \
    bash "$SRC/scripts/vault-dev-setup.sh" setup

say "done: Consul UI http://$SERVER_IP:8500/ui, Nomad UI http://$SERVER_IP:4646/ui, Vault http://$SERVER_IP:8200 (token $ROOT_TOKEN)"
