//! The journal's writer thread: the one owner of the segment files, the index of live
//! messages (readers only look things up) and the per-file accounting of `segments.rs`.
//!
//! It takes everything queued, writes it in one go and syncs once (group commit: a sync
//! starts as soon as the previous one ended, and nothing waits on a timer), then
//! advances the synced watermark and wakes the connections whose publishers wait for
//! confirms. After each batch it deletes the files nothing needs any more and hands the
//! compactor (`compact.rs`) the next files worth rewriting.
//!
//! A write or sync that fails (a full disk, an I/O error) fails that batch only: its
//! messages are marked failed (their publishers get nacks, queues keep their bodies in
//! memory), the file is cut back to the end of the last good batch and the writer moves
//! to a new file, so the journal holds no torn record. Until a write succeeds again the
//! store is `failing`: persistent publishes are refused and the disk alarm is raised.
//! Acks keep being applied in memory, so consumers draining queues free files; the
//! writer retries with a small probe record every [`RETRY`] and clears the state when
//! it is written and synced.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::codec::Put;
use super::compact::{self, Job, Outcome};
use super::index::{Index, Ref};
use super::record;
use super::segments::{open_segment, segment_path, shipped_name, Segments};
use super::shipping::{FileOp, Shipping};
use crate::message::Message;

/// How often a failing store tries writing again.
pub(super) const RETRY: Duration = Duration::from_secs(1);

/// A record recovery and compaction skip: written only to find out whether the disk
/// takes writes again.
pub(super) const PROBE: u8 = b'P';

/// Hand-off to the writer thread.
pub(super) enum Op {
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
    /// From the compactor.
    Compacted(Box<Outcome>),
    /// Stop (after a flush): the compactor finishes its job and ends too.
    Close,
}

pub(super) struct Persist {
    pub id: u64,
    /// Empty for a transient copy.
    pub qids: Vec<u64>,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
    pub waiter: Option<Arc<Notify>>,
}

impl Persist {
    /// The message's parts, shared (no copy of the body).
    pub fn of(id: u64, qids: Vec<u64>, m: &Message, waiter: Option<&Arc<Notify>>) -> Persist {
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

/// What the writer shares with the store's callers.
pub(super) struct Shared {
    /// Every message numbered up to here is written (synced when fsync is on), or failed.
    pub synced: AtomicU64,
    /// The highest id that failed to be written (0: none ever did), so that checking an
    /// id costs an atomic load unless it is that old.
    pub last_failed: AtomicU64,
    /// Ids that failed, as inclusive ranges (rare: a disk error each).
    pub failed: Mutex<Vec<(u64, u64)>>,
    /// Writes are failing: persistent publishes are refused, the disk alarm is raised.
    pub failing: AtomicBool,
    /// Woken after every batch the writer finishes.
    pub progress: Notify,
    /// Compactions applied since start.
    pub compactions: AtomicU64,
}

impl Shared {
    pub fn new(synced: u64) -> Shared {
        Shared {
            synced: AtomicU64::new(synced),
            last_failed: AtomicU64::new(0),
            failed: Mutex::new(Vec::new()),
            failing: AtomicBool::new(false),
            progress: Notify::new(),
            compactions: AtomicU64::new(0),
        }
    }

    pub fn is_failed(&self, id: u64) -> bool {
        if id > self.last_failed.load(Ordering::Acquire) {
            return false;
        }
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.iter().any(|&(lo, hi)| (lo..=hi).contains(&id))
    }

    pub fn fail(&self, ids: &[u64]) {
        let (Some(&lo), Some(&hi)) = (ids.iter().min(), ids.iter().max()) else {
            return;
        };
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        // A batch's ids are nearly consecutive; list the rest singly.
        if hi - lo + 1 == ids.len() as u64 {
            failed.push((lo, hi));
        } else {
            failed.extend(ids.iter().map(|&id| (id, id)));
        }
        self.last_failed.fetch_max(hi, Ordering::AcqRel);
    }
}

pub(super) struct Writer {
    pub dir: PathBuf,
    pub file: File,
    /// Bytes of the current file that are written (and cut back to on a failure).
    pub written: u64,
    pub segment_size: u64,
    pub fsync: bool,
    pub index: Arc<Mutex<Index>>,
    pub segments: Segments,
    /// Ids arrive out of order (publishers number them on their own threads): the
    /// watermark only moves past ids that are all written.
    pub watermark: u64,
    pub ahead: BTreeSet<u64>,
    /// Connections whose messages are written but not yet under the watermark.
    pub waiting: Vec<(Arc<Notify>, u64)>,
    pub shared: Arc<Shared>,
    /// To the compactor thread, and whether it has a job.
    pub jobs: Option<mpsc::Sender<Job>>,
    pub compacting: bool,
    pub compactor: Option<std::thread::JoinHandle<()>>,
    /// Files were unlinked since the directory was last synced.
    pub unsynced_unlinks: bool,
    /// A compaction failed (a full disk, most likely): the next waits until then.
    pub compact_after: Option<Instant>,
    /// In a cluster's leader: every change to the files goes to the followers, and
    /// confirms wait for them.
    pub shipping: Option<Arc<Shipping>>,
}

impl Writer {
    /// Start the compactor thread, answering through `ops`.
    pub fn start_compactor(&mut self, ops: mpsc::Sender<Op>) -> io::Result<()> {
        let (jobs, rx) = mpsc::channel();
        let (dir, index) = (self.dir.clone(), self.index.clone());
        let thread = std::thread::Builder::new()
            .name("warren-compact".into())
            .spawn(move || {
                compact::run(dir, index, rx, |outcome| {
                    ops.send(Op::Compacted(Box::new(outcome))).is_ok()
                })
            })?;
        self.jobs = Some(jobs);
        self.compactor = Some(thread);
        Ok(())
    }

    pub fn run(&mut self, rx: mpsc::Receiver<Op>) {
        let mut buf = Vec::with_capacity(1 << 20);
        self.tidy();
        loop {
            let first = if self.shared.failing.load(Ordering::Acquire) {
                match rx.recv_timeout(RETRY) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.probe();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            };
            if !self.batch(&rx, first, &mut buf) {
                break;
            }
        }
        self.stop_compactor();
    }

    /// Take `first` and whatever else is queued, write it, sync once, and answer.
    /// False once asked to close.
    fn batch(&mut self, rx: &mpsc::Receiver<Op>, first: Op, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        let mut ids = Vec::new();
        let mut durable = false;
        let mut fresh = Vec::new();
        // Connections waiting on this batch's messages, with the highest id of theirs.
        let mut waiters: Vec<(Arc<Notify>, u64)> = Vec::new();
        let mut flushes = Vec::new();
        let mut acks = Vec::new();
        // Ids named by this batch's delivery marks, and let go of without a record
        // (transient copies).
        let mut marks = Vec::new();
        let mut released = Vec::new();
        let mut close = false;
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                Op::Persist(p) => {
                    fresh.push(self.encode_message(buf, &p));
                    durable |= !p.qids.is_empty();
                    ids.push(p.id);
                    if let Some(w) = p.waiter {
                        match waiters.iter_mut().find(|(x, _)| Arc::ptr_eq(x, &w)) {
                            Some((_, max)) => *max = (*max).max(p.id),
                            None => waiters.push((w, p.id)),
                        }
                    }
                }
                Op::Transient(copies) => {
                    for p in &copies {
                        fresh.push(self.encode_message(buf, p));
                        ids.push(p.id);
                    }
                }
                Op::Ack { qid, ids } => {
                    encode_pairs(buf, b'A', qid, &ids);
                    acks.extend(ids);
                }
                Op::Release(ids) => released.extend(ids),
                Op::Delivered { qid, ids } => {
                    encode_pairs(buf, b'D', qid, &ids);
                    marks.extend(ids);
                }
                Op::Flush(reply) => flushes.push(reply),
                Op::Compacted(outcome) => self.apply(*outcome),
                Op::Close => close = true,
            }
            // Bound a batch so a flood can't grow the buffer without limit.
            next = if buf.len() < 8 << 20 && !close {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let stored = self.write(buf, durable || !flushes.is_empty());
        let mut fresh_failed = Vec::new();
        {
            // Index what was written (before the watermark says it can be read back),
            // note which files the written acks and marks name, then let go of what
            // queues released.
            let shared = self.index.clone();
            let mut index = shared.lock().unwrap_or_else(|e| e.into_inner());
            let mut named = Named::default();
            if stored {
                index.extend(fresh);
                for id in marks {
                    if let Some(r) = index.get(id) {
                        named.note(&mut self.segments, r.segment);
                    }
                }
            } else {
                fresh_failed = fresh;
            }
            // Acks are applied even when their records could not be written: consuming
            // is how a full disk gets space back (at worst, after a crash, an acked
            // message whose record survives comes back as a redelivery).
            for id in acks {
                let Some((segment, gone)) = index.let_go(id) else {
                    continue;
                };
                if stored {
                    named.note(&mut self.segments, segment);
                }
                if let Some(gone) = gone {
                    self.segments.message_gone(gone.segment as u64, gone.len);
                }
            }
            for id in released {
                if let Some(gone) = index.release(id) {
                    self.segments.message_gone(gone.segment as u64, gone.len);
                }
            }
        }
        if !stored {
            self.shared.fail(&ids);
            for (_, r) in &fresh_failed {
                if let Some(s) = self.segments.files.get_mut(&(r.segment as u64)) {
                    s.live = s.live.saturating_sub(1);
                }
            }
        }
        self.advance(ids);
        // Wake waiting publishers either way: on failure they nack. A connection is woken
        // once the watermark covers its messages, which can be a later batch's doing:
        // ids are numbered before they queue up here, so another publisher's lower id may
        // arrive after them (and that batch has only the other publisher as waiter).
        self.shared.progress.notify_waiters();
        if let Some(shipping) = &self.shipping {
            // Confirms wait for the followers: the shipping gate wakes the connections.
            shipping.batch_done(self.watermark, waiters);
        } else {
            self.waiting.extend(waiters);
        }
        let watermark = self.watermark;
        self.waiting.retain(|(w, max)| {
            let covered = *max <= watermark;
            if covered {
                w.notify_one();
            }
            !covered
        });
        if self.written >= self.segment_size {
            self.roll();
        }
        self.tidy();
        for f in flushes {
            let _ = f.send(());
        }
        !close
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
        let written = self.written;
        let current = self.segments.current();
        current.live += 1;
        current.members.add(p.id);
        let r = Ref {
            holders: p.qids.len().max(1) as u32,
            segment: self.segments.current as u32,
            offset: (written + start as u64) as u32,
            len: (buf.len() - start) as u32,
        };
        (p.id, r)
    }

    /// Write (and sync) a batch; on failure, cut the file back to the last good batch,
    /// move to a new file and mark the store failing.
    fn write(&mut self, buf: &[u8], sync: bool) -> bool {
        if buf.is_empty() {
            return true;
        }
        // While failing, every write is synced: its success is what clears the state.
        let failing = self.shared.failing.load(Ordering::Acquire);
        let offset = self.written;
        let result = self.file.write_all(buf).and_then(|()| {
            // Shipped before the sync, so that the followers sync while this does (a
            // confirm waits for both; a follower holding a tail this node's crash lost
            // is harmless: nothing in it was confirmed).
            self.ship(|n| FileOp::Append {
                file: n,
                offset,
                data: Bytes::copy_from_slice(buf),
            });
            if failing || (sync && self.fsync) {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.written += buf.len() as u64;
                self.segments.current().size = self.written;
                if failing {
                    self.recovered();
                }
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, e: &io::Error) {
        if !self.shared.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, segment = self.segments.current, "message store write failed: persistent publishes are refused and the disk alarm is raised until writes succeed again");
        }
        // What the failed write left is not part of the journal (a sync error may have
        // lost any of it): cut it off. If that fails too, go on in a fresh file so that
        // nothing is appended after a tail that could not be cut.
        let cut = self
            .file
            .set_len(self.written)
            .and_then(|()| self.file.sync_data());
        // Changes are shipped after they are made: a follower syncing from the files
        // meanwhile must not be sent a change the files do not show yet.
        let written = self.written;
        self.ship(|n| FileOp::Truncate {
            file: n,
            len: written,
        });
        if let Err(e) = cut {
            tracing::warn!(error = %e, segment = self.segments.current, "could not cut a failed write off the segment; recovery will set the torn tail aside");
            self.roll();
        }
    }

    /// A write succeeded after failures.
    fn recovered(&mut self) {
        self.shared.failing.store(false, Ordering::Release);
        tracing::info!("message store writes succeed again: persistent publishes are accepted");
    }

    /// A failing store: see whether the disk takes a write again.
    fn probe(&mut self) {
        let mut buf = Vec::new();
        record::append_with(&mut buf, |o| o.put_u8(PROBE));
        if self.write(&buf, true) {
            self.shared.progress.notify_waiters();
        }
        self.tidy();
    }

    fn advance(&mut self, ids: Vec<u64>) {
        self.ahead.extend(ids);
        while self.ahead.first() == Some(&(self.watermark + 1)) {
            self.ahead.pop_first();
            self.watermark += 1;
        }
        self.shared.synced.store(self.watermark, Ordering::Release);
    }

    /// Delete what nothing needs, and give the compactor its next job.
    fn tidy(&mut self) {
        if !std::mem::take(&mut self.segments.changed) {
            return;
        }
        let gone = self.segments.take_deletable();
        if !gone.is_empty() && self.unsynced_unlinks {
            // Some of these go because files deleted earlier did (their acks named
            // messages there): make those deletions durable first, or a crash could
            // bring such a file back without the acks.
            self.sync_dir();
        }
        for n in gone {
            self.unlink(n);
        }
        if self.jobs.is_none() {
            return;
        }
        if self.compacting || self.compact_after.is_some_and(|t| Instant::now() < t) {
            // Look again once it answers, or once the pause after a failure is over.
            self.segments.changed = true;
            return;
        }
        let sources = self.segments.pick();
        if sources.is_empty() {
            return;
        }
        let others = self.segments.others(&sources);
        let output = self.segments.allocate();
        for n in &sources {
            if let Some(s) = self.segments.files.get_mut(n) {
                s.compacting = true;
            }
        }
        let job = Job {
            sources,
            output,
            others,
        };
        if let Some(jobs) = &self.jobs {
            self.compacting = jobs.send(job).is_ok();
        }
    }

    /// A compaction finished: point the index at the copies, then delete the sources.
    fn apply(&mut self, done: Outcome) {
        self.compacting = false;
        self.segments.changed = true;
        if done.failed {
            for n in &done.sources {
                if let Some(s) = self.segments.files.get_mut(n) {
                    s.compacting = false;
                }
            }
            self.compact_after = Some(Instant::now() + RETRY);
            return;
        }
        let mut before = 0u64;
        let mut after = 0u64;
        let mut refers = BTreeSet::new();
        for n in &done.sources {
            if let Some(s) = self.segments.files.remove(n) {
                before += s.size;
                refers.extend(s.refers_to);
            }
        }
        let output = done.output.map(|(n, _)| n);
        if let (Some(n), Some(shipping)) = (output, &self.shipping) {
            // Followers get the output whole, before the sources go.
            match fs::read(segment_path(&self.dir, n)) {
                Ok(data) => {
                    shipping.push(FileOp::Install {
                        file: shipped_name(n),
                        data: data.into(),
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, segment = n, "could not read a compaction's output to replicate it")
                }
            }
        }
        if let Some((n, size)) = done.output {
            after = size;
            let mut live = 0;
            let mut dead = 0;
            {
                let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
                for (id, to) in &done.moved {
                    // Let go of while the copy was made: the copy is dead weight.
                    match index.get(*id) {
                        Some(r) if done.sources.contains(&(r.segment as u64)) => {
                            index.relocate(*id, to.segment, to.offset);
                            live += 1;
                        }
                        _ => dead += to.len as u64 + record::HEADER as u64,
                    }
                }
            }
            // Acks kept in the output name the files the sources' acks named, the
            // sources themselves now being the output.
            let refers_to = refers
                .into_iter()
                .map(|r| if done.sources.contains(&r) { n } else { r })
                .collect();
            self.segments.files.insert(
                n,
                super::segments::Segment {
                    size,
                    live,
                    dead,
                    members: done.members,
                    refers_to,
                    compacting: false,
                },
            );
        }
        self.segments.forget(&done.sources, output);
        for n in &done.sources {
            self.unlink(*n);
        }
        self.shared.compactions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(sources = ?done.sources, output, before, after, "segments compacted");
    }

    fn sync_dir(&mut self) {
        match File::open(&self.dir).and_then(|d| d.sync_all()) {
            Ok(()) => self.unsynced_unlinks = false,
            Err(e) => tracing::warn!(error = %e, "could not sync the message store's directory"),
        }
    }

    /// Hand a change of the current segment to the followers.
    fn ship(&self, op: impl FnOnce(String) -> FileOp) {
        if let Some(shipping) = &self.shipping {
            shipping.push(op(shipped_name(self.segments.current)));
        }
    }

    fn unlink(&mut self, n: u64) {
        match fs::remove_file(segment_path(&self.dir, n)) {
            Ok(()) => self.unsynced_unlinks = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, segment = n, "could not delete a segment"),
        }
        // After the file is gone (see `failed`): a follower listing the files from now
        // on does not see it, one that listed them before gets this.
        if let Some(shipping) = &self.shipping {
            shipping.push(FileOp::Remove {
                file: shipped_name(n),
            });
        }
    }

    fn roll(&mut self) {
        let next = self.segments.allocate();
        match open_segment(&self.dir, next) {
            Ok(f) => {
                self.file = f;
                self.segments.current = next;
                self.segments.changed = true;
                self.segments.current();
                self.written = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start a new segment; staying on the current one")
            }
        }
    }

    fn stop_compactor(&mut self) {
        self.jobs.take();
        if let Some(t) = self.compactor.take() {
            let _ = t.join();
        }
    }
}

/// The files a batch's acks and marks name messages in, noted in the current file's
/// `refers_to` (consecutive ids mostly lie in one file: skip repeats cheaply).
#[derive(Default)]
struct Named {
    last: Option<u32>,
}

impl Named {
    fn note(&mut self, segments: &mut Segments, segment: u32) {
        if self.last != Some(segment) {
            self.last = Some(segment);
            segments.current().refers_to.insert(segment as u64);
        }
    }
}

fn encode_pairs(buf: &mut Vec<u8>, kind: u8, qid: u64, ids: &[u64]) {
    record::append_with(buf, |o| {
        o.put_u8(kind);
        o.put_u64(qid);
        o.put_u32(ids.len() as u32);
        ids.iter().for_each(|id| o.put_u64(*id));
    });
}
