//! A tiny synchronous AMQP 0-9-1 client over `std::net::TcpStream`, with
//! hand-encoded frames, for tests that need exact control of the wire.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

/// A decoded field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    ShortStr(String),
    LongStr(Vec<u8>),
    Array(Vec<Value>),
    Timestamp(u64),
    Table(Vec<(String, Value)>),
    Bytes(Vec<u8>),
    Void,
}

impl Value {
    pub fn as_table(&self) -> &[(String, Value)] {
        match self {
            Value::Table(t) => t,
            other => panic!("not a table: {other:?}"),
        }
    }
    pub fn as_str(&self) -> String {
        match self {
            Value::LongStr(b) => String::from_utf8_lossy(b).into_owned(),
            Value::ShortStr(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }
}

pub fn lookup<'a>(t: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    t.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

#[derive(Default, Debug, Clone)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Enc {
        Enc(Vec::new())
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn shortstr(mut self, s: &str) -> Self {
        assert!(s.len() < 256);
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn longstr(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A field table (with its 4-byte length prefix).
    pub fn table(mut self, entries: &[(&str, Value)]) -> Self {
        let body = table_entries(entries);
        self.0.extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.0.extend_from_slice(&body);
        self
    }
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Field-table entries without the length prefix (also the AMQPLAIN
/// response format).
pub fn table_entries(entries: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        encode_value(&mut out, v);
    }
    out
}

fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => {
            out.push(b't');
            out.push(*b as u8)
        }
        Value::I8(x) => {
            out.push(b'b');
            out.push(*x as u8)
        }
        Value::U8(x) => {
            out.push(b'B');
            out.push(*x)
        }
        Value::I16(x) => {
            out.push(b's');
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::U16(x) => {
            out.push(b'u');
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::I32(x) => {
            out.push(b'I');
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::U32(x) => {
            out.push(b'i');
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::I64(x) => {
            out.push(b'l');
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::F32(x) => {
            out.push(b'f');
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::F64(x) => {
            out.push(b'd');
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::Decimal(s, x) => {
            out.push(b'D');
            out.push(*s);
            out.extend_from_slice(&x.to_be_bytes())
        }
        Value::ShortStr(s) => {
            out.push(b's');
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes())
        }
        Value::LongStr(b) => {
            out.push(b'S');
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b)
        }
        Value::Array(items) => {
            out.push(b'A');
            let mut body = Vec::new();
            for i in items {
                encode_value(&mut body, i);
            }
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body)
        }
        Value::Timestamp(t) => {
            out.push(b'T');
            out.extend_from_slice(&t.to_be_bytes())
        }
        Value::Table(entries) => {
            out.push(b'F');
            let refs: Vec<(&str, Value)> = entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            let body = table_entries(&refs);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body)
        }
        Value::Bytes(b) => {
            out.push(b'x');
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b)
        }
        Value::Void => out.push(b'V'),
    }
}

pub fn frame(typ: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(typ);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

pub fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(args.len() + 4);
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    frame(FRAME_METHOD, channel, &p)
}

/// A basic content header with no properties.
pub fn content_header_frame(channel: u16, body_size: u64) -> Vec<u8> {
    let p = Enc::new().u16(60).u16(0).u64(body_size).u16(0).done();
    frame(FRAME_HEADER, channel, &p)
}

pub fn body_frame(channel: u16, body: &[u8]) -> Vec<u8> {
    frame(FRAME_BODY, channel, body)
}

pub fn heartbeat_frame() -> Vec<u8> {
    frame(FRAME_HEARTBEAT, 0, &[])
}

/// basic.publish arguments.
pub fn basic_publish_args(exchange: &str, routing_key: &str, mandatory: bool) -> Vec<u8> {
    Enc::new()
        .u16(0)
        .shortstr(exchange)
        .shortstr(routing_key)
        .u8(mandatory as u8)
        .done()
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    pub fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    pub fn shortstr(&mut self) -> String {
        let n = self.u8() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    pub fn longstr(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        self.take(n).to_vec()
    }
    pub fn table(&mut self) -> Vec<(String, Value)> {
        let n = self.u32() as usize;
        let end = self.pos + n;
        let mut out = Vec::new();
        while self.pos < end {
            let k = self.shortstr();
            let v = self.value();
            out.push((k, v));
        }
        out
    }
    pub fn value(&mut self) -> Value {
        match self.u8() {
            b't' => Value::Bool(self.u8() != 0),
            b'b' => Value::I8(self.u8() as i8),
            b'B' => Value::U8(self.u8()),
            b's' => Value::I16(self.u16() as i16),
            b'u' => Value::U16(self.u16()),
            b'I' => Value::I32(self.u32() as i32),
            b'i' => Value::U32(self.u32()),
            b'l' => Value::I64(self.u64() as i64),
            b'f' => Value::F32(f32::from_bits(self.u32())),
            b'd' => Value::F64(f64::from_bits(self.u64())),
            b'D' => {
                let s = self.u8();
                Value::Decimal(s, self.u32())
            }
            b'S' => Value::LongStr(self.longstr()),
            b'x' => Value::Bytes(self.longstr()),
            b'A' => {
                let n = self.u32() as usize;
                let end = self.pos + n;
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.value());
                }
                Value::Array(items)
            }
            b'T' => Value::Timestamp(self.u64()),
            b'F' => Value::Table(self.table()),
            b'V' => Value::Void,
            t => panic!("unknown field type {:?}", t as char),
        }
    }
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

// ---------------------------------------------------------------------------
// Frames and connection
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Frame {
    pub typ: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// (class, method) of a method frame.
    pub fn method(&self) -> Option<(u16, u16)> {
        if self.typ == FRAME_METHOD && self.payload.len() >= 4 {
            let mut d = Dec::new(&self.payload);
            Some((d.u16(), d.u16()))
        } else {
            None
        }
    }
    pub fn args(&self) -> &[u8] {
        &self.payload[4..]
    }
}

/// A decoded connection.close or channel.close.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

pub fn parse_close(args: &[u8]) -> Close {
    let mut d = Dec::new(args);
    Close {
        code: d.u16(),
        text: d.shortstr(),
        class_id: d.u16(),
        method_id: d.u16(),
    }
}

#[derive(Debug, Clone)]
pub struct Start {
    pub version_major: u8,
    pub version_minor: u8,
    pub server_properties: Vec<(String, Value)>,
    pub mechanisms: String,
    pub locales: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Tune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

pub struct RawConn {
    pub stream: TcpStream,
}

impl RawConn {
    /// Plain TCP connect, nothing sent.
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        RawConn { stream }
    }

    /// A second handle on the same socket (e.g. to write from another thread).
    pub fn try_clone(&self) -> RawConn {
        RawConn {
            stream: self.stream.try_clone().expect("clone the socket"),
        }
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_method(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
        self.send(&method_frame(channel, class, method, args))
            .expect("send method");
    }

    pub fn read_frame(&mut self) -> io::Result<Frame> {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head)?;
        let typ = head[0];
        let channel = u16::from_be_bytes([head[1], head[2]]);
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size];
        self.stream.read_exact(&mut payload)?;
        let mut end = [0u8; 1];
        self.stream.read_exact(&mut end)?;
        if end[0] != FRAME_END {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad frame end {:#x} from server", end[0]),
            ));
        }
        Ok(Frame {
            typ,
            channel,
            payload,
        })
    }

    /// Next frame that is not a heartbeat.
    pub fn read_non_heartbeat(&mut self) -> Frame {
        loop {
            let f = self.read_frame().expect("read frame");
            if f.typ != FRAME_HEARTBEAT {
                return f;
            }
        }
    }

    /// Read a method frame and check it is `class.method` on `channel`;
    /// returns its arguments.
    pub fn expect_method(&mut self, channel: u16, class: u16, method: u16) -> Vec<u8> {
        let f = self.read_non_heartbeat();
        match f.method() {
            Some((c, m)) if c == class && m == method && f.channel == channel => {
                f.args().to_vec()
            }
            Some((10, 50)) => panic!(
                "expected {class}.{method} on channel {channel}, got connection.close {:?}",
                parse_close(f.args())
            ),
            Some((20, 40)) => panic!(
                "expected {class}.{method} on channel {channel}, got channel.close {:?}",
                parse_close(f.args())
            ),
            other => panic!(
                "expected {class}.{method} on channel {channel}, got {other:?} on channel {} (frame {f:?})",
                f.channel
            ),
        }
    }

    pub fn send_protocol_header(&mut self) {
        self.send(PROTOCOL_HEADER).expect("send header");
    }

    pub fn read_start(&mut self) -> Start {
        let args = self.expect_method(0, 10, 10);
        let mut d = Dec::new(&args);
        Start {
            version_major: d.u8(),
            version_minor: d.u8(),
            server_properties: d.table(),
            mechanisms: String::from_utf8_lossy(&d.longstr()).into_owned(),
            locales: String::from_utf8_lossy(&d.longstr()).into_owned(),
        }
    }

    /// Send connection.start-ok with the given mechanism and response.
    /// Announces the `authentication_failure_close` capability.
    pub fn send_start_ok(&mut self, mechanism: &str, response: &[u8]) {
        let caps = Value::Table(vec![
            ("authentication_failure_close".into(), Value::Bool(true)),
            ("basic.nack".into(), Value::Bool(true)),
            ("publisher_confirms".into(), Value::Bool(true)),
            ("consumer_cancel_notify".into(), Value::Bool(true)),
            ("connection.blocked".into(), Value::Bool(true)),
        ]);
        let args = Enc::new()
            .table(&[
                ("product", Value::LongStr(b"warren-raw-test".to_vec())),
                ("capabilities", caps),
            ])
            .shortstr(mechanism)
            .longstr(response)
            .shortstr("en_US")
            .done();
        self.send_method(0, 10, 11, &args);
    }

    pub fn send_start_ok_plain(&mut self, user: &str, pass: &str) {
        let resp = format!("\0{user}\0{pass}");
        self.send_start_ok("PLAIN", resp.as_bytes());
    }

    pub fn read_tune(&mut self) -> Tune {
        let args = self.expect_method(0, 10, 30);
        let mut d = Dec::new(&args);
        Tune {
            channel_max: d.u16(),
            frame_max: d.u32(),
            heartbeat: d.u16(),
        }
    }

    pub fn send_tune_ok(&mut self, t: Tune) {
        let args = Enc::new()
            .u16(t.channel_max)
            .u32(t.frame_max)
            .u16(t.heartbeat)
            .done();
        self.send_method(0, 10, 31, &args);
    }

    pub fn send_open(&mut self, vhost: &str) {
        let args = Enc::new().shortstr(vhost).shortstr("").u8(0).done();
        self.send_method(0, 10, 40, &args);
    }

    /// Full handshake as guest/guest on vhost "/", heartbeat disabled.
    /// Returns the connection and the server's tune parameters.
    pub fn open(addr: &str) -> (RawConn, Tune) {
        Self::open_with_heartbeat(addr, 0)
    }

    pub fn open_with_heartbeat(addr: &str, heartbeat: u16) -> (RawConn, Tune) {
        let mut c = RawConn::connect(addr);
        c.send_protocol_header();
        c.read_start();
        c.send_start_ok_plain("guest", "guest");
        let tune = c.read_tune();
        c.send_tune_ok(Tune {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat,
        });
        c.send_open("/");
        c.expect_method(0, 10, 41);
        (c, tune)
    }

    pub fn open_channel(&mut self, channel: u16) {
        self.send_method(channel, 20, 10, &Enc::new().shortstr("").done());
        self.expect_method(channel, 20, 11);
    }

    /// Read frames until a connection.close arrives; answer close-ok and
    /// return the decoded close.
    pub fn expect_connection_close(&mut self) -> Close {
        loop {
            let f = match self.read_frame() {
                Ok(f) => f,
                Err(e) => panic!("expected connection.close, got read error {e}"),
            };
            if f.method() == Some((10, 50)) {
                assert_eq!(f.channel, 0, "connection.close on non-zero channel");
                let close = parse_close(f.args());
                let _ = self.send(&method_frame(0, 10, 51, &[]));
                return close;
            }
        }
    }

    /// Read frames until a channel.close on `channel` arrives; answer
    /// close-ok and return the decoded close.
    pub fn expect_channel_close(&mut self, channel: u16) -> Close {
        loop {
            let f = self.read_frame().expect("expected channel.close");
            match f.method() {
                Some((20, 40)) if f.channel == channel => {
                    let close = parse_close(f.args());
                    self.send_method(channel, 20, 41, &[]);
                    return close;
                }
                Some((10, 50)) => panic!(
                    "expected channel.close, got connection.close {:?}",
                    parse_close(f.args())
                ),
                _ => {}
            }
        }
    }

    /// The server must close the TCP connection within `within`. Any bytes
    /// received before EOF are returned.
    pub fn expect_eof(&mut self, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "server did not close the socket within {within:?} (received {} bytes)",
                    got.len()
                );
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(_) => return got, // reset counts as closed
            }
        }
    }

    /// Graceful client-initiated close.
    pub fn close(mut self) {
        let args = Enc::new().u16(200).shortstr("bye").u16(0).u16(0).done();
        let _ = self.send(&method_frame(0, 10, 50, &args));
        loop {
            match self.read_frame() {
                Ok(f) if f.method() == Some((10, 51)) => return,
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    }
}

/// Sanity check that the broker still accepts and serves a fresh
/// connection: full handshake, open a channel, declare a server-named
/// queue, close.
pub fn assert_broker_alive(addr: &str) {
    let (mut c, _) = RawConn::open(addr);
    c.open_channel(1);
    // queue.declare "" exclusive auto-delete
    let args = Enc::new()
        .u16(0)
        .shortstr("")
        .u8(0b0_1100) // exclusive | auto-delete
        .table(&[])
        .done();
    c.send_method(1, 50, 10, &args);
    let ok = c.expect_method(1, 50, 11);
    let name = Dec::new(&ok).shortstr();
    assert!(name.starts_with("amq.gen-"), "{name}");
    c.close();
}
