#!/usr/bin/env bash
# Cross-client conformance suite (pika, kombu, Celery, oslo.messaging, RabbitMQ Java client,
# amqp091-go's own integration tests, amqp-tools). pytest is the single reporter.
#
#   tests/clients/run.sh [pytest args...]
#
# With WARREN_TEST_AMQP_URL set, every test targets that broker (e.g. a reference RabbitMQ,
# see run-against-rabbitmq.sh). Otherwise each test module starts its own warren from
# $WARREN_BIN or target/{release,debug}/warren (build it first).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

"$HERE/install-deps.sh"

if [ -z "${WARREN_TEST_AMQP_URL:-}" ]; then
    if [ -n "${WARREN_BIN:-}" ]; then
        [ -x "$WARREN_BIN" ] || { echo "run.sh: WARREN_BIN=$WARREN_BIN is not executable" >&2; exit 2; }
    elif [ ! -x "$REPO/target/release/warren" ] && [ ! -x "$REPO/target/debug/warren" ]; then
        echo "run.sh: no warren binary (target/release/warren or target/debug/warren); build it" \
             "first, or set WARREN_BIN, or WARREN_TEST_AMQP_URL to test another broker" >&2
        exit 2
    fi
    echo "run.sh: testing warren (${WARREN_BIN:-target/*/warren})" >&2
else
    echo "run.sh: testing broker at ${WARREN_TEST_AMQP_URL}" >&2
fi

# Paths given on the command line are taken relative to the caller's directory (e.g. the repo
# root); with none, the whole tests/clients directory runs.
have_path=0
for a in "$@"; do
    case "$a" in -*) ;; *) [ -e "${a%%::*}" ] && have_path=1 ;; esac
done
if [ "$have_path" = 0 ]; then set -- "$@" "$HERE"; fi
exec "$HERE/.venv/bin/python" -m pytest -c "$HERE/pytest.ini" --rootdir "$HERE" "$@"
