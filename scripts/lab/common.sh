#!/usr/bin/env bash
# Lab provisioning, every VM: base packages, HashiCorp's apt repository and packages, meshgw in a venv.
#   common.sh server|client
# Vagrant runs it as root with the repository synced to /vagrant (see the Vagrantfile).
set -euo pipefail

ROLE=${1:?usage: common.sh server|client}
SRC=${MESHGW_SRC:-/vagrant}
export DEBIAN_FRONTEND=noninteractive

say() { echo "lab[$ROLE]: $*"; }

apt-get update -q
# gcc builds aws-lc, the TLS library of meshgw's Rust core, at pip install; cargo comes from rustup (below).
apt-get install -y -q --no-install-recommends ca-certificates curl gnupg jq lsb-release python3 python3-venv unzip \
    gcc libc6-dev

# HashiCorp's packages come from HashiCorp's own apt repository, signed with its key.
if [ ! -e /etc/apt/sources.list.d/hashicorp.list ]; then
    curl -fsSL https://apt.releases.hashicorp.com/gpg | gpg --dearmor -o /usr/share/keyrings/hashicorp-archive-keyring.gpg
    echo "deb [signed-by=/usr/share/keyrings/hashicorp-archive-keyring.gpg] https://apt.releases.hashicorp.com $(lsb_release -cs) main" \
        >/etc/apt/sources.list.d/hashicorp.list
    apt-get update -q
fi
case "$ROLE" in
    server) apt-get install -y -q consul vault nomad ;;
    # Clients run Consul agents and Nomad clients; the consul binary must also be on PATH for Nomad's
    # envoy_bootstrap hook, which runs for every connect-proxy task, meshgw's included (vault-nomad.md §4.2).
    # The CNI plugins give Nomad its bridge networking.
    client) apt-get install -y -q consul nomad containernetworking-plugins ;;
    *) echo "common.sh: unknown role $ROLE (expected server or client)" >&2; exit 2 ;;
esac

# Rust's toolchain, to build meshgw's core from the source tree (a wheel would need none).
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    curl -fsSL https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"

# meshgw under /usr (/usr/local/meshgw), which the exec driver's chroot includes.
if [ ! -x /usr/local/meshgw/bin/python ]; then
    python3 -m venv /usr/local/meshgw
fi
/usr/local/meshgw/bin/python -m pip install -q --disable-pip-version-check --upgrade "$SRC"
say "meshgw $(/usr/local/meshgw/bin/python -c 'import importlib.metadata as m; print(m.version("meshgw"))') in /usr/local/meshgw"
say "$(/usr/local/meshgw/bin/python -c 'from gateway import dataplane; print(dataplane.describe())')"

