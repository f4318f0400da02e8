"""RabbitMQ Java client (Debian librabbitmq-client-java): compile java/ClientConformance.java with
javac at test time and run it against the broker; each check it prints becomes a pytest test."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "java", "ClientConformance.java")
CHECKS = re.findall(r'check\("([A-Za-z0-9_]+)"', open(SRC, encoding="utf-8").read())


def _jar(*patterns):
    for pat in patterns:
        hits = sorted(glob.glob(os.path.join("/usr/share/java", pat)))
        if hits:
            return hits[0]
    return None


def classpath():
    amqp = _jar("amqp-client.jar", "amqp-client-*.jar")
    slf4j = _jar("slf4j-api.jar", "slf4j-api-*.jar")
    nop = _jar("slf4j-nop.jar", "slf4j-nop-*.jar")
    missing = [n for n, j in (("amqp-client", amqp), ("slf4j-api", slf4j)) if j is None]
    if missing:
        pytest.fail("missing jars in /usr/share/java: %s (apt-get install librabbitmq-client-java)" % missing)
    return [j for j in (amqp, slf4j, nop) if j]


@pytest.fixture(scope="module")
def java_results(broker, tmp_path_factory):
    for tool in ("javac", "java"):
        if not shutil.which(tool):
            pytest.fail("%s not found (a JDK is required)" % tool)
    out_dir = tmp_path_factory.mktemp("javabuild")
    cp = classpath()
    comp = subprocess.run(["javac", "-nowarn", "-d", str(out_dir), "-cp", os.pathsep.join(cp), SRC],
                          capture_output=True, text=True, timeout=180)
    assert comp.returncode == 0, "javac failed:\n" + comp.stdout + comp.stderr
    env = dict(os.environ, **broker.env())
    run = subprocess.run(["java", "-cp", os.pathsep.join([str(out_dir)] + cp), "ClientConformance"],
                         capture_output=True, text=True, timeout=180, env=env)
    results = {}
    current = None
    for line in run.stdout.splitlines():
        m = re.match(r"^(PASS|FAIL) ([A-Za-z0-9_]+)(?:: (.*))?$", line)
        if m:
            current = m.group(2)
            results[current] = [m.group(1), line]
        elif current and results[current][0] == "FAIL":
            results[current][1] += "\n" + line
    return {"results": results, "rc": run.returncode, "stdout": run.stdout, "stderr": run.stderr}


@pytest.mark.parametrize("check", CHECKS)
def test_java_check(java_results, check):
    r = java_results["results"].get(check)
    if r is None:
        pytest.fail("check %s did not run (exit %s)\nstdout:\n%s\nstderr:\n%s" % (
            check, java_results["rc"], java_results["stdout"][-3000:], java_results["stderr"][-3000:]))
    assert r[0] == "PASS", r[1]


def test_java_program_exit_code(java_results):
    assert java_results["rc"] == 0, java_results["stdout"][-3000:] + java_results["stderr"][-3000:]
