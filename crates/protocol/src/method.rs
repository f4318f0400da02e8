//! Method frames. The per-message methods are decoded and encoded by hand (amq-protocol's
//! generic path costs about 10x more on publish/deliver); everything else goes through
//! amq-protocol's generated types.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{gen_class, parse_class, AMQPClass};
use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{put_header, FRAME_END, FRAME_METHOD};

/// A decoded method. Hot-path methods keep borrowed `Bytes` slices of the read buffer.
#[derive(Debug)]
pub enum Method {
    Publish(Publish),
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        delivery_tag: u64,
        requeue: bool,
    },
    /// Hand-decoded because amq-protocol drops prefetch_size, which RabbitMQ refuses if set.
    Qos {
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    },
    Other(Box<AMQPClass>),
}

#[derive(Debug, Clone)]
pub struct Publish {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub mandatory: bool,
    pub immediate: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Truncated or ill-formed arguments: SYNTAX_ERROR (502).
    Syntax { class_id: u16, method_id: u16 },
    /// A class or method this protocol does not have: NOT_IMPLEMENTED... RabbitMQ answers
    /// COMMAND_INVALID (503) for an unknown method id.
    Unknown { class_id: u16, method_id: u16 },
    /// An arguments or properties table nested deeper than warren decodes.
    TooDeep { class_id: u16, method_id: u16 },
    /// A short string argument (a name, a reply text) that is not UTF-8, which RabbitMQ
    /// refuses as a frame error (its framing asserts UTF-8 on every method short string
    /// but basic.publish's; field names inside tables are repaired instead).
    Utf8,
}

/// A bounds-checked cursor over a method payload.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let s = self.buf.get(self.pos..self.pos + 2)?;
        self.pos += 2;
        Some(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let s = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let s = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Some(u64::from_be_bytes(a))
    }
    fn shortstr(&mut self) -> Option<Bytes> {
        let len = self.u8()? as usize;
        if self.pos + len > self.buf.len() {
            return None;
        }
        let s = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Some(s)
    }
}

pub fn class_method(payload: &[u8]) -> (u16, u16) {
    match payload {
        [a, b, c, d, ..] => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
        [a, b, ..] => (u16::from_be_bytes([*a, *b]), 0),
        _ => (0, 0),
    }
}

pub fn decode(payload: &Bytes) -> Result<Method, DecodeError> {
    let (class_id, method_id) = class_method(payload);
    let syntax = DecodeError::Syntax {
        class_id,
        method_id,
    };
    if payload.len() < 4 {
        return Err(syntax);
    }
    let mut r = Reader {
        buf: payload,
        pos: 4,
    };
    let hot = match (class_id, method_id) {
        (60, 40) => (|| {
            r.u16()?; // reserved (ticket)
            let exchange = r.shortstr()?;
            let routing_key = r.shortstr()?;
            let bits = r.u8()?;
            Some(Method::Publish(Publish {
                exchange,
                routing_key,
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            }))
        })(),
        (60, 10) => (|| {
            let prefetch_size = r.u32()?;
            let prefetch_count = r.u16()?;
            let bits = r.u8()?;
            Some(Method::Qos {
                prefetch_size,
                prefetch_count,
                global: bits & 1 != 0,
            })
        })(),
        (60, 80) => (|| {
            let delivery_tag = r.u64()?;
            let bits = r.u8()?;
            Some(Method::Ack {
                delivery_tag,
                multiple: bits & 1 != 0,
            })
        })(),
        (60, 90) => (|| {
            let delivery_tag = r.u64()?;
            let bits = r.u8()?;
            Some(Method::Reject {
                delivery_tag,
                requeue: bits & 1 != 0,
            })
        })(),
        (60, 120) => (|| {
            let delivery_tag = r.u64()?;
            let bits = r.u8()?;
            Some(Method::Nack {
                delivery_tag,
                multiple: bits & 1 != 0,
                requeue: bits & 2 != 0,
            })
        })(),
        _ => {
            let mut repaired = None;
            if let Some(table) = table_argument(class_id, method_id, payload) {
                match super::table::check_framed(table) {
                    Err(super::table::Refused::TooDeep) => {
                        return Err(DecodeError::TooDeep {
                            class_id,
                            method_id,
                        })
                    }
                    Err(super::table::Refused::Malformed) => return Err(syntax),
                    Ok(len) => {
                        if let Some(t) = super::table::repair_keys(&table[..len]) {
                            let at = payload.len() - table.len();
                            let mut p = payload[..at].to_vec();
                            p.extend_from_slice(&t);
                            p.extend_from_slice(&table[len..]);
                            repaired = Some(p);
                        }
                    }
                }
            }
            return match parse_class(repaired.as_deref().unwrap_or(payload)) {
                Ok((_, class)) => Ok(Method::Other(Box::new(class))),
                Err(_) if !known(class_id, method_id) => Err(DecodeError::Unknown {
                    class_id,
                    method_id,
                }),
                Err(e) if is_utf8_error(&e) => Err(DecodeError::Utf8),
                Err(_) => Err(syntax),
            };
        }
    };
    hot.ok_or(syntax)
}

/// Where the field table of a method that carries one starts (its length prefix first),
/// so that it can be checked before amq-protocol's recursive parser sees it. `None` for
/// methods without a table, and where the fields before it are truncated (the parser
/// then refuses the frame without reaching a table).
fn table_argument(class_id: u16, method_id: u16, payload: &Bytes) -> Option<&[u8]> {
    let mut r = Reader {
        buf: payload,
        pos: 4,
    };
    match (class_id, method_id) {
        // connection.start: version major, minor, server-properties.
        (10, 10) => {
            r.u16()?;
        }
        // connection.start-ok: client-properties first.
        (10, 11) => {}
        // exchange.declare: ticket, exchange, type, bits, arguments.
        (40, 10) => {
            r.u16()?;
            r.shortstr()?;
            r.shortstr()?;
            r.u8()?;
        }
        // exchange.bind/unbind, queue.bind: ticket, three names, bits, arguments.
        (40, 30) | (40, 40) | (50, 20) => {
            r.u16()?;
            r.shortstr()?;
            r.shortstr()?;
            r.shortstr()?;
            r.u8()?;
        }
        // queue.declare: ticket, queue, bits, arguments.
        (50, 10) => {
            r.u16()?;
            r.shortstr()?;
            r.u8()?;
        }
        // queue.unbind: ticket, queue, exchange, routing key, arguments (no bits).
        (50, 50) => {
            r.u16()?;
            r.shortstr()?;
            r.shortstr()?;
            r.shortstr()?;
        }
        // basic.consume: ticket, queue, consumer tag, bits, arguments.
        (60, 20) => {
            r.u16()?;
            r.shortstr()?;
            r.shortstr()?;
            r.u8()?;
        }
        _ => return None,
    }
    payload.get(r.pos..)
}

/// Whether amq-protocol refused a short string for not being UTF-8: the only `map_res` in
/// its parsers is the short string's UTF-8 conversion (pinned by a test below).
fn is_utf8_error(e: &impl std::fmt::Debug) -> bool {
    format!("{e:?}").contains("MapRes")
}

/// Whether (class, method) exists in AMQP 0-9-1 (RabbitMQ's variant).
fn known(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// Encode any method through amq-protocol (control methods: not per message).
pub fn encode(out: &mut BytesMut, channel: u16, class: &AMQPClass) {
    let mut body = Vec::with_capacity(64);
    match gen_class(class)(WriteContext::from(body)) {
        Ok(ctx) => body = ctx.write,
        Err(e) => {
            // Only reachable if we built an invalid method ourselves.
            tracing::error!(error = %e, "failed to encode {:?}", class);
            return;
        }
    }
    put_header(out, FRAME_METHOD, channel, body.len() as u32);
    out.extend_from_slice(&body);
    out.put_u8(FRAME_END);
}

#[inline]
fn put_shortstr(out: &mut BytesMut, s: &[u8]) {
    let n = s.len().min(255);
    out.put_u8(n as u8);
    out.extend_from_slice(&s[..n]);
}

/// Start a method frame whose payload length is patched in by [`finish`].
#[inline]
fn begin(out: &mut BytesMut, channel: u16, class_id: u16, method_id: u16) -> usize {
    put_header(out, FRAME_METHOD, channel, 0);
    let start = out.len();
    out.put_u16(class_id);
    out.put_u16(method_id);
    start
}

#[inline]
fn finish(out: &mut BytesMut, start: usize) {
    let size = (out.len() - start) as u32;
    out[start - 4..start].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

pub fn encode_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let start = begin(out, channel, 60, 60);
    put_shortstr(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_shortstr(out, exchange);
    put_shortstr(out, routing_key);
    finish(out, start);
}

#[allow(clippy::too_many_arguments)]
pub fn encode_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    let start = begin(out, channel, 60, 71);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_shortstr(out, exchange);
    put_shortstr(out, routing_key);
    out.put_u32(message_count);
    finish(out, start);
}

pub fn encode_return(
    out: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let start = begin(out, channel, 60, 50);
    out.put_u16(reply_code);
    put_shortstr(out, reply_text.as_bytes());
    put_shortstr(out, exchange);
    put_shortstr(out, routing_key);
    finish(out, start);
}

/// Publisher-confirm ack (or nack when `nack`) sent by the broker.
pub fn encode_confirm(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    multiple: bool,
    nack: bool,
) {
    let start = begin(out, channel, 60, if nack { 120 } else { 80 });
    out.put_u64(delivery_tag);
    out.put_u8(multiple as u8);
    finish(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    fn payload_of(class: &AMQPClass) -> Bytes {
        let mut out = BytesMut::new();
        encode(&mut out, 1, class);
        let end = out.len() - 1;
        Bytes::copy_from_slice(&out[7..end])
    }

    #[test]
    fn hand_decoded_publish_matches_amq_protocol() {
        let class = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            mandatory: true,
            immediate: false,
        }));
        match decode(&payload_of(&class)).unwrap() {
            Method::Publish(p) => {
                assert_eq!(&p.exchange[..], b"ex");
                assert_eq!(&p.routing_key[..], b"a.b");
                assert!(p.mandatory && !p.immediate);
            }
            m => panic!("unexpected {m:?}"),
        }
    }

    #[test]
    fn hand_encoded_deliver_parses_with_amq_protocol() {
        let mut out = BytesMut::new();
        encode_deliver(&mut out, 5, b"ctag", 42, true, b"ex", b"rk");
        assert_eq!(out[0], FRAME_METHOD);
        assert_eq!(*out.last().unwrap(), FRAME_END);
        let (_, class) = parse_class(&out[7..out.len() - 1]).unwrap();
        assert_eq!(
            class,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into(),
            }))
        );
    }

    #[test]
    fn truncated_and_unknown_methods_are_errors_not_panics() {
        let p = Bytes::from_static(&[0, 60, 0, 40, 0]);
        assert!(matches!(decode(&p), Err(DecodeError::Syntax { .. })));
        let p = Bytes::from_static(&[0, 99, 0, 1]);
        assert!(matches!(decode(&p), Err(DecodeError::Unknown { .. })));
        let p = Bytes::from_static(&[0, 50, 0, 10, 0]);
        assert!(matches!(decode(&p), Err(DecodeError::Syntax { .. })));
    }

    /// A method's own short strings must be UTF-8 (RabbitMQ: "Malformed UTF-8 in
    /// shortstr"); field names inside its tables need not be.
    #[test]
    fn short_strings_must_be_utf8_field_names_need_not() {
        // queue.declare: ticket, name "q\xff", bits, empty table.
        let p = Bytes::from_static(b"\x00\x32\x00\x0a\x00\x00\x02q\xff\x00\x00\x00\x00\x00");
        assert_eq!(decode(&p).err(), Some(DecodeError::Utf8));
        // ... a truncated one is still a syntax error.
        let p = Bytes::from_static(b"\x00\x32\x00\x0a\x00\x00\x05q");
        assert!(matches!(decode(&p), Err(DecodeError::Syntax { .. })));
        // queue.declare "q" with the argument b"k\xff" = void.
        let p = Bytes::from_static(b"\x00\x32\x00\x0a\x00\x00\x01q\x00\x00\x00\x00\x04\x02k\xffV");
        let Ok(Method::Other(class)) = decode(&p) else {
            panic!("queue.declare with a non-UTF-8 argument name decodes")
        };
        let AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(d)) = *class else {
            panic!("{class:?}")
        };
        assert!(d.arguments.inner().contains_key("k?"));
    }
}
