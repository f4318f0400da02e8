//! TLS for AMQP (amqps), with rustls and its ring provider: the server configuration
//! built from `[tls]` (RabbitMQ's `ssl_options`), the handshake on accepted sockets,
//! what a connection learns from it (protocol, cipher, the client certificate's
//! subject and the name SASL EXTERNAL logs in with), and reload on SIGHUP.
//!
//! [`server_config`] is the one place settings become a `rustls::ServerConfig`, so an
//! HTTPS listener can be built from the same `[tls]` settings.

pub use warren_config::suites;
pub mod x509;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use suites::{cipher_suites, protocol_versions, suite_name, version_name};

fn read_certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read tls.{key} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.{key} {path}: no certificate found (expected PEM '-----BEGIN CERTIFICATE-----')"
        ));
    }
    Ok(certs)
}

/// A rustls server configuration from `[tls]`: certificate chain and key, versions,
/// cipher suites, and client certificates as RabbitMQ's `verify` and
/// `fail_if_no_peer_cert` ask. Every failure names the key and the file.
///
/// Also meant for HTTPS (management, metrics): set the ALPN protocols on the result.
pub fn server_config(t: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let versions = protocol_versions(&t.versions).map_err(|e| format!("tls.versions: {e}"))?;
    let provider = Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(&t.ciphers, &t.versions)
            .map_err(|e| format!("tls.ciphers: {e}"))?,
        ..rustls::crypto::ring::default_provider()
    });
    let certs = read_certs("certfile", &t.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&t.keyfile).map_err(|e| {
        format!(
            "cannot read a private key from tls.keyfile {}: {e}",
            t.keyfile
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls.versions / tls.ciphers: {e}"))?;
    let builder = if t.verify == crate::config::TlsVerify::VerifyPeer {
        let mut roots = RootCertStore::empty();
        for ca in read_certs("cacertfile", &t.cacertfile)? {
            roots
                .add(ca)
                .map_err(|e| format!("tls.cacertfile {}: {e}", t.cacertfile))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if t.fail_if_no_peer_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(
            verifier
                .build()
                .map_err(|e| format!("tls.cacertfile {}: {e}", t.cacertfile))?,
        )
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "tls.certfile {} / tls.keyfile {}: {e}",
            t.certfile, t.keyfile
        )
    })?;
    Ok(Arc::new(config))
}

/// What a TLS connection knows about its session, for SASL EXTERNAL and listings.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// `tlsv1.3` or `tlsv1.2` (RabbitMQ's ssl_protocol).
    pub protocol: &'static str,
    /// The negotiated suite's IANA name.
    pub cipher: String,
    /// The verified client certificate's subject (RabbitMQ's DN format), if one was sent.
    pub peer_cert_subject: Option<String>,
    /// The user name EXTERNAL logs in with, or RabbitMQ's reason for refusing.
    pub external_login: Result<String, String>,
}

impl PeerTls {
    fn of(stream: &TlsStream<TcpStream>, login_from: &str) -> PeerTls {
        let (_, session) = stream.get_ref();
        let cert = session.peer_certificates().and_then(|c| c.first());
        let subject = cert.and_then(|c| x509::subject(c.as_ref()));
        let external_login = match (&cert, &subject) {
            (None, _) => Err("connection peer presented no TLS (x.509) certificate".to_owned()),
            (Some(_), None) => Err("no name found".to_owned()),
            (Some(_), Some(s)) if login_from == "common_name" => {
                let cns = s.common_names();
                if cns.is_empty() {
                    Err("no name found".to_owned())
                } else {
                    // Several CNs are joined with "," as RabbitMQ does.
                    Ok(cns.join(","))
                }
            }
            (Some(_), Some(s)) => Ok(s.distinguished_name()),
        };
        PeerTls {
            protocol: session
                .protocol_version()
                .map(version_name)
                .unwrap_or("unknown"),
            cipher: session
                .negotiated_cipher_suite()
                .map(|s| suite_name(&s))
                .unwrap_or_default(),
            peer_cert_subject: subject.map(|s| s.distinguished_name()),
            external_login,
        }
    }
}

/// The amqps listener's TLS state: the settings and the configuration built from them,
/// replaced as a whole by [`Tls::reload`]. Read once per accepted connection, never on
/// the per-frame path; connections keep the configuration they started with.
pub struct Tls {
    settings: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Build from settings; fails (naming key and file) if a file is missing or bad.
    pub fn load(settings: &TlsConfig) -> Result<Arc<Tls>, String> {
        let config = server_config(settings)?;
        Ok(Arc::new(Tls {
            settings: settings.clone(),
            acceptor: RwLock::new(TlsAcceptor::from(config)),
        }))
    }

    /// Re-read the certificate, key and CA files (SIGHUP). On failure the previous
    /// configuration stays in use and the error is returned for the log.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.settings)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(config);
        Ok(())
    }

    pub fn settings(&self) -> &TlsConfig {
        &self.settings
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TLS handshake on an accepted socket, bounded by `tls.handshake_timeout`. A
    /// failure is logged once, naming the peer and the reason, and returns `None`.
    pub async fn accept(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, PeerTls)> {
        let timeout = Duration::from_secs(self.settings.handshake_timeout);
        let acceptor = self.acceptor();
        let handshake = async {
            // A client speaking plain AMQP to this port starts with "AMQP": say so
            // rather than leave the operator to decode a TLS parse error.
            let mut first = [0u8; 4];
            if let Ok(4) = socket.peek(&mut first).await {
                if &first == b"AMQP" {
                    return Err(
                        "the client sent plain AMQP to the TLS port (it should use amqps, or the AMQP port)"
                            .to_owned(),
                    );
                }
            }
            acceptor
                .accept(socket)
                .await
                .map_err(|e| describe_handshake_error(&e))
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => {
                let info = PeerTls::of(&stream, &self.settings.ssl_cert_login_from);
                Some((stream, info))
            }
            Ok(Err(why)) => {
                tracing::warn!(peer = %peer, "TLS handshake failed: {why}");
                None
            }
            Err(_) => {
                tracing::warn!(peer = %peer, "TLS handshake failed: not completed in {}s", timeout.as_secs());
                None
            }
        }
    }
}

/// rustls' error behind tokio-rustls' io::Error, in words an operator can act on.
fn describe_handshake_error(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the client's certificate was refused: {c:?}")
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            "the client presented no certificate (tls.fail_if_no_peer_cert is true)".to_owned()
        }
        Some(rustls::Error::AlertReceived(a)) => {
            format!("the client aborted the handshake with alert {a:?} (does it trust this server's certificate?)")
        }
        Some(other) => other.to_string(),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the client closed the connection during the handshake".to_owned()
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn versions_by_rabbitmq_names() {
        assert_eq!(
            protocol_versions(&v(&["tlsv1.3", "tlsv1.2"]))
                .unwrap()
                .len(),
            2
        );
        assert!(protocol_versions(&v(&["tlsv1.1"]))
            .unwrap_err()
            .contains("not supported"));
        assert!(protocol_versions(&v(&["tls9"])).is_err());
        assert!(protocol_versions(&[]).is_err());
    }

    #[test]
    fn ciphers_by_iana_or_openssl_name() {
        let both = v(&["tlsv1.3", "tlsv1.2"]);
        let s = cipher_suites(
            &v(&["TLS13_AES_128_GCM_SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]),
            &both,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(suite_name(&s[1]), "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        assert!(cipher_suites(&v(&["RC4-MD5"]), &both).is_err());
        // TLS 1.2 enabled but only a TLS 1.3 suite listed.
        let e = cipher_suites(&v(&["TLS13_AES_128_GCM_SHA256"]), &both).unwrap_err();
        assert!(e.contains("tlsv1.2"), "{e}");
        assert!(cipher_suites(&v(&["TLS13_AES_128_GCM_SHA256"]), &v(&["tlsv1.3"])).is_ok());
        assert_eq!(cipher_suites(&[], &both).unwrap().len(), 9);
    }

    #[test]
    fn subject_of_a_real_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "GB");
        dn.push(rcgen::DnType::OrganizationName, "Example, Ltd");
        dn.push(rcgen::DnType::CommonName, "app1");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let s = x509::subject(cert.der()).expect("a subject");
        assert_eq!(s.distinguished_name(), "CN=app1,O=Example\\, Ltd,C=GB");
        assert_eq!(s.common_names(), vec!["app1".to_owned()]);
    }

    #[test]
    fn missing_files_are_named() {
        let t = TlsConfig {
            certfile: "/nonexistent/cert.pem".into(),
            keyfile: "/nonexistent/key.pem".into(),
            ..TlsConfig::default()
        };
        let e = server_config(&t).unwrap_err();
        assert!(e.contains("tls.certfile /nonexistent/cert.pem"), "{e}");
    }
}
