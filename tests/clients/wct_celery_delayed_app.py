"""Celery app for test_celery_delayed.py: a quorum task queue on a topic exchange, which
makes Celery (>= 5.5) use kombu's native delayed delivery for countdown/ETA tasks.

Configured from the environment like wct_celery_app (WCT_CELERY_BROKER, WCT_CELERY_NS).
"""
import os
import time

from celery import Celery
from kombu import Exchange, Queue

NS = os.environ.get("WCT_CELERY_NS", "wct")

app = Celery("wct_celery_delayed_app",
             broker=os.environ.get("WCT_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1//"),
             backend="rpc://")
_exchange = Exchange(NS + ".dtasks", type="topic")
app.conf.update(
    # A quorum queue is what switches Celery to native delayed delivery; delayed
    # delivery needs a non-direct exchange.
    task_queues=[Queue(NS + ".dtasks", _exchange, routing_key=NS + ".dtasks",
                       queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=NS + ".dtasks",
    task_default_exchange=NS + ".dtasks",
    task_default_exchange_type="topic",
    task_default_routing_key=NS + ".dtasks",
    broker_transport_options={"confirm_publish": True},
    control_exchange=NS + ".dctl",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_heartbeat=10,
    broker_connection_retry_on_startup=False,
    broker_connection_max_retries=1,
    result_expires=60,
)


@app.task(name="wct.stamp")
def stamp(tag):
    """Returns when it ran, so the test can check the delay without trusting the client."""
    return {"tag": tag, "ran_at": time.time()}
