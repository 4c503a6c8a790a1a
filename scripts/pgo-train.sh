#!/usr/bin/env bash
# Makes gateway/core/pgo/meshgw.profdata, the profile every optimized build of the Rust core compiles with
# (profile-guided optimization; gateway/core/pgo/rustc-pgo applies it). Run it after large changes to the data
# plane and commit the profile; an older profile stays safe to use, it only covers less of the code.
#
#   scripts/pgo-train.sh
#
# 1. builds the core instrumented (-Cprofile-generate), in its own target directory;
# 2. drives traffic through a meshgw sidecar pair on loopback: the benches' L4, HTTP/1.1, HTTP/2 and gRPC loads
#    (meshgw only, shorter and at other concurrencies than the benches measure), mTLS handshakes included;
# 3. merges what the processes wrote (llvm-profdata of rustc's own LLVM: rustup's llvm-tools component);
# 4. rebuilds the core from clean with the new profile.
#
# Needs what bench/run.sh needs (it installs haproxy, wrk, nginx, nghttp2-client when missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[pgo-train] $*" >&2; }

host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    say "adding rustup's llvm-tools component (llvm-profdata matching rustc's LLVM)"
    rustup component add llvm-tools
fi

core="$root/gateway/core"
raw="$core/target/pgo-raw"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
rm -rf "$raw"
mkdir -p "$raw"

say "1/4 instrumented build"
[ -x .venv/bin/python ] || python3 -m venv .venv
CARGO_TARGET_DIR="$core/target/pgo-gen" RUSTFLAGS="-Cprofile-generate=$raw" \
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

stamp="$out/stamp"
touch "$stamp"
say "2/4 training traffic through a meshgw pair"
bench/run.sh --variants meshgw --duration 4 --conn-duration 3 --rate-duration 2 --out "$out/l4.json"
bench/run.sh --h2 --variants meshgw --warmup 1 --duration 4 --clients 4 --streams 8 --out "$out/h2.json"
.venv/bin/python bench/http_bench.py --variants meshgw --warmup 1 --duration 4 --connections 16 \
    --rate 3000 --rate-duration 2 --out "$out/http.json"

# The sidecars write their counts when they exit. None written means the training ran another build (a bench
# script reinstalled the optimized one over the instrumented): merging what the build itself left would commit
# a profile without the data path in it.
trained=$(find "$raw" -name '*.profraw' -newer "$stamp" | wc -l)
if [ "$trained" -eq 0 ]; then
    say "no profile was written during the training traffic: the instrumented build did not run; nothing merged"
    exit 1
fi
say "3/4 merging $(find "$raw" -name '*.profraw' | wc -l) raw profiles ($trained written by the training)"
# --sparse: functions the training never ran get no profile, so they are compiled as without one (not as cold).
"$profdata" merge --sparse -o "$core/pgo/meshgw.profdata" "$raw"/*.profraw
# The LLVM that wrote it: an older rustc's LLVM might not read it (gateway/core/pgo/rustc-pgo checks).
rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' > "$core/pgo/llvm-major"

say "4/4 rebuilding with the new profile (from clean: cargo does not track the profile)"
cargo clean --release --manifest-path "$core/Cargo.toml" --quiet
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
say "done: $(du -h "$core/pgo/meshgw.profdata" | cut -f1) gateway/core/pgo/meshgw.profdata"
