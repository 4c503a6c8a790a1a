#!/usr/bin/env bash
# What building and testing meshgw needs besides Python: Rust's cargo (the data-plane core, gateway/core), a C
# compiler (aws-lc, the core's TLS library, is built from source) and, for the console's browser tests, Debian's
# chromium (Playwright from PyPI drives it; no browser is ever downloaded by `playwright install`). What is
# missing is installed from Debian's packages when we may; anything else missing stops here with one line.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
    echo "meshgw: building needs Rust's cargo (the data-plane core is Rust): install it with rustup (https://rustup.rs), then retry" >&2
    exit 1
fi
pkgs=()
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
# A font too, so the console's screenshots have legible text.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || pkgs+=(chromium fonts-dejavu-core)
[ ${#pkgs[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "meshgw: building and testing need ${pkgs[*]}: install them, then retry" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "meshgw: building and testing need ${pkgs[*]}: install them, then retry" >&2
    exit 1
fi
echo "meshgw: installing ${pkgs[*]} (aws-lc's compiler, the console tests' browser)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
