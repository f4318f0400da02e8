"""Celery's native delayed delivery (Celery >= 5.5, kombu.transport.native_delayed_delivery).

With a quorum task queue, a worker declares 28 levels of delay queues (`celery_delayed_N`:
x-message-ttl 2^N s, x-overflow reject-publish, each dead-lettering into the next level's
topic exchange) chained by exchange-to-exchange topic bindings, ending in the
`celery_delayed_delivery` exchange, to which it binds the task exchange. A countdown task
is published to `celery_delayed_27` with the delay's bits in the routing key, and must
reach the worker after the countdown, no earlier and not much later.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def celery_env(broker):
    ns = "wct.celeryd.%s" % uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update({
        "WCT_CELERY_BROKER": broker.url.replace("amqp://", "pyamqp://", 1),
        "WCT_CELERY_NS": ns,
        "PYTHONPATH": HERE + os.pathsep + env.get("PYTHONPATH", ""),
    })
    return env


@pytest.fixture(scope="module")
def app(celery_env):
    old = {k: os.environ.get(k) for k in ("WCT_CELERY_BROKER", "WCT_CELERY_NS")}
    os.environ["WCT_CELERY_BROKER"] = celery_env["WCT_CELERY_BROKER"]
    os.environ["WCT_CELERY_NS"] = celery_env["WCT_CELERY_NS"]
    sys.modules.pop("wct_celery_delayed_app", None)
    import wct_celery_delayed_app
    yield wct_celery_delayed_app
    wct_celery_delayed_app.app.close()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _delayed_delivery_ready(app, ns) -> bool:
    """The worker's DelayedDelivery step ran: the levels exist and the delivery exchange too."""
    with app.app.connection_for_write() as conn:
        ch = conn.channel()
        try:
            ch.queue_declare("celery_delayed_0", passive=True)
            ch.queue_declare("celery_delayed_27", passive=True)
            ch.exchange_declare("celery_delayed_delivery", "topic", passive=True)
            return True
        except Exception:
            return False


def _wait_count(app, queue, n, within) -> bool:
    deadline = time.monotonic() + within
    with app.app.connection_for_write() as conn:
        ch = conn.channel()
        while time.monotonic() < deadline:
            _, count, _ = ch.queue_declare(queue, passive=True)
            if count == n:
                return True
            time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def worker(app, celery_env, tmp_path_factory):
    ns = celery_env["WCT_CELERY_NS"]
    nodename = "%s@wct" % ns.replace(".", "-")
    log = tmp_path_factory.mktemp("celeryd") / "worker.log"
    logf = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "wct_celery_delayed_app", "worker", "-n", nodename,
         "-P", "threads", "-c", "2", "-l", "debug"],
        cwd=HERE, env=celery_env, stdout=logf, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 45
        while True:
            if proc.poll() is not None:
                pytest.fail("celery worker exited (%s):\n%s" % (proc.returncode, log.read_text()[-4000:]))
            if app.app.control.ping(destination=[nodename], timeout=0.5) and \
                    _delayed_delivery_ready(app, ns) and \
                    "Binding queue" in log.read_text():
                break
            if time.monotonic() > deadline:
                pytest.fail("celery worker not ready for delayed delivery:\n" + log.read_text()[-4000:])
        yield {"proc": proc, "nodename": nodename, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logf.close()
        with app.app.connection_for_write() as conn:
            ch = conn.channel()
            for q in (ns + ".dtasks",):
                try:
                    ch.queue_delete(q)
                except Exception:
                    ch = conn.channel()


def test_worker_declared_the_delay_levels_with_kombus_arguments(app, worker):
    """Redeclaring a level with kombu's arguments is accepted (equivalent)."""
    with app.app.connection_for_write() as conn:
        ch = conn.channel()
        _, count, _ = ch.queue_declare(
            "celery_delayed_3", durable=True, auto_delete=False,
            arguments={"x-queue-type": "quorum", "x-overflow": "reject-publish",
                       "x-message-ttl": 8000, "x-dead-letter-exchange": "celery_delayed_2",
                       "x-dead-letter-strategy": "at-least-once"})
        assert count == 0


def test_countdown_task_runs_after_its_delay_through_the_delay_queues(app, worker):
    t0 = time.time()
    r = app.stamp.apply_async(("three",), countdown=3)
    # The native route, not the worker holding an ETA task: the message waits in the
    # delay queue of its highest set bit (2 s in celery_delayed_1).
    assert _wait_count(app, "celery_delayed_1", 1, within=1.5), \
        "the countdown task did not go through celery_delayed_1"
    out = r.get(timeout=30)
    assert out["tag"] == "three"
    waited = out["ran_at"] - t0
    # countdown 3 = bits 1 and 0: 2 s in celery_delayed_1, then 1 s in celery_delayed_0.
    assert waited >= 2.9, "ran after %.2f s, before its countdown" % waited
    assert waited < 6.0, "ran after %.2f s, long after its countdown" % waited


def test_eta_tasks_with_different_delays_run_in_delay_order(app, worker):
    t0 = time.time()
    late = app.stamp.apply_async(("late",), countdown=4)
    early = app.stamp.apply_async(("early",), countdown=1)
    e = early.get(timeout=30)
    l = late.get(timeout=30)
    assert 0.9 <= e["ran_at"] - t0 < 4.0
    assert 3.9 <= l["ran_at"] - t0 < 7.0
    assert e["ran_at"] < l["ran_at"]
