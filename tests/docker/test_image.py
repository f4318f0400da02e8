#!/usr/bin/env python3
"""The Docker image, run the way users run it (tests/docker/run.sh builds it first).

    tests/docker/test_image.py IMAGE

Runs IMAGE with RABBITMQ_DEFAULT_USER/PASS, a WARREN_* variable, --memory 256m, a fixed
--hostname and a named volume, and checks through the published ports: pika publishes
(with confirms) and consumes; the management API answers and shows the node name and the
cgroup's memory watermark; the health status turns healthy; the logs are on
stdout/stderr; `docker stop` closes a connected client with 320 CONNECTION_FORCED and
the container exits 0; a new container on the same volume, with a mounted
/etc/warren/warren.toml, has the durable queue with every confirmed message and the same
node name. Then guest from the host: refused with WARREN_DEFAULTS_LOOPBACK_USERS=guest,
and accepted by examples/docker-compose.yml (the image's default), which is brought up,
used and stopped. Then examples/docker-compose-cluster.yml: three warren nodes and a
three-member etcd (an etcd image made from this host's etcd binary); pika publishes with
confirms through a follower's published port, the leader's container is killed
(`docker kill`), pika reconnects to a surviving node and goes on, and every confirmed
message is consumed. Every container, volume and compose project has a name unique to
this run and is removed at the end, pass or fail.
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pika

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "warren:test"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = f"warren-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
MIB = 1024 * 1024
USER, PASSWORD = "tester", uuid.uuid4().hex
HOSTNAME = "warren-docker-test"
QUEUE = "docker-test-durable"
N_MESSAGES = 500

containers: list[str] = []
volumes: list[str] = []
compose_projects: list[tuple[str, str]] = []  # (project, compose file)
tmpdir = tempfile.mkdtemp(prefix="warren-docker-test-")


def sh(*args, check=True, env=None, timeout=120):
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def docker(*args, **kw):
    return sh("docker", *args, **kw)


def ok(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"  ok   {what}", flush=True)


def inspect(name, fmt):
    return docker("inspect", "-f", fmt, name).stdout.strip()


def host_port(container, port):
    # "127.0.0.1:49153"
    out = docker("port", container, f"{port}/tcp").stdout.strip().splitlines()[0]
    return int(out.rsplit(":", 1)[1])


def wait_amqp(port, timeout=60.0):
    """Until the broker answers the protocol header with Connection.Start (a frame of
    type 1 on channel 0). The TCP connect alone proves nothing: docker-proxy accepts on
    the published port before anything listens in the container."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(1)
                s.sendall(b"AMQP\x00\x00\x09\x01")
                head = s.recv(7)
                if len(head) == 7 and head[0] == 1 and head[1:3] == b"\x00\x00":
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"no AMQP Connection.Start on port {port} within {timeout} s")


def wait_healthy(container, timeout=60.0):
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = inspect(container, "{{.State.Health.Status}}")
        if status == "healthy":
            return
        if status == "unhealthy":
            break
        time.sleep(0.25)
    raise AssertionError(f"{container}: health status {status!r}, not healthy")


def api(port, path, user=USER, password=PASSWORD):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


def connect(port, user=USER, password=PASSWORD):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            port,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
            socket_timeout=5,
            blocked_connection_timeout=10,
        )
    )


def guest_login(port):
    """"accepted", or "refused" when the broker refuses the login (any other failure
    raises: a broker that cannot be reached has not refused anything)."""
    try:
        connect(port, "guest", "guest").close()
        return "accepted"
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError):
        return "refused"


def run_container(name, *args):
    containers.append(name)
    t0 = time.monotonic()
    docker(
        "run", "-d", "--name", name,
        "-p", "127.0.0.1::5672", "-p", "127.0.0.1::15672",
        *args, IMAGE,
    )
    amqp = host_port(name, 5672)
    wait_amqp(amqp)
    return amqp, host_port(name, 15672), time.monotonic() - t0


def logs(container):
    r = docker("logs", container)
    return r.stdout, r.stderr


def test_image_metadata():
    print("image metadata", flush=True)
    cfg = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", IMAGE).stdout)
    ok(cfg["User"] == "warren", f"runs as the non-root user warren (User={cfg['User']!r})")
    ok(
        set(cfg["ExposedPorts"]) == {"5672/tcp", "5671/tcp", "15672/tcp", "15692/tcp"},
        f"exposes 5672 5671 15672 15692 ({sorted(cfg['ExposedPorts'])})",
    )
    ok(list(cfg["Volumes"]) == ["/var/lib/warren"], f"VOLUME /var/lib/warren ({cfg['Volumes']})")
    ok(cfg["Healthcheck"]["Test"][1] == "warrenctl", f"HEALTHCHECK {cfg['Healthcheck']['Test']}")


def test_run_stop_restart():
    volume = f"{RUN}-data"
    volumes.append(volume)
    docker("volume", "create", volume)
    common = [
        "--hostname", HOSTNAME, "--memory", "256m",
        "-e", f"RABBITMQ_DEFAULT_USER={USER}", "-e", f"RABBITMQ_DEFAULT_PASS={PASSWORD}",
        "-v", f"{volume}:/var/lib/warren",
    ]

    print(f"docker run {IMAGE} (named volume, --memory 256m, WARREN_ALARMS_MEMORY_HIGH_WATERMARK=0.4)", flush=True)
    c1 = f"{RUN}-1"
    amqp, http, startup = run_container(c1, *common, "-e", "WARREN_ALARMS_MEMORY_HIGH_WATERMARK=0.4")
    print(f"  --   start-up: docker run to AMQP Connection.Start on the published port: {startup:.2f} s", flush=True)
    ok(docker("exec", c1, "id", "-u").stdout.strip() == "999", "the broker's user in the container is uid 999, not root")
    ok(docker("exec", c1, "cat", "/proc/1/comm").stdout.strip() == "warren", "warren is PID 1")

    conn = connect(amqp)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(QUEUE, durable=True)
    for i in range(N_MESSAGES):
        # With confirms on, basic_publish returns once the broker has confirmed it.
        ch.basic_publish("", QUEUE, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2), mandatory=True)
    ok(True, f"pika: {N_MESSAGES} persistent messages published to durable {QUEUE}, each confirmed")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"round trip")
    body = None
    for _method, _props, b in ch.consume(q, auto_ack=True, inactivity_timeout=5):
        body = b
        break
    ch.cancel()
    ok(body == b"round trip", f"pika: a message published through the published port comes back ({body!r})")

    status, overview = api(http, "/api/overview")
    ok(status == 200 and overview.get("node") == f"warren@{HOSTNAME}",
       f"management API /api/overview answers {status}, node {overview.get('node')!r}")
    _, nodes = api(http, "/api/nodes")
    want = int(256 * MIB * 0.4)
    ok(nodes[0]["mem_limit"] == want,
       f"/api/nodes mem_limit {nodes[0]['mem_limit']} = 256 MiB (--memory) x 0.4 (WARREN_ALARMS_MEMORY_HIGH_WATERMARK) = {want}")
    _, queue = api(http, f"/api/queues/%2F/{QUEUE}")
    ok(queue["messages"] == N_MESSAGES and queue["durable"], f"/api/queues: {QUEUE} durable with {queue['messages']} messages")
    ok(guest_login(amqp) == "refused", "with RABBITMQ_DEFAULT_USER set there is no guest user (guest/guest refused)")

    t0 = time.monotonic()
    wait_healthy(c1)
    ok(True, f"health status healthy ({time.monotonic() - t0 + startup:.1f} s after docker run)")

    print("docker stop with a client connected", flush=True)
    t0 = time.monotonic()
    stop = subprocess.Popen(["docker", "stop", c1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reply = None
    try:
        while time.monotonic() - t0 < 30:
            conn.process_data_events(time_limit=0.2)
    except pika.exceptions.ConnectionClosedByBroker as e:
        reply = (e.reply_code, e.reply_text)
    ok(stop.wait(60) == 0, f"docker stop {c1} succeeded")
    took = time.monotonic() - t0
    ok(reply is not None and reply[0] == 320, f"the client saw connection.close {reply} (320 CONNECTION_FORCED)")
    code = inspect(c1, "{{.State.ExitCode}}")
    ok(code == "0", f"the container exited with code {code} after {took:.2f} s (not killed at the 10 s timeout)")
    out, err = logs(c1)
    ok("warren ready amqp=0.0.0.0:5672" in out, "stdout has the ready line (docker logs)")
    ok("warren started" in err and "shutting down" in err and "INFO warren: stopped" in err,
       "stderr has the log: started, shutting down, stopped")
    ok("command=await_startup" not in err, "the health check's probes do not fill the log")

    print("a new container on the same volume, with /etc/warren/warren.toml mounted", flush=True)
    conf = os.path.join(tmpdir, "warren.toml")
    with open(conf, "w") as f:
        f.write("[alarms]\nmemory_high_watermark = 0.5\n")
    os.chmod(conf, 0o644)
    c2 = f"{RUN}-2"
    amqp, http, startup2 = run_container(c2, *common, "-v", f"{conf}:/etc/warren/warren.toml:ro")
    print(f"  --   start-up with {N_MESSAGES} messages to recover: {startup2:.2f} s", flush=True)
    _, overview = api(http, "/api/overview")
    ok(overview.get("node") == f"warren@{HOSTNAME}", f"same node name after re-creation: {overview.get('node')}")
    _, nodes = api(http, "/api/nodes")
    want = int(256 * MIB * 0.5)
    ok(nodes[0]["mem_limit"] == want,
       f"the mounted file is read: mem_limit {nodes[0]['mem_limit']} = 256 MiB x 0.5 (its alarms.memory_high_watermark) = {want}")
    listed = docker("exec", c2, "warrenctl", "list_queues", "name", "messages", "durable").stdout
    ok(f"{QUEUE}\t{N_MESSAGES}\ttrue" in listed, f"docker exec warrenctl list_queues finds the broker: {listed.splitlines()[-1]!r}")
    conn = connect(amqp)
    ch = conn.channel()
    declared = ch.queue_declare(QUEUE, durable=True, passive=True).method
    bodies = []
    for _method, _props, b in ch.consume(QUEUE, auto_ack=True, inactivity_timeout=3):
        if b is None:
            break
        bodies.append(b)
    ch.cancel()
    conn.close()
    ok(declared.message_count == N_MESSAGES and bodies == [f"m{i}".encode() for i in range(N_MESSAGES)],
       f"{QUEUE} survived with {declared.message_count} messages; consumed {len(bodies)}, in order")
    docker("stop", c2)
    ok(inspect(c2, "{{.State.ExitCode}}") == "0", "second container stopped with exit code 0")


def test_guest_loopback_one_setting_away():
    print("guest restricted to loopback again: -e WARREN_DEFAULTS_LOOPBACK_USERS=guest", flush=True)
    c3 = f"{RUN}-3"
    amqp, _, _ = run_container(c3, "-e", "WARREN_DEFAULTS_LOOPBACK_USERS=guest")
    ok(guest_login(amqp) == "refused", "guest/guest from the host is refused")
    r = docker("exec", c3, "warrenctl", "authenticate_user", "guest", "guest", check=False)
    ok(r.returncode == 0, "guest exists with password guest (only where it may connect from changed)")
    # Ctrl-C in `docker run -it`: SIGINT to PID 1, which has no default action there.
    docker("kill", "-s", "INT", c3)
    docker("wait", c3, timeout=15)
    code = inspect(c3, "{{.State.ExitCode}}")
    out, err = logs(c3)
    ok(code == "0" and "INFO warren: stopped" in err, f"SIGINT (docker kill -s INT) stops it gracefully: exit code {code}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_cmd():
    if sh("docker", "compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise AssertionError("neither `docker compose` nor docker-compose is installed")


def test_compose():
    print("examples/docker-compose.yml (guest/guest, the image's default)", flush=True)
    project = f"{RUN}-compose"
    compose_cmd()
    compose_projects.append((project, "examples/docker-compose.yml"))
    ports = {"HOST_AMQP_PORT": free_port(), "HOST_MANAGEMENT_PORT": free_port(), "HOST_METRICS_PORT": free_port()}
    env = dict(os.environ, WARREN_IMAGE=IMAGE, **{k: str(v) for k, v in ports.items()})
    env.pop("RABBITMQ_DEFAULT_USER", None)
    env.pop("RABBITMQ_DEFAULT_PASS", None)
    compose = [*compose_cmd(), "-p", project, "-f", os.path.join(ROOT, "examples/docker-compose.yml")]
    sh(*compose, "up", "-d", "--no-build", env=env)
    cid = sh(*compose, "ps", "-q", "warren", env=env).stdout.strip()
    ok(bool(cid), f"compose started the warren service ({cid[:12]})")
    wait_amqp(ports["HOST_AMQP_PORT"])
    conn = connect(ports["HOST_AMQP_PORT"], "guest", "guest")
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"via compose")
    got = ch.basic_get(q, auto_ack=True)[2]
    conn.close()
    ok(got == b"via compose", "guest/guest from the host through the published port publishes and consumes")
    _, overview = api(ports["HOST_MANAGEMENT_PORT"], "/api/overview", "guest", "guest")
    ok(overview.get("node") == "warren@warren", f"management API answers, node {overview.get('node')}")
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['HOST_METRICS_PORT']}/metrics", timeout=10) as r:
        ok(r.status == 200 and b"rabbitmq_" in r.read(), "Prometheus endpoint answers")
    wait_healthy(cid)
    ok(True, "health status healthy")
    sh(*compose, "stop", env=env)
    ok(inspect(cid, "{{.State.ExitCode}}") == "0", "compose stop: exit code 0")


ETCD_IMAGE = "warren-test-etcd:latest"


def build_etcd_image():
    """An etcd image from this host's etcd binary (tests/cluster/install.sh installs
    it): no registry here to pull one from."""
    etcd = shutil.which("etcd")
    ok(etcd is not None, "etcd is installed on the host (tests/cluster/install.sh)")
    ctx = os.path.join(tmpdir, "etcd-image")
    os.makedirs(ctx, exist_ok=True)
    shutil.copy(os.path.realpath(etcd), os.path.join(ctx, "etcd"))
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM debian:bookworm-slim\nCOPY etcd /usr/local/bin/etcd\n")
    docker("build", "-q", "-t", ETCD_IMAGE, ctx, env=dict(os.environ, DOCKER_BUILDKIT="0"))


def http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def wait_leader(mgmt, but=None, timeout=90.0):
    """The node (1-3) whose is-leader check answers 200, other than `but`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leads = [i for i, port in mgmt.items() if i != but and http_status(port, "/api/health/checks/is-leader") == 200]
        if len(leads) == 1:
            return leads[0]
        time.sleep(0.25)
    raise AssertionError(f"no single leader among {sorted(set(mgmt) - {but})} within {timeout} s")


def publish_confirmed(ports, queue, ids, confirmed, deadline):
    """Publish ids through the first of `ports` that works, reconnecting to the next
    after a failure; confirmed bodies go to `confirmed`."""
    conn = ch = None
    for i in ids:
        body = f"m{i}".encode()
        while True:
            try:
                if ch is None:
                    conn = connect(ports[0], "guest", "guest")
                    ch = conn.channel()
                    ch.confirm_delivery()
                    ch.queue_declare(queue, durable=True)
                ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
                confirmed.add(body)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                ch = None
                ports = ports[1:] + ports[:1]
                time.sleep(0.25)
                break  # unknown outcome: go on with the next message
    if conn is not None and conn.is_open:
        conn.close()


def test_compose_cluster():
    print("examples/docker-compose-cluster.yml (three nodes, three etcd members)", flush=True)
    build_etcd_image()
    project = f"{RUN}-cluster"
    file = "examples/docker-compose-cluster.yml"
    compose_projects.append((project, file))
    amqp = {i: free_port() for i in (1, 2, 3)}
    mgmt = {i: free_port() for i in (1, 2, 3)}
    env = dict(os.environ, WARREN_IMAGE=IMAGE, ETCD_IMAGE=ETCD_IMAGE, WARREN_CLUSTER_SECRET=uuid.uuid4().hex)
    for i in (1, 2, 3):
        env[f"HOST_AMQP_PORT_{i}"] = str(amqp[i])
        env[f"HOST_MANAGEMENT_PORT_{i}"] = str(mgmt[i])
    env.pop("RABBITMQ_DEFAULT_USER", None)
    env.pop("RABBITMQ_DEFAULT_PASS", None)
    compose = [*compose_cmd(), "-p", project, "-f", os.path.join(ROOT, file)]
    sh(*compose, "up", "-d", "--no-build", env=env, timeout=180)
    leader = wait_leader(mgmt)
    ok(True, f"warren{leader} leads")
    follower = next(i for i in (1, 2, 3) if i != leader)
    wait_amqp(amqp[follower])
    deadline = time.monotonic() + 120
    confirmed = set()
    queue = "compose-cluster"
    publish_confirmed([amqp[follower]], queue, range(300), confirmed, deadline)
    ok(len(confirmed) == 300, f"pika through follower warren{follower}'s port: 300 confirmed")
    cid = sh(*compose, "ps", "-q", f"warren{leader}", env=env).stdout.strip()
    docker("kill", cid)
    killed = time.monotonic()
    survivors = [amqp[i] for i in (1, 2, 3) if i != leader]
    publish_confirmed(survivors, queue, range(300, 600), confirmed, deadline)
    new = wait_leader({i: p for i, p in mgmt.items() if i != leader})
    ok(True, f"docker kill of warren{leader}: warren{new} leads, clients went on after {time.monotonic() - killed:.1f} s")
    got = set()
    conn = connect(survivors[0], "guest", "guest")
    ch = conn.channel()
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.add(body)
    conn.close()
    missing = confirmed - got
    ok(not missing and len(confirmed) > 300,
       f"{len(confirmed)} confirmed, {len(got)} consumed after the kill, none lost {sorted(missing)[:5]}")
    new_cid = sh(*compose, "ps", "-q", f"warren{new}", env=env).stdout.strip()
    status = docker("exec", new_cid, "warrenctl", "cluster_status").stdout
    ok(f"Leader: warren@warren{new}" in status, "warrenctl cluster_status in the new leader's container")
    sh(*compose, "stop", env=env, timeout=180)


def cleanup():
    for project, file in compose_projects:
        cmd = compose_cmd()
        sh(*cmd, "-p", project, "-f", os.path.join(ROOT, file), "down", "-v",
           check=False, env=dict(os.environ, WARREN_IMAGE=IMAGE, ETCD_IMAGE=ETCD_IMAGE), timeout=180)
    for c in containers:
        docker("rm", "-f", "-v", c, check=False)
    for v in volumes:
        docker("volume", "rm", "-f", v, check=False)
    shutil.rmtree(tmpdir, ignore_errors=True)


def main():
    # docker stop / kill of the test itself: clean up as on a failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        test_image_metadata()
        test_run_stop_restart()
        test_guest_loopback_one_setting_away()
        test_compose()
        test_compose_cluster()
    except Exception as e:
        print(f"  FAIL {e}", flush=True)
        for c in containers:
            r = docker("logs", "--tail", "20", c, check=False)
            print(f"--- docker logs --tail 20 {c}\n{r.stdout}{r.stderr}", flush=True)
        return 1
    finally:
        cleanup()
    print(f"docker image tests passed in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
