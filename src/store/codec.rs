//! Field encoding inside store records: little-endian integers, length-prefixed byte
//! strings, and AMQP field tables in their wire form (amq-protocol's codec).

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::FieldTable;

pub trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_bytes(&mut self, v: &[u8]);
    fn put_str(&mut self, v: &str) {
        self.put_bytes(v.as_bytes());
    }
    fn put_table(&mut self, t: &FieldTable);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.put_u32(v.len() as u32);
        self.extend_from_slice(v);
    }
    fn put_table(&mut self, t: &FieldTable) {
        // The wire form starts with its own length, so it is self-delimiting.
        match gen_field_table(t)(WriteContext::from(Vec::new())) {
            Ok(ctx) => self.extend_from_slice(&ctx.write),
            Err(_) => self.put_u32(0),
        }
    }
}

/// A bounds-checked reader; every getter returns `None` past the end.
pub struct Get<'a> {
    buf: &'a [u8],
}

impl<'a> Get<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Get { buf }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// The next `n` bytes as they are.
    pub fn raw(&mut self, n: usize) -> Option<&'a [u8]> {
        self.take(n)
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    pub fn table(&mut self) -> Option<FieldTable> {
        let len = u32::from_be_bytes(self.buf.get(..4)?.try_into().ok()?) as usize;
        let raw = self.take(4 + len)?;
        crate::protocol::table::decode(raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn round_trip() {
        let mut t = FieldTable::default();
        t.insert("x-message-ttl".into(), AMQPValue::LongInt(5));
        let mut b = Vec::new();
        b.put_u8(1);
        b.put_u64(42);
        b.put_str("queue");
        b.put_table(&t);
        b.put_u16(7);
        let mut g = Get::new(&b);
        assert_eq!(g.u8(), Some(1));
        assert_eq!(g.u64(), Some(42));
        assert_eq!(g.string().as_deref(), Some("queue"));
        assert_eq!(g.table(), Some(t));
        assert_eq!(g.u16(), Some(7));
        assert_eq!(g.u8(), None);
    }
}
