//! Frames: `type(1) channel(2) size(4) payload(size) 0xCE`.

use bytes::{Buf, Bytes, BytesMut};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Header (7 bytes) plus end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate (AMQP 0-9-1 §4.2.3).
pub const FRAME_MIN_SIZE: u32 = 4096;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

/// A framing violation: always a connection-level FRAME_ERROR (501).
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge { size: usize, max: u32 },
    BadEnd(u8),
    UnknownType(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // RabbitMQ: "frame_too_large" with the sizes.
            FrameError::TooLarge { size, max } => {
                write!(f, "frame size {size} exceeds negotiated frame_max {max}")
            }
            FrameError::BadEnd(b) => write!(f, "invalid frame end octet {b:#04x}"),
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t}"),
        }
    }
}

/// Take one complete frame off the front of `buf`, if it holds one.
///
/// The size check happens as soon as the 7-byte header is in, so a peer announcing a
/// huge frame is refused before we buffer any of it. `frame_max` counts the whole frame,
/// header and end octet included, as the spec defines it; 0 means no limit.
pub fn decode(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    if !matches!(kind, FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT) {
        return Err(FrameError::UnknownType(kind));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if frame_max != 0 && size + FRAME_OVERHEAD > frame_max as usize {
        return Err(FrameError::TooLarge {
            size: size + FRAME_OVERHEAD,
            max: frame_max,
        });
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    let end = buf[7 + size];
    if end != FRAME_END {
        return Err(FrameError::BadEnd(end));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    Ok(Some(Frame {
        kind,
        channel,
        payload,
    }))
}

/// Write a frame header; the caller appends `size` payload bytes and then [`FRAME_END`].
#[inline]
pub fn put_header(out: &mut BytesMut, kind: u8, channel: u16, size: u32) {
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
}

pub fn heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, ch: u16, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        put_header(&mut b, kind, ch, payload.len() as u32);
        b.extend_from_slice(payload);
        b.extend_from_slice(&[FRAME_END]);
        b
    }

    #[test]
    fn decodes_a_frame_split_across_reads() {
        let whole = frame(FRAME_BODY, 3, b"hello");
        let mut buf = BytesMut::from(&whole[..5]);
        assert!(decode(&mut buf, 4096).unwrap().is_none());
        buf.extend_from_slice(&whole[5..]);
        let f = decode(&mut buf, 4096).unwrap().unwrap();
        assert_eq!((f.kind, f.channel, &f.payload[..]), (FRAME_BODY, 3, &b"hello"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_an_oversized_frame_from_its_header_alone() {
        let mut buf = BytesMut::new();
        put_header(&mut buf, FRAME_BODY, 1, 10_000);
        assert_eq!(
            decode(&mut buf, 4096).unwrap_err(),
            FrameError::TooLarge { size: 10_008, max: 4096 }
        );
    }

    #[test]
    fn refuses_a_bad_end_octet_and_unknown_types() {
        let mut buf = frame(FRAME_METHOD, 0, b"x");
        let n = buf.len();
        buf[n - 1] = 0;
        assert_eq!(decode(&mut buf, 0).unwrap_err(), FrameError::BadEnd(0));
        let mut buf = frame(7, 0, b"x");
        assert_eq!(decode(&mut buf, 0).unwrap_err(), FrameError::UnknownType(7));
    }
}
