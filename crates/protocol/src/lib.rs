//! The AMQP 0-9-1 wire format.
//!
//! `frame` cuts the byte stream into frames (checking `frame_max` on the 7-byte header,
//! before anything is buffered); `method` decodes and encodes methods, with the
//! per-message ones (publish, deliver, ack, nack, reject) hand-written and the rest
//! delegated to amq-protocol; `properties` reads the few content-header properties the
//! broker needs out of the raw bytes a publisher sent, which are otherwise passed
//! through untouched; `outbuf` collects outgoing frames for the connection's writer.

pub mod frame;
pub mod method;
pub mod outbuf;
pub mod properties;
pub mod table;

pub use amq_protocol::protocol::AMQPClass;
pub use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The protocol header a 0-9-1 client sends first, and what we answer to any other.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Class ids used on the hot path.
pub const CLASS_BASIC: u16 = 60;

/// Build a short string from client- or broker-provided text, truncating at 255 bytes
/// (on a char boundary) instead of panicking as `ShortString::from` does.
pub fn short(s: impl Into<String>) -> ShortString {
    let mut s = s.into();
    if s.len() > 255 {
        let mut cut = 255;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    ShortString::try_new(s)
        .unwrap_or_else(|_| ShortString::try_new(String::new()).unwrap_or_default())
}
