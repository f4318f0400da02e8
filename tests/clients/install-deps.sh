#!/usr/bin/env bash
# Installs what the client conformance suite needs; idempotent and quick when all is present.
#   apt:  amqp-tools, librabbitmq-client-java (+ libslf4j-java), golang-go,
#         golang-github-rabbitmq-amqp091-go-dev, openssl (test_tls.py makes certificates),
#         a JDK if javac is missing, python3-venv if needed,
#         chromium + chromium-driver (test_console.py drives the web console headless),
#         etcd-server + haproxy (test_cluster.py runs a three-node cluster behind HAProxy)
#   pip:  tests/clients/requirements.txt into tests/clients/.venv
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$HERE/.venv"

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

want=(amqp-tools librabbitmq-client-java libslf4j-java golang-go golang-github-rabbitmq-amqp091-go-dev openssl
      chromium chromium-driver etcd-server haproxy)
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

# rabbitmqadmin (the management plugin's Python CLI, test_rabbitmqadmin.py): copied from
# an installed rabbitmq-server package, or extracted from its .deb without installing
# it (and so without Erlang).
TOOLS="$HERE/.tools"
if [ ! -f "$TOOLS/rabbitmqadmin" ]; then
    glob='usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_management-*/priv/www/cli/rabbitmqadmin'
    src="$(ls /$glob 2>/dev/null | head -n1 || true)"
    tmp=""
    if [ -z "$src" ]; then
        echo "install-deps: fetching rabbitmqadmin from Debian's rabbitmq-server package" >&2
        tmp="$(mktemp -d)"
        if ! (cd "$tmp" && apt-get download -q rabbitmq-server >/dev/null 2>&1); then
            $SUDO apt-get update -q >/dev/null
            (cd "$tmp" && apt-get download -q rabbitmq-server >/dev/null)
        fi
        dpkg -x "$tmp"/rabbitmq-server_*.deb "$tmp/x"
        src="$(ls "$tmp"/x/$glob | head -n1)"
    fi
    mkdir -p "$TOOLS"
    cp "$src" "$TOOLS/rabbitmqadmin"
    [ -z "$tmp" ] || rm -rf "$tmp"
fi
