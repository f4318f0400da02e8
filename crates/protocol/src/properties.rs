//! Basic-class content-header properties, read in place from the raw bytes.
//!
//! The broker stores the publisher's property bytes (flags + values) verbatim and writes
//! them back out unchanged on delivery, so a client's field tables keep their type tags
//! and key order. This module only locates the few properties the broker itself acts on.

use amq_protocol::types::FieldTable;

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;

/// Where each present property sits inside the raw bytes. Built by [`Properties::parse`],
/// which also validates the whole property list.
#[derive(Debug, Default, Clone, Copy)]
pub struct Properties {
    pub flags: u16,
    headers: Option<(usize, usize)>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    expiration: Option<(usize, usize)>,
    user_id: Option<(usize, usize)>,
    reply_to: Option<(usize, usize)>,
}

impl Properties {
    /// Walk the property list once. `None` if it is truncated or malformed.
    pub fn parse(raw: &[u8]) -> Option<Properties> {
        let mut p = Properties::default();
        if raw.len() < 2 {
            return None;
        }
        let flags = u16::from_be_bytes([raw[0], raw[1]]);
        if flags & 1 != 0 {
            // Continuation flags are not used by any basic-class property.
            return None;
        }
        p.flags = flags;
        let mut pos = 2usize;
        let shortstr = |pos: &mut usize| -> Option<(usize, usize)> {
            let len = *raw.get(*pos)? as usize;
            let start = *pos + 1;
            (start + len <= raw.len()).then(|| {
                *pos = start + len;
                (start, start + len)
            })
        };
        for bit in (2..16).rev() {
            let flag = 1u16 << bit;
            if flags & flag == 0 {
                continue;
            }
            match flag {
                HEADERS => {
                    let len = u32::from_be_bytes(raw.get(pos..pos + 4)?.try_into().ok()?) as usize;
                    let end = pos.checked_add(4 + len)?;
                    if end > raw.len() {
                        return None;
                    }
                    // Walked here, once, so that nothing later (routing, dead-lettering,
                    // the management API, recovery) can meet a table too deep to decode.
                    super::table::check(&raw[pos + 4..end]).ok()?;
                    p.headers = Some((pos, end));
                    pos = end;
                }
                DELIVERY_MODE => {
                    p.delivery_mode = Some(*raw.get(pos)?);
                    pos += 1;
                }
                PRIORITY => {
                    p.priority = Some(*raw.get(pos)?);
                    pos += 1;
                }
                TIMESTAMP => {
                    raw.get(pos..pos + 8)?;
                    pos += 8;
                }
                EXPIRATION => p.expiration = Some(shortstr(&mut pos)?),
                USER_ID => p.user_id = Some(shortstr(&mut pos)?),
                REPLY_TO => p.reply_to = Some(shortstr(&mut pos)?),
                CONTENT_TYPE | CONTENT_ENCODING | CORRELATION_ID | MESSAGE_ID | TYPE | APP_ID
                | CLUSTER_ID => {
                    shortstr(&mut pos)?;
                }
                _ => return None,
            }
        }
        (pos == raw.len()).then_some(p)
    }

    /// The headers table, decoded (only the headers exchange needs it).
    pub fn headers(&self, raw: &[u8]) -> Option<FieldTable> {
        let (start, end) = self.headers?;
        super::table::decode(&raw[start..end]).ok()
    }

    /// Whether the publisher sent a headers table (a flag test, no parsing).
    pub fn has_headers(&self) -> bool {
        self.headers.is_some()
    }

    /// The headers table's payload (after its length prefix), undecoded.
    pub fn headers_payload<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        self.headers.map(|(s, e)| &raw[s + 4..e])
    }

    pub fn user_id<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        self.user_id.map(|(s, e)| &raw[s..e])
    }

    pub fn reply_to<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        self.reply_to.map(|(s, e)| &raw[s..e])
    }

    pub fn expiration<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        self.expiration.map(|(s, e)| &raw[s..e])
    }

    pub fn persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }
}

/// The raw value span of each present property, indexed by flag bit (15 = content-type
/// ... 2 = cluster-id).
type Spans = [Option<(usize, usize)>; 16];

/// The flags and the span of every present property; `None` if the list is malformed.
fn spans(raw: &[u8]) -> Option<(u16, Spans)> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    let mut out = [None; 16];
    let mut pos = 2usize;
    for bit in (2..16).rev() {
        let flag = 1u16 << bit;
        if flags & flag == 0 {
            continue;
        }
        let len = match flag {
            HEADERS => 4 + u32::from_be_bytes(raw.get(pos..pos + 4)?.try_into().ok()?) as usize,
            DELIVERY_MODE | PRIORITY => 1,
            TIMESTAMP => 8,
            _ => 1 + *raw.get(pos)? as usize,
        };
        let end = pos.checked_add(len)?;
        if end > raw.len() {
            return None;
        }
        out[bit] = Some((pos, end));
        pos = end;
    }
    (pos == raw.len()).then_some((flags, out))
}

/// Fast path for queues: the `expiration` property in milliseconds, looking at the flag
/// bits first so messages without one cost a byte test.
pub fn expiration_ms(raw: &[u8]) -> Option<u64> {
    if raw.first()? & (EXPIRATION >> 8) as u8 == 0 {
        return None;
    }
    let p = Properties::parse(raw)?;
    parse_expiration(p.expiration(raw)?).ok()
}

/// The `priority` property (priority queues only ask).
pub fn priority(raw: &[u8]) -> Option<u8> {
    if raw.first()? & (PRIORITY >> 8) as u8 == 0 {
        return None;
    }
    Properties::parse(raw)?.priority
}

/// rabbit_basic:parse_expiration: Erlang's string:to_integer (optional sign, digits),
/// then rabbit_misc:check_expiry. The error is RabbitMQ's term, as it prints it in
/// `invalid expiration '<x>': <term>`.
pub fn parse_expiration(v: &[u8]) -> Result<u64, String> {
    let (neg, digits_at) = match v.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let digits = v[digits_at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return Err("no_integer".to_owned());
    }
    let end = digits_at + digits;
    let text = std::str::from_utf8(&v[digits_at..end]).unwrap_or("0");
    if end < v.len() {
        return Err(format!(
            "{{leftover_string,\"{}\"}}",
            String::from_utf8_lossy(&v[end..])
        ));
    }
    // Beyond u64 is beyond any timer; treat it as the longest expiry.
    let n: u64 = text.parse().unwrap_or(u64::MAX);
    if neg && n != 0 {
        return Err(format!("{{value_negative,-{text}}}"));
    }
    Ok(n)
}

/// The same property list with a new headers table and without `expiration`; every
/// other property's bytes are copied unchanged. `headers` is the table's payload (no
/// length prefix). `None` if `raw` is malformed.
pub fn rewrite_headers_drop_expiration(raw: &[u8], headers: &[u8]) -> Option<Vec<u8>> {
    rewrite(raw, headers, true)
}

/// The same property list with a new headers table (`headers` is its payload); every
/// other property's bytes are copied unchanged. `None` if `raw` is malformed.
pub fn rewrite_headers(raw: &[u8], headers: &[u8]) -> Option<Vec<u8>> {
    rewrite(raw, headers, false)
}

fn rewrite(raw: &[u8], headers: &[u8], drop_expiration: bool) -> Option<Vec<u8>> {
    let (flags, spans) = spans(raw)?;
    let new_flags = if drop_expiration {
        (flags | HEADERS) & !EXPIRATION
    } else {
        flags | HEADERS
    };
    let mut out = Vec::with_capacity(raw.len() + headers.len() + 4);
    out.extend_from_slice(&new_flags.to_be_bytes());
    for bit in (2..16).rev() {
        let flag = 1u16 << bit;
        if flag == HEADERS {
            out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
            out.extend_from_slice(headers);
        } else if flag == EXPIRATION && drop_expiration {
            continue;
        } else if let Some((s, e)) = spans[bit] {
            out.extend_from_slice(&raw[s..e]);
        }
    }
    Some(out)
}

/// The same property list with `reply_to` set to `value` (at most 255 bytes); every
/// other property's bytes are copied unchanged. `None` if `raw` is malformed.
pub fn rewrite_reply_to(raw: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let (flags, spans) = spans(raw)?;
    let value = &value[..value.len().min(255)];
    let mut out = Vec::with_capacity(raw.len() + value.len() + 1);
    out.extend_from_slice(&(flags | REPLY_TO).to_be_bytes());
    for bit in (2..16).rev() {
        if 1u16 << bit == REPLY_TO {
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        } else if let Some((s, e)) = spans[bit] {
            out.extend_from_slice(&raw[s..e]);
        }
    }
    Some(out)
}

/// The raw headers table payload (after its length), if present.
pub fn headers_payload(raw: &[u8]) -> Option<&[u8]> {
    let (_, spans) = spans(raw)?;
    let (s, e) = spans[13]?;
    Some(&raw[s + 4..e])
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use amq_protocol::types::{AMQPValue, ShortString};

    fn raw(p: &AMQPProperties) -> Vec<u8> {
        gen_properties(p)(WriteContext::from(Vec::new()))
            .unwrap()
            .write
    }

    #[test]
    fn finds_headers_delivery_mode_and_user_id() {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("k"), AMQPValue::LongInt(7));
        let p = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers.clone())
            .with_delivery_mode(2)
            .with_expiration("100".into())
            .with_timestamp(5)
            .with_user_id("guest".into())
            .with_app_id("app".into());
        let bytes = raw(&p);
        let parsed = Properties::parse(&bytes).unwrap();
        assert!(parsed.persistent());
        assert_eq!(parsed.headers(&bytes), Some(headers));
        assert_eq!(parsed.user_id(&bytes), Some(&b"guest"[..]));
        assert_eq!(parsed.expiration(&bytes), Some(&b"100"[..]));
    }

    #[test]
    fn empty_and_truncated_lists() {
        assert!(Properties::parse(&[0, 0]).is_some());
        assert!(Properties::parse(&[0x80, 0, 5, b'a']).is_none());
        assert!(Properties::parse(&[0x20, 0, 0, 0, 0, 9]).is_none());
        assert!(Properties::parse(&[]).is_none());
    }

    #[test]
    fn expiration_texts_match_rabbitmq() {
        assert_eq!(parse_expiration(b"100"), Ok(100));
        assert_eq!(parse_expiration(b"+5"), Ok(5));
        assert_eq!(parse_expiration(b"007"), Ok(7));
        assert_eq!(
            parse_expiration(b"-1"),
            Err("{value_negative,-1}".to_owned())
        );
        assert_eq!(parse_expiration(b"abc"), Err("no_integer".to_owned()));
        assert_eq!(parse_expiration(b""), Err("no_integer".to_owned()));
        assert_eq!(parse_expiration(b" 5"), Err("no_integer".to_owned()));
        assert_eq!(
            parse_expiration(b"1.5"),
            Err("{leftover_string,\".5\"}".to_owned())
        );
    }

    #[test]
    fn rewrite_keeps_other_properties() {
        let p = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_priority(3)
            .with_expiration("100".into())
            .with_app_id("app".into());
        let bytes = raw(&p);
        let out = rewrite_headers_drop_expiration(&bytes, &[1, b'k', b'V']).unwrap();
        let parsed = Properties::parse(&out).unwrap();
        assert_eq!(parsed.expiration(&out), None);
        assert_eq!(parsed.priority, Some(3));
        assert_eq!(headers_payload(&out), Some(&[1, b'k', b'V'][..]));
        let want = raw(&AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers({
                let mut t = FieldTable::default();
                t.insert(ShortString::from("k"), AMQPValue::Void);
                t
            })
            .with_priority(3)
            .with_app_id("app".into()));
        assert_eq!(out, want);
        assert_eq!(expiration_ms(&bytes), Some(100));
        assert_eq!(priority(&bytes), Some(3));
        assert_eq!(expiration_ms(&out), None);
    }
}
