//! Protocol versions and cipher suites by the names operators write: RabbitMQ's (Erlang
//! ssl's) version names, IANA and OpenSSL cipher names. Here, with the configuration,
//! which checks `[tls]` with it before anything is built; the broker's `tls` module
//! builds its rustls configuration from the same lists.

use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// TLS versions by the names RabbitMQ (Erlang's ssl) uses in `ssl_options.versions`.
pub fn protocol_versions(
    names: &[String],
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    if names.is_empty() {
        return Err("at least one version is needed (tlsv1.3, tlsv1.2)".to_owned());
    }
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    for name in names {
        let v: &'static SupportedProtocolVersion = match name.to_ascii_lowercase().as_str() {
            "tlsv1.3" => &rustls::version::TLS13,
            "tlsv1.2" => &rustls::version::TLS12,
            "tlsv1.1" | "tlsv1" | "sslv3" => {
                return Err(format!(
                    "'{name}' is not supported (insecure); use tlsv1.3 and/or tlsv1.2"
                ))
            }
            _ => return Err(format!("unknown TLS version '{name}' (tlsv1.3, tlsv1.2)")),
        };
        if !out.iter().any(|o| o.version == v.version) {
            out.push(v);
        }
    }
    Ok(out)
}

/// OpenSSL's names for the suites rustls implements, accepted beside the IANA names
/// (RabbitMQ's `ssl_options.ciphers` are usually written in OpenSSL's style).
const OPENSSL_NAMES: &[(&str, &str)] = &[
    ("TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"),
    ("TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS13_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

pub fn suite_name(s: &SupportedCipherSuite) -> String {
    s.suite()
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:?}", s.suite()))
}

/// The cipher suites to offer, in the configured order; all of ring's when `names` is
/// empty. Every enabled version must keep at least one suite.
pub fn cipher_suites(
    names: &[String],
    versions: &[String],
) -> Result<Vec<SupportedCipherSuite>, String> {
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    let mut out: Vec<SupportedCipherSuite> = Vec::new();
    for name in names {
        let wanted = OPENSSL_NAMES
            .iter()
            .find(|(openssl, _)| openssl.eq_ignore_ascii_case(name))
            .map(|(_, iana)| *iana)
            .unwrap_or(name.as_str());
        let Some(s) = all
            .iter()
            .find(|s| suite_name(s).eq_ignore_ascii_case(wanted))
        else {
            let known: Vec<String> = all.iter().map(suite_name).collect();
            return Err(format!(
                "unknown or unsupported cipher suite '{name}' (supported: {})",
                known.join(", ")
            ));
        };
        if !out.iter().any(|o| o.suite() == s.suite()) {
            out.push(*s);
        }
    }
    for v in protocol_versions(versions).unwrap_or_default() {
        if !out.iter().any(|s| s.version() == v) {
            return Err(format!(
                "no cipher suite for {} is listed; add one or remove that version from tls.versions",
                version_name(v.version)
            ));
        }
    }
    Ok(out)
}

pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "tlsv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "tlsv1.2",
        _ => "unknown",
    }
}
