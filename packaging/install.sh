#!/usr/bin/env bash
# Install meshgw on a bare VM (Debian/Ubuntu/RHEL-like with systemd and Python 3.11+), as root:
#
#   sudo packaging/install.sh                 # from this source tree
#   sudo packaging/install.sh meshgw==0.1.0   # or from a wheel, an sdist or a package index
#
# What it does, each step idempotent (run it again to upgrade):
#   - the meshgw system user and group (systemd-sysusers with packaging/meshgw.sysusers, else useradd);
#   - a venv in MESHGW_PREFIX (default /usr/local/meshgw: under /usr, so Nomad's exec driver chroot sees it
#     too) with meshgw installed by pip; templates/ copied to $MESHGW_PREFIX/share/templates;
#   - /etc/meshgw (root:meshgw 0750) with meshgw.env from packaging/meshgw.env.example when missing;
#   - the unit meshgw@.service (ExecStart pointing at this prefix) and a daemon-reload.
# It starts nothing: write /etc/meshgw/<name>.yaml, then `systemctl enable --now meshgw@<name>`.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=${1:-$(dirname "$HERE")}
PREFIX=${MESHGW_PREFIX:-/usr/local/meshgw}
PYTHON=${PYTHON:-python3}
UNIT_DIR=${MESHGW_UNIT_DIR:-/etc/systemd/system}

[ "$(id -u)" -eq 0 ] || die "run as root (it creates a user, a venv under $PREFIX and a systemd unit)"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    die "meshgw needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$PYTHON cannot make a venv: install python3-venv (Debian/Ubuntu) first"

# The user: no shell, no password, home = the state directory systemd creates for the unit.
if ! getent passwd meshgw >/dev/null; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        install -D -m 0644 "$HERE/meshgw.sysusers" /usr/lib/sysusers.d/meshgw.conf
        systemd-sysusers /usr/lib/sysusers.d/meshgw.conf
    else
        useradd --system --user-group --home-dir /var/lib/meshgw --no-create-home \
            --shell /usr/sbin/nologin --comment "meshgw service-mesh sidecar" meshgw
    fi
    say "user meshgw created"
fi

# The venv, owned by root: the service user can run meshgw but not change it.
if [ ! -x "$PREFIX/bin/python" ]; then
    "$PYTHON" -m venv "$PREFIX"
    say "venv created in $PREFIX"
fi
"$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SOURCE"
say "meshgw installed: $("$PREFIX/bin/meshgw" --help >/dev/null && echo "$PREFIX/bin/meshgw")"
# From a source tree pip builds the Rust core (cargo and gcc needed); a wheel carries it built.
say "$("$PREFIX/bin/python" -c 'from gateway import dataplane; print(dataplane.describe())')"
if [ -d "$SOURCE/templates" ]; then
    install -d -m 0755 "$PREFIX/share/templates"
    install -m 0644 "$SOURCE"/templates/*.j2 "$SOURCE/templates/README.md" "$PREFIX/share/templates/"
    say "templates in $PREFIX/share/templates"
fi

install -d -m 0750 -o root -g meshgw /etc/meshgw
if [ ! -e /etc/meshgw/meshgw.env ]; then
    install -m 0640 -o root -g meshgw "$HERE/meshgw.env.example" /etc/meshgw/meshgw.env
    say "/etc/meshgw/meshgw.env written from the example: set CONSUL_HTTP_ADDR, VAULT_ADDR there"
fi

sed "s#/usr/local/meshgw/bin/meshgw#$PREFIX/bin/meshgw#g" "$HERE/meshgw@.service" >"$UNIT_DIR/meshgw@.service.tmp"
chmod 0644 "$UNIT_DIR/meshgw@.service.tmp"
mv "$UNIT_DIR/meshgw@.service.tmp" "$UNIT_DIR/meshgw@.service"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "unit $UNIT_DIR/meshgw@.service installed"
cat <<NEXT
install.sh: next:
  1. write /etc/meshgw/<name>.yaml (see README.md "Running on VMs and under Nomad"), then
     $PREFIX/bin/meshgw validate -c /etc/meshgw/<name>.yaml
  2. a port below 1024 in it? install -D -m 0644 $HERE/low-port.conf $UNIT_DIR/meshgw@<name>.service.d/low-port.conf
  3. systemctl enable --now meshgw@<name>
NEXT
