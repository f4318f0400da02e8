//! amqps: TLS on its own listener, client certificates (verify_peer,
//! fail_if_no_peer_cert), SASL EXTERNAL, refusals logged with the peer and the reason,
//! and certificates reloaded on SIGHUP without dropping connections. Certificates are
//! made at test time with rcgen; the client is lapin over rustls.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority made for one test.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate (PEM) and its key (PEM) for the names and addresses `sans`.
    pub(crate) fn issue_server(&self, sans: Vec<String>) -> (String, String) {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, "warren");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf certificate (PEM) and its key (PEM) signed by this CA.
    fn issue(&self, subject: &[(DnType, &str)], client: bool) -> (String, String) {
        self.issue_with(subject, client, |_| {})
    }

    /// [`Ca::issue`], with the parameters adjusted by `tweak` (validity, ...).
    fn issue_with(
        &self,
        subject: &[(DnType, &str)],
        client: bool,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let sans = if client {
            vec![]
        } else {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        };
        let mut p = CertificateParams::new(sans).unwrap();
        let mut dn = DistinguishedName::new();
        for (t, v) in subject {
            dn.push(t.clone(), *v);
        }
        p.distinguished_name = dn;
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        tweak(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A temporary directory holding one test's certificates and the broker's log.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(unique("warren-tls"));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.0.join("warren.log")).unwrap_or_default()
    }
    /// Wait until the broker's log has a line containing all of `words`.
    fn wait_log(&self, words: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {words:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server side of a test: a CA, the server's certificate from it, and a broker.
struct Setup {
    dir: Dir,
    ca: Ca,
    broker: Broker,
}

impl Setup {
    /// A broker with TLS on an ephemeral port; `settings` are extra `tls.` keys.
    fn start(settings: &[&str]) -> Setup {
        let settings: Vec<String> = settings.iter().map(|s| format!("tls.{s}")).collect();
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        Self::start_with(&settings)
    }

    /// The same, with extra `--set` settings of any section.
    fn start_with(settings: &[&str]) -> Setup {
        let dir = Dir::new();
        let ca = Ca::new("warren test CA");
        let (cert, key) = ca.issue(&[(DnType::CommonName, "localhost")], false);
        dir.write("ca.pem", &ca.pem());
        dir.write("server.pem", &cert);
        dir.write("server.key", &key);
        let mut args: Vec<String> = vec![
            "tls.listen=127.0.0.1:0".into(),
            format!("tls.certfile={}", dir.path("server.pem")),
            format!("tls.keyfile={}", dir.path("server.key")),
            format!("tls.cacertfile={}", dir.path("ca.pem")),
            format!("log.file={}", dir.path("warren.log")),
        ];
        args.extend(settings.iter().map(|s| s.to_string()));
        let args: Vec<String> = args
            .into_iter()
            .flat_map(|a| ["--set".to_owned(), a])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let broker = Broker::spawn_warren(&args);
        Setup { dir, ca, broker }
    }

    fn port(&self) -> u16 {
        let addr = self.broker.tls_addr().expect("the ready line names amqps");
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Connect over TLS trusting `trust` (PEM), with an optional client identity.
    async fn connect(
        &self,
        trust: &str,
        identity: Option<&(String, String)>,
        query: &str,
    ) -> lapin::Result<Connection> {
        let url = format!("amqps://guest:guest@localhost:{}/%2f{query}", self.port());
        let tls = OwnedTLSConfig {
            identity: identity.map(|(cert, key)| OwnedIdentity::PKCS8 {
                pem: cert.as_bytes().to_vec(),
                key: key.as_bytes().to_vec(),
            }),
            cert_chain: Some(trust.to_owned()),
        };
        tokio::time::timeout(
            WAIT,
            Connection::connect_with_config(
                &url,
                ConnectionProperties::default(),
                tls,
                lapin::runtime::default_runtime()?,
            ),
        )
        .await
        .expect("connect did not finish in time")
    }

    fn warrenctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(crate::common::warrenctl_bin())
            .arg("--data-dir")
            .arg(self.broker.data_dir().unwrap())
            .args(args)
            .output()
            .expect("run warrenctl");
        assert!(
            out.status.success(),
            "warrenctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(300));
            eprintln!("--- broker log ---\n{}", self.dir.log());
        }
    }
}

/// Publish to a fresh queue and get the message back: the connection works end to end.
async fn round_trip(conn: &Connection) {
    let ch = within(conn.create_channel()).await.expect("channel");
    let q = unique("tls-q");
    within(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("declare");
    let body = vec![7u8; 200_000]; // several TLS records
    within(ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
    let deadline = Instant::now() + WAIT;
    loop {
        let got = within(ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("get");
        if let Some(m) = got {
            assert_eq!(m.delivery.data, body);
            break;
        }
        assert!(Instant::now() < deadline, "message never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = ch.close(200, "bye".into()).await;
}

#[tokio::test]
async fn server_only_tls_carries_amqp_and_plain_port_still_works() {
    let s = Setup::start(&[]);
    let conn = s
        .connect(&s.ca.pem(), None, "")
        .await
        .expect("amqps connect");
    round_trip(&conn).await;
    let listing = s.warrenctl(&[
        "list_connections",
        "user",
        "ssl",
        "ssl_protocol",
        "ssl_cipher",
        "peer_cert_subject",
    ]);
    assert!(listing.contains("true"), "{listing}");
    assert!(listing.contains("tlsv1.3"), "{listing}");
    assert!(listing.contains("TLS13_"), "{listing}");
    // The plain listener is unaffected.
    let plain = s.broker.connect().await;
    round_trip(&plain).await;
    let _ = conn.close(200, "bye".into()).await;
    let _ = plain.close(200, "bye".into()).await;
}

#[tokio::test]
async fn tls12_only_and_a_chosen_cipher_are_honoured() {
    let s = Setup::start(&["versions=tlsv1.2", "ciphers=ECDHE-ECDSA-AES128-GCM-SHA256"]);
    let conn = s
        .connect(&s.ca.pem(), None, "")
        .await
        .expect("amqps connect");
    round_trip(&conn).await;
    let listing = s.warrenctl(&["list_connections", "ssl_protocol", "ssl_cipher"]);
    assert!(listing.contains("tlsv1.2"), "{listing}");
    assert!(
        listing.contains("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
        "{listing}"
    );
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let s = Setup::start(&["verify=verify_peer", "fail_if_no_peer_cert=true"]);
    // No client certificate: the handshake fails, and the log says who and why.
    assert!(s.connect(&s.ca.pem(), None, "").await.is_err());
    s.dir
        .wait_log(&["TLS handshake failed", "127.0.0.1", "no certificate"]);
    // A certificate from another CA: refused, logged.
    let other = Ca::new("someone else's CA");
    let stranger = other.issue(&[(DnType::CommonName, "guest")], true);
    assert!(s.connect(&s.ca.pem(), Some(&stranger), "").await.is_err());
    s.dir.wait_log(&[
        "TLS handshake failed",
        "127.0.0.1",
        "certificate was refused",
    ]);
    // An expired certificate from the right CA: refused, logged as expired.
    let expired = s.ca.issue_with(&[(DnType::CommonName, "old")], true, |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    assert!(s.connect(&s.ca.pem(), Some(&expired), "").await.is_err());
    s.dir
        .wait_log(&["TLS handshake failed", "certificate was refused", "Expired"]);
    // A certificate from the configured CA: in, with its subject listed.
    let client = s.ca.issue(
        &[
            (DnType::OrganizationName, "warren tests"),
            (DnType::CommonName, "app1"),
        ],
        true,
    );
    let conn = s
        .connect(&s.ca.pem(), Some(&client), "")
        .await
        .expect("mutual TLS connect");
    round_trip(&conn).await;
    let listing = s.warrenctl(&["list_connections", "user", "peer_cert_subject"]);
    assert!(listing.contains("CN=app1,O=warren tests"), "{listing}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_ca_is_refused_and_logged() {
    let s = Setup::start(&[]);
    let wrong = Ca::new("not the server's CA");
    assert!(s.connect(&wrong.pem(), None, "").await.is_err());
    s.dir.wait_log(&["TLS handshake failed", "127.0.0.1"]);
    // Others are unaffected.
    let conn = s.connect(&s.ca.pem(), None, "").await.expect("connect");
    round_trip(&conn).await;
}

#[tokio::test]
async fn external_login_uses_the_distinguished_name_by_default() {
    let s = Setup::start(&["verify=verify_peer", "fail_if_no_peer_cert=true"]);
    let client = s.ca.issue(
        &[
            (DnType::OrganizationName, "warren"),
            (DnType::CommonName, "app1"),
        ],
        true,
    );
    let dn = "CN=app1,O=warren";
    // No such user yet: RabbitMQ's refusal; the log names the reason.
    let err = s
        .connect(&s.ca.pem(), Some(&client), "?auth_mechanism=external")
        .await
        .expect_err("unknown user refused");
    assert!(
        format!("{err:?}").contains("ACCESS_REFUSED")
            || format!("{err:?}").contains("403")
            || format!("{err:?}").contains("Login was refused"),
        "{err:?}"
    );
    s.dir.wait_log(&[
        "login refused",
        "EXTERNAL",
        "user 'CN=app1,O=warren' - not found",
    ]);
    // A passwordless user named by the DN logs in with the certificate alone.
    s.warrenctl(&["add_user", dn, "unused-password"]);
    s.warrenctl(&["clear_password", dn]);
    s.warrenctl(&["set_permissions", "-p", "/", dn, ".*", ".*", ".*"]);
    let conn = s
        .connect(&s.ca.pem(), Some(&client), "?auth_mechanism=external")
        .await
        .expect("EXTERNAL login");
    round_trip(&conn).await;
    let listing = s.warrenctl(&["list_connections", "user"]);
    assert!(listing.contains(dn), "{listing}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn external_login_from_common_name() {
    let s = Setup::start(&["verify=verify_peer", "ssl_cert_login_from=common_name"]);
    let client = s.ca.issue(
        &[
            (DnType::OrganizationName, "warren"),
            (DnType::CommonName, "guest"),
        ],
        true,
    );
    let conn = s
        .connect(&s.ca.pem(), Some(&client), "?auth_mechanism=external")
        .await
        .expect("EXTERNAL login as the CN");
    round_trip(&conn).await;
    // verify_peer without fail_if_no_peer_cert: a client without a certificate may
    // connect (PLAIN), but EXTERNAL has nothing to go on.
    let plain = s
        .connect(&s.ca.pem(), None, "")
        .await
        .expect("PLAIN over TLS");
    round_trip(&plain).await;
    assert!(s
        .connect(&s.ca.pem(), None, "?auth_mechanism=external")
        .await
        .is_err());
    s.dir.wait_log(&[
        "login refused",
        "connection peer presented no TLS (x.509) certificate",
    ]);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn external_is_not_offered_on_plain_tcp() {
    let s = Setup::start(&[]);
    let url = format!("{}?auth_mechanism=external", s.broker.url());
    assert!(try_connect(&url).await.is_err());
    s.dir
        .wait_log(&["unknown authentication mechanism 'EXTERNAL'"]);
}

#[tokio::test]
async fn plain_amqp_on_the_tls_port_is_logged_and_others_are_unaffected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Setup::start(&[]);
    let conn = s.connect(&s.ca.pem(), None, "").await.expect("connect");
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", s.port()))
        .await
        .unwrap();
    raw.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let mut buf = [0u8; 64];
    // The broker closes the socket without answering in AMQP.
    let n = within(raw.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "expected the socket to be closed");
    let line = s.dir.wait_log(&["TLS handshake failed", "plain AMQP"]);
    assert!(line.contains("127.0.0.1"), "{line}");
    // The established TLS connection and new ones still work.
    round_trip(&conn).await;
    let again = s.connect(&s.ca.pem(), None, "").await.expect("connect");
    round_trip(&again).await;
}

#[tokio::test]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let s = Setup::start(&[]);
    let before = s.connect(&s.ca.pem(), None, "").await.expect("connect");
    round_trip(&before).await;
    // Rotate to a certificate from a new CA and signal.
    let new_ca = Ca::new("rotated CA");
    let (cert, key) = new_ca.issue(&[(DnType::CommonName, "localhost")], false);
    s.dir.write("server.pem", &cert);
    s.dir.write("server.key", &key);
    s.broker.signal("HUP");
    s.dir
        .wait_log(&["SIGHUP received", "reloaded TLS certificate"]);
    // New connections get the new certificate: trusting only the old CA fails now.
    assert!(s.connect(&s.ca.pem(), None, "").await.is_err());
    let after = s.connect(&new_ca.pem(), None, "").await.expect("new cert");
    round_trip(&after).await;
    // The connection made before the reload is still up.
    round_trip(&before).await;
    // A broken file on reload keeps the current configuration.
    s.dir.write("server.key", "not a key");
    s.broker.signal("HUP");
    s.dir.wait_log(&[
        "cannot reload the TLS configuration",
        "still using the previous one",
    ]);
    let still = s
        .connect(&new_ca.pem(), None, "")
        .await
        .expect("still served");
    round_trip(&still).await;
}

/// GET a path over HTTPS, trusting `ca_pem`; returns the whole response.
async fn https_get(addr: &str, ca_pem: &str, path: &str) -> std::io::Result<String> {
    https_send(
        addr,
        ca_pem,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
}

/// Send one raw HTTP request over TLS (trusting `ca_pem`) and read until the server closes.
async fn https_send(addr: &str, ca_pem: &str, request: &str) -> std::io::Result<String> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn the_management_api_over_https_uses_the_tls_certificate() {
    let s = Setup::start_with(&["management.tls_listen=127.0.0.1:0"]);
    let addr = s
        .broker
        .listening("management_tls")
        .expect("warren listening management_tls=")
        .to_owned();
    // guest:guest, which may log in from loopback only: the peer address reaches the API.
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let resp = within(https_send(&addr, &s.ca.pem(), &request("/api/whoami")))
        .await
        .expect("https request");
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("\"name\":\"guest\""), "{resp}");
    let resp = within(https_send(&addr, &s.ca.pem(), &request("/api/nope")))
        .await
        .expect("https request");
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    // A client that does not trust the certificate gets nothing.
    let other = Ca::new("other");
    assert!(
        within(https_send(&addr, &other.pem(), &request("/api/whoami")))
            .await
            .is_err()
    );
    // The plain API is still there beside it.
    assert!(s.broker.has_management());
}

#[tokio::test]
async fn prometheus_over_https_uses_the_tls_certificate() {
    let dir = Dir::new();
    let ca = Ca::new("metrics CA");
    let (cert, key) = ca.issue(&[(DnType::CommonName, "localhost")], false);
    let sets = [
        "tls.listen=127.0.0.1:0".to_owned(),
        format!("tls.certfile={}", dir.write("server.pem", &cert)),
        format!("tls.keyfile={}", dir.write("server.key", &key)),
        "metrics.listen=127.0.0.1:0".to_owned(),
        "metrics.tls_listen=127.0.0.1:0".to_owned(),
    ];
    let args: Vec<String> = sets
        .iter()
        .flat_map(|a| ["--set".to_owned(), a.clone()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::spawn_warren(&args);
    let addr = broker
        .metrics_tls_addr()
        .expect("warren listening prometheus_tls=")
        .to_owned();
    let resp = within(https_get(&addr, &ca.pem(), "/metrics"))
        .await
        .expect("https scrape");
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("rabbitmq_identity_info"), "{resp}");
    // A client that does not trust the certificate gets no metrics.
    let other = Ca::new("other");
    assert!(within(https_get(&addr, &other.pem(), "/metrics"))
        .await
        .is_err());
}

#[tokio::test]
async fn tls_only_when_the_plain_listener_is_off() {
    // RabbitMQ's `listeners.tcp = none`: amqp.listen = "".
    let s = Setup::start_with(&["amqp.listen="]);
    assert_eq!(
        s.broker.addr(),
        "",
        "the ready line names no plain listener"
    );
    let conn = s
        .connect(&s.ca.pem(), None, "")
        .await
        .expect("amqps connect");
    round_trip(&conn).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[test]
fn bad_tls_settings_stop_the_start_with_the_key_named() {
    let dir = Dir::new();
    let data = dir.path("data");
    let run = |sets: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(["--amqp-listen", "127.0.0.1:0", "--data-dir", &data])
            .env("WARREN_METRICS_LISTEN", "127.0.0.1:0");
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = dir.path("missing.pem");
    let (code, err) = run(&[
        &format!("tls.certfile={missing}"),
        &format!("tls.keyfile={missing}"),
        "tls.listen=127.0.0.1:0",
    ]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("tls.certfile") && err.contains(&missing),
        "{err}"
    );
    let (code, err) = run(&["tls.verify=verify_maybe"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("tls.verify"), "{err}");
    let (code, err) = run(&["metrics.tls_listen=127.0.0.1:0"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("metrics.tls_listen"), "{err}");
    let (code, err) = run(&["management.tls_listen=127.0.0.1:0"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("management.tls_listen"), "{err}");
    let (code, err) = run(&["amqp.listen="]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("amqp.listen") && err.contains("needs TLS (tls.certfile) on"),
        "{err}"
    );
    let (code, err) = run(&["tls.versions=tlsv1.1"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("tls.versions"), "{err}");
    let _ = Path::new(&data);
}
