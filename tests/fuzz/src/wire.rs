//! Cutting a client's byte stream into what it sent: the protocol header, then frames.
//! The harness's own reading, independent of warren's (a mutated length simply moves
//! the cuts; whatever does not parse is one last piece).

/// One piece of a client's byte stream.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// The 8-byte protocol header (or whatever 8 bytes start with `AMQP`).
    Header(&'a [u8]),
    /// A whole frame as it stands in the stream (header, payload, end octet).
    Frame {
        kind: u8,
        channel: u16,
        payload: &'a [u8],
        whole: &'a [u8],
    },
    /// Bytes after the last whole frame.
    Rest(&'a [u8]),
}

impl<'a> Piece<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        match *self {
            Piece::Header(b) | Piece::Rest(b) => b,
            Piece::Frame { whole, .. } => whole,
        }
    }

    /// (class, method) of a method frame.
    pub fn method(&self) -> Option<(u16, u16)> {
        match *self {
            Piece::Frame {
                kind: 1, payload, ..
            } if payload.len() >= 4 => Some((
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            )),
            _ => None,
        }
    }
}

/// The pieces of `data`, in order; concatenated they are `data`.
pub fn pieces(mut data: &[u8]) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    if data.len() >= 8 && data.starts_with(b"AMQP") {
        out.push(Piece::Header(&data[..8]));
        data = &data[8..];
    }
    while data.len() >= 8 {
        let size = u32::from_be_bytes([data[3], data[4], data[5], data[6]]) as usize;
        let Some(total) = size.checked_add(8).filter(|&t| t <= data.len()) else {
            break;
        };
        out.push(Piece::Frame {
            kind: data[0],
            channel: u16::from_be_bytes([data[1], data[2]]),
            payload: &data[7..7 + size],
            whole: &data[..total],
        });
        data = &data[total..];
    }
    if !data.is_empty() {
        out.push(Piece::Rest(data));
    }
    out
}

/// A frame with the given payload.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.push(kind);
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}
