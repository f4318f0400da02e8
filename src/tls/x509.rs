//! Just enough DER to read a certificate's subject: the distinguished name as RabbitMQ
//! prints it (`rabbit_cert_info:subject/1`) and its common names, for SASL EXTERNAL and
//! `warrenctl list_connections peer_cert_subject`. The certificate has already been
//! verified by rustls when this runs, so this parser only has to be safe, not strict:
//! anything unexpected is `None`, never a panic.

/// One attribute of a relative distinguished name: its OID (DER content bytes) and value.
struct Attribute<'a> {
    oid: &'a [u8],
    tag: u8,
    value: &'a [u8],
}

/// A certificate subject, in certificate order (most significant RDN first).
pub struct Subject<'a> {
    rdns: Vec<Vec<Attribute<'a>>>,
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;

/// OID of commonName, 2.5.4.3.
const CN: &[u8] = &[0x55, 0x04, 0x03];

/// Split one DER element off the front: (tag, content, rest).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

/// The subject of a DER certificate.
pub fn subject(cert: &[u8]) -> Option<Subject<'_>> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    let (_serial, rest) = expect(tbs, INTEGER)?;
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (_issuer, rest) = expect(rest, SEQUENCE)?;
    let (_validity, rest) = expect(rest, SEQUENCE)?;
    let (mut name, _) = expect(rest, SEQUENCE)?;
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, rest) = expect(name, SET)?;
        name = rest;
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let (atv, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = expect(atv, OID)?;
            let (tag, value, _) = element(value)?;
            rdn.push(Attribute { oid, tag, value });
        }
        rdns.push(rdn);
    }
    Some(Subject { rdns })
}

impl Subject<'_> {
    /// RFC 4514 order (last RDN first), `+` inside multi-valued RDNs, RabbitMQ's short
    /// attribute names and escaping: `CN=client,O=example,C=GB`.
    pub fn distinguished_name(&self) -> String {
        self.rdns
            .iter()
            .rev()
            .map(|rdn| {
                rdn.iter()
                    .map(|a| format!("{}={}", attribute_name(a.oid), escape(&a.text())))
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every commonName value, in certificate order.
    pub fn common_names(&self) -> Vec<String> {
        self.rdns
            .iter()
            .flatten()
            .filter(|a| a.oid == CN)
            .map(Attribute::text)
            .collect()
    }
}

impl Attribute<'_> {
    /// The value as text: the directory string types decoded to UTF-8; anything else
    /// as RFC 4514's `#` and hex of its content.
    fn text(&self) -> String {
        let v = self.value;
        match self.tag {
            // UTF8String, PrintableString, IA5String (domainComponent, emailAddress).
            0x0c | 0x13 | 0x16 => String::from_utf8_lossy(v).into_owned(),
            // TeletexString, read as ISO-8859-1 as RabbitMQ does.
            0x14 => v.iter().map(|&b| char::from(b)).collect(),
            // BMPString (UCS-2) and UniversalString (UCS-4), big-endian.
            0x1e => char::decode_utf16(v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
            0x1c => v
                .chunks_exact(4)
                .map(|c| {
                    char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or(char::REPLACEMENT_CHARACTER)
                })
                .collect(),
            _ => {
                let mut s = String::from("#");
                for b in v {
                    s.push_str(&format!("{b:02X}"));
                }
                s
            }
        }
    }
}

/// RabbitMQ's names for the attribute types it knows; dotted decimal otherwise.
fn attribute_name(oid: &[u8]) -> String {
    let dotted = dotted(oid);
    let name = match dotted.as_str() {
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GIVENNAME",
        "2.5.4.43" => "INITIALS",
        "2.5.4.44" => "GENERATIONQUALIFIER",
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "TITLE",
        "2.5.4.6" => "C",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.65" => "PSEUDONYM",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return dotted,
    };
    name.to_owned()
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// RFC 4514 escaping as rabbit_cert_info does it: a leading space or `#` and a trailing
/// space, the special characters, and every byte outside printable ASCII as `\XX`
/// (non-ASCII characters byte by byte of their UTF-8).
fn escape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        match b {
            b' ' | b'#' if first => {
                out.push('\\');
                out.push(char::from(b));
            }
            b' ' if last => out.push_str("\\ "),
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b if !(32..126).contains(&b) => out.push_str(&format!("\\{b:02X}")),
            b => out.push(char::from(b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_rabbitmq() {
        assert_eq!(escape("plain name"), "plain name");
        assert_eq!(escape(" lead"), "\\ lead");
        assert_eq!(escape("#hash"), "\\#hash");
        assert_eq!(escape("trail "), "trail\\ ");
        assert_eq!(
            escape("a,b+c\"d\\e<f>g;h"),
            "a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h"
        );
        assert_eq!(escape("é~"), "\\C3\\A9\\7E");
    }

    #[test]
    fn oids_print_dotted() {
        assert_eq!(dotted(&[0x55, 0x04, 0x03]), "2.5.4.3");
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
            "1.2.840.113549.1.9.1"
        );
        assert_eq!(attribute_name(&[0x55, 0x04, 0x63]), "2.5.4.99");
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert!(subject(&[]).is_none());
        assert!(subject(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(subject(&[0x30, 0x03, 0x30, 0x01]).is_none());
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = subject(&junk);
        }
    }
}
