"""amqps with pika: server-only TLS, mutual TLS with SASL EXTERNAL, a wrong CA refused.

Certificates are made at test time with the openssl CLI (installed by install-deps.sh).
These tests start their own warren with [tls] settings, so they are skipped when the
suite targets an external broker (WARREN_TEST_AMQP_URL).
"""
from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import time

import pika
import pytest

import brokerctl

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("WARREN_TEST_AMQP_URL")),
    reason="needs a warren started with TLS settings",
)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Pki:
    """A CA and certificates signed by it, as PEM files in one directory."""

    def __init__(self, root: str, name: str):
        self.dir = os.path.join(root, name)
        os.mkdir(self.dir)
        self.ca = self.path("ca.pem")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", self.path("ca.key"), "-out", self.ca, "-days", "2",
                "-subj", "/CN=%s" % name,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def path(self, f: str) -> str:
        return os.path.join(self.dir, f)

    def issue(self, name: str, subject: str, ext: str) -> tuple[str, str]:
        key, csr, cert, extfile = (self.path(name + s) for s in (".key", ".csr", ".pem", ".ext"))
        with open(extfile, "w") as f:
            f.write(ext + "\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", csr, "-subj", subject)
        openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.path("ca.key"),
                "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extfile)
        return cert, key


@pytest.fixture(scope="module")
def pki():
    if not shutil.which("openssl"):
        pytest.fail("openssl CLI missing (tests/clients/install-deps.sh installs it)")
    root = tempfile.mkdtemp(prefix="warren-tls-")
    ca = Pki(root, "ca")
    server = ca.issue("server", "/CN=localhost",
                      "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    client = ca.issue("client", "/O=warren/CN=guest", "extendedKeyUsage=clientAuth")
    other = Pki(root, "other")
    stranger = other.issue("stranger", "/CN=guest", "extendedKeyUsage=clientAuth")
    yield {"ca": ca, "server": server, "client": client, "other": other, "stranger": stranger}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_broker(pki):
    cert, key = pki["server"]
    b = brokerctl.start_warren(extra_args=(
        "--set", "tls.listen=127.0.0.1:0",
        "--set", "tls.certfile=" + cert,
        "--set", "tls.keyfile=" + key,
        "--set", "tls.cacertfile=" + pki["ca"].ca,
        "--set", "tls.verify=verify_peer",
        "--set", "tls.ssl_cert_login_from=common_name",
    ))
    assert b.tls_port, "the ready line names the amqps port"
    yield b
    brokerctl.stop_warren(b)


def params(b, cafile, cert=None, credentials=None):
    ctx = ssl.create_default_context(cafile=cafile)
    if cert:
        ctx.load_cert_chain(*cert)
    return pika.ConnectionParameters(
        host="localhost", port=b.tls_port, virtual_host="/",
        credentials=credentials or pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(ctx, "localhost"),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5)


def round_trip(conn, uniq):
    ch = conn.channel()
    q = uniq("tls")
    ch.queue_declare(q, auto_delete=True)
    body = os.urandom(300_000)
    ch.basic_publish("", q, body)
    deadline = time.time() + 5
    while True:
        _, _, got = ch.basic_get(q, auto_ack=True)
        if got is not None:
            assert got == body
            break
        assert time.time() < deadline, "message never arrived"
        time.sleep(0.02)
    ch.close()


def test_server_only_tls_with_plain_login(tls_broker, pki, uniq):
    conn = pika.BlockingConnection(params(tls_broker, pki["ca"].ca))
    try:
        round_trip(conn, uniq)
    finally:
        conn.close()


def test_mutual_tls_and_external_login(tls_broker, pki, uniq):
    conn = pika.BlockingConnection(params(
        tls_broker, pki["ca"].ca, cert=pki["client"],
        credentials=pika.credentials.ExternalCredentials()))
    try:
        round_trip(conn, uniq)
    finally:
        conn.close()


def test_external_without_a_certificate_is_refused(tls_broker, pki):
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(
            tls_broker, pki["ca"].ca, credentials=pika.credentials.ExternalCredentials()))


def test_client_certificate_from_another_ca_is_refused(tls_broker, pki, uniq):
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(tls_broker, pki["ca"].ca, cert=pki["stranger"]))
    # Others are unaffected.
    conn = pika.BlockingConnection(params(tls_broker, pki["ca"].ca, cert=pki["client"]))
    try:
        round_trip(conn, uniq)
    finally:
        conn.close()


JAVA_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java", "TlsClient.java")


@pytest.fixture(scope="module")
def java_tls(tls_broker, pki, tmp_path_factory):
    """Compile and run java/TlsClient.java once; its stdout has a PASS/FAIL line per check."""
    from test_java_client import classpath

    for tool in ("javac", "java", "openssl"):
        if not shutil.which(tool):
            pytest.fail("%s not found (tests/clients/install-deps.sh installs it)" % tool)
    out = tmp_path_factory.mktemp("javatls")
    cert, key = pki["client"]
    p12 = str(out / "client.p12")
    openssl("pkcs12", "-export", "-in", cert, "-inkey", key, "-out", p12, "-passout", "pass:secret")
    cp = classpath()
    comp = subprocess.run(["javac", "-nowarn", "-d", str(out), "-cp", os.pathsep.join(cp), JAVA_SRC],
                          capture_output=True, text=True, timeout=180)
    assert comp.returncode == 0, "javac failed:\n" + comp.stdout + comp.stderr
    run = subprocess.run(["java", "-cp", os.pathsep.join([str(out)] + cp), "TlsClient",
                          str(tls_broker.tls_port), pki["ca"].ca, p12, "secret"],
                         capture_output=True, text=True, timeout=180)
    return run.stdout + run.stderr


@pytest.mark.parametrize("check", ["server_only_tls_plain_login", "mutual_tls_external_login"])
def test_java_client(java_tls, check):
    assert "PASS " + check in java_tls.splitlines(), java_tls


def test_server_from_an_untrusted_ca_is_refused_by_the_client(tls_broker, pki):
    # pika lets the ssl module's verification error through as it is.
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError)):
        pika.BlockingConnection(params(tls_broker, pki["other"].ca))
