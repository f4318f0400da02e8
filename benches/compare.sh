#!/bin/bash
# Run warren-perf scenarios against warren and a reference broker in one sitting
# and keep the JSON (primary, compare, ratio) of each run.
#
#   benches/compare.sh WARREN_URI WARREN_PID REF_URI REF_PID [SCENARIOS] [SECONDS]
#
# e.g. benches/compare.sh amqp://guest:guest@127.0.0.1:5672/ $(pgrep -x warren) \
#          amqp://guest:guest@127.0.0.1:5682/ $(pgrep -f beam.smp) "A B C E G H" 6
# Needs a release build: cargo build --release --bin warren-perf.
set -eu
[ $# -ge 4 ] || { sed -n 2,9p "$0" >&2; exit 2; }
W_URI=$1 W_PID=$2 R_URI=$3 R_PID=$4
SCENARIOS=${5:-"A B C D E G H"}
SECS=${6:-6}
BIN=${WARREN_PERF:-$(dirname "$0")/../target/release/warren-perf}
OUT=${OUT:-/tmp/warren-perf-compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
for s in $SCENARIOS; do
    case $s in
        H) time_flags="-z 5" ;;
        I) time_flags="" ;;
        *) time_flags="-z $((SECS + 1)) --warmup 1" ;;
    esac
    echo "== scenario $s" >&2
    # shellcheck disable=SC2086
    "$BIN" --scenario "$s" $time_flags --quiet --json \
        --uri "$W_URI" --broker-pid "$W_PID" \
        --compare "$R_URI" --compare-pid "$R_PID" > "$OUT/$s.json" || echo "scenario $s: exit $?" >&2
    tr ',' '\n' < "$OUT/$s.json" | sed -n '/"ratio"/,$p' | tr -d '{}"' >&2
done
echo "results in $OUT" >&2
