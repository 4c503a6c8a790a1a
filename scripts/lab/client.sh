#!/usr/bin/env bash
# Lab provisioning, a client VM: a Consul client agent and a Nomad client with bridge networking.
#   client.sh SERVER_IP CLIENT_IP
set -euo pipefail

SERVER_IP=${1:?usage: client.sh SERVER_IP CLIENT_IP}
CLIENT_IP=${2:?usage: client.sh SERVER_IP CLIENT_IP}
IFACE=$(ip -o -4 addr show | awk -v ip="$CLIENT_IP" '{split($4, a, "/"); if (a[1] == ip) print $2}')
[ -n "$IFACE" ] || { echo "client.sh: no interface has $CLIENT_IP" >&2; exit 1; }

say() { echo "lab[$(hostname)]: $*"; }

# wait_for WHAT SECONDS COMMAND...: run COMMAND until it succeeds, for at most SECONDS.
wait_for() {
    local what=$1 deadline=$(($(date +%s) + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "client.sh: timed out waiting for $what" >&2
            exit 1
        fi
        sleep 1
    done
    say "$what: ok"
}

# ------------------------------------------------------------------------------------------ Consul agent
# client_addr 0.0.0.0: meshgw runs inside each allocation's network namespace and reaches the agent at the
# node's address (CONSUL_HTTP_ADDR in the jobs), not at 127.0.0.1. gRPC is what Nomad checks Connect by.
cat >/etc/consul.d/consul.hcl <<HCL
datacenter  = "dc1"
data_dir    = "/opt/consul"
bind_addr   = "$CLIENT_IP"
client_addr = "0.0.0.0"
retry_join  = ["$SERVER_IP"]
ports {
  grpc = 8502
}
HCL
systemctl enable --now consul.service
systemctl restart consul.service
wait_for "consul agent joined" 90 sh -c "consul members -http-addr=http://127.0.0.1:8500 | grep -q '$SERVER_IP'"

# ------------------------------------------------------------------------------------------ Nomad client
# Bridge networking needs the bridge netfilter module and its sysctls (Nomad's CNI requirements).
modprobe br_netfilter
cat >/etc/sysctl.d/90-nomad-bridge.conf <<SYSCTL
net.bridge.bridge-nf-call-arptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.bridge.bridge-nf-call-iptables = 1
SYSCTL
echo br_netfilter >/etc/modules-load.d/nomad-bridge.conf
sysctl --system >/dev/null

cat >/etc/nomad.d/nomad.hcl <<HCL
datacenter = "dc1"
data_dir   = "/opt/nomad/data"
bind_addr  = "0.0.0.0"
advertise {
  http = "$CLIENT_IP"
  rpc  = "$CLIENT_IP"
  serf = "$CLIENT_IP"
}
client {
  enabled           = true
  servers           = ["$SERVER_IP:4647"]
  network_interface = "$IFACE"
  # Debian's containernetworking-plugins install here, not in Nomad's default /opt/cni/bin.
  cni_path          = "/usr/lib/cni"
}
consul {
  address      = "127.0.0.1:8500"
  grpc_address = "127.0.0.1:8502"
}
vault {
  enabled = true
  address = "http://$SERVER_IP:8200"
}
HCL
systemctl enable --now nomad.service
systemctl restart nomad.service
wait_for "nomad client ready" 120 sh -c "nomad node status -address=http://127.0.0.1:4646 -self | grep -q ready"
say "done"
