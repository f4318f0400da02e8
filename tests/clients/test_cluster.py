"""Real clients against a three-node warren cluster (tests/clients/clusterctl.py): pika
and the RabbitMQ Java client through HAProxy (examples/haproxy.cfg) while the leader is
killed with SIGKILL, reconnecting and going on, and nothing they had confirmed lost; and
the web console showing the members, their roles and sync state, live.
Skipped against an external broker (WARREN_TEST_AMQP_URL: one node)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pika
import pytest

import clusterctl
from test_console import driver  # noqa: F401 (the browser fixture)
from test_java_client import classpath

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.skipif(bool(os.environ.get("WARREN_TEST_AMQP_URL")),
                                reason="needs warren processes to kill")


@pytest.fixture(scope="module")
def cluster():
    c = clusterctl.Cluster()
    try:
        c.wait_leader()
        c.wait_in_sync(3)
        yield c
    finally:
        c.stop()


def _restore(cluster, killed):
    """Start the killed node again and wait until all three are in sync."""
    cluster.start(killed)
    cluster.wait_in_sync(3, timeout=60)


def _pika_connect(url, queue, deadline):
    while True:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=5"))
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(queue, durable=True)
            return conn, ch
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.25)


def test_pika_through_haproxy_survives_a_leader_kill(cluster, uniq):
    url, queue = cluster.url(), uniq("pika")
    deadline = time.time() + 90
    conn, ch = _pika_connect(url, queue, deadline)
    confirmed, reconnects = set(), 0

    def publish(ids):
        nonlocal conn, ch, reconnects
        for i in ids:
            body = ("m%d" % i).encode()
            try:
                ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2),
                                 mandatory=False)
                confirmed.add(body)
            except Exception:
                # Unknown outcome; reconnect through HAProxy and go on.
                reconnects += 1
                try:
                    conn.close()
                except Exception:
                    pass
                conn, ch = _pika_connect(url, queue, deadline)

    publish(range(0, 300))
    leader = cluster.wait_leader()
    cluster.kill(leader)
    killed_at = time.time()
    publish(range(300, 600))
    new = cluster.wait_leader(but=leader)
    took = time.time() - killed_at
    got = set()
    while True:
        try:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
        except Exception:
            conn, ch = _pika_connect(url, queue, deadline)
            continue
        if method is None:
            break
        got.add(body)
    conn.close()
    missing = confirmed - got
    print("pika via HAProxy: leader c%d killed, c%d leads; %d confirmed, %d consumed, %d reconnects, %.1fs"
          % (leader, new, len(confirmed), len(got), reconnects, took))
    assert reconnects >= 1, "the leader's kill did not disconnect the client"
    assert len(confirmed) > 300
    assert not missing, "confirmed but lost: %s" % sorted(missing)[:10]
    _restore(cluster, leader)


def test_java_client_through_haproxy_survives_a_leader_kill(cluster, uniq, tmp_path):
    for tool in ("javac", "java"):
        if not shutil.which(tool):
            pytest.fail("%s not found (a JDK is required)" % tool)
    cp = classpath()
    src = os.path.join(HERE, "java", "ClusterFailover.java")
    comp = subprocess.run(["javac", "-nowarn", "-d", str(tmp_path), "-cp", os.pathsep.join(cp), src],
                          capture_output=True, text=True, timeout=180)
    assert comp.returncode == 0, "javac failed:\n" + comp.stdout + comp.stderr
    proc = subprocess.Popen(
        ["java", "-cp", os.pathsep.join([str(tmp_path)] + cp), "ClusterFailover",
         cluster.url(), uniq("java"), "600"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.strip() == "READY":
            break
    assert lines and lines[-1] == "READY", "\n".join(lines)
    leader = cluster.wait_leader()
    cluster.kill(leader)
    proc.stdin.write("GO\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=180)
    lines += out.splitlines()
    text = "\n".join(lines)
    m = re.search(r"RESULT confirmed=(\d+) got=(\d+) missing=(\d+)", text)
    assert m, text
    print("java via HAProxy: " + m.group(0))
    assert "reconnecting after" in text, "the leader's kill did not disconnect the client:\n" + text
    assert int(m.group(1)) > 300, text
    assert m.group(3) == "0", "confirmed but lost:\n" + text
    _restore(cluster, leader)


def _warrenctl(cluster, i, *args):
    ctl = os.path.join(os.path.dirname(clusterctl.brokerctl.warren_bin()), "warrenctl")
    out = subprocess.run([ctl, "--data-dir", str(cluster.nodes[i - 1]["data"]), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, "warrenctl %s: %s%s" % (args, out.stdout, out.stderr)
    return out.stdout


def test_the_console_shows_the_members_their_roles_and_sync_live(cluster, driver):
    from test_console import login, wait, wait_text
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    leader = cluster.wait_leader()
    follower, other = [i for i in (1, 2, 3) if i != leader]
    # Through a follower's front door: the leader's console.
    login(driver, cluster.console_url(follower), "guest", "guest")
    wait(driver).until(EC.visibility_of_element_located((By.ID, "app")))
    cell = 'tr[data-testid="nodes-row"][data-name="warren@c%d"] td[data-field="%s"]'
    wait_text(driver, cell % (leader, "warren_role"), "leader")
    for i in (follower, other):
        wait_text(driver, cell % (i, "warren_role"), "follower")
        wait_text(driver, cell % (i, "warren_in_sync"), "yes")
        wait_text(driver, cell % (i, "running"), "yes")
    # Live: a follower's app stopped shows as such on the next refresh, and back.
    _warrenctl(cluster, other, "stop_app")
    wait_text(driver, cell % (other, "warren_role"), "stopped", timeout=30)
    wait_text(driver, cell % (other, "running"), "no")
    wait_text(driver, cell % (other, "warren_in_sync"), "no", timeout=30)
    _warrenctl(cluster, other, "start_app")
    wait_text(driver, cell % (other, "warren_in_sync"), "yes", timeout=30)
    wait_text(driver, cell % (other, "warren_role"), "follower")
