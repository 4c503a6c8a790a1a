#!/usr/bin/env bash
# Rebuilds the Rust core in place (gateway/_core.abi3.so) for a quick edit-build-test loop; `pip install -e .`
# does the same through setuptools-rust. CARGO_TARGET_DIR is honoured; PROFILE=dev for a debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
cargo build --manifest-path gateway/core/Cargo.toml -p meshgw-core --profile "$profile"
dir=${CARGO_TARGET_DIR:-gateway/core/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
cp "$dir/lib_core.so" gateway/_core.abi3.so.tmp && mv gateway/_core.abi3.so.tmp gateway/_core.abi3.so
