#!/usr/bin/env bash
# Runs the client conformance suite against a local reference RabbitMQ on port 5682
# (node ref@localhost), starting it if it is not running yet, reusing it otherwise.
# Port 5672 is left free for warren.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${RMQ_REF_PORT:-5682}"
NODE="${RMQ_REF_NODE:-ref@localhost}"

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open "$PORT"; then
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        echo "run-against-rabbitmq: installing rabbitmq-server" >&2
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -q >/dev/null
        $SUDO apt-get install -y -q rabbitmq-server >/dev/null
        # a packaged default node may have been started on 5672: stop it, warren needs that port
        $SUDO rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
    echo "run-against-rabbitmq: starting RabbitMQ $NODE on port $PORT" >&2
    $SUDO env RABBITMQ_NODE_PORT="$PORT" RABBITMQ_NODENAME="$NODE" rabbitmq-server -detached
    for _ in $(seq 1 120); do
        port_open "$PORT" && break
        sleep 0.5
    done
    $SUDO rabbitmqctl -q -n "$NODE" await_startup --timeout 60 >/dev/null 2>&1 || true
    port_open "$PORT" || { echo "run-against-rabbitmq: RabbitMQ did not come up on $PORT" >&2; exit 1; }
else
    echo "run-against-rabbitmq: reusing broker already listening on $PORT" >&2
fi

export WARREN_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
exec "$HERE/run.sh" "$@"
