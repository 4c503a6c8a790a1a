#!/usr/bin/env bash
# Run every cargo-fuzz target of the Rust core (gateway/core/fuzz) for a bounded time; exit non-zero, naming
# the target and its crash artifact, if any target crashes (a panic, an overflow, a debug assertion, a slow
# input, running out of memory) or fails to build.
#
#   scripts/fuzz.sh [TARGET...]     default: every [[bin]] of gateway/core/fuzz/Cargo.toml
#
#   FUZZ_SECONDS  seconds of fuzzing per target (default 20; libFuzzer -max_total_time)
#   FUZZ_JOBS     targets fuzzed at once (default: the number of CPUs, at most 2)
#   FUZZ_TIMEOUT  seconds one input may take before it counts as a crash (default 10; libFuzzer -timeout)
#   FUZZ_TARGET_DIR  cargo's target dir (default gateway/core/fuzz/target)
#
# Stable toolchain: cargo-fuzz's default sanitizer (ASan) needs nightly's -Zsanitizer, so targets are built
# with `--sanitizer none`. Nothing else cargo-fuzz passes needs nightly: the coverage instrumentation
# (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*) and --cfg fuzzing are stable rustc flags.
# The targets fuzz safe Rust (meshgw-proto has no unsafe), where ASan has little to find; what counts is a
# panic, which `-O -a` (release, plus debug assertions and overflow checks) turns every arithmetic slip into.
#
# Corpora grow in gateway/core/fuzz/corpus/<target> and crash inputs land in gateway/core/fuzz/artifacts/
# <target>; both, the build (gateway/core/fuzz/target) and the logs (…/target/fuzz-logs) are git-ignored.
# Reproduce a crash with: cd gateway/core && cargo fuzz run -s none -O -a <target> <artifact>
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
core="$root/gateway/core"
fuzz_dir="$core/fuzz"
target_dir="${FUZZ_TARGET_DIR:-$fuzz_dir/target}"
logs="$target_dir/fuzz-logs"
seconds="${FUZZ_SECONDS:-20}"
timeout="${FUZZ_TIMEOUT:-10}"
cpus="$(nproc 2>/dev/null || echo 1)"
jobs="${FUZZ_JOBS:-$((cpus < 2 ? cpus : 2))}"

for v in seconds timeout jobs; do
    # -max_total_time=0 would mean "forever" to libFuzzer.
    if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
        echo "fuzz.sh: $v must be a positive integer, got '${!v}'" >&2
        exit 2
    fi
done

# CI machines start fresh: bring cargo-fuzz if it is missing. --debug: it is only a wrapper around cargo and
# the fuzzer binary, and an unoptimized build compiles in ~60% of the CPU time of a release one.
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install --debug --locked cargo-fuzz
fi

# name<TAB>path of each [[bin]] of the fuzz crate's manifest.
bins="$(awk '
    /^\[\[bin\]\]/ { inbin = 1; name = ""; next }
    /^\[/          { inbin = 0 }
    inbin && /^name *=/ { gsub(/.*= *"|".*/, ""); name = $0 }
    inbin && /^path *=/ { gsub(/.*= *"|".*/, ""); if (name != "") print name "\t" $0 }
' "$fuzz_dir/Cargo.toml")"

declare -A path_of=()
all=()
while IFS=$'\t' read -r name path; do
    [[ -n "$name" ]] || continue
    path_of[$name]="$path"
    all+=("$name")
done <<<"$bins"

if (($# > 0)); then
    wanted=("$@")
else
    wanted=("${all[@]}")
fi

targets=()
for t in "${wanted[@]}"; do
    if [[ -z "${path_of[$t]+x}" ]]; then
        echo "fuzz.sh: no fuzz target '$t' in $fuzz_dir/Cargo.toml" >&2
        exit 2
    fi
    if [[ -f "$fuzz_dir/${path_of[$t]}" ]]; then
        targets+=("$t")
    else
        # Declared in the manifest but not written yet; cargo only needs a bin's file when building it.
        echo "fuzz.sh: skip $t ($fuzz_dir/${path_of[$t]} does not exist yet)"
    fi
done
if ((${#targets[@]} == 0)); then
    echo "fuzz.sh: no fuzz target to run"
    exit 0
fi

mkdir -p "$logs"
cd "$core"
# --sanitizer none: stable rustc (see the header); -O -a: optimized, with debug assertions and overflow checks.
flags=(--sanitizer none --release --debug-assertions --target-dir "$target_dir")

start=$SECONDS
failed=()
# Build one target at a time (cargo shares the dependencies), so that a target that does not compile is
# named as such and the fuzzing below measures fuzzing only.
for t in "${targets[@]}"; do
    if ! cargo fuzz build "${flags[@]}" "$t" >"$logs/$t.build.log" 2>&1; then
        echo "FAIL $t: does not build (log: $logs/$t.build.log)" >&2
        tail -n 30 "$logs/$t.build.log" >&2
        failed+=("$t")
    fi
done
built=$((SECONDS - start))

run_one() {
    local t="$1"
    local rc=0
    cargo fuzz run "${flags[@]}" "$t" -- \
        -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 \
        >"$logs/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$logs/$t.rc"
}

torun=()
for t in "${targets[@]}"; do
    [[ " ${failed[*]-} " == *" $t "* ]] || torun+=("$t")
done
for t in "${torun[@]}"; do
    rm -f "$logs/$t.rc"
    while (($(jobs -rp | wc -l) >= jobs)); do
        wait -n || true
    done
    run_one "$t" &
done
wait

for t in "${torun[@]}"; do
    rc="$(cat "$logs/$t.rc" 2>/dev/null || echo 255)"
    done_line="$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$logs/$t.log" | tail -n 1 || true)"
    if [[ "$rc" == 0 ]]; then
        echo "ok   $t: ${done_line:-finished}"
        continue
    fi
    failed+=("$t")
    artifact="$(grep -o 'Test unit written to .*' "$logs/$t.log" | tail -n 1 | sed 's/^Test unit written to //' || true)"
    echo "FAIL $t: exit $rc; crash artifact: ${artifact:-none written} (log: $logs/$t.log)" >&2
    # The panic message and libFuzzer's summary; the full log has the stack.
    grep -m 5 -A 3 "panicked at\|ERROR: libFuzzer\|==ERROR" "$logs/$t.log" >&2 || tail -n 30 "$logs/$t.log" >&2
done

echo "fuzz.sh: ${#targets[@]} target(s), ${seconds}s each, $jobs at a time; build ${built}s, total $((SECONDS - start))s"
if ((${#failed[@]} > 0)); then
    echo "fuzz.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
