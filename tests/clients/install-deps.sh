#!/usr/bin/env bash
# Installs what the client conformance suite needs; idempotent and quick when all is present.
#   apt:  amqp-tools, librabbitmq-client-java (+ libslf4j-java), golang-go,
#         golang-github-rabbitmq-amqp091-go-dev, openssl (test_tls.py makes certificates),
#         a JDK if javac is missing, python3-venv if needed
#   pip:  tests/clients/requirements.txt into tests/clients/.venv
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$HERE/.venv"

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

want=(amqp-tools librabbitmq-client-java libslf4j-java golang-go golang-github-rabbitmq-amqp091-go-dev openssl)
command -v javac >/dev/null 2>&1 || want+=(default-jdk-headless)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || want+=(python3-venv)

missing=()
for p in "${want[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.requirements.sha256"
want_sum="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want_sum" ]; then
    echo "install-deps: creating/updating $VENV" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt"
    echo "$want_sum" > "$stamp"
fi
