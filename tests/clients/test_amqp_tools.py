"""amqp-tools (Debian package, librabbitmq-c based command line tools) round trips."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

TOOLS = ("amqp-declare-queue", "amqp-publish", "amqp-consume", "amqp-get", "amqp-delete-queue")


@pytest.fixture(scope="module", autouse=True)
def tools_present():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail("amqp-tools missing: %s (apt-get install amqp-tools)" % missing)


def run(broker, tool, *args, input=None, timeout=20):
    return subprocess.run([tool, "-u", broker.url, *args], input=input, capture_output=True,
                          timeout=timeout)


def ok(res):
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return res.stdout.decode()


def test_declare_publish_get_roundtrip(broker, uniq):
    q = uniq("q")
    assert ok(run(broker, "amqp-declare-queue", "-q", q)).strip() == q
    try:
        ok(run(broker, "amqp-publish", "-r", q, "-b", "hello tools", "-C", "text/plain", "-p",
               "-H", "x-wct: yes"))
        res = run(broker, "amqp-get", "-q", q)
        assert ok(res) == "hello tools"
        # amqp-get on an empty queue exits with status 2
        assert run(broker, "amqp-get", "-q", q).returncode == 2
    finally:
        run(broker, "amqp-delete-queue", "-q", q)


def test_publish_stdin_lines_and_consume_count(broker, uniq):
    q = uniq("q")
    ok(run(broker, "amqp-declare-queue", "-q", q, "-d"))
    try:
        ok(run(broker, "amqp-publish", "-r", q, "-l", input=b"line1\nline2\nline3\n"))
        # amqp-consume runs the command once per message with the body on stdin
        # (with -l each body keeps its trailing newline)
        res = run(broker, "amqp-consume", "-q", q, "-c", "3", "-p", "1", "--", "sh", "-c", "cat; echo '|'")
        assert ok(res) == "line1\n|\nline2\n|\nline3\n|\n"
        # all three were acked: the queue is empty now, delete reports 0 messages
        assert ok(run(broker, "amqp-delete-queue", "-q", q)).strip() == "0"
    finally:
        run(broker, "amqp-delete-queue", "-q", q)


def test_consume_exclusive_queue_bound_to_topic_exchange(broker, uniq):
    rk = uniq("notifications") + ".info"
    proc = subprocess.Popen(["amqp-consume", "-u", broker.url, "-e", "amq.topic", "-r", rk, "-x",
                             "-c", "1", "--", "cat"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # wait for the consumer to be bound: publish until it receives (non-routed messages are dropped)
        out = b""
        deadline = time.monotonic() + 10
        ok(run(broker, "amqp-publish", "-e", "amq.topic", "-r", rk.replace(".info", ".error"), "-b", "wrong"))
        while proc.poll() is None and time.monotonic() < deadline:
            ok(run(broker, "amqp-publish", "-e", "amq.topic", "-r", rk, "-b", "right"))
            time.sleep(0.2)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert out == b"right"
        assert b"amq.gen-" in err  # "Server provided queue name: amq.gen-..."
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_get_from_missing_queue_fails(broker, uniq):
    res = run(broker, "amqp-get", "-q", uniq("missing"))
    assert res.returncode != 0
    assert b"NOT_FOUND" in res.stderr or b"404" in res.stderr
