"""kombu (py-amqp transport) conformance."""
from __future__ import annotations

import socket
import time

import amqp.exceptions
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue


@pytest.fixture
def conn(broker):
    c = Connection(broker.url.replace("amqp://", "pyamqp://", 1), heartbeat=0, connect_timeout=10)
    c.connect()
    yield c
    c.release()


def drain(conn, until, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except socket.timeout:
            pass


def test_transport_is_py_amqp(conn):
    assert conn.transport.driver_type == "amqp"
    assert conn.transport_cls in ("pyamqp", "amqp")
    assert conn.connected


def test_qos_semantics_matches_spec_same_as_rabbitmq(conn):
    """kombu reads server_properties product/version. For RabbitMQ 3.3 .. 3.x it returns
    False (prefetch is per consumer unless global=True), so Celery sets basic.qos(global=True).
    warren must make kombu reach the same decision as RabbitMQ 3.10."""
    sp = conn.connection.server_properties
    assert sp.get("product") == "RabbitMQ"
    major = int(str(sp.get("version")).split(".")[0])
    assert major == 3
    assert conn.qos_semantics_matches_spec is False
    assert conn.transport.qos_semantics_matches_spec(conn.connection) is False


def test_producer_consumer_direct_exchange(conn, uniq):
    ex = Exchange(uniq("ex"), type="direct", durable=False, auto_delete=False)
    q = Queue(uniq("q"), exchange=ex, routing_key="work", durable=False, auto_delete=False)
    ch = conn.channel()
    try:
        producer = Producer(ch, exchange=ex, serializer="json")
        producer.publish({"n": 1, "s": "ü"}, routing_key="work", declare=[q])
        producer.publish(b"raw-bytes", routing_key="work", content_type="application/data",
                         content_encoding="binary", headers={"h": 1}, priority=2)
        got = []

        def on_message(body, message):
            got.append((body, message.content_type, message.headers))
            message.ack()

        with Consumer(ch, queues=[q], callbacks=[on_message], accept=["json", "application/data"]):
            drain(conn, lambda: len(got) >= 2)
        assert got[0] == ({"n": 1, "s": "ü"}, "application/json", {})
        assert got[1][0] == b"raw-bytes" and got[1][2] == {"h": 1}
    finally:
        q(ch).delete()
        ex(ch).delete()
        ch.close()


def test_topic_and_fanout_exchanges_with_bindings(conn, uniq):
    ch = conn.channel()
    topic = Exchange(uniq("topic"), type="topic", auto_delete=True)
    fan = Exchange(uniq("fan"), type="fanout", auto_delete=True)
    qa = Queue(uniq("a"), exchange=topic, routing_key="notifications.*", exclusive=True)
    qb = Queue(uniq("b"), exchange=fan, exclusive=True)
    got = []
    cons = Consumer(ch, queues=[qa, qb], callbacks=[lambda b, m: (got.append((m.delivery_info["routing_key"], b)), m.ack())],
                    accept=["json"])
    with cons:
        p = Producer(ch, serializer="json")
        p.publish("info", exchange=topic, routing_key="notifications.info")
        p.publish("skip", exchange=topic, routing_key="audit.info")
        p.publish("all", exchange=fan, routing_key="whatever")
        drain(conn, lambda: len(got) >= 2)
        drain(conn, lambda: False, timeout=0.3)
    assert sorted(got) == sorted([("notifications.info", "info"), ("whatever", "all")])
    ch.close()


def test_queue_arguments_declare(conn, uniq):
    """Queue arguments kombu/Celery users set: x-message-ttl, x-expires, x-max-priority, x-max-length,
    dead-lettering. Redeclaring with the same arguments must be accepted."""
    ch = conn.channel()
    dlx = Exchange(uniq("dlx"), type="fanout", auto_delete=False)
    q = Queue(uniq("q"), exchange=Exchange(uniq("ex"), type="direct", auto_delete=True),
              routing_key="rk", message_ttl=30.0, expires=60.0, max_priority=5, max_length=100,
              queue_arguments={"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"})
    try:
        dlx(ch).declare()
        bound = q(ch)
        bound.declare()
        bound.declare()  # equivalent redeclare
        name, count, consumers = bound.queue_declare(passive=True)
        assert (name, count, consumers) == (q.name, 0, 0)
        # kombu converts seconds to the integer milliseconds RabbitMQ expects; an explicit
        # equivalent declare succeeds, an inequivalent one fails with 406.
        args = {"x-message-ttl": 30000, "x-expires": 60000, "x-max-priority": 5, "x-max-length": 100,
                "x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"}
        ch.queue_declare(q.name, durable=True, auto_delete=False, arguments=args)
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            ch.queue_declare(q.name, durable=True, auto_delete=False, arguments=dict(args, **{"x-message-ttl": 1}))
        ch = conn.channel()
    finally:
        q(ch).delete()
        dlx(ch).delete()
        ch.close()


def test_message_ttl_expiry(conn, uniq):
    ch = conn.channel()
    q = Queue(uniq("q"), message_ttl=0.2, exclusive=True)
    bq = q(ch)
    bq.declare()
    Producer(ch).publish("short-lived", routing_key=q.name, serializer="json")
    Producer(ch).publish("per-message", routing_key=q.name, serializer="json", expiration=0.1)
    deadline = time.monotonic() + 2
    while bq.queue_declare(passive=True).message_count < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bq.queue_declare(passive=True).message_count == 2
    time.sleep(0.6)
    assert bq.get() is None
    ch.close()


def test_simple_queue(conn, uniq):
    name = uniq("simple")
    sq = conn.SimpleQueue(name, serializer="json")
    try:
        for i in range(5):
            sq.put({"i": i})
        deadline = time.monotonic() + 5
        while sq.qsize() < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sq.qsize() == 5
        got = []
        for _ in range(5):
            m = sq.get(block=True, timeout=5)
            got.append(m.payload["i"])
            m.ack()
        assert got == list(range(5))
        with pytest.raises(sq.Empty):
            sq.get(block=True, timeout=0.3)
        # get_nowait + requeue
        sq.put("again")
        m = sq.get(block=True, timeout=5)
        m.requeue()
        m2 = sq.get(block=True, timeout=5)
        assert m2.payload == "again" and m2.delivery_info["redelivered"] is True
        m2.ack()
        sq.clear()
    finally:
        sq.close()
        ch = conn.channel()
        Queue(name)(ch).delete()
        Exchange(name)(ch).delete()
        ch.close()


def test_simple_buffer(conn, uniq):
    name = uniq("buf")
    sb = conn.SimpleBuffer(name)  # transient, auto-delete, no-ack
    try:
        sb.put("b1")
        assert sb.get(timeout=5).payload == "b1"
    finally:
        sb.close()


def test_consumer_prefetch_and_reject(conn, uniq):
    ch = conn.channel()
    q = Queue(uniq("q"), exclusive=True)
    q(ch).declare()
    p = Producer(ch, serializer="json")
    for i in range(4):
        p.publish(i, routing_key=q.name)
    got = []
    cons = Consumer(ch, queues=[q], callbacks=[lambda b, m: got.append(m)], accept=["json"], prefetch_count=2)
    with cons:
        drain(conn, lambda: len(got) >= 2)
        drain(conn, lambda: False, timeout=0.3)
        assert [m.payload for m in got] == [0, 1]  # prefetch 2, nothing acked yet
        got[0].reject(requeue=False)
        got[1].requeue()
        drain(conn, lambda: len(got) >= 4)
        drain(conn, lambda: False, timeout=0.2)
        payloads = [m.payload for m in got[2:]]
        assert payloads[:2] in ([1, 2], [2, 1])
        for m in got[2:]:
            if not m.acknowledged:
                m.ack()
    ch.close()


def test_connection_heartbeat_negotiation(broker):
    c = Connection(broker.url.replace("amqp://", "pyamqp://", 1), heartbeat=4)
    try:
        c.connect()
        assert c.connection.heartbeat == 4  # py-amqp: min(client, server)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            c.heartbeat_check(rate=2)
            try:
                c.drain_events(timeout=0.3)
            except socket.timeout:
                pass
        assert c.connected
    finally:
        c.release()
