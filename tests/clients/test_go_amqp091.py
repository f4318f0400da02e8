"""rabbitmq/amqp091-go's own test suite (including integration_test.go, build tag `integration`)
run against the broker, offline, from Debian's golang-github-rabbitmq-amqp091-go-dev source.

The package is copied into a throw-away GOPATH and built with GO111MODULE=off (its only
dependency, go.uber.org/goleak, comes from /usr/share/gocode as well), then
    AMQP_URL=<broker> go test -tags integration -count=1 -json .
Every top-level test/example result is counted; the suite fails if any test fails.
Tests in GO_SKIPS (documented in README.md) are excluded via a -run allow-list, as Go 1.19
has no -skip flag. WARREN_GO_SKIP=<regex> excludes more tests ad hoc.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

import pika
import pytest

import brokerctl

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = "github.com/rabbitmq/amqp091-go"
SRC = os.environ.get("GO_AMQP091_SRC", "/usr/share/gocode/src/" + PKG)
CACHE = os.path.join(HERE, ".cache")
SUMMARY_FILE = os.path.join(CACHE, "go-amqp091-summary.txt")

# test name -> reason. Add entries here (and to README.md) only with a reason.
GO_SKIPS: dict[str, str] = {
    # Against RabbitMQ it "passes" by logging that flow is unsupported (RabbitMQ answers 540).
    # warren implements client-initiated channel.flow, so Flow(false) returns nil and the test
    # does `err.(*Error).Code` on that nil error and panics, killing the whole test binary.
    "TestIntegrationConsumeFlow": "test bug: type-asserts a nil error when the broker supports "
    "channel.flow active=false (warren does; RabbitMQ 3.x answers 540 NOT_IMPLEMENTED)",
}


def go_env(gopath):
    env = dict(os.environ)
    env.update({
        "GO111MODULE": "off",
        "GOPATH": gopath + os.pathsep + "/usr/share/gocode",
        "GOCACHE": os.path.join(CACHE, "gocache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    })
    return env


@pytest.fixture(scope="module")
def go_pkg_dir(tmp_path_factory):
    if shutil.which("go") is None:
        pytest.fail("go not found (apt-get install golang-go)")
    if not os.path.exists(os.path.join(SRC, "integration_test.go")):
        pytest.fail("amqp091-go source not found at %s (apt-get install golang-github-rabbitmq-amqp091-go-dev)" % SRC)
    gopath = str(tmp_path_factory.mktemp("gopath"))
    dst = os.path.join(gopath, "src", PKG)
    shutil.copytree(SRC, dst, symlinks=False)
    os.makedirs(CACHE, exist_ok=True)
    return gopath, dst


def list_tests(gopath, pkgdir):
    res = subprocess.run(["go", "test", "-tags", "integration", "-list", ".*", "."], cwd=pkgdir,
                         env=go_env(gopath), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return [l.strip() for l in res.stdout.splitlines() if re.match(r"^(Test|Example|Fuzz|Benchmark)\w*$", l.strip())]


@pytest.fixture(scope="module")
def go_results(broker, go_pkg_dir):
    gopath, pkgdir = go_pkg_dir
    names = list_tests(gopath, pkgdir)
    extra = os.environ.get("WARREN_GO_SKIP")
    skipped = {n: r for n, r in GO_SKIPS.items() if n in names}
    if extra:
        for n in names:
            if re.search(extra, n) and n not in skipped:
                skipped[n] = "WARREN_GO_SKIP=%s" % extra
    args = ["go", "test", "-tags", "integration", "-count=1", "-json", "-timeout", "600s"]
    if skipped:
        run_names = [n for n in names if n not in skipped]
        args += ["-run", "^(%s)$" % "|".join(map(re.escape, run_names))]
    args.append(".")
    env = go_env(gopath)
    env["AMQP_URL"] = broker.url
    res = subprocess.run(args, cwd=pkgdir, env=env, capture_output=True, text=True, timeout=900)
    status, output, pkg_fail = {}, {}, None
    for line in res.stdout.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        t = ev.get("Test")
        if t is None:
            if ev.get("Action") in ("pass", "fail"):
                pkg_fail = ev["Action"] == "fail"
            continue
        top = t.split("/")[0]
        if ev.get("Action") == "output":
            output.setdefault(top, []).append(ev.get("Output", ""))
        elif ev.get("Action") in ("pass", "fail", "skip") and "/" not in t:
            status[t] = ev["Action"]
    counts = {k: sum(1 for v in status.values() if v == k) for k in ("pass", "fail", "skip")}
    summary = "amqp091-go suite: %d passed, %d failed, %d skipped (by the test itself), %d excluded" % (
        counts["pass"], counts["fail"], counts["skip"], len(skipped))
    try:
        with open(SUMMARY_FILE, "w") as f:
            f.write(summary + "\n")
            for n, r in sorted(skipped.items()):
                f.write("excluded %s: %s\n" % (n, r))
            for n, s in sorted(status.items()):
                f.write("%s %s\n" % (s, n))
    except OSError:
        pass
    brokerctl.REPORT_LINES.append(summary + (" (excluded: %s)" % ", ".join(sorted(skipped)) if skipped else ""))
    if broker.shared:
        _cleanup_leftovers(broker, pkgdir)
    return {"status": status, "output": output, "counts": counts, "skipped": skipped,
            "summary": summary, "rc": res.returncode, "stderr": res.stderr, "pkg_fail": pkg_fail,
            "names": names}


def _cleanup_leftovers(broker, pkgdir):
    """The upstream integration tests leave non-exclusive auto-delete queues that never had a
    consumer (and a few exchanges). On a shared broker delete the ones named in the source."""
    src = open(os.path.join(pkgdir, "integration_test.go"), encoding="utf-8").read()
    names = set(re.findall(r'"([A-Za-z][A-Za-z0-9_.\-]{2,})"', src))
    names = {n for n in names if not n.startswith("amq.") and not n.startswith("Test")}
    names |= {n + "-dead-letter" for n in names}  # TestDeclareArgsRejectToDeadLetterQueue
    try:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    except Exception:
        return
    try:
        ch = conn.channel()
        for n in sorted(names):
            for op in ("queue", "exchange"):
                try:
                    ch.queue_declare(n, passive=True) if op == "queue" else ch.exchange_declare(n, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    ch = conn.channel()
                    continue
                try:
                    ch.queue_delete(n) if op == "queue" else ch.exchange_delete(n)
                except pika.exceptions.ChannelClosedByBroker:
                    ch = conn.channel()
    finally:
        conn.close()


@pytest.mark.timeout(960)
def test_go_amqp091_suite(go_results):
    r = go_results
    print(r["summary"])
    failed = sorted(n for n, s in r["status"].items() if s == "fail")
    details = "".join("\n--- %s\n%s" % (n, "".join(r["output"].get(n, []))[-2000:]) for n in failed[:10])
    assert not failed, "%s\nfailed: %s%s" % (r["summary"], failed, details)
    assert r["status"], "no Go test ran (rc %s):\n%s" % (r["rc"], r["stderr"][-3000:])
    assert r["rc"] == 0 and not r["pkg_fail"], "go test exit %s (package-level failure, e.g. goleak in TestMain)\n%s" % (
        r["rc"], r["stderr"][-3000:])


def test_go_rabbitmq_specific_tests_are_not_vacuous(broker):
    """integration_test.go's integrationRabbitMQ() returns nil -- and the test then passes
    without doing anything -- unless server_properties.product == "RabbitMQ". Used by
    TestRabbitMQQueueTTLGet, TestRabbitMQQueueNackMultipleRequeue and
    TestShouldNotWaitAfterConnectionClosedIssue44. Make sure those really ran."""
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        assert conn._impl.server_properties.get("product") == "RabbitMQ"
    finally:
        conn.close()


def test_go_amqp091_integration_tests_ran(go_results):
    """The broker-facing tests (TestIntegration*, and the others in integration_test.go) actually ran."""
    integ = [n for n in go_results["status"] if n.startswith("TestIntegration")]
    assert len(integ) >= 25, integ
    assert all(go_results["status"][n] == "pass" for n in integ)
