"""oslo.messaging (rabbit:// driver, kombu underneath): RPC and notifications.

Heartbeats stay on (oslo's default heartbeat_timeout_threshold = 60 s), threading executor.
"""
from __future__ import annotations

import threading
import time
import uuid

import pytest

oslo_messaging = pytest.importorskip("oslo_messaging")
from oslo_config import cfg  # noqa: E402


@pytest.fixture(scope="module")
def ns():
    return "wct-oslo-%s" % uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def conf(ns):
    oslo_messaging.set_transport_defaults(control_exchange=ns)
    # oslo.messaging registers some options (tracing) on the global cfg.CONF only,
    # so use it the way real services do.
    c = cfg.CONF
    c([], project="wct")
    # Reply and fanout queues carry x-expires = rabbit_transient_queues_ttl (default 1800 s);
    # use 60 s so leftovers on a shared broker go away soon. Everything else stays default
    # (heartbeat_timeout_threshold=60, heartbeat_rate=3, direct_mandatory_flag=True, ...).
    from oslo_messaging._drivers import impl_rabbit
    c.register_opts(impl_rabbit.rabbit_opts, group="oslo_messaging_rabbit")
    c.set_override("rabbit_transient_queues_ttl", 60, group="oslo_messaging_rabbit")
    return c


@pytest.fixture(scope="module")
def transport_url(broker):
    return "rabbit://%s:%s@%s:%d/" % (broker.user, broker.password, broker.host, broker.port)


@pytest.fixture(scope="module", autouse=True)
def _final_cleanup(transport_url, ns):
    yield
    _cleanup_oslo(transport_url, ns, exchanges=[ns])  # the control exchange (topic)


@pytest.fixture(scope="module")
def transport(conf, transport_url):
    t = oslo_messaging.get_rpc_transport(conf, url=transport_url)
    yield t
    reply_q = getattr(getattr(t, "_driver", None), "_reply_q", None)
    t.cleanup()
    if reply_q:
        _cleanup_oslo(transport_url, None, queues=[reply_q])


class Endpoint:
    def __init__(self, name):
        self.name = name
        self.casts = []
        self.event = threading.Event()

    def add(self, ctxt, a, b):
        return a + b

    def whoami(self, ctxt):
        return self.name

    def echo(self, ctxt, payload):
        return {"server": self.name, "payload": payload, "ctxt_user": ctxt.get("user")}

    def record(self, ctxt, value):
        self.casts.append(value)
        self.event.set()

    def boom(self, ctxt):
        raise ValueError("endpoint failure")


class OtherEndpoint:
    target = oslo_messaging.Target(namespace="other", version="2.0")

    def ping(self, ctxt):
        return "pong-from-other"


@pytest.fixture(scope="module")
def rpc(transport, ns, transport_url):
    topic = ns + "-topic"
    servers, endpoints = [], {}
    for name in ("s1", "s2"):
        ep = Endpoint(name)
        endpoints[name] = ep
        target = oslo_messaging.Target(topic=topic, server=name)
        srv = oslo_messaging.get_rpc_server(transport, target, [ep, OtherEndpoint()], executor="threading")
        srv.start()
        servers.append(srv)
    time.sleep(0.5)  # let both servers declare and start consuming
    yield {"topic": topic, "endpoints": endpoints}
    for srv in servers:
        srv.stop()
    for srv in servers:
        srv.wait()
    # the topic queues are neither exclusive nor auto-delete: remove them (shared broker)
    _cleanup_oslo(transport_url, ns, queues=[topic, topic + ".s1", topic + ".s2", ns + "-nobody"],
                  exchanges=[topic + "_fanout"])


def client(transport, topic, **kw):
    kw.setdefault("timeout", 10)
    return oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=topic), **kw)


def test_rpc_call_with_reply(transport, rpc):
    c = client(transport, rpc["topic"])
    assert c.call({"user": "alice"}, "add", a=2, b=40) == 42
    r = c.call({"user": "alice"}, "echo", payload={"list": [1, 2], "s": "ünïcode"})
    assert r["payload"] == {"list": [1, 2], "s": "ünïcode"} and r["ctxt_user"] == "alice"
    # calls on the shared topic queue are spread over the servers (round robin)
    who = {c.call({}, "whoami") for _ in range(8)}
    assert who == {"s1", "s2"}


def test_rpc_call_remote_exception(transport, rpc):
    c = client(transport, rpc["topic"])
    with pytest.raises(Exception) as ei:
        c.call({}, "boom")
    assert "endpoint failure" in str(ei.value)
    with pytest.raises(oslo_messaging.RemoteError) as ei:
        c.prepare(version="9.0").call({}, "add", a=1, b=1)
    assert ei.value.exc_type == "UnsupportedVersion"


def test_rpc_namespaced_endpoint(transport, rpc):
    c = client(transport, rpc["topic"]).prepare(namespace="other", version="2.0")
    assert c.call({}, "ping") == "pong-from-other"


def test_rpc_server_targeted_call(transport, rpc):
    c = client(transport, rpc["topic"])
    for name in ("s1", "s2", "s2", "s1"):
        assert c.prepare(server=name).call({}, "whoami") == name


def test_rpc_cast(transport, rpc):
    eps = rpc["endpoints"]
    for ep in eps.values():
        ep.event.clear()
    token = uuid.uuid4().hex
    client(transport, rpc["topic"]).prepare(server="s2").cast({}, "record", value=token)
    assert eps["s2"].event.wait(10)
    assert token in eps["s2"].casts and token not in eps["s1"].casts


def test_rpc_fanout_cast_reaches_every_server(transport, rpc):
    token = uuid.uuid4().hex
    client(transport, rpc["topic"]).prepare(fanout=True).cast({}, "record", value=token)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(token in ep.casts for ep in rpc["endpoints"].values()):
        time.sleep(0.05)
    for name, ep in rpc["endpoints"].items():
        assert ep.casts.count(token) == 1, name


def test_rpc_call_times_out_without_server(transport, ns):
    c = client(transport, ns + "-nobody", timeout=2)
    t0 = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        c.call({}, "add", a=1, b=2)
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 8, elapsed


def test_rpc_call_to_missing_server_times_out(transport, rpc):
    c = client(transport, rpc["topic"], timeout=2)
    with pytest.raises(oslo_messaging.MessagingTimeout):
        c.prepare(server="no-such-server").call({}, "whoami")
    # the transport remains usable afterwards
    assert client(transport, rpc["topic"]).call({}, "add", a=1, b=1) == 2


class NotificationEndpoint:
    def __init__(self):
        self.received = []
        self.event = threading.Event()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.received.append(("info", publisher_id, event_type, payload))
        self.event.set()

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self.received.append(("error", publisher_id, event_type, payload))
        self.event.set()


def test_notifier_and_notification_listener(conf, transport_url, ns):
    ntransport = oslo_messaging.get_notification_transport(conf, url=transport_url)
    topic = ns + "-notifications"
    ep = NotificationEndpoint()
    listener = oslo_messaging.get_notification_listener(
        ntransport, [oslo_messaging.Target(topic=topic)], [ep], executor="threading")
    listener.start()
    try:
        notifier = oslo_messaging.Notifier(ntransport, publisher_id="compute.host1",
                                           driver="messaging", topics=[topic])
        notifier.info({"user": "bob"}, "compute.instance.create.end", {"id": 1})
        notifier.error({}, "compute.instance.delete.error", {"id": 2, "why": "x"})
        deadline = time.monotonic() + 10
        while len(ep.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(ep.received) == sorted([
            ("info", "compute.host1", "compute.instance.create.end", {"id": 1}),
            ("error", "compute.host1", "compute.instance.delete.error", {"id": 2, "why": "x"}),
        ])
    finally:
        listener.stop()
        listener.wait()
        ntransport.cleanup()
        _cleanup_oslo(transport_url, ns, queues=[topic + ".info", topic + ".error"])


def _cleanup_oslo(transport_url, ns, queues=(), exchanges=()):
    from kombu import Connection
    with Connection(transport_url.replace("rabbit://", "pyamqp://", 1)) as c:
        ch = c.channel()
        for q in queues:
            try:
                ch.queue_delete(q)
            except Exception:
                ch = c.channel()
        for ex in exchanges:
            try:
                ch.exchange_delete(ex)
            except Exception:
                ch = c.channel()
