//! The publishing role: one connection, channel 1, two threads.
//!
//! The writer (the role's own thread) sends pre-encoded publishes: a message's three
//! frames (basic.publish, content header, body) are encoded once and copied into a
//! batch buffer; per message only the 16 stamp bytes of the body are patched, and a
//! whole batch goes out with one `write`. The reader thread takes publisher confirms
//! and anything else the broker sends (closes, connection.blocked) off the socket, so
//! the writer never stops to read.
//!
//! Body layout (both ends of the tool agree on it): bytes `[0..8)` are the message's
//! send time in ns since [`Shared::epoch`], little-endian; under `-r` it is the
//! *intended* send time (`start + k/rate`), so a stalled broker shows up as latency
//! instead of silently slowing the producer down (no coordinated omission). Bytes
//! `[8..16)` are `producer_id << 48 | seq`, for gap detection.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{close_frame, close_ok_frame, parse_close, Conn, Error};
use super::stats::Shared;
use warren_protocol::frame::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD};

/// The bytes of the body the tool owns: stamp (8) and producer/seq (8).
pub const STAMP_LEN: usize = 16;

/// What one producer does.
#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub id: u16,
    pub exchange: String,
    pub routing_key: String,
    pub size: usize,
    pub persistent: bool,
    /// At most this many unconfirmed messages (0: no confirms).
    pub confirm: u64,
    /// Messages per second (0: as fast as the socket takes them).
    pub rate: f64,
    /// Offset of this producer's first intended send time, so that several
    /// rate-limited producers do not publish in lockstep.
    pub stagger_ns: u64,
    /// Messages to publish (0: until stopped).
    pub count: u64,
    pub batch_bytes: usize,
    /// Longest wait for a confirm (or a writable socket) before giving up.
    pub stall: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct ProducerResult {
    pub sent: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub finished: Option<Instant>,
}

/// The three frames of one publish, and where its body's stamp bytes are.
pub struct Template {
    pub bytes: Vec<u8>,
    pub stamp_at: usize,
}

fn frame_header(out: &mut Vec<u8>, kind: u8, size: usize) {
    out.push(kind);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(size as u32).to_be_bytes());
}

/// Encode one publish of a `size`-byte body on channel 1, split at `frame_max`.
pub fn template(
    exchange: &str,
    routing_key: &str,
    size: usize,
    persistent: bool,
    frame_max: u32,
) -> Template {
    let mut b = Vec::with_capacity(size + 64);
    let (ex, rk) = (exchange.as_bytes(), routing_key.as_bytes());
    frame_header(
        &mut b,
        FRAME_METHOD,
        4 + 2 + 1 + ex.len() + 1 + rk.len() + 1,
    );
    b.extend_from_slice(&[0, 60, 0, 40, 0, 0]);
    b.push(ex.len() as u8);
    b.extend_from_slice(ex);
    b.push(rk.len() as u8);
    b.extend_from_slice(rk);
    b.push(0); // not mandatory, not immediate
    b.push(FRAME_END);
    // Content header: class 60, weight 0, body size, flags with only delivery-mode.
    frame_header(&mut b, FRAME_HEADER, 2 + 2 + 8 + 2 + 1);
    b.extend_from_slice(&[0, 60, 0, 0]);
    b.extend_from_slice(&(size as u64).to_be_bytes());
    b.extend_from_slice(&0x1000u16.to_be_bytes());
    b.push(if persistent { 2 } else { 1 });
    b.push(FRAME_END);
    let chunk = (frame_max as usize).saturating_sub(8).max(STAMP_LEN);
    let mut stamp_at = 0;
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk);
        frame_header(&mut b, FRAME_BODY, n);
        if stamp_at == 0 {
            stamp_at = b.len();
        }
        b.resize(b.len() + n, 0);
        b.push(FRAME_END);
        left -= n;
    }
    Template { bytes: b, stamp_at }
}

/// Per-producer state shared by its writer and reader threads.
#[derive(Default)]
struct Link {
    /// Messages confirmed (acked or nacked) so far: tags `1..=confirmed` are settled.
    confirmed: AtomicU64,
    nacked: AtomicU64,
    /// The broker closed us or the socket broke: the writer must stop at once.
    failed: AtomicBool,
    /// The writer sent connection.close; the reader waits for close-ok.
    closing: AtomicBool,
    /// The reader has exited.
    gone: AtomicBool,
}

/// Run one producer to completion on the current thread.
pub fn run(conn: Conn, spec: ProducerSpec, shared: Arc<Shared>) -> ProducerResult {
    let who = format!("producer {}", spec.id);
    let (sock, _left, frame_max) = conn.into_parts();
    let t = template(
        &spec.exchange,
        &spec.routing_key,
        spec.size,
        spec.persistent,
        frame_max,
    );
    let link = Arc::new(Link::default());
    let setup = sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .and_then(|_| sock.set_write_timeout(Some(Duration::from_millis(100))))
        .and_then(|_| sock.try_clone());
    let rsock = match setup {
        Ok(s) => s,
        Err(e) => {
            shared.fail(&who, e);
            return ProducerResult::default();
        }
    };
    let wsock = Arc::new(Mutex::new(sock));
    let me = thread::current();
    let reader = {
        let (link, shared, wsock, who) = (link.clone(), shared.clone(), wsock.clone(), who.clone());
        thread::Builder::new()
            .name(format!("{who} reader"))
            .spawn(move || {
                read_loop(rsock, &link, &shared, &wsock, &who, me);
                link.gone.store(true, Relaxed);
            })
    };
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            shared.fail(&who, e);
            return ProducerResult::default();
        }
    };

    let sent = write_loop(&t, &spec, &shared, &link, &wsock, &who);
    let finished = Instant::now();
    if !link.failed.load(Relaxed) && !link.gone.load(Relaxed) {
        link.closing.store(true, Relaxed);
        if let Ok(mut s) = wsock.lock() {
            let _ = s.write_all(&close_frame());
        }
    }
    let _ = reader.join();
    ProducerResult {
        sent,
        confirmed: link.confirmed.load(Relaxed),
        nacked: link.nacked.load(Relaxed),
        finished: Some(finished),
    }
}

/// Write all of `buf`, retrying on the short socket timeouts so that a stop request
/// or a failure is noticed within 100 ms. Returns false if the write was abandoned.
fn write_all_watching(
    s: &mut TcpStream,
    buf: &[u8],
    shared: &Shared,
    link: &Link,
    stall: Duration,
) -> io::Result<bool> {
    let mut pos = 0;
    let mut since = Instant::now();
    while pos < buf.len() {
        match s.write(&buf[pos..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
            Ok(n) => {
                pos += n;
                since = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if link.failed.load(Relaxed) || shared.stopped() && pos == 0 {
                    return Ok(false);
                }
                if since.elapsed() > stall {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the broker took no data for {stall:?}"),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Publish until the count is reached or the run stops; returns messages sent.
fn write_loop(
    t: &Template,
    spec: &ProducerSpec,
    shared: &Shared,
    link: &Link,
    wsock: &Mutex<TcpStream>,
    who: &str,
) -> u64 {
    let msg_len = t.bytes.len();
    let per_batch = (spec.batch_bytes / msg_len).max(1);
    let mut buf = Vec::with_capacity(per_batch * msg_len);
    for _ in 0..per_batch {
        buf.extend_from_slice(&t.bytes);
    }
    let interval_ns = if spec.rate > 0.0 {
        1e9 / spec.rate
    } else {
        0.0
    };
    let start = shared.now_ns() + spec.stagger_ns;
    let tag = (spec.id as u64) << 48;
    let mut seq: u64 = 0;
    let mut last_progress = Instant::now();
    let mut last_confirmed = 0;
    loop {
        if shared.stopped() || link.failed.load(Relaxed) || link.gone.load(Relaxed) {
            break;
        }
        if spec.count > 0 && seq >= spec.count {
            break;
        }
        let mut n = per_batch as u64;
        if spec.count > 0 {
            n = n.min(spec.count - seq);
        }
        if spec.confirm > 0 {
            let confirmed = link.confirmed.load(Relaxed);
            if confirmed != last_confirmed {
                last_confirmed = confirmed;
                last_progress = Instant::now();
            }
            let out = seq - confirmed;
            if out >= spec.confirm {
                if last_progress.elapsed() > spec.stall {
                    shared.fail(
                        who,
                        format!(
                            "no publisher confirm for {:?} ({out} unconfirmed)",
                            spec.stall
                        ),
                    );
                    break;
                }
                thread::park_timeout(Duration::from_millis(20));
                continue;
            }
            n = n.min(spec.confirm - out);
        }
        let now = shared.now_ns();
        if interval_ns > 0.0 {
            let next_due = start + (seq as f64 * interval_ns) as u64;
            if now < next_due {
                thread::sleep(Duration::from_nanos((next_due - now).min(100_000_000)));
                continue;
            }
            // Everything whose intended time has passed goes out now, in one write.
            let due = ((now - start) as f64 / interval_ns) as u64 + 1 - seq;
            n = n.min(due.max(1));
            for k in 0..n as usize {
                let at = k * msg_len + t.stamp_at;
                let intended = start + ((seq + k as u64) as f64 * interval_ns) as u64;
                buf[at..at + 8].copy_from_slice(&intended.to_le_bytes());
                buf[at + 8..at + 16].copy_from_slice(&(tag | (seq + k as u64)).to_le_bytes());
            }
        } else {
            for k in 0..n as usize {
                let at = k * msg_len + t.stamp_at;
                buf[at..at + 8].copy_from_slice(&now.to_le_bytes());
                buf[at + 8..at + 16].copy_from_slice(&(tag | (seq + k as u64)).to_le_bytes());
            }
        }
        let len = n as usize * msg_len;
        let res = match wsock.lock() {
            Ok(mut s) => write_all_watching(&mut s, &buf[..len], shared, link, spec.stall),
            Err(_) => Ok(false),
        };
        match res {
            Ok(true) => {
                seq += n;
                shared.counters.sent.fetch_add(n, Relaxed);
            }
            Ok(false) => break,
            Err(e) => {
                if !link.failed.load(Relaxed) {
                    shared.fail(who, format!("publishing failed: {e}"));
                }
                break;
            }
        }
    }
    // With a message count, every message must be confirmed before we report.
    if spec.confirm > 0 && spec.count > 0 {
        let mut last = link.confirmed.load(Relaxed);
        let mut since = Instant::now();
        while last < seq
            && !shared.stopped()
            && !link.failed.load(Relaxed)
            && !link.gone.load(Relaxed)
        {
            thread::park_timeout(Duration::from_millis(20));
            let c = link.confirmed.load(Relaxed);
            if c != last {
                last = c;
                since = Instant::now();
            } else if since.elapsed() > spec.stall {
                shared.fail(
                    who,
                    format!("{} of {seq} messages never confirmed", seq - last),
                );
                break;
            }
        }
    }
    seq
}

/// Tracks which delivery tags are confirmed; out-of-order single acks wait in a set.
#[derive(Default)]
pub struct ConfirmWindow {
    pub done: u64,
    ahead: BTreeSet<u64>,
}

impl ConfirmWindow {
    pub fn settle(&mut self, tag: u64, multiple: bool) {
        if multiple {
            self.done = self.done.max(tag);
            while self.ahead.first().is_some_and(|&t| t <= self.done) {
                self.ahead.pop_first();
            }
        } else if tag == self.done + 1 {
            self.done = tag;
        } else if tag > self.done {
            self.ahead.insert(tag);
        }
        while self.ahead.remove(&(self.done + 1)) {
            self.done += 1;
        }
    }
}

/// The producer's input side: confirms, closes, flow notifications.
fn read_loop(
    mut sock: TcpStream,
    link: &Link,
    shared: &Shared,
    wsock: &Mutex<TcpStream>,
    who: &str,
    writer: thread::Thread,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut len, mut window) = (0usize, ConfirmWindow::default());
    let mut closing_since: Option<Instant> = None;
    let reply = |bytes: &[u8]| {
        if let Ok(mut s) = wsock.lock() {
            let _ = s.write_all(bytes);
        }
    };
    loop {
        if link.closing.load(Relaxed) {
            let since = *closing_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                return;
            }
        }
        match sock.read(&mut buf[len..]) {
            Ok(0) => {
                if !link.closing.load(Relaxed) && !shared.stopped() {
                    shared.fail(who, "the broker closed the socket");
                }
                link.failed.store(true, Relaxed);
                writer.unpark();
                return;
            }
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !link.closing.load(Relaxed) {
                    shared.fail(who, e);
                }
                link.failed.store(true, Relaxed);
                writer.unpark();
                return;
            }
        }
        let mut pos = 0;
        let before = window.done;
        while len - pos >= 7 {
            let size = u32::from_be_bytes([buf[pos + 3], buf[pos + 4], buf[pos + 5], buf[pos + 6]])
                as usize;
            if size + 8 > buf.len() {
                buf.resize(size + 8, 0);
            }
            if len - pos < size + 8 {
                break;
            }
            let (kind, ch) = (buf[pos], u16::from_be_bytes([buf[pos + 1], buf[pos + 2]]));
            let p = &buf[pos + 7..pos + 7 + size];
            pos += size + 8;
            if kind != FRAME_METHOD || p.len() < 4 {
                continue; // content of a basic.return, heartbeats
            }
            let arg = &p[4..];
            let tag_bits = || -> (u64, bool) {
                let mut t = [0u8; 8];
                t.copy_from_slice(arg.get(..8).unwrap_or(&[0; 8]));
                (
                    u64::from_be_bytes(t),
                    arg.get(8).is_some_and(|b| b & 1 != 0),
                )
            };
            match (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            ) {
                (60, 80) => {
                    let (tag, multiple) = tag_bits();
                    window.settle(tag, multiple);
                }
                (60, 120) => {
                    let (tag, multiple) = tag_bits();
                    let was = window.done;
                    window.settle(tag, multiple);
                    let n = if multiple { window.done - was } else { 1 };
                    link.nacked.fetch_add(n, Relaxed);
                    shared.counters.nacked.fetch_add(n, Relaxed);
                }
                (60, 50) => {
                    shared.counters.returned.fetch_add(1, Relaxed);
                }
                (10, 60) => {
                    shared.counters.blocked.fetch_add(1, Relaxed);
                    eprintln!("warning: {who}: the broker sent connection.blocked");
                }
                (10, 51) => return,
                (10, 50) => {
                    link.failed.store(true, Relaxed);
                    writer.unpark();
                    reply(&close_ok_frame(0));
                    let e = parse_close(arg, true);
                    if !matches!(e, Error::Closed { code: 200, .. }) {
                        shared.fail(who, e);
                    }
                    return;
                }
                (20, 40) => {
                    link.failed.store(true, Relaxed);
                    writer.unpark();
                    shared.fail(who, parse_close(arg, false));
                    reply(&close_ok_frame(ch));
                    reply(&close_frame());
                    link.closing.store(true, Relaxed);
                }
                _ => {}
            }
        }
        buf.copy_within(pos..len, 0);
        len -= pos;
        if window.done != before {
            let delta = window.done - before;
            link.confirmed.store(window.done, Relaxed);
            shared.counters.confirmed.fetch_add(delta, Relaxed);
            writer.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_splits_the_body_at_frame_max() {
        let t = template("", "q", 10_000, true, 4096);
        // method (7+4+2+1+0+1+1+1 +1) + header (7+15+1) + 3 body frames of 4088+4088+1824
        let method = 8 + 4 + 2 + 1 + 1 + 1 + 1;
        let header = 8 + 15;
        assert_eq!(t.bytes.len(), method + header + 3 * 8 + 10_000);
        assert_eq!(t.stamp_at, method + header + 7);
        assert_eq!(t.bytes[method + header - 2], 2); // delivery-mode persistent
    }

    #[test]
    fn confirm_window_handles_multiple_and_out_of_order_acks() {
        let mut w = ConfirmWindow::default();
        w.settle(2, false);
        w.settle(3, false);
        assert_eq!(w.done, 0);
        w.settle(1, false);
        assert_eq!(w.done, 3);
        w.settle(10, true);
        assert_eq!(w.done, 10);
        w.settle(12, false);
        w.settle(11, false);
        assert_eq!(w.done, 12);
        w.settle(5, false); // a stale single ack changes nothing
        assert_eq!(w.done, 12);
    }
}
