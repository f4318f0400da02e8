#!/usr/bin/env bash
# Every test warren has, from a fresh machine: formatting and lints, unit tests, the Rust
# integration tests (lapin over TCP against a spawned broker), and the cross-client suite
# (pika, kombu, Celery, oslo.messaging, the RabbitMQ Java client, amqp091-go's own
# integration tests, amqp-tools), which installs what it needs (apt, a Python venv);
# the Docker image, built without a registry and run (tests/docker/README.md; skipped
# when `docker info` fails); then the fuzz targets: the inputs that once crashed one are
# replayed, and each target fuzzes for 30 s (tests/fuzz/README.md).
#
#   tests/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's line says how long the run has taken so far (where CI time goes).
step() { printf '\n=== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cluster test tools: etcd, iptables (tests/cluster/install.sh)"
tests/cluster/install.sh

step "cargo test (unit + integration)"
cargo test --workspace --no-fail-fast -- --test-threads 4

step "cross-client conformance suite"
WARREN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/warren" tests/clients/run.sh

step "Docker image: built here and run (tests/docker/run.sh; skipped without a Docker engine)"
tests/docker/run.sh

step "fuzz targets: reproducers, then 30 s each (tests/fuzz/run.sh)"
tests/fuzz/run.sh 30

step "all passed"
