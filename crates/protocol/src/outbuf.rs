//! Outgoing bytes, collected while a connection processes a batch of work and handed to
//! its writer in one piece, so many frames become one `writev`.

use bytes::{Bytes, BytesMut};

/// Bodies at least this large are passed to the writer as their own shared `Bytes`
/// segment instead of being copied into the frame buffer.
const SHARE_BODY_AT: usize = 2048;

#[derive(Default)]
pub struct OutBuf {
    /// Frames being built; small bodies are copied in (cheaper than an iovec each).
    pub buf: BytesMut,
    /// Completed segments in order, ahead of `buf`.
    segments: Vec<Bytes>,
}

impl OutBuf {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.segments.is_empty()
    }

    /// Append a body slice: shared by reference when large, copied when small.
    pub fn put_body(&mut self, body: &Bytes) {
        if body.len() >= SHARE_BODY_AT {
            if !self.buf.is_empty() {
                self.segments.push(self.buf.split().freeze());
            }
            self.segments.push(body.clone());
        } else {
            self.buf.extend_from_slice(body);
        }
    }

    /// Everything queued so far, in order.
    pub fn take(&mut self) -> Vec<Bytes> {
        let mut out = std::mem::take(&mut self.segments);
        if !self.buf.is_empty() {
            out.push(self.buf.split().freeze());
        }
        out
    }

    pub fn len(&self) -> usize {
        self.buf.len() + self.segments.iter().map(Bytes::len).sum::<usize>()
    }
}
