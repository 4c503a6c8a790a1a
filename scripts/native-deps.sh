#!/usr/bin/env bash
# What building meshgw's native relay (gateway/_relaycore.c) needs: a C compiler, Python's headers and
# OpenSSL's headers (the same OpenSSL Python's ssl module uses). Installed from Debian's packages when missing and we may; otherwise
# meshgw still installs and relays in Python (slower), and this says so.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
# Python's own headers (Debian's python3 keeps them in python3-dev; a pyenv or python.org build has them).
PY=${PYTHON:-python3}
if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    need+=(python3-dev)
fi
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "meshgw: ${need[*]} missing and not root: the native relay will not be built (Python data path)" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "meshgw: ${need[*]} missing and no apt-get: the native relay will not be built (Python data path)" >&2
    exit 0
fi
echo "meshgw: installing ${need[*]} (to build the native relay)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
