"""A three-node warren cluster on loopback for the client suite: one etcd member, three
warren nodes (each its own ports and data dir), and HAProxy running
examples/haproxy.cfg in front of them. Faults are process kills; the network fault
tests (partitions) are the Rust harness's (tests/it/cluster/).

Not used with WARREN_TEST_AMQP_URL (a shared external broker is one node).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import brokerctl

REPO_ROOT = brokerctl.REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Cluster:
    def __init__(self, n: int = 3):
        for tool in ("etcd", "haproxy"):
            if not shutil.which(tool):
                raise RuntimeError("%s not found (tests/clients/install-deps.sh installs it)" % tool)
        self.dir = Path(tempfile.mkdtemp(prefix="warren-clients-cluster-"))
        self.name = "wcc-%d" % os.getpid()
        self.procs: dict = {}
        self.etcd_port = free_port()
        self.nodes = []
        for i in range(1, n + 1):
            self.nodes.append({
                "i": i,
                "name": "warren@c%d" % i,
                "amqp": free_port(),
                "management": free_port(),
                "replication": free_port(),
                "data": self.dir / ("data%d" % i),
            })
        self._start_etcd()
        for node in self.nodes:
            self.start(node["i"])
        self.haproxy_amqp = free_port()
        self.haproxy_management = free_port()
        self._start_haproxy()

    # -- processes ---------------------------------------------------------------

    def _spawn(self, key: str, args: list, log: str):
        out = open(self.dir / log, "ab")
        self.procs[key] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)

    def _start_etcd(self):
        peer = free_port()
        url = "http://127.0.0.1:%d" % self.etcd_port
        purl = "http://127.0.0.1:%d" % peer
        self._spawn("etcd", [
            "etcd", "--name", "e1", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
            "--initial-cluster", "e1=" + purl,
        ], "etcd.log")
        deadline = time.time() + 20
        while http_status(self.etcd_port, "/health") != 200:
            if time.time() > deadline:
                raise RuntimeError("etcd did not start; see %s" % (self.dir / "etcd.log"))
            time.sleep(0.1)

    def config(self, node: dict) -> Path:
        path = self.dir / ("node%d.toml" % node["i"])
        path.write_text("""data_dir = "{data}"
[amqp]
listen = "127.0.0.1:{amqp}"
[management]
listen = "127.0.0.1:{management}"
[metrics]
listen = ""
[log]
level = "info"
[cluster]
node_name = "{name}"
name = "{cluster}"
etcd_endpoints = ["http://127.0.0.1:{etcd}"]
replication_listen = "127.0.0.1:{replication}"
secret = "{cluster}-secret"
""".format(cluster=self.name, etcd=self.etcd_port, **node))
        return path

    def start(self, i: int):
        node = self.nodes[i - 1]
        self._spawn("n%d" % i, [brokerctl.warren_bin(), "-c", str(self.config(node))],
                    "node%d.log" % i)

    def kill(self, i: int):
        p = self.procs.pop("n%d" % i)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def _start_haproxy(self):
        cfg = (REPO_ROOT / "examples" / "haproxy.cfg").read_text()
        assert "bind :5672\n" in cfg and "bind :15672\n" in cfg
        cfg = cfg.replace("bind :5672\n", "bind 127.0.0.1:%d\n" % self.haproxy_amqp)
        cfg = cfg.replace("bind :15672\n", "bind 127.0.0.1:%d\n" % self.haproxy_management)
        for n in self.nodes:
            i = n["i"]
            cfg = cfg.replace("node%d:5672\n" % i,
                              "127.0.0.1:%d port %d\n" % (n["amqp"], n["management"]))
            cfg = cfg.replace("node%d:15672\n" % i,
                              "127.0.0.1:%d port %d\n" % (n["management"], n["management"]))
        path = self.dir / "haproxy.cfg"
        path.write_text(cfg)
        self._spawn("haproxy", ["haproxy", "-db", "-f", str(path)], "haproxy.log")

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- state ---------------------------------------------------------------------

    def leader(self) -> int | None:
        """The node whose is-leader check answers 200, if exactly one does."""
        leads = [n["i"] for n in self.nodes
                 if "n%d" % n["i"] in self.procs
                 and http_status(n["management"], "/api/health/checks/is-leader") == 200]
        return leads[0] if len(leads) == 1 else None

    def wait_leader(self, but: int | None = None, timeout: float = 30.0) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            leader = self.leader()
            if leader is not None and leader != but:
                return leader
            time.sleep(0.1)
        raise AssertionError("no leader within %ss; logs in %s" % (timeout, self.dir))

    def wait_in_sync(self, count: int = 3, timeout: float = 30.0):
        """Until the leader's /api/nodes shows `count` nodes in sync."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            leader = self.leader()
            if leader is not None:
                nodes = self.api(leader, "/api/nodes")
                if nodes and sum(1 for n in nodes if n.get("warren_in_sync")) >= count:
                    return
            time.sleep(0.2)
        raise AssertionError("fewer than %d nodes in sync after %ss" % (count, timeout))

    def api(self, i: int, path: str):
        port = self.nodes[i - 1]["management"]
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
        req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def url(self, i: int | None = None) -> str:
        port = self.haproxy_amqp if i is None else self.nodes[i - 1]["amqp"]
        return "amqp://guest:guest@127.0.0.1:%d/%%2f" % port

    def console_url(self, i: int) -> str:
        return "http://127.0.0.1:%d/" % self.nodes[i - 1]["management"]
