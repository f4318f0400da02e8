#!/usr/bin/env bash
# The Docker image test (tests/run-all.sh runs it; tests/docker/README.md explains it):
# builds the image here with tests/docker/build.sh, then runs tests/docker/test_image.py
# against it with pika. Skipped, with a line saying so, where there is no Docker engine.
#
#   tests/docker/run.sh [TAG]      # TAG defaults to warren:test
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TAG="${1:-warren:test}"

if ! docker info >/dev/null 2>&1; then
    echo "SKIPPED: Docker image tests: no Docker engine here (docker info failed)"
    exit 0
fi

# The cluster example's etcd image is made from the host's etcd binary.
"$ROOT/tests/cluster/install.sh"

t0=$SECONDS
"$HERE/build.sh" "$TAG"
echo "docker/run: image $TAG built in $((SECONDS - t0)) s"

# pika: the client suite's venv when it has one (tests/run-all.sh makes it first),
# else a venv of our own with the same pinned pika.
PY="$ROOT/tests/clients/.venv/bin/python"
if ! "$PY" -c 'import pika' >/dev/null 2>&1; then
    VENV="$HERE/.venv"
    PY="$VENV/bin/python"
    if ! "$PY" -c 'import pika' >/dev/null 2>&1; then
        python3 -m venv "$VENV"
        "$PY" -m pip install -q --disable-pip-version-check \
            "$(grep -E '^pika==' "$ROOT/tests/clients/requirements.txt")"
    fi
fi

"$PY" "$HERE/test_image.py" "$TAG"
echo "docker/run: build and tests took $((SECONDS - t0)) s"
