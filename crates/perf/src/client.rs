//! A minimal blocking AMQP 0-9-1 client: the handshake and the setup RPCs.
//!
//! Control methods are encoded and decoded with the broker's own codec
//! ([`warren_protocol::method`]); they are rare, so amq-protocol's generic path is fine.
//! The per-message paths ([`super::producer`], [`super::consumer`]) take the socket
//! over with [`Conn::into_parts`] and speak the hot methods by hand.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue};
use bytes::{Bytes, BytesMut};

use warren_protocol::frame::{self, FRAME_METHOD};
use warren_protocol::method::{self, Method};
use warren_protocol::{short, AMQPClass, AMQPValue, FieldTable, LongString, PROTOCOL_HEADER};

/// The frame_max we ask for when the server sets no limit.
const DEFAULT_FRAME_MAX: u32 = 131_072;

/// Why a connection or a role failed. A server-side close keeps its reply code and
/// text so the user sees exactly what the broker said.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// The server sent connection.close (`connection = true`) or channel.close.
    Closed {
        connection: bool,
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    Protocol(String),
    Timeout(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Closed {
                connection,
                code,
                text,
                class_id,
                method_id,
            } => {
                let what = if *connection { "connection" } else { "channel" };
                write!(
                    f,
                    "server sent {what}.close: reply_code={code} reply_text={text:?}"
                )?;
                if *class_id != 0 {
                    write!(f, " (caused by {})", method_name(*class_id, *method_id))?;
                }
                Ok(())
            }
            Error::Protocol(s) => write!(f, "protocol error: {s}"),
            Error::Timeout(s) => write!(f, "timeout: {s}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The name of a method for error messages (`basic.publish`), or `class.method` ids.
pub fn method_name(class_id: u16, method_id: u16) -> String {
    let name = match (class_id, method_id) {
        (10, 10) => "connection.start",
        (10, 11) => "connection.start-ok",
        (10, 30) => "connection.tune",
        (10, 31) => "connection.tune-ok",
        (10, 40) => "connection.open",
        (20, 10) => "channel.open",
        (40, 10) => "exchange.declare",
        (40, 20) => "exchange.delete",
        (50, 10) => "queue.declare",
        (50, 20) => "queue.bind",
        (50, 40) => "queue.delete",
        (60, 10) => "basic.qos",
        (60, 20) => "basic.consume",
        (60, 40) => "basic.publish",
        (60, 80) => "basic.ack",
        (85, 10) => "confirm.select",
        _ => return format!("method {class_id}.{method_id}"),
    };
    name.to_owned()
}

/// Parse the arguments of a connection.close or channel.close (after class/method ids).
pub fn parse_close(args: &[u8], connection: bool) -> Error {
    let bad = || Error::Protocol("malformed close method".into());
    if args.len() < 3 {
        return bad();
    }
    let code = u16::from_be_bytes([args[0], args[1]]);
    let n = args[2] as usize;
    let Some(text) = args.get(3..3 + n) else {
        return bad();
    };
    let ids = args.get(3 + n..7 + n).unwrap_or(&[0, 0, 0, 0]);
    Error::Closed {
        connection,
        code,
        text: String::from_utf8_lossy(text).into_owned(),
        class_id: u16::from_be_bytes([ids[0], ids[1]]),
        method_id: u16::from_be_bytes([ids[2], ids[3]]),
    }
}

/// `amqp://user:pass@host:port/vhost`, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub user: String,
    pub pass: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

impl Uri {
    pub fn parse(s: &str) -> std::result::Result<Uri, String> {
        let rest = s
            .strip_prefix("amqp://")
            .ok_or_else(|| format!("URI {s:?} must start with amqp:// (amqps is not supported)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, pass) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((a, b)) => (percent_decode(a)?, percent_decode(b)?),
                None => (percent_decode(u)?, String::new()),
            },
            None => ("guest".into(), "guest".into()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (
                h.to_owned(),
                p.parse()
                    .map_err(|_| format!("bad port {p:?} in URI {s:?}"))?,
            ),
            _ => (hostport.to_owned(), 5672),
        };
        if host.is_empty() {
            return Err(format!("no host in URI {s:?}"));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let vhost = if path.is_empty() {
            "/".to_owned()
        } else {
            percent_decode(path)?
        };
        Ok(Uri {
            user,
            pass,
            host,
            port,
            vhost,
        })
    }

    /// `host:port`, for reports (never the credentials).
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One connection with (usually) channel 1 open, on a blocking socket.
pub struct Conn {
    pub sock: TcpStream,
    rbuf: BytesMut,
    pub frame_max: u32,
    /// `product version` from the server's properties, for the report.
    pub server: String,
    timeout: Duration,
}

fn client_properties(name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut t = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    t.insert("product".into(), s("warren-perf"));
    t.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    t.insert("platform".into(), s("Rust"));
    t.insert("connection_name".into(), s(name));
    t.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    t
}

fn table_str(t: &FieldTable, key: &str) -> String {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    }
}

impl Conn {
    /// TCP connect, handshake (PLAIN, heartbeat 0), connection.open and channel.open(1).
    pub fn open(uri: &Uri, name: &str, timeout: Duration) -> Result<Conn> {
        let mut last = io::Error::other(format!("{} resolves to no address", uri.endpoint()));
        let mut sock = None;
        for addr in (uri.host.as_str(), uri.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let sock = sock.ok_or(Error::Io(last))?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let mut c = Conn {
            sock,
            rbuf: BytesMut::with_capacity(1 << 16),
            frame_max: frame::FRAME_MIN_SIZE,
            server: String::new(),
            timeout,
        };
        c.sock.write_all(PROTOCOL_HEADER)?;
        let start = match c.wait(0)? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => return Err(unexpected("connection.start", &other)),
        };
        let mechs = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !mechs.split_whitespace().any(|m| m == "PLAIN") {
            return Err(Error::Protocol(format!(
                "server does not offer PLAIN (offers {mechs:?})"
            )));
        }
        c.server = format!(
            "{} {}",
            table_str(&start.server_properties, "product"),
            table_str(&start.server_properties, "version")
        )
        .trim()
        .to_owned();
        let mut response = vec![0u8];
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.pass.as_bytes());
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(name),
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )?;
        let tune = match c.wait(0)? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(unexpected("connection.tune", &other)),
        };
        c.frame_max = if tune.frame_max == 0 {
            DEFAULT_FRAME_MAX
        } else {
            tune.frame_max.min(DEFAULT_FRAME_MAX)
        };
        c.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: c.frame_max,
                // No heartbeats: runs are short and both ends are busy.
                heartbeat: 0,
            })),
        )?;
        c.rpc(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: short(uri.vhost.clone()),
            })),
        )?;
        c.rpc(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        Ok(c)
    }

    pub fn send(&mut self, ch: u16, m: &AMQPClass) -> Result<()> {
        let mut out = BytesMut::with_capacity(64);
        method::encode(&mut out, ch, m);
        self.sock.write_all(&out)?;
        Ok(())
    }

    fn read_more(&mut self, deadline: Instant) -> Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Timeout("no answer from the server".into()));
            }
            match self.sock.read(&mut tmp) {
                Ok(0) => {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the socket",
                    )))
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&tmp[..n]);
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Error::Timeout("no answer from the server".into()))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next method on channel `ch`; closes from the server become errors (after
    /// we answer them), content frames and methods for other channels are skipped.
    pub fn wait(&mut self, ch: u16) -> Result<AMQPClass> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.rbuf.starts_with(b"AMQP") && self.rbuf.len() >= 8 {
                return Err(Error::Protocol(format!(
                    "server refused the protocol header and proposed AMQP {}-{}-{}",
                    self.rbuf[5], self.rbuf[6], self.rbuf[7]
                )));
            }
            let f = match frame::decode(&mut self.rbuf, 0) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.read_more(deadline)?;
                    continue;
                }
                Err(e) => return Err(Error::Protocol(format!("bad frame: {e}"))),
            };
            if f.kind != FRAME_METHOD {
                continue;
            }
            let (class_id, method_id) = method::class_method(&f.payload);
            match (class_id, method_id) {
                (10, 50) => {
                    let _ = self.send(
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    return Err(parse_close(&f.payload[4..], true));
                }
                (20, 40) => {
                    let _ = self.send(
                        f.channel,
                        &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    return Err(parse_close(&f.payload[4..], false));
                }
                _ if f.channel != ch => continue,
                _ => {}
            }
            return match method::decode(&f.payload) {
                Ok(Method::Other(m)) => Ok(*m),
                Ok(other) => Err(Error::Protocol(format!("unexpected {other:?}"))),
                Err(e) => Err(Error::Protocol(format!("undecodable method: {e:?}"))),
            };
        }
    }

    pub fn rpc(&mut self, ch: u16, m: AMQPClass) -> Result<AMQPClass> {
        self.send(ch, &m)?;
        self.wait(ch)
    }

    pub fn exchange_declare(&mut self, name: &str, kind: &str, durable: bool) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: short(name),
                kind: short(kind),
                durable,
                ..Default::default()
            })),
        )?;
        Ok(())
    }

    pub fn exchange_delete(&mut self, name: &str) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: short(name),
                ..Default::default()
            })),
        )?;
        Ok(())
    }

    /// queue.declare; returns the message count.
    pub fn queue_declare(&mut self, name: &str, durable: bool) -> Result<u32> {
        match self.rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: short(name),
                durable,
                ..Default::default()
            })),
        )? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected("queue.declare-ok", &other)),
        }
    }

    pub fn queue_bind(&mut self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: short(queue),
                exchange: short(exchange),
                routing_key: short(key),
                ..Default::default()
            })),
        )?;
        Ok(())
    }

    /// queue.delete; returns the number of messages deleted with the queue.
    pub fn queue_delete(&mut self, name: &str) -> Result<u32> {
        match self.rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: short(name),
                ..Default::default()
            })),
        )? {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected("queue.delete-ok", &other)),
        }
    }

    pub fn qos(&mut self, prefetch: u16) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
        )?;
        Ok(())
    }

    pub fn confirm_select(&mut self) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )?;
        Ok(())
    }

    pub fn consume(&mut self, queue: &str, tag: &str, no_ack: bool) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: short(queue),
                consumer_tag: short(tag),
                no_ack,
                ..Default::default()
            })),
        )?;
        Ok(())
    }

    /// A polite connection.close, waiting (bounded) for close-ok.
    pub fn close(mut self) -> Result<()> {
        self.rpc(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "OK".into(),
                class_id: 0,
                method_id: 0,
            })),
        )?;
        Ok(())
    }

    /// Hand the socket and any bytes read past the last frame to a hot loop.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>, u32) {
        (self.sock, self.rbuf.to_vec(), self.frame_max)
    }
}

fn unexpected(want: &str, got: &AMQPClass) -> Error {
    Error::Protocol(format!("expected {want}, got {got:?}"))
}

/// connection.close(200) as raw bytes, for the hot loops.
pub fn close_frame() -> Bytes {
    let mut out = BytesMut::new();
    method::encode(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "OK".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    out.freeze()
}

/// A close-ok for the connection (`ch == 0`) or for channel `ch`.
pub fn close_ok_frame(ch: u16) -> Bytes {
    let mut out = BytesMut::new();
    let m = if ch == 0 {
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
    } else {
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
    };
    method::encode(&mut out, ch, &m);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_defaults_and_percent_decoding() {
        let u = Uri::parse("amqp://guest:gu%40st@127.0.0.1:5682/%2f").unwrap();
        assert_eq!(
            (u.user.as_str(), u.pass.as_str(), u.port, u.vhost.as_str()),
            ("guest", "gu@st", 5682, "/")
        );
        let u = Uri::parse("amqp://localhost").unwrap();
        assert_eq!(
            (u.port, u.vhost.as_str(), u.user.as_str()),
            (5672, "/", "guest")
        );
        let u = Uri::parse("amqp://a:b@h:1/v1").unwrap();
        assert_eq!(u.vhost, "v1");
        assert!(Uri::parse("amqps://h").is_err());
        assert!(Uri::parse("amqp://h:x/").is_err());
    }

    #[test]
    fn close_errors_name_the_cause() {
        let mut args = vec![1, 148, 9];
        args.extend_from_slice(b"NOT_FOUND");
        args.extend_from_slice(&[0, 60, 0, 40]);
        let e = parse_close(&args, false);
        assert_eq!(
            e.to_string(),
            "server sent channel.close: reply_code=404 reply_text=\"NOT_FOUND\" (caused by basic.publish)"
        );
    }
}
