//! The message store: persistent messages routed to durable queues, in a journal of
//! segment files written by one thread (`writer.rs`) and compacted by another
//! (`compact.rs`).
//!
//! Publishers hand a message to [`MessageStore::persist`], which only numbers it and
//! queues it for the writer thread, which writes batches and syncs once per batch. Queues
//! report what they let go of (acked, dropped, expired, purged) with
//! [`MessageStore::ack`], and the first delivery of a message with
//! [`MessageStore::delivered`], so that after a crash it comes back flagged redelivered.
//! Neither is synced on its own: at worst an acked message comes back after a crash, as
//! a redelivery.
//!
//! Disk use follows the live backlog: a file nothing needs is deleted, and files that are
//! mostly let go of are rewritten with what is left (see `segments.rs`).
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
//! - `P` nothing: a failing store's probe of the disk, skipped by every reader

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::codec::Get;
use super::index::{Index, Ref};
use super::record;
use super::segments::{open_segment, segment_path, Members, Segment, Segments, SEGMENT_EXT};
use super::shipping::Shipping;
use super::writer::{Op, Persist, Shared, Writer};
use crate::config::StoreConfig;
use crate::message::Message;
use crate::protocol::properties;
use crate::util::IdHash;

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
    /// The watermark, failures and the failing state, kept by the writer.
    shared: Arc<Shared>,
    /// Shut down: what queues let go of from now on is not recorded (the broker is
    /// stopping and everything still queued must come back).
    closed: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    index: SharedIndex,
    dir: PathBuf,
    /// In a cluster's leader: the followers' copy, which confirms wait for.
    shipping: Option<Arc<Shipping>>,
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
        Self::open_shipped(dir, live_qids, config, None)
    }

    /// [`MessageStore::open`] in a cluster's leader: changes go to `shipping`, and
    /// confirms wait for it.
    pub fn open_shipped(
        dir: &Path,
        live_qids: &HashSet<u64>,
        config: &StoreConfig,
        shipping: Option<Arc<Shipping>>,
    ) -> io::Result<(Arc<MessageStore>, RecoveredByQueue)> {
        super::files::create_dir(dir)?;
        let started = std::time::Instant::now();
        super::compact::remove_leftovers(dir)?;
        let mut recovery = recover(dir, live_qids)?;
        let shared = Arc::new(Shared::new(recovery.max_id));
        let index: SharedIndex = Arc::new(Mutex::new(std::mem::take(&mut recovery.refs)));
        let mut segments =
            Segments::new(std::mem::take(&mut recovery.files), 0, config.segment_size);
        segments.current = segments.allocate();
        segments.current();
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            file: open_segment(dir, segments.current)?,
            written: 0,
            segment_size: config.segment_size,
            fsync: config.fsync,
            index: index.clone(),
            segments,
            watermark: recovery.max_id,
            ahead: BTreeSet::new(),
            waiting: Vec::new(),
            shared: shared.clone(),
            jobs: None,
            compacting: false,
            compactor: None,
            unsynced_unlinks: false,
            compact_after: None,
            shipping: shipping.clone(),
        };
        if let Some(s) = &shipping {
            s.recovered(recovery.max_id);
        }
        writer.start_compactor(tx.clone())?;
        // Ids are never reused; one at the end of the id space can only be damage (found
        // by fuzzing: `+ 1` overflowed).
        let next_id = recovery.max_id.checked_add(1).ok_or_else(|| {
            io::Error::other("a segment holds a message id no warren assigns; it is damaged")
        })?;
        let thread = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || writer.run(rx))?;
        let store = Arc::new(MessageStore {
            tx: Mutex::new(Some(tx)),
            next_id: AtomicU64::new(next_id),
            shared,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            index,
            dir: dir.to_path_buf(),
            shipping,
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

    fn lookup(&self, ids: &[u64]) -> Vec<Option<Ref>> {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().map(|&id| index.get(id)).collect()
    }

    /// Read live messages back from disk, in the order of `ids`; `None` for one that is
    /// not in the store (or can't be read: logged). Records close together in a segment
    /// are read with one `pread`.
    pub fn read(&self, ids: &[u64]) -> Vec<Option<Message>> {
        let mut refs = self.lookup(ids);
        let mut out: Vec<Option<Message>> = ids.iter().map(|_| None).collect();
        let mut missed = read_spans(&self.dir, ids, &refs, &mut out);
        // A compaction may have moved a message between the look-up and the read (its
        // old file deleted): look those up again. Twice is plenty: one compaction at a
        // time, and a copy is not moved again for a while.
        for _ in 0..2 {
            if missed.is_empty() {
                break;
            }
            let again = self.lookup(&missed.iter().map(|&k| ids[k]).collect::<Vec<_>>());
            let mut retry = Vec::new();
            for (&k, r) in missed.iter().zip(again) {
                if r.is_some() && r != refs[k] {
                    refs[k] = r;
                    retry.push(k);
                }
            }
            let mut only: Vec<Option<Ref>> = vec![None; ids.len()];
            for &k in &retry {
                only[k] = refs[k];
            }
            missed = read_spans(&self.dir, ids, &only, &mut out);
        }
        for k in missed {
            tracing::error!(id = ids[k], at = ?refs[k], "stored message cannot be read back; it is lost");
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

    /// The writer is gone (after close): these ids will never be written.
    fn lost(&self, first: u64, n: u64) {
        if n > 0 {
            let ids: Vec<u64> = (first..first + n).collect();
            self.shared.fail(&ids);
        }
    }

    /// Queue a message for the durable queues `qids`; returns its store id. When
    /// `waiter` is given, it is notified once the message is on disk (a connection waits
    /// on it to send publisher confirms; the store knows nothing of connections).
    pub fn persist(&self, qids: Vec<u64>, m: &Message, waiter: Option<&Arc<Notify>>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let op = Op::Persist(Box::new(Persist::of(id, qids, m, waiter)));
        if !self.send(op) {
            self.lost(id, 1);
        }
        id
    }

    /// Write transient copies of messages so a queue can drop their bodies from memory
    /// (read back with [`MessageStore::read`] once [`MessageStore::synced`] covers them,
    /// unless [`MessageStore::is_failed`]). They get consecutive ids, the first returned,
    /// and go to the writer in one hand-off.
    pub fn persist_transient(&self, ms: &[&Message]) -> u64 {
        let first = self.next_id.fetch_add(ms.len() as u64, Ordering::AcqRel);
        let copies = ms
            .iter()
            .zip(first..)
            .map(|(m, id)| Persist::of(id, Vec::new(), m, None))
            .collect();
        if !ms.is_empty() && !self.send(Op::Transient(copies)) {
            self.lost(first, ms.len() as u64);
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

    /// Every message numbered up to this has been written (synced when fsync is on), or
    /// failed to be: see [`MessageStore::is_failed`].
    pub fn synced(&self) -> u64 {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Message `id` (at most [`MessageStore::synced`]) could not be written: its
    /// publisher gets a nack, and a queue keeps its body in memory.
    pub fn is_failed(&self, id: u64) -> bool {
        self.shared.is_failed(id)
    }

    /// Writes are failing (a full disk, an I/O error): persistent publishes are refused
    /// and the disk alarm is raised until a write succeeds again.
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// Every message numbered up to this may be confirmed: written and synced here
    /// and, in a cluster, on enough followers (or failed: see
    /// [`MessageStore::is_failed`]).
    pub fn confirmed(&self) -> u64 {
        match &self.shipping {
            Some(s) => s.confirmed().min(self.synced()),
            None => self.synced(),
        }
    }

    /// In a cluster's leader: fewer in-sync copies than a confirm needs.
    pub fn below_min_insync(&self) -> bool {
        self.shipping.as_ref().is_some_and(|s| s.below_min_insync())
    }

    /// Wait until message `id` is safely stored (on enough copies, in a cluster);
    /// false if it could not be.
    pub async fn wait_synced(&self, id: u64) -> bool {
        loop {
            let progressed = self.shared.progress.notified();
            let replicated = self.shipping.as_ref().map(|s| s.progress.notified());
            if self.confirmed() >= id || self.is_failed(id) {
                return !self.is_failed(id);
            }
            match replicated {
                Some(r) => tokio::select! {
                    _ = progressed => {}
                    _ = r => {}
                },
                None => progressed.await,
            }
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

    /// Flush and stop the writer and the compactor (the end of a shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush();
        self.send(Op::Close);
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// As a crash leaves the store, for tests: no flush, no clean close, but the writer
    /// and compactor threads stopped (a dropped store's threads would otherwise go on
    /// renaming and removing files while the test opens the directory again; a crashed
    /// process has none).
    #[cfg(test)]
    fn halt(&self) {
        self.send(Op::Close);
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// Files in the journal and their bytes (for tests).
    #[cfg(test)]
    fn disk_usage(&self) -> (u64, u64) {
        let j = self.journal();
        (j.files, j.bytes)
    }

    /// The journal's size on disk (read from the directory: for metrics, not per message).
    pub fn journal(&self) -> Journal {
        let mut j = Journal {
            compactions: self.shared.compactions.load(Ordering::Relaxed),
            ..Journal::default()
        };
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.path().extension().and_then(|x| x.to_str()) == Some(SEGMENT_EXT) {
                    j.files += 1;
                    j.bytes += e.metadata().map_or(0, |m| m.len());
                }
            }
        }
        j
    }
}

/// The journal's size on disk, and how often it was compacted since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct Journal {
    pub files: u64,
    pub bytes: u64,
    pub compactions: u64,
}

/// Read the messages `refs` points at into `out` (where it has a ref); returns the
/// positions that could not be read.
fn read_spans(
    dir: &Path,
    ids: &[u64],
    refs: &[Option<Ref>],
    out: &mut [Option<Message>],
) -> Vec<usize> {
    let mut missed = Vec::new();
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
            file = match File::open(segment_path(dir, first.segment as u64)) {
                Ok(f) => Some((first.segment, f)),
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::error!(error = %e, segment = first.segment, "cannot open a segment to read messages back");
                    }
                    missed.extend_from_slice(&order[i..j]);
                    i = j;
                    continue;
                }
            };
        }
        let Some((_, f)) = &file else { break };
        let mut span = vec![0u8; (end - start) as usize];
        if let Err(e) = f.read_exact_at(&mut span, start) {
            tracing::error!(error = %e, segment = first.segment, offset = start, "cannot read messages back from the store");
            missed.extend_from_slice(&order[i..j]);
            i = j;
            continue;
        }
        let span = Bytes::from(span);
        for &k in &order[i..j] {
            let Some(r) = refs[k] else { continue };
            let at = (r.offset as u64 - record::HEADER as u64 - start) as usize;
            out[k] = record::payload_at(&span, at).and_then(|p| {
                let rec = parse_message(&span[p.clone()])?;
                (rec.id == ids[k]).then(|| rec.message_in(&span, p.start))
            });
            if out[k].is_none() {
                missed.push(k);
            }
        }
        i = j;
    }
    missed
}

/// Records at most this far apart are read back with one `pread`.
const SPAN_GAP: u64 = 64 * 1024;

struct Recovery {
    by_queue: HashMap<u64, Vec<Recovered>>,
    refs: Index,
    files: BTreeMap<u64, Segment>,
    max_id: u64,
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
/// queue still holds. Bodies are not kept: queues read back what they need. Nothing is
/// deleted here: the writer deletes or compacts what nothing needs once it runs.
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
    // Per file, the lowest and highest message id its acks and marks name.
    let mut named: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    // One buffer for every segment: a fresh one each time costs a page fault per page.
    let mut data = Vec::new();
    for &n in &segs {
        let path = segment_path(dir, n);
        read_into(&path, &mut data)?;
        let mut range: Option<(u64, u64)> = None;
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
                    Some(id) => {
                        set.insert((qid, id));
                        let (lo, hi) = range.get_or_insert((id, id));
                        *lo = (*lo).min(id);
                        *hi = (*hi).max(id);
                    }
                    None => break,
                };
            }
        });
        if let Some(r) = range {
            named.insert(n, r);
        }
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
        files: BTreeMap::new(),
        max_id: 0,
    };
    for &seg in &segs {
        read_into(&segment_path(dir, seg), &mut data)?;
        let mut ids = Vec::new();
        let mut live_bytes = 0u64;
        let mut live = 0u64;
        // Copies of messages this file holds that an earlier file also held (a crash
        // between a compaction's rename and its sources' deletion): (file, bytes).
        let mut superseded: Vec<(u64, u64)> = Vec::new();
        record::scan(&data, |at, payload| {
            let Some(rec) = parse_message(payload) else {
                return;
            };
            let id = rec.id;
            ids.push(id);
            r.max_id = r.max_id.max(id);
            if !rec.durable {
                return;
            }
            let holds = |q: &u64| live_qids.contains(q) && !acked.contains(&(*q, id));
            let holders = rec.queues().filter(holds).count();
            if holders == 0 {
                return;
            }
            let at = Ref {
                holders: holders as u32,
                segment: seg as u32,
                offset: (at + record::HEADER) as u32,
                len: payload.len() as u32,
            };
            live += 1;
            live_bytes += (payload.len() + record::HEADER) as u64;
            if let Some(earlier) = r.refs.get(id) {
                superseded.push((
                    earlier.segment as u64,
                    (earlier.len as usize + record::HEADER) as u64,
                ));
                r.refs.insert(id, at);
                return;
            }
            r.refs.insert(id, at);
            let [_, _, props, body] = rec.fields.clone();
            let props = &payload[props];
            let (priority, expiration_ms) = (
                properties::priority(props),
                properties::expiration_ms(props),
            );
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
        for (file, bytes) in superseded {
            if let Some(f) = r.files.get_mut(&file) {
                f.live = f.live.saturating_sub(1);
                f.dead += bytes;
            }
        }
        let size = data.len() as u64;
        r.files.insert(
            seg,
            Segment {
                size,
                live,
                dead: size.saturating_sub(live_bytes),
                members: Members::of(ids),
                ..Segment::default()
            },
        );
    }
    for msgs in r.by_queue.values_mut() {
        msgs.sort_by_key(|m| m.store_id);
    }
    super::segments::link(&mut r.files, &named);
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
        s.halt(); // no close(): as after a crash
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
        s.halt();
        let (_s, rec) = MessageStore::open(&dir, &live, &cfg(false, 64)).unwrap();
        assert_eq!(rec[&7].len(), 1);
    }

    /// Flush until `done` holds (the compactor works in the background), or panic.
    fn settle(s: &MessageStore, what: &str, done: impl Fn(&MessageStore) -> bool) {
        for _ in 0..500 {
            s.flush();
            if done(s) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{what}: not reached; journal {:?}", s.disk_usage());
    }

    /// An ack in a file with no live message of its own still matters while the
    /// message it names is on disk elsewhere: the file is not deleted until then (warren
    /// before compaction deleted it, and the acked message came back after a crash).
    #[test]
    fn an_ack_outlives_its_file_while_the_message_it_names_is_on_disk() {
        let dir = tmp("ack-outlives");
        let live: HashSet<u64> = [1].into();
        let (s, _) = MessageStore::open(&dir, &live, &cfg(false, 200)).unwrap();
        let big = "x".repeat(120);
        let kept = s.persist(vec![1], &msg(&big), None);
        let gone = s.persist(vec![1], &msg(&big), None);
        s.flush();
        // The ack lands in a later file, which then fills with messages acked at once.
        s.ack(1, vec![gone]);
        for _ in 0..6 {
            let id = s.persist(vec![1], &msg(&big), None);
            s.flush();
            s.ack(1, vec![id]);
        }
        s.flush();
        settle(&s, "files with nothing needed deleted", |s| {
            s.disk_usage().0 <= 3
        });
        s.halt(); // no close(): as after a crash
        let (s, rec) = MessageStore::open(&dir, &live, &cfg(false, 200)).unwrap();
        let ids: Vec<u64> = rec[&1].iter().map(|r| r.store_id).collect();
        assert_eq!(ids, vec![kept], "the acked message stays acked");
        s.close();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// One message in ten goes to a queue nobody consumes, the rest are consumed at
    /// once: the journal shrinks to about the live bytes, and what is left is exactly
    /// the unconsumed queue's messages, readable, in order, before and after a crash.
    #[test]
    fn compaction_keeps_disk_to_the_live_backlog() {
        let dir = tmp("compact");
        let live: HashSet<u64> = [1, 2].into();
        let seg = 8192;
        let (s, _) = MessageStore::open(&dir, &live, &cfg(false, seg)).unwrap();
        let body = "y".repeat(100);
        let mut pinned = Vec::new();
        for i in 0..3000 {
            if i % 10 == 0 {
                // In both queues: consumed from one, kept by the other.
                let id = s.persist(vec![1, 2], &msg(&format!("{i}{body}")), None);
                s.ack(1, vec![id]);
                pinned.push(id);
            } else {
                let id = s.persist(vec![1], &msg(&body), None);
                if i % 7 == 0 {
                    s.delivered(1, vec![id]);
                }
                s.ack(1, vec![id]);
            }
            if i % 50 == 0 {
                s.flush();
            }
        }
        let live_bytes = pinned.len() as u64 * 150;
        settle(
            &s,
            "journal within 2x the live bytes plus two segments",
            |s| s.disk_usage().1 <= 2 * live_bytes + 2 * seg,
        );
        let back = s.read(&pinned);
        assert!(
            back.iter().all(Option::is_some),
            "every kept message reads back"
        );
        assert!(back[1].as_ref().unwrap().body.starts_with(b"10y"));
        s.halt(); // no close(): as after a crash
        let (s, rec) = MessageStore::open(&dir, &live, &cfg(false, seg)).unwrap();
        assert!(!rec.contains_key(&1), "nothing consumed comes back");
        let ids: Vec<u64> = rec[&2].iter().map(|r| r.store_id).collect();
        assert_eq!(ids, pinned);
        assert!(s.read(&pinned).iter().all(Option::is_some));
        s.close();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Transient page-out copies are compacted like persistent messages: one in ten
    /// kept, the rest let go of, and the journal shrinks to about what is kept, which
    /// still reads back.
    #[test]
    fn transient_copies_are_compacted_too() {
        let dir = tmp("compact-transient");
        let seg = 8192;
        let (s, _) = MessageStore::open(&dir, &HashSet::new(), &cfg(false, seg)).unwrap();
        let body = "t".repeat(100);
        let mut kept = Vec::new();
        for round in 0..100 {
            let batch: Vec<Message> = (0..20)
                .map(|i| msg(&format!("{round}-{i}-{body}")))
                .collect();
            let refs: Vec<&Message> = batch.iter().collect();
            let first = s.persist_transient(&refs);
            s.flush();
            let ids: Vec<u64> = (first..first + 20).collect();
            kept.extend(ids.iter().step_by(10).copied());
            s.release(
                ids.into_iter()
                    .filter(|id| (id - first) % 10 != 0)
                    .collect(),
            );
        }
        let live_bytes = kept.len() as u64 * 150;
        settle(
            &s,
            "journal within 2x the kept copies plus two segments",
            |s| s.disk_usage().1 <= 2 * live_bytes + 2 * seg,
        );
        let back = s.read(&kept);
        assert!(
            back.iter().all(Option::is_some),
            "every kept copy reads back"
        );
        s.close();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A crash after a compaction's output is in place but before its sources are
    /// deleted leaves two copies of some records: recovery takes each message once.
    #[test]
    fn a_message_found_in_two_files_is_recovered_once() {
        let dir = tmp("dup");
        let live: HashSet<u64> = [1].into();
        let (s, _) = MessageStore::open(&dir, &live, &cfg(false, 1 << 20)).unwrap();
        let ids: Vec<u64> = (0..3)
            .map(|i| s.persist(vec![1], &msg(&format!("m{i}")), None))
            .collect();
        s.delivered(1, vec![ids[0]]);
        s.flush();
        s.halt();
        let first = segments(&dir).unwrap()[0];
        fs::copy(segment_path(&dir, first), segment_path(&dir, first + 10)).unwrap();
        let (s, rec) = MessageStore::open(&dir, &live, &cfg(false, 1 << 20)).unwrap();
        s.close();
        let got: Vec<(u64, bool)> = rec[&1].iter().map(|r| (r.store_id, r.delivered)).collect();
        assert_eq!(got, vec![(ids[0], true), (ids[1], false), (ids[2], false)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Ids are numbered before they reach the writer, so a publisher's message can be
    /// written in a batch before another publisher's lower id. Its connection must be
    /// woken when the watermark passes it, in whichever batch that happens (it was
    /// woken only for its own batch, too early, and then never: its publisher waited for
    /// its confirms for ever once its window was full).
    #[test]
    fn a_publisher_is_woken_when_the_watermark_passes_its_messages() {
        let dir = tmp("wake");
        let live: HashSet<u64> = [1].into();
        let (s, _) = MessageStore::open(&dir, &live, &cfg(false, 1 << 20)).unwrap();
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let first = s.next_id.fetch_add(2, Ordering::AcqRel);
        let persist = |id: u64, w: &Arc<Notify>| {
            assert!(s.send(Op::Persist(Box::new(Persist::of(
                id,
                vec![1],
                &msg("m"),
                Some(w)
            )))));
        };
        let woken = |w: &Arc<Notify>| {
            futures_lite::future::block_on(futures_lite::future::poll_once(w.notified())).is_some()
        };
        // A's message (the higher id) is written first, alone.
        persist(first + 1, &a);
        s.flush();
        assert_eq!(
            s.synced(),
            first - 1,
            "the watermark waits for the lower id"
        );
        let _ = woken(&a); // A may have looked already; it found nothing to confirm.
        persist(first, &b);
        s.flush();
        assert_eq!(s.synced(), first + 1);
        assert!(woken(&b), "B is woken");
        assert!(
            woken(&a),
            "A is woken too: its message is now under the watermark"
        );
        s.close();
        fs::remove_dir_all(&dir).unwrap();
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
