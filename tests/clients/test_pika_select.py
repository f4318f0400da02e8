"""pika SelectConnection (asynchronous adapter) conformance."""
from __future__ import annotations

import functools

import pika
import pytest


class Scenario:
    """Drives a SelectConnection through a list of steps; records results/errors."""

    def __init__(self, broker, heartbeat=None, timeout=15):
        self.params = pika.ConnectionParameters(
            host=broker.host, port=broker.port, virtual_host=broker.vhost,
            credentials=pika.PlainCredentials(broker.user, broker.password),
            heartbeat=heartbeat, connection_attempts=1,
            client_properties={"connection_name": "wct-pika-select"},
        )
        self.timeout = timeout
        self.error = None
        self.result = {}
        self.conn = None
        self.ch = None

    def fail(self, msg):
        if self.error is None:
            self.error = msg
        self.finish()

    def finish(self):
        if self.conn and self.conn.is_open:
            self.conn.close()
        elif self.conn and self.conn.is_closed:
            self.conn.ioloop.stop()

    def run(self, on_channel):
        self.on_channel = on_channel
        self.conn = pika.SelectConnection(
            self.params,
            on_open_callback=self._on_open,
            on_open_error_callback=lambda c, e: self.fail("open error: %r" % (e,)),
            on_close_callback=lambda c, r: c.ioloop.stop(),
        )
        self.conn.ioloop.call_later(self.timeout, lambda: self.fail("scenario timed out"))
        self.conn.ioloop.start()
        if self.error:
            pytest.fail(self.error)
        return self.result

    def _on_open(self, conn):
        self.result["heartbeat"] = conn.params.heartbeat
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch):
        self.ch = ch
        ch.add_on_close_callback(lambda c, r: self.result.setdefault("channel_closed", r))
        try:
            self.on_channel(ch)
        except Exception as e:  # pragma: no cover - surfaced via fail()
            self.fail("step raised %r" % (e,))


def test_select_declare_publish_consume_ack(broker, uniq):
    s = Scenario(broker)
    ex, rk = uniq("ex"), "notifications.info"
    s.result["got"] = []

    def on_channel(ch):
        ch.exchange_declare(ex, exchange_type="topic", auto_delete=True, callback=on_ex)

    def on_ex(frame):
        s.ch.queue_declare("", exclusive=True, callback=on_q)

    def on_q(frame):
        q = frame.method.queue
        s.result["queue"] = q
        s.ch.queue_bind(q, ex, routing_key="notifications.*", callback=functools.partial(on_bind, q))

    def on_bind(q, frame):
        s.ch.basic_qos(prefetch_count=5, callback=lambda f: on_qos(q))

    def on_qos(q):
        s.ch.basic_consume(q, on_message, auto_ack=False, callback=lambda f: on_consume_ok(f))

    def on_consume_ok(frame):
        s.result["ctag"] = frame.method.consumer_tag
        for i in range(10):
            s.ch.basic_publish(ex, rk, b"async-%d" % i, pika.BasicProperties(message_id=str(i)))
        s.ch.basic_publish(ex, "other.info", b"not-for-us")

    def on_message(ch, method, props, body):
        s.result["got"].append(body)
        ch.basic_ack(method.delivery_tag)
        if len(s.result["got"]) == 10:
            ch.basic_cancel(method.consumer_tag, callback=lambda f: s.finish())

    s.run(on_channel)
    assert s.result["got"] == [b"async-%d" % i for i in range(10)]
    assert s.result["queue"].startswith("amq.gen-")


def test_select_publisher_confirms_and_return(broker, uniq):
    s = Scenario(broker)
    acks, nacks, returns = [], [], []

    def on_channel(ch):
        ch.add_on_return_callback(lambda c, m, p, b: returns.append((m.reply_code, b)))
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda f: on_selected())

    def on_selected():
        s.ch.queue_declare("", exclusive=True, callback=on_q)

    def on_q(frame):
        q = frame.method.queue
        for i in range(5):
            s.ch.basic_publish("", q, b"c%d" % i)
        # unroutable + mandatory: basic.return precedes the basic.ack
        s.ch.basic_publish("", uniq("missing"), b"bounce", mandatory=True)

    def on_confirm(frame):
        m = frame.method
        (acks if m.NAME == "Basic.Ack" else nacks).append((m.delivery_tag, m.multiple))
        confirmed = max(t for t, _ in acks) if acks else 0
        if confirmed >= 6:
            s.finish()

    s.run(on_channel)
    assert not nacks
    assert max(t for t, _ in acks) == 6  # delivery tags 1..6 confirmed (possibly with multiple=True)
    assert returns == [(312, b"bounce")]


def test_select_heartbeat_negotiation(broker):
    s = Scenario(broker, heartbeat=3)
    s.run(lambda ch: s.finish())
    assert s.result["heartbeat"] == 3


def test_select_channel_error_is_reported(broker, uniq):
    s = Scenario(broker)

    def on_channel(ch):
        ch.add_on_close_callback(on_closed)
        ch.queue_declare(uniq("missing"), passive=True)

    def on_closed(ch, reason):
        s.result["reason"] = reason
        s.finish()

    s.run(on_channel)
    r = s.result["reason"]
    assert r.reply_code == 404 and "NOT_FOUND" in r.reply_text
