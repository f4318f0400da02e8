"""Celery app used by test_celery.py, for both the worker process and the client.

Configured from the environment so that the worker subprocess and the test agree:
  WCT_CELERY_BROKER  broker URL (pyamqp://...)
  WCT_CELERY_NS      unique namespace: default queue, control and event exchanges are
                     prefixed with it so parallel runs on a shared broker don't interfere.
"""
import os
import time

from celery import Celery

NS = os.environ.get("WCT_CELERY_NS", "wct")

app = Celery("wct_celery_app", broker=os.environ.get("WCT_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1//"),
             backend="rpc://")
app.conf.update(
    task_default_queue=NS + ".tasks",
    task_default_exchange=NS + ".tasks",
    task_default_routing_key=NS + ".tasks",
    control_exchange=NS + ".ctl",
    event_exchange=NS + ".ev",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_heartbeat=10,
    broker_connection_retry_on_startup=False,
    broker_connection_max_retries=1,
    worker_prefetch_multiplier=4,
    worker_send_task_events=True,  # exercise the event exchange (topic) too
    result_expires=60,
    task_acks_late=False,
)


@app.task(name="wct.add")
def add(x, y):
    return x + y


@app.task(name="wct.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="wct.fail")
def fail(msg):
    raise ValueError(msg)


@app.task(name="wct.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="wct.late_ack", acks_late=True)
def late_ack(x):
    return x * 2
