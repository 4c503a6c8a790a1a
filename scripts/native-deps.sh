#!/usr/bin/env bash
# What building meshgw needs besides Python: Rust's cargo (the data-plane core, gateway/core) and, for the C relay
# still built beside it until the suites have moved, a C compiler with Python's and OpenSSL's headers. Debian's
# packages are installed when missing and we may; a missing cargo stops here with one line.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "meshgw: building needs Rust's cargo (the data-plane core is Rust): install it with rustup (https://rustup.rs), then retry" >&2
    exit 1
fi
need=()
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
# Python's own headers (Debian's python3 keeps them in python3-dev; a pyenv or python.org build has them).
PY=${PYTHON:-python3}
if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    need+=(python3-dev)
fi
[ ${#need[@]} -eq 0 ] && exit 0
# gcc builds aws-lc (the core's TLS) too; the headers only serve the optional C relay.
fatal=0
case " ${need[*]} " in *" gcc "*) fatal=1 ;; esac
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "meshgw: ${need[*]} missing and not root: install them, then retry" >&2
        exit $fatal
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "meshgw: ${need[*]} missing and no apt-get: install them, then retry" >&2
    exit $fatal
fi
echo "meshgw: installing ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
