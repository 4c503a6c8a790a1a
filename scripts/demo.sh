#!/usr/bin/env bash
# Sets everything up on a fresh machine (virtualenv, meshgw) and runs the embedded demo:
# built-in CA, local control plane, two services with sidecars, no HashiCorp binary.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "meshgw needs Python 3.11 or newer")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
./scripts/native-deps.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/meshgw demo "$@"
