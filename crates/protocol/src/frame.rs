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
    /// Payload larger than the negotiated frame_max allows.
    TooLarge {
        kind: u8,
        size: usize,
        max: u32,
    },
    BadEnd {
        kind: u8,
        payload: Bytes,
        end: u8,
    },
    UnknownType {
        kind: u8,
        payload: Bytes,
    },
}

/// Render bytes the way RabbitMQ's error texts do (Erlang's `~p` of a binary).
pub fn erlang_binary(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| (32..127).contains(b)) {
        let text: String = bytes
            .iter()
            .flat_map(|&b| match b {
                b'"' | b'\\' => vec!['\\', b as char],
                _ => vec![b as char],
            })
            .collect();
        return format!("<<\"{text}\">>");
    }
    let items: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
    format!("<<{}>>", items.join(","))
}

/// rabbit_reader's payload snippet: all octets, or the first 16.
fn snippet(payload: &[u8]) -> String {
    if payload.len() <= 16 {
        format!("all octets = {}", erlang_binary(payload))
    } else {
        format!("first 16 octets = {}", erlang_binary(&payload[..16]))
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // RabbitMQ's texts, Erlang terms included, so logs and clients read the same.
        match self {
            FrameError::TooLarge { kind, size, max } => write!(
                f,
                "type {kind}, all octets = <<>>: {{frame_too_large,{size},{}}}",
                (*max as usize).saturating_sub(FRAME_OVERHEAD)
            ),
            FrameError::BadEnd { kind, payload, end } => {
                write!(
                    f,
                    "type {kind}, {}: {{invalid_frame_end_marker,{end}}}",
                    snippet(payload)
                )
            }
            FrameError::UnknownType { kind, payload } => {
                write!(f, "type {kind}, {}: unknown_frame", snippet(payload))
            }
        }
    }
}

/// Take one complete frame off the front of `buf`, if it holds one.
///
/// The size check happens as soon as the 7-byte header is in, so a peer announcing a
/// huge frame is refused before we buffer any of it. Like RabbitMQ, a payload of up to
/// `frame_max` bytes is accepted (the spec counts the 8 bytes of framing too, and some
/// clients fill frames to frame_max); 0 means no limit. The checks run in RabbitMQ's
/// order: size, end octet, type.
pub fn decode(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if frame_max != 0 && size > frame_max as usize {
        return Err(FrameError::TooLarge {
            kind,
            size,
            max: frame_max,
        });
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    let end = buf[7 + size];
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    if end != FRAME_END {
        return Err(FrameError::BadEnd { kind, payload, end });
    }
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownType { kind, payload });
    }
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
        assert_eq!(
            (f.kind, f.channel, &f.payload[..]),
            (FRAME_BODY, 3, &b"hello"[..])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_an_oversized_frame_from_its_header_alone() {
        let mut buf = BytesMut::new();
        put_header(&mut buf, FRAME_BODY, 1, 10_000);
        let e = decode(&mut buf, 4096).unwrap_err();
        assert_eq!(
            e,
            FrameError::TooLarge {
                kind: FRAME_BODY,
                size: 10_000,
                max: 4096
            }
        );
        assert_eq!(
            e.to_string(),
            "type 3, all octets = <<>>: {frame_too_large,10000,4088}"
        );
    }

    #[test]
    fn refuses_a_bad_end_octet_and_unknown_types() {
        let mut buf = frame(FRAME_METHOD, 0, b"x");
        let n = buf.len();
        buf[n - 1] = 0;
        assert_eq!(
            decode(&mut buf, 0).unwrap_err().to_string(),
            "type 1, all octets = <<\"x\">>: {invalid_frame_end_marker,0}"
        );
        let mut buf = frame(9, 0, b"abc");
        assert_eq!(
            decode(&mut buf, 0).unwrap_err().to_string(),
            "type 9, all octets = <<\"abc\">>: unknown_frame"
        );
        assert_eq!(erlang_binary(&[0, 20, 0, 10, 0]), "<<0,20,0,10,0>>");
    }
}
