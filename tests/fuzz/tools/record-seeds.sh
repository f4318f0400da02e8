#!/usr/bin/env bash
# Record real clients talking to warren and turn the recordings into the seed corpora
# (tests/fuzz/corpus/TARGET). Not part of the test run: the corpora are committed; run
# this again when the protocol surface changes.
#
#   tests/fuzz/tools/record-seeds.sh RECDIR
#
# Starts a warren ($WARREN_BIN, default target/debug/warren: build it first) on loopback
# ports 25700 (AMQP) and 25780 (management), with a fresh data directory, and recording
# proxies (tools/record.py) in front of it; then runs, through the proxies:
#   - pika sessions (tools/pika_sessions.py; needs `pip install pika` in $PYTHON),
#   - the RabbitMQ Java client (tools/JavaSessions.java; Debian's librabbitmq-client-java),
#   - lapin: some of warren's own integration tests (WARREN_TEST_AMQP_URL), if LAPIN=1,
#   - rabbitmqadmin against the management API ($RABBITMQADMIN, if set),
# stops the broker (its data directory then holds durable state for the store seeds),
# and runs tools/make_corpora.py, which writes candidate inputs per target into
# RECDIR/candidates. tools/minimize.sh then keeps the ones that add coverage.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
REC="${1:?usage: record-seeds.sh RECDIR}"
PYTHON="${PYTHON:-python3}"
WARREN_BIN="${WARREN_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/warren}"
AMQP=25700
HTTP=25780
mkdir -p "$REC/raw"
rm -rf "$REC/data"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$WARREN_BIN" --amqp-listen "127.0.0.1:$AMQP" --data-dir "$REC/data" --log-level warn \
    --set management.listen="127.0.0.1:$HTTP" --set metrics.listen= \
    --set store.fsync=false >"$REC/warren.log" 2>&1 &
broker=$!
pids+=("$broker")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$AMQP") 2>/dev/null && break
    sleep 0.1
done

proxy() { # PORT UPSTREAM PREFIX
    "$PYTHON" "$HERE/record.py" "$1" "$2" "$REC/raw" "$3" >/dev/null &
    pids+=($!)
    sleep 0.3
}

proxy 25701 "127.0.0.1:$AMQP" pika
proxy 25702 "127.0.0.1:$AMQP" java
proxy 25703 "127.0.0.1:$AMQP" lapin

echo "record-seeds: pika" >&2
"$PYTHON" "$HERE/pika_sessions.py" 25701

if [ -f /usr/share/java/amqp-client.jar ]; then
    echo "record-seeds: java" >&2
    jdir="$(mktemp -d)"
    javac -d "$jdir" -cp /usr/share/java/amqp-client.jar "$HERE/JavaSessions.java"
    cp=/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:"$jdir"
    [ -f /usr/share/java/slf4j-nop.jar ] && cp="$cp:/usr/share/java/slf4j-nop.jar"
    java -cp "$cp" JavaSessions 25702
    rm -rf "$jdir"
fi

if [ "${LAPIN:-0}" = 1 ]; then
    echo "record-seeds: lapin (warren's integration tests)" >&2
    (cd "$REPO" && WARREN_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:25703/%2f" \
        cargo test --test it -- basic:: tx:: exchange:: queue:: --test-threads 1 \
        >"$REC/lapin.log" 2>&1) || echo "record-seeds: some lapin tests failed (see $REC/lapin.log); recordings kept" >&2
fi

if [ -n "${RABBITMQADMIN:-}" ]; then
    echo "record-seeds: rabbitmqadmin" >&2
    admin() { # a refusal is recorded like anything else
        "$PYTHON" "$RABBITMQADMIN" -H 127.0.0.1 -P "$PORT" -u guest -p guest "$@" >/dev/null ||
            echo "record-seeds: rabbitmqadmin $1 $2 failed" >&2
    }
    group() { # NAME: a proxy of its own, so that make_corpora groups its requests
        PORT=$((PORT + 1))
        proxy "$PORT" "127.0.0.1:$HTTP" "http-$1"
    }
    PORT=25790
    group queues
    admin declare queue name=seed.http.q durable=true \
        arguments='{"x-message-ttl":60000,"x-max-length":10,"x-dead-letter-exchange":"seed.http.dlx"}'
    admin declare exchange name=seed.http.x type=topic durable=false
    admin declare exchange name=seed.http.dlx type=fanout
    admin declare binding source=seed.http.x destination=seed.http.q routing_key='a.#' \
        arguments='{"k":"v"}'
    admin publish exchange=seed.http.x routing_key=a.b payload='hello over http' \
        properties='{"delivery_mode":2,"headers":{"h":1},"content_type":"text/plain"}'
    admin publish exchange=amq.default routing_key=seed.http.q payload=aGVsbG8= \
        payload_encoding=base64
    admin get queue=seed.http.q count=2 ackmode=ack_requeue_true
    admin get queue=seed.http.q count=1 ackmode=reject_requeue_false encoding=base64
    admin purge queue name=seed.http.q
    admin declare binding source=seed.http.x destination=seed.http.q routing_key=plain
    admin delete binding source=seed.http.x destination_type=queue destination=seed.http.q \
        properties_key=plain
    admin delete queue name=seed.http.q
    admin delete exchange name=seed.http.x
    group access
    admin declare vhost name=seed-vhost
    admin declare user name=seed-user password=secret tags=monitoring,policymaker
    admin declare permission vhost=seed-vhost user=seed-user configure='^seed\..*' write='.*' read='.*'
    admin declare vhost_limit vhost=seed-vhost name=max-connections value=10
    admin declare policy name=seed-policy pattern='^seed\.' apply-to=queues priority=1 \
        definition='{"max-length":100,"dead-letter-exchange":"dlx","message-ttl":1000}'
    admin declare operator_policy name=seed-op pattern='.*' apply-to=queues \
        definition='{"max-length-bytes":1000000}'
    admin declare parameter component=vhost-limits name=limits value='{"max-queues":5}' || true
    admin list queues; admin list exchanges; admin list bindings; admin list users
    admin list vhosts; admin list permissions; admin list policies; admin show overview
    admin delete policy name=seed-policy
    admin delete operator_policy name=seed-op
    admin delete vhost_limit vhost=seed-vhost name=max-connections
    admin delete permission vhost=seed-vhost user=seed-user
    admin delete user name=seed-user
    admin delete vhost name=seed-vhost
    group definitions
    admin export "$REC/definitions-export.json"
    admin import "$REC/definitions-export.json"
fi

# The broker's own export (durable state left by the sessions above).
"$PYTHON" - "$HTTP" "$REC/definitions.json" <<'EOF'
import base64, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/definitions")
req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
open(sys.argv[2], "wb").write(urllib.request.urlopen(req).read())
EOF

kill -TERM "$broker"
wait "$broker" || true
"$PYTHON" "$HERE/make_corpora.py" "$REC" "$REC/candidates" "$REPO/tests/fixtures"
echo "record-seeds: candidates in $REC/candidates; now: tests/fuzz/tools/minimize.sh $REC/candidates" >&2
