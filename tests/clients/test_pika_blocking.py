"""pika BlockingConnection conformance (expectations confirmed against RabbitMQ 3.10)."""
from __future__ import annotations

import time
from decimal import Decimal

import pika
import pika.exceptions as pexc
import pytest


def params(broker, **kw):
    kw.setdefault("heartbeat", 30)
    kw.setdefault("blocked_connection_timeout", 30)
    kw.setdefault("socket_timeout", 10)
    kw.setdefault("connection_attempts", 1)
    return pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host=broker.vhost,
        credentials=pika.PlainCredentials(broker.user, broker.password),
        **kw,
    )


@pytest.fixture
def conn(broker):
    c = pika.BlockingConnection(params(broker, client_properties={"connection_name": "wct-pika-blocking"}))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


def wait_count(ch, queue, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        count = ch.queue_declare(queue, passive=True).method.message_count
        if count == n or time.monotonic() > deadline:
            assert count == n, "queue %s has %d messages, expected %d" % (queue, count, n)
            return
        time.sleep(0.02)


def drain_get(ch, queue, n=None, timeout=5.0):
    """basic_get until n messages (or empty when n is None). Returns list of (method, props, body)."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m, p, b = ch.basic_get(queue, auto_ack=True)
        if m is None:
            if n is None or len(out) >= n:
                break
            time.sleep(0.02)
            continue
        out.append((m, p, b))
        if n is not None and len(out) >= n:
            break
    return out


def test_connect_plain_credentials_and_server_properties(conn):
    assert conn.is_open
    sp = conn._impl.server_properties
    caps = sp["capabilities"]
    # Capabilities RabbitMQ advertises and which clients key behaviour on.
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                "exchange_exchange_bindings", "connection.blocked",
                "authentication_failure_close", "per_consumer_qos"):
        assert caps.get(cap) is True, cap
    assert "product" in sp and "version" in sp


def test_bad_password_is_refused(broker):
    p = pika.ConnectionParameters(host=broker.host, port=broker.port, virtual_host=broker.vhost,
                                  credentials=pika.PlainCredentials(broker.user, "wrong-password"),
                                  connection_attempts=1, socket_timeout=5)
    with pytest.raises(pexc.ProbableAuthenticationError) as ei:
        pika.BlockingConnection(p)
    # authentication_failure_close: RabbitMQ sends connection.close 403 ACCESS_REFUSED
    assert "403" in str(ei.value) or "ACCESS_REFUSED" in str(ei.value)


def test_unknown_vhost_is_refused(broker):
    p = pika.ConnectionParameters(host=broker.host, port=broker.port, virtual_host="wct-no-such-vhost",
                                  credentials=pika.PlainCredentials(broker.user, broker.password),
                                  connection_attempts=1, socket_timeout=5)
    with pytest.raises(pexc.ProbableAccessDeniedError):
        pika.BlockingConnection(p)


def test_queue_declare_publish_default_exchange_basic_get(ch, uniq):
    q = uniq("q")
    ok = ch.queue_declare(q, auto_delete=False)
    assert ok.method.queue == q
    assert ok.method.message_count == 0 and ok.method.consumer_count == 0
    try:
        props = pika.BasicProperties(
            content_type="application/json", content_encoding="utf-8",
            headers={"x-str": "v", "x-int": 42, "x-bool": True, "x-list": [1, "a"], "x-nested": {"k": Decimal("1.5")}},
            delivery_mode=2, priority=3, correlation_id="corr-1", reply_to="reply-q",
            expiration="60000", message_id="mid-1", timestamp=1700000000, type="t",
            user_id=ch.connection._impl.params.credentials.username, app_id="wct",
        )
        ch.basic_publish("", q, b'{"hello": "world"}', props)
        ch.basic_publish("", q, b"", pika.BasicProperties())  # empty body
        # passive declare reports the message count (RabbitMQ may lag a just-published
        # message by a moment, hence the wait)
        wait_count(ch, q, 2)
        m, p, body = ch.basic_get(q, auto_ack=False)
        assert body == b'{"hello": "world"}'
        assert m.exchange == "" and m.routing_key == q and m.redelivered is False
        assert m.message_count == 1  # messages remaining
        for attr in ("content_type", "content_encoding", "delivery_mode", "priority",
                     "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                     "type", "user_id", "app_id"):
            assert getattr(p, attr) == getattr(props, attr), attr
        assert p.headers == {"x-str": "v", "x-int": 42, "x-bool": True, "x-list": [1, "a"],
                             "x-nested": {"k": Decimal("1.5")}}
        ch.basic_ack(m.delivery_tag)
        m, p, body = ch.basic_get(q, auto_ack=True)
        assert body == b"" and m.message_count == 0
        assert ch.basic_get(q) == (None, None, None)
    finally:
        ch.queue_delete(q)


def test_user_id_mismatch_is_rejected(conn, uniq):
    ch = conn.channel()
    q = uniq("q")
    ch.queue_declare(q, auto_delete=True)
    # RabbitMQ validates user_id against the authenticated user: 406 PRECONDITION_FAILED
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="somebody-else"))
    with pytest.raises(pexc.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 406
    conn.channel().queue_delete(q)


def test_basic_get_on_empty_queue(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True).method.queue
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


def test_basic_consume_auto_ack(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True).method.queue
    for i in range(20):
        ch.basic_publish("", q, b"msg-%d" % i)
    got = []

    def on_msg(chan, method, props, body):
        got.append(body)
        if len(got) == 20:
            chan.stop_consuming()

    tag = ch.basic_consume(q, on_msg, auto_ack=True)
    assert tag.startswith("ctag")
    ch.connection.call_later(10, ch.stop_consuming)
    ch.start_consuming()
    assert got == [b"msg-%d" % i for i in range(20)]  # FIFO order
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_basic_consume_manual_ack_prefetch_and_redelivery(conn, uniq):
    ch = conn.channel()
    q = uniq("q")
    ch.queue_declare(q)
    try:
        for i in range(5):
            ch.basic_publish("", q, b"m%d" % i)
        ch.basic_qos(prefetch_count=2)
        seen = []
        ch.basic_consume(q, lambda c, m, p, b: seen.append((m, b)), auto_ack=False, consumer_tag="wct-tag")
        conn.process_data_events(time_limit=0.5)
        # prefetch_count=2: only two unacked deliveries
        assert [b for _, b in seen] == [b"m0", b"m1"]
        ch.basic_ack(seen[0][0].delivery_tag)
        conn.process_data_events(time_limit=0.5)
        assert [b for _, b in seen] == [b"m0", b"m1", b"m2"]
        # ack multiple up to m2
        ch.basic_ack(seen[2][0].delivery_tag, multiple=True)
        conn.process_data_events(time_limit=0.5)
        assert [b for _, b in seen] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        # leave m3, m4 unacked and close the channel -> they are requeued
        ch.close()
        ch2 = conn.channel()
        msgs = drain_get(ch2, q, n=2)
        assert [b for _, _, b in msgs] == [b"m3", b"m4"]
        assert all(m.redelivered for m, _, _ in msgs)
        assert ch2.queue_declare(q, passive=True).method.message_count == 0
    finally:
        conn.channel().queue_delete(q)


def test_consume_generator_and_cancel(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, b"g%d" % i)
    bodies = []
    for method, props, body in ch.consume(q, auto_ack=False, inactivity_timeout=5):
        assert method is not None, "timed out"
        bodies.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(bodies) == 3:
            break
    requeued = ch.cancel()
    assert requeued == 0
    assert bodies == [b"g0", b"g1", b"g2"]


def test_reject_nack_requeue(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True).method.queue
    for b in (b"a", b"b", b"c", b"d"):
        ch.basic_publish("", q, b)
    m, _, body = ch.basic_get(q)
    assert body == b"a" and not m.redelivered
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, body = ch.basic_get(q)
    # a requeued message goes back to its original position (head) and is flagged redelivered
    assert body == b"a" and m.redelivered
    ch.basic_reject(m.delivery_tag, requeue=False)  # dropped
    m1, _, b1 = ch.basic_get(q)
    m2, _, b2 = ch.basic_get(q)
    assert (b1, b2) == (b"b", b"c")
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)  # requeues b and c
    got = drain_get(ch, q, n=3)
    assert [b for _, _, b in got] == [b"b", b"c", b"d"]
    assert [m.redelivered for m, _, _ in got] == [True, True, False]
    for b in (b"x", b"y"):
        ch.basic_publish("", q, b)
    mx, _, _ = ch.basic_get(q)
    ch.basic_nack(mx.delivery_tag, requeue=False)
    my, _, by = ch.basic_get(q, auto_ack=True)
    assert by == b"y"
    assert ch.basic_get(q) == (None, None, None)


def test_ack_unknown_delivery_tag_closes_channel(conn, uniq):
    ch = conn.channel()
    ch.basic_ack(12345)
    with pytest.raises(pexc.ChannelClosedByBroker) as ei:
        ch.queue_declare(uniq("q"), exclusive=True)
    assert ei.value.reply_code == 406  # PRECONDITION_FAILED "unknown delivery tag"
    assert conn.is_open


def route(ch, exchange, routing_key, queues, body=b"x", headers=None):
    """Publish one message and return which of `queues` received it."""
    ch.basic_publish(exchange, routing_key, body, pika.BasicProperties(headers=headers))
    time.sleep(0.05)
    hit = []
    for q in queues:
        got = drain_get(ch, q, timeout=0.5)
        if got:
            assert len(got) == 1, (q, got)
            hit.append(q)
    return hit


@pytest.mark.parametrize("ex_type", ["fanout", "direct", "topic", "headers"])
def test_exchange_types_routing(ch, uniq, ex_type):
    ex = uniq(ex_type)
    ok = ch.exchange_declare(ex, exchange_type=ex_type, durable=False, auto_delete=False)
    assert ok.method.NAME == "Exchange.DeclareOk"
    qs = [ch.queue_declare("", exclusive=True).method.queue for _ in range(3)]
    q1, q2, q3 = qs
    try:
        if ex_type == "fanout":
            for q in qs[:2]:
                ch.queue_bind(q, ex, routing_key="ignored")
            assert sorted(route(ch, ex, "anything", qs)) == sorted([q1, q2])
        elif ex_type == "direct":
            ch.queue_bind(q1, ex, "red")
            ch.queue_bind(q2, ex, "green")
            ch.queue_bind(q3, ex, "red")
            assert sorted(route(ch, ex, "red", qs)) == sorted([q1, q3])
            assert route(ch, ex, "green", qs) == [q2]
            assert route(ch, ex, "blue", qs) == []
            ch.queue_unbind(q3, ex, "red")
            assert route(ch, ex, "red", qs) == [q1]
        elif ex_type == "topic":
            ch.queue_bind(q1, ex, "notifications.*")
            ch.queue_bind(q2, ex, "#.error")
            ch.queue_bind(q3, ex, "notifications.#")
            assert sorted(route(ch, ex, "notifications.info", qs)) == sorted([q1, q3])
            assert sorted(route(ch, ex, "notifications.error", qs)) == sorted([q1, q2, q3])
            assert sorted(route(ch, ex, "notifications", qs)) == [q3]  # '#' matches zero words
            assert sorted(route(ch, ex, "notifications.a.b", qs)) == [q3]
            assert route(ch, ex, "app.db.error", qs) == [q2]
            assert route(ch, ex, "other", qs) == []
        else:
            ch.queue_bind(q1, ex, "", arguments={"x-match": "all", "format": "pdf", "type": "report"})
            ch.queue_bind(q2, ex, "", arguments={"x-match": "any", "format": "zip", "type": "log"})
            ch.queue_bind(q3, ex, "", arguments={})  # no args + default x-match all => matches everything
            assert sorted(route(ch, ex, "rk", qs, headers={"format": "pdf", "type": "report"})) == sorted([q1, q3])
            assert sorted(route(ch, ex, "rk", qs, headers={"format": "pdf", "type": "log"})) == sorted([q2, q3])
            assert sorted(route(ch, ex, "rk", qs, headers={"format": "zip"})) == sorted([q2, q3])
            assert route(ch, ex, "rk", qs, headers={}) == [q3]
    finally:
        ch.exchange_delete(ex)


def test_exchange_to_exchange_binding(ch, uniq):
    src, dst = uniq("src"), uniq("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    try:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, dst)
        ch.exchange_bind(destination=dst, source=src, routing_key="a.*")
        assert route(ch, src, "a.b", [q]) == [q]
        assert route(ch, src, "b.b", [q]) == []
        ch.exchange_unbind(destination=dst, source=src, routing_key="a.*")
        assert route(ch, src, "a.b", [q]) == []
    finally:
        ch.exchange_delete(src)
        ch.exchange_delete(dst)


def test_amq_predeclared_exchanges(ch):
    for name, kind in (("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
                       ("amq.headers", "headers"), ("amq.match", "headers")):
        ch.exchange_declare(name, kind, passive=True)
        ch.exchange_declare(name, kind, durable=True)  # equivalent redeclare is OK


def test_exclusive_server_named_queue_topic_notifications(broker, conn, uniq):
    """The 'listen to notifications.info' pattern from the RabbitMQ tutorials."""
    ch = conn.channel()
    ex = uniq("topic_logs")
    ch.exchange_declare(ex, exchange_type="topic")
    try:
        ok = ch.queue_declare(queue="", exclusive=True)
        q = ok.method.queue
        assert q.startswith("amq.gen-")
        ch.queue_bind(exchange=ex, queue=q, routing_key="notifications.info")
        for rk in ("notifications.info", "notifications.error", "notifications.info.extra", "notifications.info"):
            ch.basic_publish(ex, rk, rk.encode())
        got = []
        for method, _, body in ch.consume(q, auto_ack=True, inactivity_timeout=1):
            if method is None:
                break
            got.append((method.routing_key, body))
        ch.cancel()
        assert got == [("notifications.info", b"notifications.info")] * 2

        # Another connection may not use the exclusive queue: 405 RESOURCE_LOCKED
        other = pika.BlockingConnection(params(broker))
        try:
            och = other.channel()
            with pytest.raises(pexc.ChannelClosedByBroker) as ei:
                och.basic_consume(q, lambda *a: None)
            assert ei.value.reply_code == 405
        finally:
            other.close()
        # exclusive queues go away with their connection
        conn.close()
        c2 = pika.BlockingConnection(params(broker))
        try:
            with pytest.raises(pexc.ChannelClosedByBroker) as ei:
                c2.channel().queue_declare(q, passive=True)
            assert ei.value.reply_code == 404
        finally:
            c2.close()
    finally:
        c3 = pika.BlockingConnection(params(broker))
        c3.channel().exchange_delete(ex)
        c3.close()


def test_server_named_queue_not_exclusive_when_declared_again(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    assert q != q2


def test_publisher_confirms(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", q, b"c%d" % i, pika.BasicProperties(delivery_mode=2))  # raises if nacked
    assert ch.queue_declare(q, passive=True).method.message_count == 50
    # Publishing to a routable-less exchange without mandatory is still confirmed (ack)
    ch.basic_publish("amq.direct", uniq("nobody"), b"dropped")
    # confirm_delivery twice is fine? RabbitMQ: confirm.select is idempotent
    ch.confirm_delivery()


def test_confirm_then_tx_select_is_refused(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pexc.ChannelClosedByBroker) as ei:
        ch.tx_select()
    assert ei.value.reply_code == 406


def test_tx_commit_rollback(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True).method.queue
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back")
    ch.tx_rollback()
    ch.basic_publish("", q, b"committed")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    wait_count(ch, q, 1)
    m, _, b = ch.basic_get(q, auto_ack=True)
    assert b == b"committed"


def test_publish_to_missing_exchange_closes_channel(conn, uniq):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pexc.ChannelClosedByBroker) as ei:
        ch.basic_publish(uniq("no-such-exchange"), "rk", b"x")
    assert ei.value.reply_code == 404
    assert conn.is_open and conn.channel().is_open


def test_mandatory_return_with_confirms(ch, uniq):
    ch.confirm_delivery()
    with pytest.raises(pexc.UnroutableError) as ei:
        ch.basic_publish("", uniq("no-such-queue"), b"bounced", mandatory=True)
    ret = ei.value.messages[0]
    assert ret.method.reply_code == 312 and ret.method.reply_text == "NO_ROUTE"
    assert ret.body == b"bounced"
    # a routable mandatory message is delivered normally
    q = ch.queue_declare(uniq("q"), exclusive=True).method.queue
    ch.basic_publish("", q, b"routed", mandatory=True)
    assert ch.basic_get(q, auto_ack=True)[2] == b"routed"


def test_mandatory_return_callback_without_confirms(conn, uniq):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    ex = uniq("ex")
    ch.exchange_declare(ex, "direct", auto_delete=False)
    try:
        ch.basic_publish(ex, "nowhere", b"r1", pika.BasicProperties(message_id="r1"), mandatory=True)
        ch.basic_publish(ex, "nowhere", b"silently-dropped", mandatory=False)
        deadline = time.monotonic() + 5
        while not returned and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        conn.process_data_events(time_limit=0.3)
        assert len(returned) == 1
        method, props, body = returned[0]
        assert (method.reply_code, method.exchange, method.routing_key) == (312, ex, "nowhere")
        assert props.message_id == "r1" and body == b"r1"
    finally:
        ch.exchange_delete(ex)


def test_queue_declare_errors(conn, uniq):
    q = uniq("q")
    ch = conn.channel()
    with pytest.raises(pexc.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404
    ch = conn.channel()
    ch.queue_declare(q, durable=False, arguments={"x-message-ttl": 60000})
    try:
        ch.queue_declare(q, durable=False, arguments={"x-message-ttl": 60000})  # equivalent: OK
        with pytest.raises(pexc.ChannelClosedByBroker) as ei:
            ch.queue_declare(q, durable=True)
        assert ei.value.reply_code == 406  # PRECONDITION_FAILED inequivalent arg 'durable'
        ch = conn.channel()
        with pytest.raises(pexc.ChannelClosedByBroker) as ei:
            ch.queue_declare(q, arguments={"x-message-ttl": 1000})
        assert ei.value.reply_code == 406
        ch = conn.channel()
        # the reserved amq. prefix: 403 ACCESS_REFUSED
        with pytest.raises(pexc.ChannelClosedByBroker) as ei:
            ch.queue_declare("amq.wct-reserved")
        assert ei.value.reply_code == 403
    finally:
        conn.channel().queue_delete(q)


def test_exchange_declare_errors(conn, uniq):
    ch = conn.channel()
    ex = uniq("ex")
    with pytest.raises(pexc.ChannelClosedByBroker) as ei:
        ch.exchange_declare(ex, "direct", passive=True)
    assert ei.value.reply_code == 404
    ch = conn.channel()
    ch.exchange_declare(ex, "direct")
    try:
        with pytest.raises(pexc.ChannelClosedByBroker) as ei:
            ch.exchange_declare(ex, "fanout")
        assert ei.value.reply_code == 406
        ch = conn.channel()
        with pytest.raises(pexc.ConnectionClosedByBroker) as ei:
            ch.exchange_declare(uniq("bad"), "no-such-type")
        assert ei.value.reply_code == 503  # COMMAND_INVALID: connection-level error
    finally:
        c = pika.BlockingConnection(params_from(conn))
        c.channel().exchange_delete(ex)
        c.close()


def params_from(conn):
    return conn._impl.params


def test_purge_delete_counts_and_if_empty(conn, uniq):
    ch = conn.channel()
    q = uniq("q")
    ch.queue_declare(q)
    try:
        for i in range(7):
            ch.basic_publish("", q, b"p")
        wait_count(ch, q, 7)
        assert ch.queue_purge(q).method.message_count == 7
        ch.basic_publish("", q, b"p")
        with pytest.raises(pexc.ChannelClosedByBroker) as ei:
            ch.queue_delete(q, if_empty=True)
        assert ei.value.reply_code == 406
        ch = conn.channel()
        assert ch.queue_delete(q).method.message_count == 1
    finally:
        conn.channel().queue_delete(q)


def test_auto_delete_queue_deleted_after_last_consumer(conn, uniq):
    ch = conn.channel()
    q = uniq("q")
    ch.queue_declare(q, auto_delete=True)
    tag = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(tag)
    with pytest.raises(pexc.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_consumer_cancel_notify_on_queue_delete(conn, uniq):
    ch = conn.channel()
    q = uniq("q")
    ch.queue_declare(q)
    cancelled = []
    ch.basic_consume(q, lambda *a: None)
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    conn.channel().queue_delete(q)
    deadline = time.monotonic() + 5
    while not cancelled and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert len(cancelled) == 1


def test_dead_letter_and_message_ttl(ch, uniq):
    dlx = uniq("dlx")
    ch.exchange_declare(dlx, "fanout")
    try:
        dlq = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(dlq, dlx)
        q = ch.queue_declare(uniq("q"), exclusive=True,
                             arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 100}).method.queue
        ch.basic_publish("", q, b"expires")
        ch.basic_publish("", q, b"rejected", pika.BasicProperties(expiration="60000"))
        m, _, b = ch.basic_get(q)
        assert b == b"expires"
        ch.basic_reject(m.delivery_tag, requeue=False)  # -> dead-lettered (reason rejected)
        got = drain_get(ch, dlq, n=2, timeout=5)
        assert sorted(b for _, _, b in got) == [b"expires", b"rejected"] or len(got) == 2
        reasons = {b: p.headers["x-death"][0]["reason"] for _, p, b in got}
        assert reasons.get(b"expires") == "rejected"
        assert reasons.get(b"rejected") == "expired"
    finally:
        ch.exchange_delete(dlx)


def test_queue_max_length_drops_head(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True, arguments={"x-max-length": 2}).method.queue
    for b in (b"1", b"2", b"3"):
        ch.basic_publish("", q, b)
    assert [b for _, _, b in drain_get(ch, q)] == [b"2", b"3"]


def test_priority_queue(ch, uniq):
    q = ch.queue_declare(uniq("q"), exclusive=True, arguments={"x-max-priority": 10}).method.queue
    for pr in (1, 5, 9, 0):
        ch.basic_publish("", q, b"p%d" % pr, pika.BasicProperties(priority=pr))
    assert [b for _, _, b in drain_get(ch, q)] == [b"p9", b"p5", b"p1", b"p0"]


@pytest.mark.parametrize("client_hb,expected", [(5, 5), (0, 0), (600, 600), (None, 60)])
def test_heartbeat_negotiation_fixed(broker, client_hb, expected):
    """pika 1.x: an explicit client value wins (0 disables), None accepts the server's
    proposal. RabbitMQ proposes 60 s in connection.tune."""
    c = pika.BlockingConnection(params(broker, heartbeat=client_hb))
    try:
        assert c._impl.params.heartbeat == expected
    finally:
        c.close()


def test_heartbeat_negotiation_callable_sees_server_value(broker):
    offered = []

    def choose(conn, server_value):
        offered.append(server_value)
        return 2

    c = pika.BlockingConnection(params(broker, heartbeat=choose))
    try:
        assert offered == [60]  # RabbitMQ's default heartbeat proposal in connection.tune
        assert c._impl.params.heartbeat == 2
        # With a 2s heartbeat the connection survives idle periods as long as both
        # sides send heartbeats: idle for 5 s (> 2 * timeout) while processing I/O.
        ch = c.channel()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            c.process_data_events(time_limit=0.5)
        assert c.is_open
        ch.queue_declare("", exclusive=True)
        # the broker sent heartbeats to us during the idle period
        hb = c._impl._heartbeat_checker
        assert hb is not None and hb.bytes_received_on_connection > 0
    finally:
        c.close()


def test_tune_channel_max_and_frame_max(broker):
    c = pika.BlockingConnection(params(broker, frame_max=8192, channel_max=10))
    try:
        assert c._impl.params.frame_max == 8192
        assert c._impl.params.channel_max == 10
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        big = bytes(range(256)) * 400  # 100 KiB, split over many body frames
        ch.basic_publish("", q, big)
        assert ch.basic_get(q, auto_ack=True)[2] == big
    finally:
        c.close()


def test_many_channels(conn):
    chans = [conn.channel() for _ in range(20)]
    for c in chans:
        c.queue_declare("", exclusive=True)
    for c in chans[::2]:
        c.close()
    assert all(c.is_open for c in chans[1::2])
