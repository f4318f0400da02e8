//! The consuming role: one connection, channel 1, one thread, blocking reads.
//!
//! Deliveries are parsed in place in a large read buffer (no allocation per frame):
//! only the delivery tag, the body size and the first 16 body bytes (stamp and
//! producer/seq, see [`super::producer`]) are looked at. The clock is read once per
//! `read`, not once per message. Manual acks go out as one `basic.ack(multiple)` per
//! `multi_ack` deliveries, all acks of one read in one write.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{close_frame, close_ok_frame, parse_close, Conn, Error};
use super::stats::{Histogram, Shared};
use warren_protocol::frame::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD};

#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub id: u32,
    pub no_ack: bool,
    /// One ack with `multiple=true` per this many deliveries (1: ack each).
    pub multi_ack: u64,
    /// Messages to receive (0: until stopped).
    pub count: u64,
    /// Check per-producer sequence numbers (only meaningful when this consumer is
    /// the only one on its queue).
    pub check_seq: bool,
    /// With a count: give up after this long without a delivery.
    pub stall: Duration,
    pub read_bytes: usize,
}

#[derive(Default, Clone)]
pub struct ConsumerResult {
    pub received: u64,
    pub latency: Histogram,
    pub seq_gaps: u64,
    pub seq_backwards: u64,
    pub redelivered: u64,
    pub reads: u64,
    pub finished: Option<Instant>,
}

/// Where the parser is inside a delivery.
#[derive(Clone, Copy)]
enum Expect {
    Method,
    Header {
        tag: u64,
    },
    Body {
        tag: u64,
        left: u64,
        first: bool,
        stamp: Option<(u64, u64)>,
    },
}

/// The stamp in the first 16 bytes of a body, if the frame is that long.
fn read_stamp(p: &[u8]) -> Option<(u64, u64)> {
    let a: [u8; 8] = p.get(..8)?.try_into().ok()?;
    let s: [u8; 8] = p.get(8..16)?.try_into().ok()?;
    Some((u64::from_le_bytes(a), u64::from_le_bytes(s)))
}

/// Per-delivery bookkeeping, kept apart from the I/O so it can be unit-tested.
pub struct Tally {
    spec: ConsumerSpec,
    pub res: ConsumerResult,
    /// Next expected sequence number per producer id.
    next_seq: Vec<u64>,
    unacked: u64,
    last_tag: u64,
    acks: Vec<u8>,
}

pub fn ack_frame(out: &mut Vec<u8>, tag: u64, multiple: bool) {
    out.extend_from_slice(&[FRAME_METHOD, 0, 1, 0, 0, 0, 13, 0, 60, 0, 80]);
    out.extend_from_slice(&tag.to_be_bytes());
    out.push(multiple as u8);
    out.push(FRAME_END);
}

impl Tally {
    pub fn new(spec: ConsumerSpec) -> Tally {
        Tally {
            spec,
            res: ConsumerResult::default(),
            next_seq: Vec::new(),
            unacked: 0,
            last_tag: 0,
            acks: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.spec.count > 0 && self.res.received >= self.spec.count
    }

    /// One complete delivery. `stamp` is `(send time, producer<<48|seq)` when the
    /// body was long enough to carry it; `now` is the time of the read.
    pub fn delivered(&mut self, tag: u64, stamp: Option<(u64, u64)>, now: u64, measuring: bool) {
        self.res.received += 1;
        if let Some((sent, ps)) = stamp {
            if measuring {
                self.res.latency.record(now.saturating_sub(sent));
            }
            if self.spec.check_seq {
                let (p, seq) = ((ps >> 48) as usize, ps & ((1 << 48) - 1));
                if p >= self.next_seq.len() {
                    self.next_seq.resize(p + 1, 0);
                }
                let want = self.next_seq[p];
                if seq >= want {
                    self.res.seq_gaps += seq - want;
                    self.next_seq[p] = seq + 1;
                } else {
                    self.res.seq_backwards += 1;
                }
            }
        }
        if self.spec.no_ack {
            return;
        }
        self.last_tag = tag;
        if self.spec.multi_ack <= 1 {
            ack_frame(&mut self.acks, tag, false);
            return;
        }
        self.unacked += 1;
        if self.unacked >= self.spec.multi_ack || self.done() {
            ack_frame(&mut self.acks, tag, true);
            self.unacked = 0;
        }
    }
}

/// Run one consumer until its count is reached or the run stops.
pub fn run(conn: Conn, spec: ConsumerSpec, shared: Arc<Shared>) -> ConsumerResult {
    let who = format!("consumer {}", spec.id);
    let (sock, left, _) = conn.into_parts();
    let mut c = Reader {
        sock,
        buf: vec![0u8; spec.read_bytes.max(left.len() + 4096)],
        len: left.len(),
        expect: Expect::Method,
        tally: Tally::new(spec),
        closing: false,
        close_ok: false,
    };
    c.buf[..left.len()].copy_from_slice(&left);
    if let Err(e) = c
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .and_then(|_| c.sock.set_write_timeout(Some(Duration::from_secs(5))))
    {
        shared.fail(&who, e);
        return c.tally.res;
    }
    match c.consume(&shared) {
        Ok(()) => {
            c.tally.res.finished = Some(Instant::now());
            if let Err(e) = c.close(&shared) {
                shared.fail(&who, e);
            }
        }
        Err(e) => {
            c.tally.res.finished = Some(Instant::now());
            if !matches!(e, Error::Closed { code: 200, .. }) {
                shared.fail(&who, e);
            }
        }
    }
    c.tally.res
}

struct Reader {
    sock: TcpStream,
    buf: Vec<u8>,
    len: usize,
    expect: Expect,
    tally: Tally,
    /// We sent connection.close: deliveries still arriving are dropped.
    closing: bool,
    close_ok: bool,
}

impl Reader {
    /// One blocking read (100 ms timeout); Ok(false) on timeout.
    fn fill(&mut self) -> Result<bool, Error> {
        if self.len == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        match self.sock.read(&mut self.buf[self.len..]) {
            Ok(0) => Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the broker closed the socket",
            ))),
            Ok(n) => {
                self.len += n;
                self.tally.res.reads += 1;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn consume(&mut self, shared: &Shared) -> Result<(), Error> {
        let mut last_delivery = Instant::now();
        while !self.tally.done() && !shared.stopped() {
            if !self.fill()? {
                let idle = last_delivery.elapsed();
                if self.tally.spec.count > 0 && idle > self.tally.spec.stall {
                    return Err(Error::Timeout(format!(
                        "received {} of {} messages, then nothing for {:?}",
                        self.tally.res.received, self.tally.spec.count, idle
                    )));
                }
                continue;
            }
            let before = self.tally.res.received;
            let now = shared.now_ns();
            let measuring = shared.measuring.load(Relaxed);
            self.parse(now, measuring)?;
            let got = self.tally.res.received - before;
            if got > 0 {
                last_delivery = Instant::now();
                shared.counters.received.fetch_add(got, Relaxed);
            }
            if !self.tally.acks.is_empty() {
                self.sock.write_all(&self.tally.acks)?;
                self.tally.acks.clear();
            }
        }
        Ok(())
    }

    /// Take every complete frame off the buffer.
    fn parse(&mut self, now: u64, measuring: bool) -> Result<(), Error> {
        let mut pos = 0;
        while self.len - pos >= 7 {
            let b = &self.buf[pos..self.len];
            let size = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize;
            if b.len() < size + 8 {
                if size + 8 > self.buf.len() {
                    self.buf.resize(size + 8, 0);
                }
                break;
            }
            let (kind, ch) = (b[0], u16::from_be_bytes([b[1], b[2]]));
            if b[7 + size] != FRAME_END {
                return Err(Error::Protocol("bad frame end octet".into()));
            }
            pos += size + 8;
            if self.closing || self.tally.done() {
                // Past our count or closing: only the close handshake matters.
                if kind == FRAME_METHOD {
                    control(
                        &mut self.sock,
                        &mut self.close_ok,
                        ch,
                        &self.buf[pos - size - 1..pos - 1],
                    )?;
                }
                continue;
            }
            let p = &self.buf[pos - size - 1..pos - 1];
            match (kind, self.expect) {
                (FRAME_METHOD, _) if p.len() >= 4 && p[..4] == [0, 60, 0, 60] => {
                    // basic.deliver: consumer-tag, delivery-tag, redelivered, ...
                    let n = *p.get(4).unwrap_or(&0) as usize;
                    let (Some(t), Some(&r)) = (p.get(5 + n..13 + n), p.get(13 + n)) else {
                        return Err(Error::Protocol("short basic.deliver".into()));
                    };
                    let mut a = [0u8; 8];
                    a.copy_from_slice(t);
                    if r & 1 != 0 {
                        self.tally.res.redelivered += 1;
                    }
                    self.expect = Expect::Header {
                        tag: u64::from_be_bytes(a),
                    };
                }
                (FRAME_METHOD, _) => control(&mut self.sock, &mut self.close_ok, ch, p)?,
                (FRAME_HEADER, Expect::Header { tag }) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(p.get(4..12).unwrap_or(&[0; 8]));
                    let left = u64::from_be_bytes(a);
                    if left == 0 {
                        self.tally.delivered(tag, None, now, measuring);
                        self.expect = Expect::Method;
                    } else {
                        self.expect = Expect::Body {
                            tag,
                            left,
                            first: true,
                            stamp: None,
                        };
                    }
                }
                (
                    FRAME_BODY,
                    Expect::Body {
                        tag,
                        left,
                        first,
                        stamp,
                    },
                ) => {
                    // Bodies split over frames carry the stamp in the first one.
                    let stamp = if first { read_stamp(p) } else { stamp };
                    let left = left.saturating_sub(p.len() as u64);
                    if left == 0 {
                        self.tally.delivered(tag, stamp, now, measuring);
                        self.expect = Expect::Method;
                    } else {
                        self.expect = Expect::Body {
                            tag,
                            left,
                            first: false,
                            stamp,
                        };
                    }
                }
                (8, _) => {}
                _ => {
                    return Err(Error::Protocol(format!(
                        "unexpected frame type {kind} in a delivery"
                    )))
                }
            }
        }
        self.buf.copy_within(pos..self.len, 0);
        self.len -= pos;
        Ok(())
    }

    /// connection.close, then drain until close-ok (at most 5 s).
    fn close(&mut self, shared: &Shared) -> Result<(), Error> {
        if !self.tally.acks.is_empty() {
            self.sock.write_all(&self.tally.acks)?;
            self.tally.acks.clear();
        }
        self.closing = true;
        self.sock.write_all(&close_frame())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.close_ok {
            if Instant::now() > deadline {
                return Err(Error::Timeout(
                    "no connection.close-ok from the broker".into(),
                ));
            }
            match self.fill() {
                Ok(true) => self.parse(shared.now_ns(), false)?,
                Ok(false) => {}
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A method other than basic.deliver.
fn control(sock: &mut TcpStream, close_ok: &mut bool, ch: u16, p: &[u8]) -> Result<(), Error> {
    if p.len() < 4 {
        return Ok(());
    }
    let arg = &p[4..];
    match (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ) {
        (10, 50) => {
            let _ = sock.write_all(&close_ok_frame(0));
            *close_ok = true;
            Err(parse_close(arg, true))
        }
        (20, 40) => {
            let _ = sock.write_all(&close_ok_frame(ch));
            Err(parse_close(arg, false))
        }
        (10, 51) => {
            *close_ok = true;
            Ok(())
        }
        (60, 30) => Err(Error::Protocol(
            "the broker cancelled the consumer (queue deleted?)".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(no_ack: bool, multi_ack: u64, count: u64) -> ConsumerSpec {
        ConsumerSpec {
            id: 0,
            no_ack,
            multi_ack,
            count,
            check_seq: true,
            stall: Duration::from_secs(1),
            read_bytes: 4096,
        }
    }

    #[test]
    fn gaps_and_reordering_are_counted_per_producer() {
        let mut t = Tally::new(spec(true, 1, 0));
        let p1 = 1u64 << 48;
        for (i, s) in [0u64, 1, 2, 5, 6, 4].iter().enumerate() {
            t.delivered(i as u64 + 1, Some((0, *s)), 10, true);
        }
        t.delivered(7, Some((0, p1)), 10, true); // producer 1 starts at 0: no gap
        assert_eq!(t.res.seq_gaps, 2); // 3 and 4 missing when 5 arrived
        assert_eq!(t.res.seq_backwards, 1); // 4 arrived late
        assert_eq!(t.res.received, 7);
        assert_eq!(t.res.latency.count(), 7);
    }

    #[test]
    fn multi_ack_sends_one_ack_per_n_and_flushes_at_the_count() {
        let mut t = Tally::new(spec(false, 3, 7));
        for tag in 1..=7 {
            t.delivered(tag, None, 0, false);
        }
        // acks at 3 and 6 (multiple), and at 7 because the count is reached
        assert_eq!(t.acks.len(), 3 * 21);
        let tag_at =
            |i: usize| u64::from_be_bytes(t.acks[i * 21 + 11..i * 21 + 19].try_into().unwrap());
        assert_eq!((tag_at(0), tag_at(1), tag_at(2)), (3, 6, 7));
        assert!(t.acks.chunks(21).all(|a| a[19] == 1 && a[20] == FRAME_END));
        let mut single = Tally::new(spec(false, 1, 0));
        single.delivered(9, None, 0, false);
        assert_eq!(single.acks[19], 0);
    }
}
