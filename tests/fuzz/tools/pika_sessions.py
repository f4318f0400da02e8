#!/usr/bin/env python3
"""Client sessions with pika, one connection each, recorded through tools/record.py to
seed the fuzz corpora. Each session exercises a different part of the protocol; the
last one leaves durable queues, exchanges, bindings and persistent messages behind for
the store seeds.

    tools/pika_sessions.py PORT
"""
import decimal
import sys
import time

import pika

PORT = int(sys.argv[1])


def connect(**kw):
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=PORT,
        credentials=pika.PlainCredentials("guest", "guest"),
        client_properties={"connection_name": "fuzz-seed"},
        **kw,
    )
    return pika.BlockingConnection(params)


def props(**kw):
    return pika.BasicProperties(**kw)


def basics():
    c = connect()
    ch = c.channel()
    ch.exchange_declare("seed.direct", "direct", durable=False, auto_delete=True)
    q = ch.queue_declare("seed.q1", arguments={"x-max-length": 100, "x-overflow": "reject-publish"})
    ch.queue_bind("seed.q1", "seed.direct", routing_key="k1")
    for i in range(3):
        ch.basic_publish(
            "seed.direct",
            "k1",
            f"hello {i}".encode(),
            props(
                content_type="text/plain",
                content_encoding="utf-8",
                headers={"h1": "v", "n": 1, "nested": {"a": [1, "b", True]}, "d": decimal.Decimal("1.5")},
                delivery_mode=2,
                priority=3,
                correlation_id="corr",
                reply_to="replies",
                expiration="60000",
                message_id="m1",
                timestamp=1700000000,
                type="t",
                user_id="guest",
                app_id="seed",
            ),
        )
    m = ch.basic_get("seed.q1")
    ch.basic_ack(m[0].delivery_tag)
    m = ch.basic_get("seed.q1")
    ch.basic_nack(m[0].delivery_tag, requeue=True)
    m = ch.basic_get("seed.q1")
    ch.basic_reject(m[0].delivery_tag, requeue=False)
    ch.basic_qos(prefetch_count=2)
    got = []

    def on(chx, method, properties, body):
        got.append(method.delivery_tag)
        chx.basic_ack(method.delivery_tag, multiple=True)

    tag = ch.basic_consume("seed.q1", on)
    c.process_data_events(time_limit=0.3)
    ch.basic_cancel(tag)
    ch.queue_purge("seed.q1")
    ch.queue_unbind("seed.q1", "seed.direct", routing_key="k1")
    ch.queue_delete("seed.q1")
    ch.exchange_delete("seed.direct")
    ch.close()
    c.close()


def routing_and_confirms():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("seed.topic", "topic", auto_delete=True)
    ch.exchange_declare("seed.fanout", "fanout", auto_delete=True)
    ch.exchange_declare("seed.headers", "headers", auto_delete=True)
    ch.exchange_bind("seed.fanout", "seed.topic", routing_key="a.#")
    r = ch.queue_declare("", exclusive=True)
    q = r.method.queue
    ch.queue_bind(q, "seed.fanout")
    ch.queue_bind(q, "seed.headers", arguments={"x-match": "any", "kind": "x", "n": 2})
    ch.basic_publish("seed.topic", "a.b.c", b"topic->fanout", mandatory=True)
    ch.basic_publish("seed.headers", "", b"headers", props(headers={"kind": "x"}))
    try:
        ch.basic_publish("seed.topic", "nomatch", b"returned", mandatory=True)
    except pika.exceptions.UnroutableError:
        pass
    for _ in range(2):
        ch.basic_get(q, auto_ack=True)
    ch.exchange_unbind("seed.fanout", "seed.topic", routing_key="a.#")
    ch.close()
    c.close()


def transactions():
    c = connect()
    ch = c.channel()
    ch.queue_declare("seed.tx", auto_delete=False)
    ch.tx_select()
    ch.basic_publish("", "seed.tx", b"in tx 1")
    ch.basic_publish("", "seed.tx", b"in tx 2")
    ch.tx_commit()
    ch.basic_publish("", "seed.tx", b"rolled back")
    ch.tx_rollback()
    m = ch.basic_get("seed.tx")
    ch.basic_ack(m[0].delivery_tag)
    ch.tx_commit()
    ch.queue_delete("seed.tx")
    ch.close()
    c.close()


def dead_letters():
    c = connect()
    ch = c.channel()
    ch.exchange_declare("seed.dlx", "fanout", auto_delete=True)
    ch.queue_declare("seed.dlq", auto_delete=True)
    ch.queue_bind("seed.dlq", "seed.dlx")
    ch.queue_declare(
        "seed.ttl",
        arguments={
            "x-message-ttl": 50,
            "x-dead-letter-exchange": "seed.dlx",
            "x-dead-letter-routing-key": "dead",
            "x-max-priority": 5,
        },
    )
    ch.basic_publish("", "seed.ttl", b"expires", props(expiration="10", headers={"x": 1}))
    ch.basic_publish("", "seed.ttl", b"also expires", props(priority=4))
    time.sleep(0.3)
    m = ch.basic_get("seed.dlq")
    if m[0]:
        ch.basic_reject(m[0].delivery_tag, requeue=False)
    ch.queue_delete("seed.ttl")
    ch.close()
    c.close()


def reply_to_and_errors():
    c = connect()
    ch = c.channel()
    replies = []
    ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: replies.append(a), auto_ack=True)
    ch.queue_declare("seed.rpc", auto_delete=True)
    ch.basic_publish("", "seed.rpc", b"request", props(reply_to="amq.rabbitmq.reply-to"))
    m = ch.basic_get("seed.rpc", auto_ack=True)
    ch.basic_publish("", m[1].reply_to, b"reply")
    c.process_data_events(time_limit=0.2)
    # Channel errors: a passive declare of nothing, an inequivalent redeclare.
    ch2 = c.channel()
    try:
        ch2.queue_declare("seed.absent", passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        pass
    ch3 = c.channel()
    try:
        ch3.queue_declare("seed.rpc", auto_delete=False, durable=True)
    except pika.exceptions.ChannelClosedByBroker:
        pass
    ch.close()
    c.close()


def big_frames_and_heartbeats():
    # Small frame_max: a body in several frames; a short heartbeat, with heartbeats sent.
    c = connect(frame_max=4096, heartbeat=1)
    ch = c.channel()
    ch.queue_declare("seed.big", auto_delete=True)
    ch.basic_publish("", "seed.big", bytes(range(256)) * 40)
    c.sleep(2.5)
    m = ch.basic_get("seed.big", auto_ack=True)
    assert m[0] is not None and len(m[2]) == 10240
    ch.close()
    c.close()


def durable_state():
    # Left behind for the store seeds: durable topology, persistent messages, some
    # acked, some delivered but not acked (a delivery mark).
    c = connect()
    ch = c.channel()
    ch.exchange_declare("seed.durable.x", "topic", durable=True,
                        arguments={"alternate-exchange": "seed.durable.ae"})
    ch.exchange_declare("seed.durable.ae", "fanout", durable=True)
    ch.queue_declare("seed.durable.q", durable=True,
                     arguments={"x-max-length": 1000, "x-message-ttl": 3600000,
                                "x-dead-letter-exchange": "seed.durable.ae"})
    ch.queue_declare("seed.durable.qq", durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_declare("seed.durable.prio", durable=True, arguments={"x-max-priority": 10})
    ch.queue_bind("seed.durable.q", "seed.durable.x", routing_key="a.*")
    ch.queue_bind("seed.durable.qq", "seed.durable.ae")
    ch.queue_bind("seed.durable.prio", "seed.durable.x", routing_key="#",
                  arguments={"note": "binding args"})
    for i in range(6):
        ch.basic_publish("seed.durable.x", f"a.{i}", f"persistent {i}".encode(),
                         props(delivery_mode=2, priority=i, headers={"i": i},
                               expiration="3600000" if i % 2 else None))
    m = ch.basic_get("seed.durable.q")
    ch.basic_ack(m[0].delivery_tag)
    ch.basic_get("seed.durable.q")  # delivered, not acked: comes back redelivered
    ch.basic_get("seed.durable.prio", auto_ack=True)
    ch.close()
    c.close()


for session in (basics, routing_and_confirms, transactions, dead_letters,
                reply_to_and_errors, big_frames_and_heartbeats, durable_state):
    session()
    print("pika session done:", session.__name__, flush=True)
