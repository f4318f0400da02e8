"""rabbitmqadmin (the management plugin's CLI, from Debian's rabbitmq-server package; see
install-deps.sh) against warren's management HTTP API, with pika checking each effect
over AMQP."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pika
import pika.exceptions as pexc
import pytest

RABBITMQADMIN = Path(__file__).resolve().parent / ".tools" / "rabbitmqadmin"


@pytest.fixture
def admin(broker):
    if not broker.management:
        pytest.skip("no management API address for this broker (only spawned warrens announce one)")
    if not RABBITMQADMIN.exists():
        pytest.fail("rabbitmqadmin missing: run tests/clients/install-deps.sh")
    host, port = broker.management.rsplit(":", 1)

    def run(*args: str, fmt: str = "raw_json"):
        cmd = [sys.executable, str(RABBITMQADMIN), "-H", host, "-P", port,
               "-u", broker.user, "-p", broker.password, "-V", broker.vhost, "-f", fmt, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, "rabbitmqadmin %s failed (%d): %s%s" % (
            " ".join(args), done.returncode, done.stdout, done.stderr)
        out = done.stdout.strip()
        return json.loads(out) if fmt == "raw_json" and out.startswith(("[", "{")) else out

    return run


@pytest.fixture
def ch(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=broker.host, port=broker.port, virtual_host=broker.vhost,
        credentials=pika.PlainCredentials(broker.user, broker.password)))
    yield conn.channel()
    if conn.is_open:
        conn.close()


def wait_messages(admin, name, n, timeout=5.0):
    """Poll `list queues` until the queue shows n messages (the counts trail by a burst)."""
    deadline = time.monotonic() + timeout
    while True:
        queues = {q["name"]: q for q in admin("list", "queues", "name", "messages")}
        if queues.get(name, {}).get("messages") == n or time.monotonic() > deadline:
            assert queues.get(name, {}).get("messages") == n, queues.get(name)
            return
        time.sleep(0.05)


def test_list_exchanges_shows_the_standard_ones(admin):
    names = {x["name"]: x["type"] for x in admin("list", "exchanges")}
    assert names[""] == "direct"
    assert names["amq.direct"] == "direct"
    assert names["amq.topic"] == "topic"
    assert names["amq.fanout"] == "fanout"
    assert names["amq.headers"] == "headers"


def test_declare_bind_get_purge_and_delete_a_queue(admin, ch, uniq):
    q = uniq("q")
    assert "queue declared" in admin("declare", "queue", "name=" + q, "durable=true", fmt="tsv")
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.message_count == 0
    listed = {x["name"]: x for x in admin("list", "queues")}
    assert listed[q]["durable"] is True

    assert "binding declared" in admin(
        "declare", "binding", "source=amq.direct", "destination=" + q, "routing_key=" + q + ".k", fmt="tsv")
    bindings = admin("list", "bindings")
    assert any(b["source"] == "amq.direct" and b["destination"] == q and b["routing_key"] == q + ".k"
               for b in bindings)

    for body in (b"one", b"two"):
        ch.basic_publish("amq.direct", q + ".k", body,
                         pika.BasicProperties(content_type="text/plain", delivery_mode=2))
    wait_messages(admin, q, 2)

    # ack_requeue_true leaves the message (redelivered); ack_requeue_false takes it.
    got = admin("get", "queue=" + q, "ackmode=ack_requeue_true")
    assert [m["payload"] for m in got] == ["one"]
    assert got[0]["exchange"] == "amq.direct"
    assert got[0]["routing_key"] == q + ".k"
    assert got[0]["properties"]["content_type"] == "text/plain"
    assert got[0]["message_count"] == 1
    wait_messages(admin, q, 2)
    got = admin("get", "queue=" + q, "ackmode=ack_requeue_false", "count=1")
    assert got[0]["payload"] == "one" and got[0]["redelivered"] is True
    wait_messages(admin, q, 1)
    assert ch.queue_declare(q, passive=True).method.message_count == 1

    assert "queue purged" in admin("purge", "queue", "name=" + q, fmt="tsv")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert admin("get", "queue=" + q, "ackmode=ack_requeue_false") in ([], "")

    assert "queue deleted" in admin("delete", "queue", "name=" + q, fmt="tsv")
    with pytest.raises(pexc.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 404


def test_publish_routes_and_show_overview_counts(admin, ch, uniq):
    q = uniq("pub")
    ch.queue_declare(q)
    assert "Message published" in admin(
        "publish", "exchange=amq.default", "routing_key=" + q, "payload=hello", fmt="tsv")
    assert "Message published but NOT routed" in admin(
        "publish", "exchange=amq.direct", "routing_key=nowhere." + q, "payload=x", fmt="tsv")
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"hello"
    overview = admin("show", "overview")
    assert overview[0]["rabbitmq_version"]
    ch.queue_delete(q)
