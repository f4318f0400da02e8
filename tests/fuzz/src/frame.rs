//! Target `frame`: the frame reader (`protocol::frame::decode`) and the per-message
//! codec a publish goes through: basic.publish and the other hand-decoded methods,
//! content-header properties (`protocol::properties`, including the rewrites
//! dead-lettering and direct reply-to make), and the body frames that follow.
//!
//! Input: a client's byte stream (an optional protocol header, then frames).
//!
//! Checks beyond "no panic":
//! - the stream read whole and the stream read a few bytes at a time give the same
//!   frames and the same error (a slow socket must not change what is read);
//! - a content header the broker accepts, rewritten as dead-lettering or direct
//!   reply-to rewrites it, is still a content header the broker accepts, with the other
//!   properties unchanged.

use bytes::{Bytes, BytesMut};
use warren::protocol::frame::{self, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use warren::protocol::method::{self, Method};
use warren::protocol::properties::{self, Properties};
use warren::protocol::PROTOCOL_HEADER;

#[derive(Debug, PartialEq, Eq)]
struct Read {
    frames: Vec<(u8, u16, Bytes)>,
    error: Option<String>,
}

/// Read every frame `frame::decode` finds in `stream`, handing it the bytes `step` at a
/// time (all at once for `None`).
fn read(stream: &[u8], frame_max: u32, step: Option<usize>) -> Read {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut out = Read {
        frames: Vec::new(),
        error: None,
    };
    loop {
        match frame::decode(&mut buf, frame_max) {
            Ok(Some(f)) => {
                // The payload is exactly what the header announced.
                assert!(frame_max == 0 || f.payload.len() <= frame_max as usize);
                out.frames.push((f.kind, f.channel, f.payload));
            }
            Ok(None) if fed < stream.len() => {
                let n = step.unwrap_or(stream.len()).min(stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
            }
            Ok(None) => return out,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        }
    }
}

pub fn run(data: &[u8]) {
    let stream = data.strip_prefix(&PROTOCOL_HEADER[..]).unwrap_or(data);
    let whole = read(stream, 131_072, None);
    let step = 1 + data.len() % 11;
    assert_eq!(
        whole,
        read(stream, 131_072, Some(step)),
        "reading {step} bytes at a time changed what was read"
    );
    // The smallest frame_max a client may negotiate: an oversized frame is refused from
    // its header alone.
    let _ = read(stream, frame::FRAME_MIN_SIZE, Some(7));

    // What a channel does with them: method, then content header, then body frames.
    let mut expect_body: Option<u64> = None;
    for (kind, _channel, payload) in &whole.frames {
        match *kind {
            FRAME_METHOD => {
                expect_body = None;
                match method::decode(payload) {
                    Ok(Method::Publish(p)) => {
                        assert!(p.exchange.len() <= 255 && p.routing_key.len() <= 255);
                    }
                    Ok(m) => {
                        let _ = format!("{m:?}");
                    }
                    Err(e) => {
                        let _ = warren::channel::decode_error(e, payload).text;
                    }
                }
            }
            FRAME_HEADER => {
                if payload.len() >= 14 {
                    expect_body = Some(u64::from_be_bytes(payload[4..12].try_into().unwrap()));
                    content_header(&payload[12..]);
                }
            }
            FRAME_BODY => {
                if let Some(left) = expect_body.as_mut() {
                    *left = left.saturating_sub(payload.len() as u64);
                }
            }
            _ => {}
        }
    }
    // The property walker also sees every body, as if it were a property list.
    if let Some((_, _, p)) = whole.frames.last() {
        content_header(p);
    }
}

/// Everything the broker reads out of, or writes into, a content header's properties.
pub fn content_header(raw: &[u8]) {
    let parsed = Properties::parse(raw);
    let _ = properties::expiration_ms(raw);
    let _ = properties::priority(raw);
    let _ = properties::headers_payload(raw);
    let Some(p) = parsed else {
        // The rewrites refuse what the parser refuses (they only run on accepted ones).
        return;
    };
    assert_eq!(properties::priority(raw), p.priority);
    let headers = p.headers(raw);
    if headers.is_some() {
        assert!(p.has_headers());
    } else if let Some(h) = p.headers_payload(raw) {
        // The depth check passed, so only amq-protocol's stricter reading can refuse it.
        assert!(
            crate::table::has_non_utf8_key(h),
            "accepted headers that do not decode: {h:02x?}"
        );
    }
    if let Some(e) = p.expiration(raw) {
        let _ = properties::parse_expiration(e);
    }
    let _ = (p.user_id(raw), p.reply_to(raw), p.persistent());
    if let Some(h) = p.headers_payload(raw) {
        assert_eq!(properties::headers_payload(raw), Some(h));
    }

    // Dead-lettering: a new headers table (here: the old one plus a field), with and
    // without the expiration property.
    let old = p.headers_payload(raw).unwrap_or_default();
    let mut new_headers = old.to_vec();
    new_headers.extend_from_slice(b"\x07x-death");
    new_headers.extend_from_slice(&warren::protocol::table::array(&[
        warren::protocol::table::long(1),
    ]));
    for drop_expiration in [false, true] {
        let out = if drop_expiration {
            properties::rewrite_headers_drop_expiration(raw, &new_headers)
        } else {
            properties::rewrite_headers(raw, &new_headers)
        }
        .expect("a parsed property list can be rewritten");
        let q = Properties::parse(&out).unwrap_or_else(|| {
            panic!("rewritten headers do not parse again: {raw:02x?} -> {out:02x?}")
        });
        assert_eq!(q.headers_payload(&out), Some(&new_headers[..]));
        assert_eq!(q.delivery_mode, p.delivery_mode);
        assert_eq!(q.priority, p.priority);
        assert_eq!(q.user_id(&out), p.user_id(raw));
        assert_eq!(q.reply_to(&out), p.reply_to(raw));
        if drop_expiration {
            assert_eq!(q.expiration(&out), None);
        } else {
            assert_eq!(q.expiration(&out), p.expiration(raw));
        }
    }

    // Direct reply-to: reply_to replaced by the broker's own name.
    let name = b"amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNzQ5NjYwMAAAHaEAAAAAYP7zHw==.aF1";
    let out = properties::rewrite_reply_to(raw, name).expect("parsed, so rewritable");
    let q = Properties::parse(&out).expect("rewritten reply_to parses again");
    assert_eq!(q.reply_to(&out), Some(&name[..]));
    assert_eq!(q.headers_payload(&out), p.headers_payload(raw));
    assert_eq!(q.expiration(&out), p.expiration(raw));
}
