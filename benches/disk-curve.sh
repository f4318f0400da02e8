#!/bin/bash
# Disk use over time under a workload that pins segments: 1 KB persistent messages at
# full rate (confirms, window 1000) through a consumed queue, while a second queue that
# nobody consumes gets about one message in a thousand (a rate-limited publisher).
# Prints "seconds bytes_on_disk kept_messages" every STEP seconds, then a summary line.
#
#   benches/disk-curve.sh URI DIR [SECONDS] [KEPT_RATE] [STEP]
#
# DIR is what to measure: warren's data_dir/messages, or RabbitMQ's node directory
# (e.g. /var/lib/rabbitmq/mnesia/ref@localhost). KEPT_RATE messages/s go to the kept
# queue (default 30, about 1 in 1000 of warren's full rate here).
# BUSY_RATE=R limits the busy publisher to R msg/s (default: full rate). PROBE=1 also
# runs scenario G's probe (16 B at 1,000 msg/s, its own queue) and prints its latency:
# compaction's cost to publishing and delivery.
# Needs fastperf (shared/perf/fastperf) as $FASTPERF. The kept queue is left behind.
set -eu
[ $# -ge 2 ] || { sed -n 2,13p "$0" >&2; exit 2; }
URI=$1 DIR=$2
SECS=${3:-180}
KEPT_RATE=${4:-30}
STEP=${5:-5}
FASTPERF=${FASTPERF:-/tmp/fastperf-target/release/fastperf}
OUT=${OUT:-/tmp/disk-curve-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
rate=()
[ -n "${BUSY_RATE:-}" ] && rate=(-r "$BUSY_RATE")
"$FASTPERF" --uri "$URI" -u busy -x 1 -y 1 -s 1024 -f persistent -c 1000 -a "${rate[@]}" \
    -z "$SECS" --cleanup yes --progress false > "$OUT/busy.txt" 2>&1 &
busy=$!
"$FASTPERF" --uri "$URI" -u kept -x 1 -y 0 -s 1024 -f persistent -c 100 -r "$KEPT_RATE" \
    -z "$SECS" --cleanup no --progress false > "$OUT/kept.txt" 2>&1 &
kept=$!
if [ "${PROBE:-0}" = 1 ]; then
    "$FASTPERF" --uri "$URI" -u probe -x 1 -y 1 -s 16 -r 1000 -a -z "$SECS" --warmup 5 \
        --cleanup yes --progress false > "$OUT/probe.txt" 2>&1 &
fi
start=$(date +%s)
while kill -0 $busy 2>/dev/null; do
    sleep "$STEP"
    echo "$(( $(date +%s) - start )) $(du -sb "$DIR" 2>/dev/null | cut -f1)"
done | tee "$OUT/curve.txt"
wait $busy $kept || true
kept_n=$(grep -o 'confirmed_msgs=[0-9]*' "$OUT/kept.txt" | head -1 | cut -d= -f2)
last=$(tail -1 "$OUT/curve.txt" | cut -d' ' -f2)
peak=$(sort -k2 -n "$OUT/curve.txt" | tail -1 | cut -d' ' -f2)
wait
[ "${PROBE:-0}" = 1 ] && echo "probe: $(grep latency_us "$OUT/probe.txt")"
echo "busy: $(grep -o 'sent_msgs_per_s=[0-9]*' "$OUT/busy.txt") $(grep -o 'sent_msgs=[0-9]*' "$OUT/busy.txt")"
echo "kept: ${kept_n:-?} messages (~$(( ${kept_n:-0} * 1024 )) live bytes); disk at end $last, peak $peak; curve in $OUT/curve.txt"
