//! The message store: persistent messages routed to durable queues, in a journal of
//! segment files written by one thread.
//!
//! Publishers hand a message to [`MessageStore::persist`], which only numbers it and
//! queues it for the writer thread. The writer takes everything queued, writes it in one
//! go and syncs once (group commit: a sync starts as soon as the previous one ended, and
//! nothing waits on a timer), then advances the synced watermark and wakes the
//! connections whose publishers wait for confirms. Queues report what they let go of
//! (acked, dropped, expired, purged) with [`MessageStore::ack`], and the first delivery
//! of a message with [`MessageStore::delivered`], so that after a crash it comes back
//! flagged redelivered. Neither is synced on its own: at worst an acked message comes
//! back after a crash, as a redelivery.
//!
//! A segment whose messages have all been let go of by every queue is deleted.
//!
//! Records (payloads, inside [`super::record`] framing):
//! - `M` id, queue ids, exchange, routing key, properties, body
//! - `A` queue id, message ids (let go of)
//! - `D` queue id, message ids (delivered at least once)

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::codec::{Get, Put};
use super::record;
use crate::message::Message;
use crate::queue::{ConnEvent, EventTx};

const SEGMENT_EXT: &str = "seg";

/// Hand-off to the writer thread.
enum Op {
    Persist(Box<Persist>),
    Ack {
        qid: u64,
        ids: Vec<u64>,
    },
    Delivered {
        qid: u64,
        ids: Vec<u64>,
    },
    /// Flush and sync everything queued so far, then answer.
    Flush(mpsc::Sender<()>),
}

struct Persist {
    id: u64,
    qids: Vec<u64>,
    exchange: Bytes,
    routing_key: Bytes,
    properties: Bytes,
    body: Bytes,
    waiter: Option<EventTx>,
}

/// What start-up found, by durable queue id.
pub type RecoveredByQueue = HashMap<u64, Vec<Recovered>>;

/// A message found on disk at start-up, for one queue.
pub struct Recovered {
    pub store_id: u64,
    pub message: Arc<Message>,
    /// It had been delivered before the restart: it comes back redelivered.
    pub delivered: bool,
}

pub struct MessageStore {
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    next_id: AtomicU64,
    /// Every message numbered up to here is on disk (synced when fsync is on).
    synced: Arc<AtomicU64>,
    /// A write or sync failed: persistent publishes are refused (nacked) from now on.
    broken: Arc<AtomicBool>,
    /// Shut down: what queues let go of from now on is not recorded (the broker is
    /// stopping and everything still queued must come back).
    closed: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Woken after every batch the writer finishes (for [`MessageStore::wait_synced`]).
    progress: Arc<tokio::sync::Notify>,
}

impl MessageStore {
    /// Open the store in `dir`, recovering what the journal holds for the durable queues
    /// in `live_qids`; messages for other queues are dropped.
    pub fn open(
        dir: &Path,
        live_qids: &HashSet<u64>,
        fsync: bool,
        segment_size: u64,
    ) -> io::Result<(Arc<MessageStore>, RecoveredByQueue)> {
        fs::create_dir_all(dir)?;
        let started = std::time::Instant::now();
        let recovery = recover(dir, live_qids)?;
        let count: usize = recovery.by_queue.values().map(Vec::len).sum();
        tracing::info!(
            messages = count,
            queues = recovery.by_queue.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "message store recovered"
        );
        let synced = Arc::new(AtomicU64::new(recovery.max_id));
        let broken = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(tokio::sync::Notify::new());
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            segment: recovery.next_segment,
            file: open_segment(dir, recovery.next_segment)?,
            written: 0,
            segment_size,
            fsync,
            refs: recovery.refs,
            live: recovery.live,
            watermark: recovery.max_id,
            ahead: BTreeSet::new(),
            synced: synced.clone(),
            broken: broken.clone(),
            progress: progress.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || writer.run(rx))?;
        let store = Arc::new(MessageStore {
            tx: Mutex::new(Some(tx)),
            next_id: AtomicU64::new(recovery.max_id + 1),
            synced,
            broken,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            progress,
        });
        Ok((store, recovery.by_queue))
    }

    fn send(&self, op: Op) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        }
    }

    /// Queue a message for the durable queues `qids`; returns its store id. When
    /// `waiter` is given, that connection gets [`ConnEvent::StoreSynced`] once it is on disk.
    pub fn persist(&self, qids: Vec<u64>, m: &Message, waiter: Option<&EventTx>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let op = Op::Persist(Box::new(Persist {
            id,
            qids,
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.clone(),
            properties: m.properties.clone(),
            body: m.body.clone(),
            waiter: waiter.cloned(),
        }));
        if !self.send(op) {
            self.broken.store(true, Ordering::Release);
        }
        id
    }

    /// A durable queue let go of these messages for good.
    pub fn ack(&self, qid: u64, ids: Vec<u64>) {
        if !ids.is_empty() && !self.closed.load(Ordering::Acquire) {
            self.send(Op::Ack { qid, ids });
        }
    }

    pub fn delivered(&self, qid: u64, ids: Vec<u64>) {
        if !ids.is_empty() && !self.closed.load(Ordering::Acquire) {
            self.send(Op::Delivered { qid, ids });
        }
    }

    /// Every message numbered up to this is safely stored.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Wait until message `id` is safely stored; false if the store failed first.
    pub async fn wait_synced(&self, id: u64) -> bool {
        loop {
            let progressed = self.progress.notified();
            if self.synced() >= id {
                return true;
            }
            if self.is_broken() {
                return false;
            }
            progressed.await;
        }
    }

    /// Write and sync everything queued so far (blocking).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.send(Op::Flush(tx)) {
            let _ = rx.recv();
        }
    }

    /// Stop recording what queues let go of (shutdown is tearing them down).
    pub fn freeze(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Flush and stop the writer (the end of a shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush();
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.{SEGMENT_EXT}"))
}

fn open_segment(dir: &Path, n: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))
}

struct Writer {
    dir: PathBuf,
    segment: u64,
    file: File,
    written: u64,
    segment_size: u64,
    fsync: bool,
    /// Live messages: queues still holding each, and its segment.
    refs: HashMap<u64, (u32, u64)>,
    /// Live messages per segment.
    live: HashMap<u64, u64>,
    /// Ids arrive out of order (publishers number them on their own threads): the
    /// watermark only moves past ids that are all written.
    watermark: u64,
    ahead: BTreeSet<u64>,
    synced: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
    progress: Arc<tokio::sync::Notify>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        let mut buf = Vec::with_capacity(1 << 20);
        while let Ok(first) = rx.recv() {
            buf.clear();
            let mut ids = Vec::new();
            let mut waiters: Vec<EventTx> = Vec::new();
            let mut flushes = Vec::new();
            let mut acks = Vec::new();
            let mut next = Some(first);
            while let Some(op) = next {
                match op {
                    Op::Persist(p) => {
                        self.encode_message(&mut buf, &p);
                        ids.push(p.id);
                        if let Some(w) = p.waiter {
                            if !waiters.iter().any(|x| x.same_channel(&w)) {
                                waiters.push(w);
                            }
                        }
                    }
                    Op::Ack { qid, ids } => {
                        record::append_with(&mut buf, |o| {
                            o.put_u8(b'A');
                            o.put_u64(qid);
                            o.put_u32(ids.len() as u32);
                            ids.iter().for_each(|id| o.put_u64(*id));
                        });
                        acks.extend(ids);
                    }
                    Op::Delivered { qid, ids } => record::append_with(&mut buf, |o| {
                        o.put_u8(b'D');
                        o.put_u64(qid);
                        o.put_u32(ids.len() as u32);
                        ids.iter().for_each(|id| o.put_u64(*id));
                    }),
                    Op::Flush(reply) => flushes.push(reply),
                }
                // Bound a batch so a flood can't grow the buffer without limit.
                next = if buf.len() < 8 << 20 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let stored = self.write(&buf, !ids.is_empty() || !flushes.is_empty());
            if stored {
                self.advance(ids);
            } else {
                self.broken.store(true, Ordering::Release);
            }
            // Wake waiting publishers either way: on failure they nack.
            self.progress.notify_waiters();
            for w in waiters {
                let _ = w.send(ConnEvent::StoreSynced);
            }
            for id in acks {
                self.release(id);
            }
            if self.written >= self.segment_size {
                self.roll();
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    fn encode_message(&mut self, buf: &mut Vec<u8>, p: &Persist) {
        record::append_with(buf, |o| {
            o.put_u8(b'M');
            o.put_u64(p.id);
            o.put_u16(p.qids.len() as u16);
            p.qids.iter().for_each(|q| o.put_u64(*q));
            o.put_bytes(&p.exchange);
            o.put_bytes(&p.routing_key);
            o.put_bytes(&p.properties);
            o.put_bytes(&p.body);
        });
        self.refs.insert(p.id, (p.qids.len() as u32, self.segment));
        *self.live.entry(self.segment).or_default() += 1;
    }

    fn write(&mut self, buf: &[u8], sync: bool) -> bool {
        if self.broken.load(Ordering::Acquire) {
            return false;
        }
        let result = self.file.write_all(buf).and_then(|()| {
            if sync && self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.written += buf.len() as u64;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, segment = self.segment, "message store write failed: persistent publishes are refused until restart");
                false
            }
        }
    }

    fn advance(&mut self, ids: Vec<u64>) {
        self.ahead.extend(ids);
        while self.ahead.first() == Some(&(self.watermark + 1)) {
            self.ahead.pop_first();
            self.watermark += 1;
        }
        self.synced.store(self.watermark, Ordering::Release);
    }

    /// One queue let go of message `id`; when none holds it, its segment may go.
    fn release(&mut self, id: u64) {
        let Some((holders, segment)) = self.refs.get_mut(&id) else {
            return;
        };
        *holders -= 1;
        if *holders > 0 {
            return;
        }
        let segment = *segment;
        self.refs.remove(&id);
        if let Some(n) = self.live.get_mut(&segment) {
            *n -= 1;
            if *n == 0 && segment != self.segment {
                self.live.remove(&segment);
                self.delete_segment(segment);
            }
        }
    }

    fn delete_segment(&self, segment: u64) {
        if let Err(e) = fs::remove_file(segment_path(&self.dir, segment)) {
            tracing::warn!(error = %e, segment, "could not delete a consumed segment");
        }
    }

    fn roll(&mut self) {
        let next = self.segment + 1;
        match open_segment(&self.dir, next) {
            Ok(f) => {
                let old = self.segment;
                self.file = f;
                self.segment = next;
                self.written = 0;
                if self.live.get(&old).copied().unwrap_or(0) == 0 {
                    self.live.remove(&old);
                    self.delete_segment(old);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start a new segment; staying on the current one")
            }
        }
    }
}

struct Recovery {
    by_queue: HashMap<u64, Vec<Recovered>>,
    refs: HashMap<u64, (u32, u64)>,
    live: HashMap<u64, u64>,
    max_id: u64,
    next_segment: u64,
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(SEGMENT_EXT) {
            if let Some(n) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
            {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Replay the journal: first every segment's acks and delivery marks, then its
/// messages, keeping those some live queue still holds.
fn recover(dir: &Path, live_qids: &HashSet<u64>) -> io::Result<Recovery> {
    let segs = segments(dir)?;
    let mut files = Vec::with_capacity(segs.len());
    for &n in &segs {
        let path = segment_path(dir, n);
        let data = fs::read(&path)?;
        let report = record::scan(&data, |_, _| {});
        record::report(&path, data.len(), &report);
        if report.valid_len < data.len() {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(report.valid_len as u64)?;
            f.sync_all()?;
        }
        files.push((n, data));
    }

    let mut acked: HashSet<(u64, u64)> = HashSet::new();
    let mut delivered: HashSet<(u64, u64)> = HashSet::new();
    for (_, data) in &files {
        record::scan(data, |_, payload| {
            let mut g = Get::new(payload);
            let (Some(kind @ (b'A' | b'D')), Some(qid), Some(n)) = (g.u8(), g.u64(), g.u32())
            else {
                return;
            };
            let set = if kind == b'A' {
                &mut acked
            } else {
                &mut delivered
            };
            for _ in 0..n {
                match g.u64() {
                    Some(id) => set.insert((qid, id)),
                    None => break,
                };
            }
        });
    }

    let mut r = Recovery {
        by_queue: HashMap::new(),
        refs: HashMap::new(),
        live: HashMap::new(),
        max_id: 0,
        next_segment: segs.last().map_or(1, |n| n + 1),
    };
    for (seg, data) in &files {
        record::scan(data, |_, payload| {
            let Some(rec) = parse_message(payload) else {
                return;
            };
            let id = rec.id;
            r.max_id = r.max_id.max(id);
            let holders: Vec<u64> = rec
                .qids
                .iter()
                .copied()
                .filter(|q| live_qids.contains(q) && !acked.contains(&(*q, id)))
                .collect();
            if holders.is_empty() {
                return;
            }
            let message = Arc::new(rec.message(payload));
            r.refs.insert(id, (holders.len() as u32, *seg));
            *r.live.entry(*seg).or_default() += 1;
            for q in holders {
                r.by_queue.entry(q).or_default().push(Recovered {
                    store_id: id,
                    message: message.clone(),
                    delivered: delivered.contains(&(q, id)),
                });
            }
        });
    }
    // Fully consumed segments go now.
    for (seg, _) in &files {
        if !r.live.contains_key(seg) {
            let _ = fs::remove_file(segment_path(dir, *seg));
        }
    }
    for msgs in r.by_queue.values_mut() {
        msgs.sort_by_key(|m| m.store_id);
    }
    Ok(r)
}

/// A message record's id, queues, and where its four byte strings lie in the payload.
struct MessageRecord {
    id: u64,
    qids: Vec<u64>,
    fields: [std::ops::Range<usize>; 4],
}

fn parse_message(payload: &[u8]) -> Option<MessageRecord> {
    let mut g = Get::new(payload);
    if g.u8()? != b'M' {
        return None;
    }
    let id = g.u64()?;
    let n = g.u16()?;
    let mut qids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        qids.push(g.u64()?);
    }
    let base = payload.as_ptr() as usize;
    let mut field = || {
        let s = g.bytes()?;
        let start = s.as_ptr() as usize - base;
        Some(start..start + s.len())
    };
    let fields = [field()?, field()?, field()?, field()?];
    Some(MessageRecord { id, qids, fields })
}

impl MessageRecord {
    /// The message, in one allocation shared by its four parts.
    fn message(&self, payload: &[u8]) -> Message {
        let all = Bytes::copy_from_slice(payload);
        let [e, k, p, b] = self.fields.clone();
        Message {
            exchange: all.slice(e),
            routing_key: all.slice(k),
            properties: all.slice(p),
            body: all.slice(b),
            store_id: Some(self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> Message {
        Message {
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            properties: Bytes::from_static(&[0x10, 0, 2]),
            body: Bytes::copy_from_slice(body.as_bytes()),
            store_id: None,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn recovers_unacked_messages_in_order_with_delivery_marks() {
        let dir = tmp("recover");
        let live: HashSet<u64> = [1, 2].into();
        let (s, rec) = MessageStore::open(&dir, &live, true, 1 << 20).unwrap();
        assert!(rec.is_empty());
        let a = s.persist(vec![1, 2], &msg("a"), None);
        let b = s.persist(vec![1], &msg("b"), None);
        let c = s.persist(vec![1], &msg("c"), None);
        s.ack(1, vec![a]);
        s.delivered(1, vec![b]);
        s.flush();
        assert_eq!(s.synced(), c);
        drop(s); // no close(): as after a crash
        let (_s, rec) = MessageStore::open(&dir, &live, true, 1 << 20).unwrap();
        let q1: Vec<_> = rec[&1]
            .iter()
            .map(|r| (&r.message.body[..], r.delivered))
            .collect();
        assert_eq!(q1, vec![(&b"b"[..], true), (&b"c"[..], false)]);
        assert_eq!(rec[&2].len(), 1);
        assert_eq!(rec[&2][0].message.store_id, Some(a));
    }

    #[test]
    fn fully_acked_segments_are_deleted() {
        let dir = tmp("gc");
        let live: HashSet<u64> = [7].into();
        let (s, _) = MessageStore::open(&dir, &live, false, 64).unwrap();
        let ids: Vec<u64> = (0..20)
            .map(|i| {
                let id = s.persist(vec![7], &msg(&format!("m{i}")), None);
                s.flush();
                id
            })
            .collect();
        let before = segments(&dir).unwrap().len();
        assert!(before > 2, "small segments roll: {before}");
        s.ack(7, ids);
        s.persist(vec![7], &msg("last"), None);
        s.flush();
        let after = segments(&dir).unwrap().len();
        assert!(after <= 2, "consumed segments deleted: {after} of {before}");
        drop(s);
        let (_s, rec) = MessageStore::open(&dir, &live, false, 64).unwrap();
        assert_eq!(rec[&7].len(), 1);
    }
}
