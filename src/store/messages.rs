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
//! The writer keeps an index of where every live message lies (segment, offset, length),
//! shared with readers: a deep queue keeps only its oldest messages' bodies in memory and
//! reads the rest back with [`MessageStore::read`] as it drains (see `queue/ready.rs`).
//!
//! Records (payloads, inside [`super::record`] framing):
//! - `M` id, queue ids, exchange, routing key, properties, body
//! - `T` id, (no queues), exchange, routing key, properties, body: a transient copy
//!   written only to page a message out of a queue's memory; never recovered, never synced
//! - `A` queue id, message ids (let go of)
//! - `D` queue id, message ids (delivered at least once)

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::codec::{Get, Put};
use super::index::{Index, Ref};
use super::record;
use crate::config::StoreConfig;
use crate::message::Message;
use crate::protocol::properties;
use crate::util::IdHash;

const SEGMENT_EXT: &str = "seg";

/// Hand-off to the writer thread.
enum Op {
    Persist(Box<Persist>),
    /// Copies to page messages out: a batch per queue wake-up, not an op per message.
    Transient(Vec<Persist>),
    Ack {
        qid: u64,
        ids: Vec<u64>,
    },
    /// Transient copies let go of: nothing to journal, just the index.
    Release(Vec<u64>),
    Delivered {
        qid: u64,
        ids: Vec<u64>,
    },
    /// Flush and sync everything queued so far, then answer.
    Flush(mpsc::Sender<()>),
}

struct Persist {
    id: u64,
    /// Empty for a transient copy.
    qids: Vec<u64>,
    exchange: Bytes,
    routing_key: Bytes,
    properties: Bytes,
    body: Bytes,
    waiter: Option<Arc<Notify>>,
}

impl Persist {
    /// The message's parts, shared (no copy of the body).
    fn of(id: u64, qids: Vec<u64>, m: &Message, waiter: Option<&Arc<Notify>>) -> Persist {
        Persist {
            id,
            qids,
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.clone(),
            properties: m.properties.clone(),
            body: m.body.clone(),
            waiter: waiter.cloned(),
        }
    }
}

/// What start-up found, by durable queue id.
pub type RecoveredByQueue = HashMap<u64, Vec<Recovered>>;

/// A message found on disk at start-up, for one queue.
pub struct Recovered {
    pub store_id: u64,
    /// Its body, for the oldest messages of each queue (see `StoreConfig::resident_messages`);
    /// the rest stay on disk until the queue reaches them.
    pub message: Option<Arc<Message>>,
    /// Body length, priority and `expiration` property: what a queue needs of a message
    /// it does not hold in memory.
    pub size: u32,
    pub priority: Option<u8>,
    pub expiration_ms: Option<u64>,
    /// It had been delivered before the restart: it comes back redelivered.
    pub delivered: bool,
}

/// Live messages by id, written by the writer thread once per batch, read by queues
/// paging messages back in.
type SharedIndex = Arc<Mutex<Index>>;

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
    index: SharedIndex,
    dir: PathBuf,
    /// Per durable queue, how many ready bodies stay in memory.
    resident: usize,
}

impl MessageStore {
    /// Open the store in `dir`, recovering what the journal holds for the durable queues
    /// in `live_qids`; messages for other queues are dropped.
    pub fn open(
        dir: &Path,
        live_qids: &HashSet<u64>,
        config: &StoreConfig,
    ) -> io::Result<(Arc<MessageStore>, RecoveredByQueue)> {
        super::files::create_dir(dir)?;
        let started = std::time::Instant::now();
        let mut recovery = recover(dir, live_qids)?;
        let synced = Arc::new(AtomicU64::new(recovery.max_id));
        let broken = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(tokio::sync::Notify::new());
        let index: SharedIndex = Arc::new(Mutex::new(std::mem::take(&mut recovery.refs)));
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            segment: recovery.next_segment,
            file: open_segment(dir, recovery.next_segment)?,
            written: 0,
            segment_size: config.segment_size,
            fsync: config.fsync,
            index: index.clone(),
            live: recovery.live,
            watermark: recovery.max_id,
            ahead: BTreeSet::new(),
            synced: synced.clone(),
            broken: broken.clone(),
            progress: progress.clone(),
        };
        // Ids are never reused; one at the end of the id space can only be damage (found
        // by fuzzing: `+ 1` overflowed).
        let next_id = recovery.max_id.checked_add(1).ok_or_else(|| {
            io::Error::other("a segment holds a message id no warren assigns; it is damaged")
        })?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || writer.run(rx))?;
        let store = Arc::new(MessageStore {
            tx: Mutex::new(Some(tx)),
            next_id: AtomicU64::new(next_id),
            synced,
            broken,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            progress,
            index,
            dir: dir.to_path_buf(),
            resident: config.resident_messages.try_into().unwrap_or(usize::MAX),
        });
        let mut by_queue = recovery.by_queue;
        store.load_resident(&mut by_queue);
        let count: usize = by_queue.values().map(Vec::len).sum();
        tracing::info!(
            messages = count,
            queues = by_queue.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "message store recovered"
        );
        Ok((store, by_queue))
    }

    /// Per durable queue, how many ready bodies stay in memory.
    pub fn resident(&self) -> usize {
        self.resident
    }

    /// Read the bodies of each queue's oldest recovered messages.
    fn load_resident(&self, by_queue: &mut RecoveredByQueue) {
        for msgs in by_queue.values_mut() {
            let n = msgs.len().min(self.resident);
            let ids: Vec<u64> = msgs[..n].iter().map(|m| m.store_id).collect();
            for (m, read) in msgs.iter_mut().zip(self.read(&ids)) {
                m.message = read.map(Arc::new);
            }
        }
    }

    /// Read live messages back from disk, in the order of `ids`; `None` for one that is
    /// not in the store (or can't be read: logged). Records close together in a segment
    /// are read with one `pread`.
    pub fn read(&self, ids: &[u64]) -> Vec<Option<Message>> {
        let refs: Vec<Option<Ref>> = {
            let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter().map(|&id| index.get(id)).collect()
        };
        let mut out: Vec<Option<Message>> = ids.iter().map(|_| None).collect();
        // Visit in disk order, coalescing neighbours into spans.
        let mut order: Vec<usize> = (0..ids.len()).filter(|&i| refs[i].is_some()).collect();
        order.sort_unstable_by_key(|&i| refs[i].map(|r| (r.segment, r.offset)));
        let mut file: Option<(u32, File)> = None;
        let mut i = 0;
        while i < order.len() {
            let Some(first) = refs[order[i]] else { break };
            let start = first.offset as u64 - record::HEADER as u64;
            let mut end = first.offset as u64 + first.len as u64;
            let mut j = i + 1;
            while let Some(r) = order.get(j).and_then(|&k| refs[k]) {
                let r_start = r.offset as u64 - record::HEADER as u64;
                if r.segment != first.segment || r_start > end + SPAN_GAP || r_start < start {
                    break;
                }
                end = end.max(r.offset as u64 + r.len as u64);
                j += 1;
            }
            if file.as_ref().map(|f| f.0) != Some(first.segment) {
                file = match File::open(segment_path(&self.dir, first.segment as u64)) {
                    Ok(f) => Some((first.segment, f)),
                    Err(e) => {
                        tracing::error!(error = %e, segment = first.segment, "cannot open a segment to read messages back");
                        i = j;
                        continue;
                    }
                };
            }
            let Some((_, f)) = &file else { break };
            let mut span = vec![0u8; (end - start) as usize];
            if let Err(e) = f.read_exact_at(&mut span, start) {
                tracing::error!(error = %e, segment = first.segment, offset = start, "cannot read messages back from the store");
                i = j;
                continue;
            }
            let span = Bytes::from(span);
            for &k in &order[i..j] {
                let Some(r) = refs[k] else { continue };
                let at = (r.offset as u64 - record::HEADER as u64 - start) as usize;
                out[k] = record::payload_at(&span, at)
                    .and_then(|p| {
                        let rec = parse_message(&span[p.clone()])?;
                        (rec.id == ids[k]).then(|| rec.message_in(&span, p.start))
                    })
                    .or_else(|| {
                        tracing::error!(
                            segment = r.segment,
                            offset = r.offset,
                            id = ids[k],
                            "stored message is corrupt; it is lost"
                        );
                        None
                    });
            }
            i = j;
        }
        out
    }

    fn send(&self, op: Op) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        }
    }

    /// Queue a message for the durable queues `qids`; returns its store id. When
    /// `waiter` is given, it is notified once the message is on disk (a connection waits
    /// on it to send publisher confirms; the store knows nothing of connections).
    pub fn persist(&self, qids: Vec<u64>, m: &Message, waiter: Option<&Arc<Notify>>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let op = Op::Persist(Box::new(Persist::of(id, qids, m, waiter)));
        if !self.send(op) {
            self.broken.store(true, Ordering::Release);
        }
        id
    }

    /// Write transient copies of messages so a queue can drop their bodies from memory
    /// (read back with [`MessageStore::read`] once [`MessageStore::synced`] covers them).
    /// They get consecutive ids, the first returned, and go to the writer in one hand-off.
    pub fn persist_transient(&self, ms: &[&Message]) -> u64 {
        let first = self.next_id.fetch_add(ms.len() as u64, Ordering::AcqRel);
        let copies = ms
            .iter()
            .zip(first..)
            .map(|(m, id)| Persist::of(id, Vec::new(), m, None))
            .collect();
        if !ms.is_empty() && !self.send(Op::Transient(copies)) {
            self.broken.store(true, Ordering::Release);
        }
        first
    }

    /// A queue let go of these transient copies.
    pub fn release(&self, ids: Vec<u64>) {
        if !ids.is_empty() && !self.closed.load(Ordering::Acquire) {
            self.send(Op::Release(ids));
        }
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

/// Records at most this far apart are read back with one `pread`.
const SPAN_GAP: u64 = 64 * 1024;

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.{SEGMENT_EXT}"))
}

fn open_segment(dir: &Path, n: u64) -> io::Result<File> {
    super::files::options()
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
    /// Live messages: queues still holding each, and where it lies.
    index: SharedIndex,
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
            let mut durable = false;
            let mut fresh = Vec::new();
            let mut waiters: Vec<Arc<Notify>> = Vec::new();
            let mut flushes = Vec::new();
            let mut acks = Vec::new();
            let mut next = Some(first);
            while let Some(op) = next {
                match op {
                    Op::Persist(p) => {
                        fresh.push(self.encode_message(&mut buf, &p));
                        durable |= !p.qids.is_empty();
                        ids.push(p.id);
                        if let Some(w) = p.waiter {
                            if !waiters.iter().any(|x| Arc::ptr_eq(x, &w)) {
                                waiters.push(w);
                            }
                        }
                    }
                    Op::Transient(copies) => {
                        for p in &copies {
                            fresh.push(self.encode_message(&mut buf, p));
                            ids.push(p.id);
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
                    Op::Release(ids) => acks.extend(ids),
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
            let stored = self.write(&buf, durable || !flushes.is_empty());
            {
                // Index what was written (before the watermark says it can be read back),
                // then let go of what queues released.
                let shared = self.index.clone();
                let mut index = shared.lock().unwrap_or_else(|e| e.into_inner());
                if stored {
                    index.extend(fresh);
                }
                for id in acks {
                    self.release(&mut index, id);
                }
            }
            if stored {
                self.advance(ids);
            } else {
                self.broken.store(true, Ordering::Release);
            }
            // Wake waiting publishers either way: on failure they nack.
            self.progress.notify_waiters();
            for w in waiters {
                w.notify_one();
            }
            if self.written >= self.segment_size {
                self.roll();
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    /// Append a message record to the batch; returns its index entry.
    fn encode_message(&mut self, buf: &mut Vec<u8>, p: &Persist) -> (u64, Ref) {
        let start = buf.len() + record::HEADER;
        record::append_with(buf, |o| {
            o.put_u8(if p.qids.is_empty() { b'T' } else { b'M' });
            o.put_u64(p.id);
            o.put_u16(p.qids.len() as u16);
            p.qids.iter().for_each(|q| o.put_u64(*q));
            o.put_bytes(&p.exchange);
            o.put_bytes(&p.routing_key);
            o.put_bytes(&p.properties);
            o.put_bytes(&p.body);
        });
        *self.live.entry(self.segment).or_default() += 1;
        let r = Ref {
            holders: p.qids.len().max(1) as u32,
            segment: self.segment as u32,
            offset: (self.written + start as u64) as u32,
            len: (buf.len() - start) as u32,
        };
        (p.id, r)
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
    fn release(&mut self, index: &mut Index, id: u64) {
        let Some(gone) = index.release(id) else {
            return;
        };
        let segment = gone.segment as u64;
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
    refs: Index,
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

/// Replay the journal, one segment in memory at a time: first every segment's acks and
/// delivery marks (truncating a torn tail), then its messages, indexing those some live
/// queue still holds. Bodies are not kept: queues read back what they need.
fn recover(dir: &Path, live_qids: &HashSet<u64>) -> io::Result<Recovery> {
    let segs = segments(dir)?;
    // The index keeps segment numbers in 32 bits; warren numbers them from 1 up.
    if let Some(n) = segs.iter().find(|&&n| n >= u64::from(u32::MAX)) {
        return Err(io::Error::other(format!(
            "{} is not a segment warren writes (numbered past 2^32); move it aside",
            segment_path(dir, *n).display()
        )));
    }
    let mut acked: HashSet<(u64, u64), IdHash> = HashSet::default();
    let mut delivered: HashSet<(u64, u64), IdHash> = HashSet::default();
    // One buffer for every segment: a fresh one each time costs a page fault per page.
    let mut data = Vec::new();
    for &n in &segs {
        let path = segment_path(dir, n);
        read_into(&path, &mut data)?;
        let report = record::scan(&data, |_, payload| {
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
        record::report(&path, data.len(), &report);
        // Nothing is cut off or skipped without a copy: a damaged segment whole, else
        // the torn tail about to be truncated.
        let data_dir = dir.parent().unwrap_or(dir);
        if !report.corrupt_at.is_empty() {
            super::files::quarantine(data_dir, &path, "damaged", &data)?;
        } else if report.valid_len < data.len() {
            let what = format!("tail-at-{}", report.valid_len);
            super::files::quarantine(data_dir, &path, &what, &data[report.valid_len..])?;
        }
        if report.valid_len < data.len() {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(report.valid_len as u64)?;
            f.sync_all()?;
        }
    }

    let mut r = Recovery {
        by_queue: HashMap::new(),
        refs: Index::default(),
        live: HashMap::new(),
        max_id: 0,
        next_segment: segs.last().map_or(1, |n| n + 1),
    };
    for &seg in &segs {
        read_into(&segment_path(dir, seg), &mut data)?;
        let mut seg_live = 0;
        record::scan(&data, |at, payload| {
            let Some(rec) = parse_message(payload) else {
                return;
            };
            let id = rec.id;
            r.max_id = r.max_id.max(id);
            if !rec.durable {
                return;
            }
            let holds = |q: &u64| live_qids.contains(q) && !acked.contains(&(*q, id));
            let holders = rec.queues().filter(holds).count();
            if holders == 0 {
                return;
            }
            let [_, _, props, body] = rec.fields.clone();
            let props = &payload[props];
            let (priority, expiration_ms) = (
                properties::priority(props),
                properties::expiration_ms(props),
            );
            r.refs.insert(
                id,
                Ref {
                    holders: holders as u32,
                    segment: seg as u32,
                    offset: (at + record::HEADER) as u32,
                    len: payload.len() as u32,
                },
            );
            seg_live += 1;
            for q in rec.queues().filter(holds) {
                r.by_queue.entry(q).or_default().push(Recovered {
                    store_id: id,
                    message: None,
                    size: body.len() as u32,
                    priority,
                    expiration_ms,
                    delivered: delivered.contains(&(q, id)),
                });
            }
        });
        // A fully consumed segment goes now.
        if seg_live > 0 {
            r.live.insert(seg, seg_live);
        } else {
            let _ = fs::remove_file(segment_path(dir, seg));
        }
    }
    for msgs in r.by_queue.values_mut() {
        msgs.sort_by_key(|m| m.store_id);
    }
    Ok(r)
}

/// Read a whole file into `buf`, reusing its allocation.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_end(buf)?;
    Ok(())
}

/// A message record's id, queues, and where its four byte strings lie in the payload.
struct MessageRecord<'a> {
    id: u64,
    /// `M`, not a transient `T` copy.
    durable: bool,
    /// The queue ids, 8 bytes each (read with [`MessageRecord::queues`]; recovery parses
    /// a million of these, so no allocation per record).
    qids: &'a [u8],
    fields: [std::ops::Range<usize>; 4],
}

fn parse_message(payload: &[u8]) -> Option<MessageRecord<'_>> {
    let mut g = Get::new(payload);
    let durable = match g.u8()? {
        b'M' => true,
        b'T' => false,
        _ => return None,
    };
    let id = g.u64()?;
    let n = g.u16()?;
    let qids = g.raw(n as usize * 8)?;
    let base = payload.as_ptr() as usize;
    let mut field = || {
        let s = g.bytes()?;
        let start = s.as_ptr() as usize - base;
        Some(start..start + s.len())
    };
    let fields = [field()?, field()?, field()?, field()?];
    Some(MessageRecord {
        id,
        durable,
        qids,
        fields,
    })
}

impl MessageRecord<'_> {
    fn queues(&self) -> impl Iterator<Item = u64> + '_ {
        self.qids.chunks_exact(8).map(|c| {
            let mut id = [0; 8];
            id.copy_from_slice(c);
            u64::from_le_bytes(id)
        })
    }

    /// The message, sharing `buf` (where its payload starts at `at`) for its four parts.
    fn message_in(&self, buf: &Bytes, at: usize) -> Message {
        let part = |r: &std::ops::Range<usize>| buf.slice(at + r.start..at + r.end);
        let [e, k, p, b] = &self.fields;
        Message {
            exchange: part(e),
            routing_key: part(k),
            properties: part(p),
            body: part(b),
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

    fn cfg(fsync: bool, segment_size: u64) -> StoreConfig {
        StoreConfig {
            fsync,
            segment_size,
            ..StoreConfig::default()
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
        let (s, rec) = MessageStore::open(&dir, &live, &cfg(true, 1 << 20)).unwrap();
        assert!(rec.is_empty());
        let a = s.persist(vec![1, 2], &msg("a"), None);
        let b = s.persist(vec![1], &msg("b"), None);
        let c = s.persist(vec![1], &msg("c"), None);
        s.ack(1, vec![a]);
        s.delivered(1, vec![b]);
        s.flush();
        assert_eq!(s.synced(), c);
        drop(s); // no close(): as after a crash
        let (_s, rec) = MessageStore::open(&dir, &live, &cfg(true, 1 << 20)).unwrap();
        let q1: Vec<_> = rec[&1]
            .iter()
            .map(|r| (r.message.as_ref().unwrap().body.clone(), r.delivered))
            .collect();
        assert_eq!(
            q1,
            vec![(Bytes::from("b"), true), (Bytes::from("c"), false)]
        );
        assert_eq!(rec[&2].len(), 1);
        assert_eq!(rec[&2][0].store_id, a);
    }

    #[test]
    fn fully_acked_segments_are_deleted() {
        let dir = tmp("gc");
        let live: HashSet<u64> = [7].into();
        let (s, _) = MessageStore::open(&dir, &live, &cfg(false, 64)).unwrap();
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
        let (_s, rec) = MessageStore::open(&dir, &live, &cfg(false, 64)).unwrap();
        assert_eq!(rec[&7].len(), 1);
    }

    /// Damage that names the last message id, or a segment numbered past what the index
    /// holds, is refused at open (found by fuzzing: `max_id + 1` overflowed).
    #[test]
    fn ids_and_segment_numbers_out_of_range_are_refused() {
        use super::super::codec::Put;
        let dir = tmp("id-max");
        fs::create_dir_all(&dir).unwrap();
        let mut payload = Vec::new();
        payload.put_u8(b'M');
        payload.put_u64(u64::MAX);
        payload.put_u16(1);
        payload.put_u64(1);
        for field in [&b""[..], b"q", &[0x10, 0, 2], b"body"] {
            payload.put_bytes(field);
        }
        let mut seg = Vec::new();
        record::append(&mut seg, &payload);
        fs::write(segment_path(&dir, 1), &seg).unwrap();
        let live: HashSet<u64> = [1].into();
        let err = MessageStore::open(&dir, &live, &cfg(false, 1 << 20))
            .err()
            .unwrap();
        assert!(err.to_string().contains("no warren assigns"), "{err}");

        fs::remove_file(segment_path(&dir, 1)).unwrap();
        fs::write(segment_path(&dir, 1 << 33), b"").unwrap();
        let err = MessageStore::open(&dir, &live, &cfg(false, 1 << 20))
            .err()
            .unwrap();
        assert!(err.to_string().contains("past 2^32"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
