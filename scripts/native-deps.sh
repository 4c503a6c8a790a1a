#!/usr/bin/env bash
# What building meshgw needs besides Python: Rust's cargo (the data-plane core, gateway/core) and a C compiler
# (aws-lc, the core's TLS library, is built from source). gcc is installed from Debian's packages when missing
# and we may; anything else missing stops here with one line.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "meshgw: building needs Rust's cargo (the data-plane core is Rust): install it with rustup (https://rustup.rs), then retry" >&2
    exit 1
fi
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "meshgw: building needs a C compiler (gcc) for aws-lc: install it, then retry" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "meshgw: building needs a C compiler (gcc) for aws-lc: install it, then retry" >&2
    exit 1
fi
echo "meshgw: installing gcc (to build aws-lc, the core's TLS library)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
