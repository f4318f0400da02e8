#!/usr/bin/env bash
# Build warren's fuzz targets (libFuzzer, stable rustc) and run each for a while.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 30; 0 builds and replays the reproducers only); TARGETs
# default to all. First every reproducer in
# tests/fuzz/crashes/ runs once through its target (named by the file's prefix, e.g.
# crashes/definitions-long-key): a bug that was fixed must stay fixed. Then each target
# fuzzes for SECONDS, starting from a scratch copy of its seed corpus (tests/fuzz/corpus/
# TARGET; the copy grows, the repository's corpus does not), with a 10 s limit per input
# and 2 GiB of RSS. Any crash, panic, stack overflow, timeout or out-of-memory fails the
# script; the input that caused it is kept and its path printed.
#
# Environment: FUZZ_WORK (scratch directory, default a new one under /tmp, kept when
# something failed), WARREN_FUZZ_TARGET_DIR (cargo target dir, default
# ${CARGO_TARGET_DIR:-target}/fuzz), FUZZ_JOBS (targets fuzzed at once, default 2: one
# per core of the 2-core machines this runs on),
# FUZZ_ARGS (extra libFuzzer flags), FUZZ_CARGO_ARGS (extra cargo build flags, e.g.
# --timings).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ALL_TARGETS=(frame method table connection store definitions management)

SECS="${1:-30}"
[ $# -gt 0 ] && shift
case "$SECS" in '' | *[!0-9]*) echo "run.sh: SECONDS must be a number, got '$SECS'" >&2; exit 2 ;; esac
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    [ -f "$HERE/targets/$t.rs" ] || { echo "run.sh: no target '$t' (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1; then
    echo "run.sh: installing g++ (libFuzzer is C++)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi

# ---- build -----------------------------------------------------------------------------
# The coverage flags are in Cargo.toml (profile rustflags, for the crates under test
# only); that cargo feature is unstable, hence RUSTC_BOOTSTRAP=1 (stable cargo and rustc,
# no other toolchain). `--target` keeps RUSTFLAGS off build scripts and proc macros. No
# sanitizer: warren's code is safe Rust; a panic, overflow or stack overflow is the bug.
export CARGO_TARGET_DIR="${WARREN_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/fuzz}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
unset CARGO_ENCODED_RUSTFLAGS
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="--cfg fuzzing"
build_start=$(date +%s)
echo "=== building fuzz targets (${TARGETS[*]}) in $CARGO_TARGET_DIR" >&2
bin_args=()
for t in "${TARGETS[@]}"; do bin_args+=(--bin "$t"); done
# shellcheck disable=SC2086
cargo build --release --locked --manifest-path "$HERE/Cargo.toml" --target "$TRIPLE" \
    "${bin_args[@]}" ${FUZZ_CARGO_ARGS:-}
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"
echo "=== built in $(( $(date +%s) - build_start )) s" >&2

# ---- run -------------------------------------------------------------------------------
WORK="${FUZZ_WORK:-$(mktemp -d /tmp/warren-fuzz.XXXXXX)}"
mkdir -p "$WORK"
# The store target's data directories: in memory if /dev/shm is there (it syncs files).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export WARREN_FUZZ_TMP="/dev/shm/warren-fuzz-$$"
    trap 'rm -rf "$WARREN_FUZZ_TMP"' EXIT
else
    export WARREN_FUZZ_TMP="$WORK/tmp"
fi
mkdir -p "$WARREN_FUZZ_TMP"
# Each input runs on a 2 MiB stack, as a tokio worker thread has: recursion that would
# overflow a broker worker overflows here too.
ulimit -s 2048
failed=()
summary=()

# Reproducers of fixed bugs: each must now run clean (one run per file: libFuzzer stops
# at the first crash).
shopt -s nullglob
for t in "${TARGETS[@]}"; do
    for f in "$HERE"/crashes/"$t"-*; do
        log="$WORK/repro-$(basename "$f").log"
        if ! "$BIN/$t" -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$WORK/repro-" "$f" \
            >"$log" 2>&1; then
            why="$(grep -m1 -A1 -E 'panicked at|ERROR: libFuzzer' "$log" | tr '\n' ' ')"
            echo "run.sh: $t: tests/fuzz/crashes/$(basename "$f") still fails: $why(log: $log)" >&2
            failed+=("$t (reproducer $(basename "$f"))")
        fi
    done
done
shopt -u nullglob

if [ "$SECS" = 0 ]; then
    [ ${#failed[@]} -eq 0 ] || { echo "run.sh: FAILED: ${failed[*]}"; exit 1; }
    echo "run.sh: built; reproducers replayed; no fuzzing (SECONDS=0)"
    exit 0
fi

run_one() {
    local t="$1" dir="$WORK/$1"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    if [ -d "$HERE/corpus/$t" ]; then cp -n "$HERE/corpus/$t"/* "$dir/corpus/" 2>/dev/null || true; fi
    local rc=0
    # Bugs already reported (crashes/, replayed above) are skipped: see src/known.rs.
    # shellcheck disable=SC2086
    WARREN_FUZZ_SKIP_KNOWN=1 "$BIN/$t" "$dir/corpus" \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$dir/artifacts/" -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$dir/log" 2>&1 || rc=$?
    echo "$rc" >"$dir/rc"
}

jobs_max="${FUZZ_JOBS:-2}"
for t in "${TARGETS[@]}"; do
    echo "=== $t: fuzzing for $SECS s" >&2
    run_one "$t" &
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
done
wait

for t in "${TARGETS[@]}"; do
    dir="$WORK/$t"
    rc="$(cat "$dir/rc")"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -n1)"
    cov="$(grep -o 'cov: [0-9]* ft: [0-9]*' "$dir/log" | tail -n1)"
    # crash-*, timeout-*, oom-*, leak-* fail the run; a slow-unit-* (an input that took
    # long but under the limit, e.g. while the machine was busy) is only reported.
    artifacts=()
    for a in "$dir"/artifacts/*; do
        case "$(basename "$a")" in
            slow-unit-*) echo "run.sh: $t: slow input (not a failure): $a" >&2 ;;
            *) [ -e "$a" ] && artifacts+=("$a") ;;
        esac
    done
    if [ "$rc" != 0 ] || [ ${#artifacts[@]} -gt 0 ]; then
        echo "------------------------------------------------------------------ $t FAILED (exit $rc)" >&2
        grep -v '^#[0-9]' "$dir/log" | tail -n 60 >&2
        for a in "${artifacts[@]}"; do echo "run.sh: $t: reproducer: $a" >&2; done
        echo "run.sh: replay with: $BIN/$t <reproducer>   (full log: $dir/log)" >&2
        failed+=("$t")
        summary+=("$(printf '%-12s FAILED  execs %-9s exec/s %-6s %s' "$t" "${execs:-?}" "${rate:-?}" "$cov")")
    else
        summary+=("$(printf '%-12s ok      execs %-9s exec/s %-6s %s' "$t" "${execs:-?}" "${rate:-?}" "$cov")")
    fi
done

echo "=== fuzz summary ($SECS s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: FAILED: ${failed[*]} (inputs and logs kept in $WORK)"
    nfailed="$(printf '%s\n' "${failed[@]}" | sed 's/ (reproducer.*//' | sort -u | wc -l)"
    echo "fuzz: $(( ${#TARGETS[@]} - nfailed )) passed, $nfailed failed"
    exit 1
fi
[ -n "${FUZZ_WORK:-}" ] || rm -rf "$WORK"
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
