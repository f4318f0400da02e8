"""Broker-under-test handling shared by the pytest fixtures.

Contract:
  * WARREN_TEST_AMQP_URL set  -> use that (shared) broker, e.g. the reference
    RabbitMQ at amqp://guest:guest@127.0.0.1:5682/%2f.  Tests must use unique
    names and clean up.
  * otherwise start a fresh warren per test module:
        $WARREN_BIN --amqp-listen 127.0.0.1:0 --data-dir <tmp>
    and wait (<= 10 s) for the single stdout line
        warren ready amqp=127.0.0.1:<PORT>
    (followed by " amqps=127.0.0.1:<PORT>" when TLS is configured)
    then SIGTERM (then SIGKILL) it when the module is done.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# lines shown in pytest's terminal summary (see conftest.pytest_terminal_summary)
REPORT_LINES: list = []

MANAGEMENT_RE = re.compile(r"^warren listening management=(\S+)\s*$")
READY_RE = re.compile(r"^warren ready amqp=([0-9.]+|\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d+)(?: amqps=(\S+):(\d+))?\s*$")


@dataclass
class Broker:
    host: str
    port: int
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    shared: bool = False  # True when pointing at an externally managed broker
    proc: subprocess.Popen | None = field(default=None, repr=False)
    data_dir: str | None = field(default=None, repr=False)
    tls_port: int | None = None  # the amqps listener, when started with [tls] settings
    # The management HTTP API (host:port) of a spawned warren; None for a shared broker.
    management: str | None = None

    @property
    def url(self) -> str:
        """amqp URL with the vhost percent-encoded (/ -> %2f)."""
        return "amqp://%s:%s@%s:%d/%s" % (
            urllib.parse.quote(self.user, safe=""),
            urllib.parse.quote(self.password, safe=""),
            self.host,
            self.port,
            urllib.parse.quote(self.vhost, safe=""),
        )

    @property
    def url_default_vhost(self) -> str:
        """amqp URL without a vhost path (clients then use '/')."""
        return "amqp://%s:%s@%s:%d/" % (self.user, self.password, self.host, self.port)

    def env(self) -> dict:
        """Environment handed to non-Python parts (Java, Go, amqp-tools)."""
        return {
            "AMQP_URL": self.url,
            "AMQP_HOST": self.host,
            "AMQP_PORT": str(self.port),
            "AMQP_USER": self.user,
            "AMQP_PASSWORD": self.password,
            "AMQP_VHOST": self.vhost,
        }


def parse_url(url: str) -> Broker:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("amqp",):
        raise ValueError("only amqp:// URLs are supported: %r" % url)
    path = u.path[1:] if u.path.startswith("/") else u.path
    vhost = urllib.parse.unquote(path) if path else "/"
    return Broker(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5672,
        user=urllib.parse.unquote(u.username or "guest"),
        password=urllib.parse.unquote(u.password or "guest"),
        vhost=vhost,
        shared=True,
    )


def warren_bin() -> str:
    env = os.environ.get("WARREN_BIN")
    if env:
        return env
    for flavour in ("release", "debug"):
        p = REPO_ROOT / "target" / flavour / "warren"
        if p.exists():
            return str(p)
    raise FileNotFoundError(
        "no warren binary: set WARREN_BIN, build target/{release,debug}/warren, "
        "or set WARREN_TEST_AMQP_URL to test an external broker"
    )


def start_warren(timeout: float = 10.0, extra_args: tuple = ()) -> Broker:
    binary = warren_bin()
    root = tempfile.mkdtemp(prefix="warren-clients-")
    data_dir = os.path.join(root, "data")
    os.mkdir(data_dir)
    log_path = os.path.join(root, "warren.stderr.log")
    stderr = open(log_path, "wb")
    proc = subprocess.Popen(
        [binary, "--amqp-listen", "127.0.0.1:0", "--data-dir", data_dir, *extra_args],
        # Several brokers may run at once: pick the Prometheus port too.
        env={
            **os.environ,
            "WARREN_METRICS_LISTEN": "127.0.0.1:0",
            "WARREN_MANAGEMENT_LISTEN": "127.0.0.1:0",
        },
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
    )
    stderr.close()
    found: dict = {}
    ev = threading.Event()

    def reader():
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            mg = MANAGEMENT_RE.match(line.strip())
            if mg:
                found["management"] = mg.group(1)
            m = READY_RE.match(line.strip())
            if m and not ev.is_set():
                found["host"] = m.group(1).strip("[]")
                found["port"] = int(m.group(2))
                if m.group(4):
                    found["tls_port"] = int(m.group(4))
                ev.set()
        ev.set()  # EOF: process ended

    threading.Thread(target=reader, daemon=True, name="warren-stdout").start()
    if not ev.wait(timeout) or "port" not in found:
        proc.kill()
        proc.wait()
        try:
            tail = Path(log_path).read_text(errors="replace")[-4000:]
        except OSError:
            tail = ""
        shutil.rmtree(data_dir, ignore_errors=True)  # keep the log next to it
        raise RuntimeError(
            "warren (%s) did not print 'warren ready amqp=...' within %.0fs "
            "(exit code %r); stderr tail:\n%s" % (binary, timeout, proc.poll(), tail)
        )
    return Broker(
        host=found["host"],
        port=found["port"],
        proc=proc,
        data_dir=root,
        tls_port=found.get("tls_port"),
        management=found.get("management"),
    )


def stop_warren(b: Broker) -> None:
    """SIGTERM (then SIGKILL after 5 s). The temp dir (data + stderr log) is removed unless
    warren had died on its own or WARREN_KEEP_LOGS is set; then its path is printed."""
    if b.proc is None:
        return
    died = b.proc.poll() is not None
    if not died:
        b.proc.send_signal(signal.SIGTERM)
        try:
            b.proc.wait(5)
        except subprocess.TimeoutExpired:
            b.proc.kill()
            b.proc.wait()
    if b.data_dir:
        if died or os.environ.get("WARREN_KEEP_LOGS"):
            print("warren (exit %r) data dir and stderr log kept in %s" % (b.proc.returncode, b.data_dir))
        else:
            shutil.rmtree(b.data_dir, ignore_errors=True)


def acquire_broker() -> Broker:
    url = os.environ.get("WARREN_TEST_AMQP_URL")
    if url:
        return parse_url(url)
    return start_warren()


def release_broker(b: Broker) -> None:
    if not b.shared:
        stop_warren(b)


def unique(prefix: str) -> str:
    return "wct.%s.%s" % (prefix, uuid.uuid4().hex[:10])


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
