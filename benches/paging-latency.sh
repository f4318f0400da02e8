#!/bin/bash
# Latency of an unrelated 1,000 msg/s queue while another queue drains a deep backlog
# from disk with a cold page cache (#22 part 2). Prints the probe's latency alone and
# during the drain, and their p99 ratio.
#
#   benches/paging-latency.sh URI BROKER_PID [MESSAGES] [BODY] [SECONDS]
#
# Fills queue `deep` with MESSAGES persistent messages of BODY bytes (default 3,000,000
# of 200 B), drops the page cache (root), then runs the probe (16 B, 1,000 msg/s, autoack)
# once alone and once while a consumer drains `deep`. Needs fastperf as $FASTPERF.
set -eu
[ $# -ge 2 ] || { sed -n 2,10p "$0" >&2; exit 2; }
URI=$1 PID=$2
N=${3:-3000000}
BODY=${4:-200}
SECS=${5:-20}
FASTPERF=${FASTPERF:-/tmp/fastperf-target/release/fastperf}
OUT=${OUT:-/tmp/paging-latency-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
probe() {
    "$FASTPERF" --uri "$URI" -u probe -x 1 -y 1 -s 16 -r 1000 -a -z "$SECS" --warmup 2 \
        --cleanup yes --progress false --broker-pid "$PID"
}
echo "filling deep with $N messages of $BODY B" >&2
"$FASTPERF" --uri "$URI" -u deep -x 2 -y 0 -s "$BODY" -f persistent -c 1000 \
    --pmessages $((N / 2)) --cleanup no --progress false > "$OUT/fill.txt"
grep -o 'sent_msgs_per_s=[0-9]*' "$OUT/fill.txt" >&2
sync
echo 3 > /proc/sys/vm/drop_caches
probe > "$OUT/alone.txt"
echo 3 > /proc/sys/vm/drop_caches
"$FASTPERF" --uri "$URI" -u deep --no-declare -x 0 -y 1 -a -f persistent -z $((SECS + 2)) \
    --cleanup no --progress false > "$OUT/drain.txt" &
drain=$!
probe > "$OUT/during.txt"
wait $drain || true
p99() { grep -o 'p99=[0-9]*' "$1" | head -1 | cut -d= -f2; }
echo "alone:  $(grep latency_us "$OUT/alone.txt")"
echo "during: $(grep latency_us "$OUT/during.txt")"
echo "drain:  $(grep -o 'recv_msgs_per_s=[0-9]*' "$OUT/drain.txt")"
a=$(p99 "$OUT/alone.txt") d=$(p99 "$OUT/during.txt")
echo "p99 ratio during/alone: $(awk -v a="$a" -v d="$d" 'BEGIN { printf "%.2f", d / a }') ($OUT)"
