"""Celery: a real worker process executing tasks, results over rpc://, remote control."""
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
    ns = "wct.celery.%s" % uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update({
        "WCT_CELERY_BROKER": broker.url.replace("amqp://", "pyamqp://", 1),
        "WCT_CELERY_NS": ns,
        "PYTHONPATH": HERE + os.pathsep + env.get("PYTHONPATH", ""),
    })
    return env


@pytest.fixture(scope="module")
def app(celery_env):
    # configure the in-process client app the same way the worker is configured
    old = {k: os.environ.get(k) for k in ("WCT_CELERY_BROKER", "WCT_CELERY_NS")}
    os.environ["WCT_CELERY_BROKER"] = celery_env["WCT_CELERY_BROKER"]
    os.environ["WCT_CELERY_NS"] = celery_env["WCT_CELERY_NS"]
    sys.modules.pop("wct_celery_app", None)
    import wct_celery_app
    yield wct_celery_app
    wct_celery_app.app.close()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def worker(app, celery_env, tmp_path_factory):
    ns = celery_env["WCT_CELERY_NS"]
    nodename = "%s@wct" % ns.replace(".", "-")
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    logf = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "wct_celery_app", "worker", "-n", nodename,
         "-P", "threads", "-c", "2", "-l", "info"],
        cwd=HERE, env=celery_env, stdout=logf, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 45
        while True:
            if proc.poll() is not None:
                pytest.fail("celery worker exited (%s):\n%s" % (proc.returncode, log.read_text()[-4000:]))
            replies = app.app.control.ping(destination=[nodename], timeout=0.5)
            if replies:
                break
            if time.monotonic() > deadline:
                pytest.fail("celery worker not answering ping:\n" + log.read_text()[-4000:])
        yield {"proc": proc, "nodename": nodename, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logf.close()
        _cleanup(app, ns)


def _cleanup(app, ns):
    """Delete the durable entities Celery declared (broker may be shared)."""
    with app.app.connection_for_write() as conn:
        ch = conn.channel()
        for q in (ns + ".tasks",):
            try:
                ch.queue_delete(q)
            except Exception:
                ch = conn.channel()
        for ex in (ns + ".tasks", ns + ".ctl.pidbox", "reply." + ns + ".ctl.pidbox", ns + ".ev"):
            try:
                ch.exchange_delete(ex)
            except Exception:
                ch = conn.channel()


def test_worker_executes_task_result_via_rpc_backend(app, worker):
    r = app.add.delay(2, 3)
    assert r.get(timeout=15) == 5
    assert r.state == "SUCCESS"


def test_task_args_kwargs_roundtrip(app, worker):
    r = app.echo.apply_async(args=(1, "two", [3]), kwargs={"k": "välue", "n": None})
    assert r.get(timeout=15) == {"args": [1, "two", [3]], "kwargs": {"k": "välue", "n": None}}


def test_many_tasks_group(app, worker):
    from celery import group
    res = group(app.add.s(i, i) for i in range(25))()
    assert res.get(timeout=30) == [2 * i for i in range(25)]


def test_failing_task_propagates_exception(app, worker):
    r = app.fail.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        r.get(timeout=15)
    assert r.state == "FAILURE"


def test_acks_late_task_and_countdown(app, worker):
    assert app.late_ack.delay(21).get(timeout=15) == 42
    t0 = time.monotonic()
    assert app.add.apply_async((1, 1), countdown=1).get(timeout=15) == 2
    assert time.monotonic() - t0 >= 0.9


def test_control_ping_pidbox(app, worker):
    replies = app.app.control.ping(destination=[worker["nodename"]], timeout=2)
    assert replies == [{worker["nodename"]: {"ok": "pong"}}]


def test_inspect_active_queues_and_stats(app, worker):
    i = app.app.control.inspect(destination=[worker["nodename"]], timeout=3)
    aq = i.active_queues()
    assert aq and worker["nodename"] in aq
    names = [q["name"] for q in aq[worker["nodename"]]]
    assert app.app.conf.task_default_queue in names
    stats = i.stats()[worker["nodename"]]
    assert stats["broker"]["transport"] == "amqp"
    assert stats["prefetch_count"] == 8  # concurrency 2 * multiplier 4


def test_celery_inspect_ping_cli(app, worker, celery_env):
    """`celery inspect ping`: pidbox fanout exchange + direct reply exchange + exclusive expiring reply queue."""
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "wct_celery_app", "inspect", "ping",
         "-d", worker["nodename"], "-t", "5"],
        cwd=HERE, env=celery_env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pong" in out.stdout
    assert "1 node online" in out.stdout


def test_qos_global_decision_matches_rabbitmq(app, worker):
    """Celery applies basic.qos(global=True) iff kombu says qos semantics don't match the spec.
    Against RabbitMQ 3.10 kombu says False -> the worker uses global QoS."""
    with app.app.connection_for_write() as conn:
        conn.connect()
        assert conn.qos_semantics_matches_spec is False
    assert "Global QoS is disabled" not in worker["log"].read_text()
