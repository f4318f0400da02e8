//! A published message: what the publisher sent, shared (never copied) by every queue it
//! is routed to.

use bytes::{BufMut, Bytes};

use crate::protocol::frame::{put_header, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_OVERHEAD};
use crate::protocol::outbuf::OutBuf;
use crate::protocol::CLASS_BASIC;

#[derive(Debug)]
pub struct Message {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// The content header's property flags and values, exactly as the publisher sent them.
    pub properties: Bytes,
    pub body: Bytes,
    /// Its id in the message store, when it is persistent and reached a durable queue.
    pub store_id: Option<u64>,
}

impl Message {
    /// Write the content header and body frames, splitting the body by `frame_max`.
    pub fn write_content(&self, out: &mut OutBuf, channel: u16, frame_max: u32) {
        let header_len = 12 + self.properties.len();
        let buf = &mut out.buf;
        put_header(buf, FRAME_HEADER, channel, header_len as u32);
        buf.put_u16(CLASS_BASIC);
        buf.put_u16(0);
        buf.put_u64(self.body.len() as u64);
        buf.extend_from_slice(&self.properties);
        buf.put_u8(FRAME_END);
        let chunk = if frame_max == 0 {
            usize::MAX
        } else {
            frame_max as usize - FRAME_OVERHEAD
        };
        let mut offset = 0;
        while offset < self.body.len() {
            let end = (offset + chunk).min(self.body.len());
            put_header(&mut out.buf, FRAME_BODY, channel, (end - offset) as u32);
            if offset == 0 && end == self.body.len() {
                out.put_body(&self.body);
            } else {
                out.put_body(&self.body.slice(offset..end));
            }
            out.buf.put_u8(FRAME_END);
            offset = end;
        }
    }

    /// Approximate bytes held, for statistics and limits.
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len() + self.exchange.len() + self.routing_key.len()
    }
}
