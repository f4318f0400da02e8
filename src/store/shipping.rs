//! The data directory's changes as one ordered log, for followers to replay, and the
//! gate that holds confirms back until enough copies hold a change.
//!
//! The journal's writer and the metadata log push every change they make to their files
//! here, after making it and under the lock that orders it: an append at an offset, a
//! whole file installed (a compaction's output), a file removed or cut back. Each gets
//! the next sequence number. A follower that applies them in order holds byte-identical
//! files, so taking over is a restart on its own directory, with the recovery every
//! restart already does.
//!
//! Appends name their offset, so applying one twice changes nothing: a follower can be
//! sent a file's current contents and then the changes from a sequence number taken
//! before (see [`Shipping::snapshot`]) without a lock over both.
//!
//! A confirm (and a durable declare's answer, through [`Shipping::wait`]) goes out once
//! every follower in the in-sync replicas (ISR) has acknowledged the change, the ISR
//! counts at least `min_insync` copies with the leader, and the leader's lease is
//! valid. The cluster module decides who is in the ISR; this module only counts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

/// Bytes of changes kept for followers that have not taken them yet; a follower further
/// behind is sent the files again instead.
const RETAIN: usize = 256 << 20;

/// One change to a file of the data directory, named relative to it (`meta.log`,
/// `messages/NNNNNNNNNNNNNNNN.seg`).
#[derive(Debug, Clone)]
pub enum FileOp {
    /// Write `data` at `offset` (creating the file).
    Append {
        file: String,
        offset: u64,
        data: Bytes,
    },
    /// The file is now exactly `data` (written aside, synced, renamed into place).
    Install {
        file: String,
        data: Bytes,
    },
    Remove {
        file: String,
    },
    /// Cut back to `len` (a failed write's tail).
    Truncate {
        file: String,
        len: u64,
    },
}

impl FileOp {
    pub fn file(&self) -> &str {
        match self {
            FileOp::Append { file, .. }
            | FileOp::Install { file, .. }
            | FileOp::Remove { file }
            | FileOp::Truncate { file, .. } => file,
        }
    }

    fn size(&self) -> usize {
        64 + match self {
            FileOp::Append { data, .. } | FileOp::Install { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// An ISR follower's progress.
struct Replica {
    acked: u64,
}

struct State {
    /// The sequence number of the last change pushed.
    last: u64,
    /// Changes not yet taken by every connected follower, oldest first.
    ops: VecDeque<(u64, Arc<FileOp>)>,
    bytes: usize,
    /// After each journal batch: its last change, and the message-id watermark it
    /// completes.
    points: VecDeque<(u64, u64)>,
    /// Connections waiting for their highest message id to be confirmed.
    waiting: Vec<(Arc<Notify>, u64)>,
    /// The ISR followers (the leader is implied).
    isr: HashMap<String, Replica>,
    /// Everything up to here is held by enough copies.
    floor: u64,
}

pub struct Shipping {
    state: Mutex<State>,
    /// Woken when changes are pushed (senders) and when the floor moves (waiters).
    pushed: Condvar,
    floored: Condvar,
    /// Message ids confirmed: every message numbered up to here is on enough copies.
    confirmed: AtomicU64,
    /// Woken when `confirmed` moves.
    pub progress: Notify,
    min_insync: usize,
    /// The lease is gone: nothing is confirmed any more, ever, by this process.
    fenced: AtomicBool,
    /// Clients are served: a metadata change's caller waits for the followers. Before
    /// (start-up's own changes, which nobody is told of) it does not.
    armed: AtomicBool,
    /// Milliseconds after `epoch` until which the lease is known valid.
    valid_until: AtomicU64,
    epoch: Instant,
}

/// A follower asked for changes that are no longer kept: send it the files again.
#[derive(Debug)]
pub struct Trimmed;

impl Shipping {
    /// `confirmed`: the message ids already safe (recovered from disk at start-up).
    pub fn new(min_insync: usize) -> Arc<Shipping> {
        Arc::new(Shipping {
            state: Mutex::new(State {
                last: 0,
                ops: VecDeque::new(),
                bytes: 0,
                points: VecDeque::new(),
                waiting: Vec::new(),
                isr: HashMap::new(),
                floor: 0,
            }),
            pushed: Condvar::new(),
            floored: Condvar::new(),
            confirmed: AtomicU64::new(0),
            progress: Notify::new(),
            min_insync: min_insync.max(1),
            fenced: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            valid_until: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a change made to a file; its sequence number.
    pub fn push(&self, op: FileOp) -> u64 {
        let mut s = self.lock();
        s.last += 1;
        let seq = s.last;
        s.bytes += op.size();
        s.ops.push_back((seq, Arc::new(op)));
        while s.bytes > RETAIN && s.ops.len() > 1 {
            if let Some((_, old)) = s.ops.pop_front() {
                s.bytes -= old.size();
            }
        }
        self.advance(&mut s);
        drop(s);
        self.pushed.notify_all();
        seq
    }

    /// The sequence number of the last change.
    pub fn last(&self) -> u64 {
        self.lock().last
    }

    /// Message store: a batch is written (and synced) up to message id `watermark`;
    /// `waiters` want to hear when their ids are confirmed.
    pub fn batch_done(&self, watermark: u64, waiters: Vec<(Arc<Notify>, u64)>) {
        let mut s = self.lock();
        let last = s.last;
        match s.points.back_mut() {
            Some(p) if p.0 == last => p.1 = p.1.max(watermark),
            _ => s.points.push_back((last, watermark)),
        }
        s.waiting.extend(waiters);
        self.advance(&mut s);
    }

    /// Message ids up to here are confirmed.
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire)
    }

    /// Block until change `seq` is held by enough copies (a metadata change before its
    /// caller answers), or `timeout` passes; whether it is.
    pub fn wait(&self, seq: u64, timeout: Duration) -> bool {
        if !self.armed.load(Ordering::Acquire) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.floor < seq {
            let now = Instant::now();
            if now >= deadline || !self.lease_valid() {
                return false;
            }
            s = self
                .floored
                .wait_timeout(s, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            // The lease may have lapsed without anyone pushing: look again.
            self.advance(&mut s);
        }
        true
    }

    /// The changes after `after`, at most `max_bytes` of them (at least one), waiting up
    /// to `timeout` for one to come. Empty when none came.
    pub fn take(
        &self,
        after: u64,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<(u64, Arc<FileOp>)>, Trimmed> {
        let mut s = self.lock();
        if s.last <= after {
            s = self
                .pushed
                .wait_timeout(s, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let first = s.ops.front().map_or(s.last + 1, |(seq, _)| *seq);
        if after + 1 < first && after < s.last {
            return Err(Trimmed);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let start = (after + 1).saturating_sub(first) as usize;
        for (seq, op) in s.ops.iter().skip(start) {
            if !out.is_empty() && bytes + op.size() > max_bytes {
                break;
            }
            bytes += op.size();
            out.push((*seq, op.clone()));
        }
        Ok(out)
    }

    /// Drop changes every connected follower has taken (`upto`, the lowest of theirs).
    pub fn trim(&self, upto: u64) {
        let mut s = self.lock();
        while s.ops.front().is_some_and(|(seq, _)| *seq <= upto) {
            if let Some((_, old)) = s.ops.pop_front() {
                s.bytes -= old.size();
            }
        }
    }

    /// A follower holds every change up to `seq`.
    pub fn acked(&self, node: &str, seq: u64) {
        let mut s = self.lock();
        if let Some(r) = s.isr.get_mut(node) {
            r.acked = r.acked.max(seq);
            self.advance(&mut s);
        }
    }

    /// `node` counts from now on: later confirms wait for it (call before telling the
    /// coordinator it is in sync). `acked`: what it holds already.
    pub fn join_isr(&self, node: &str, acked: u64) {
        let mut s = self.lock();
        s.isr.insert(node.to_owned(), Replica { acked });
        self.advance(&mut s);
    }

    /// `node` no longer counts (call after the coordinator stored the smaller ISR).
    pub fn leave_isr(&self, node: &str) {
        let mut s = self.lock();
        s.isr.remove(node);
        self.advance(&mut s);
    }

    /// The ISR followers and what each acknowledged.
    pub fn isr(&self) -> Vec<(String, u64)> {
        let s = self.lock();
        let mut v: Vec<_> = s.isr.iter().map(|(n, r)| (n.clone(), r.acked)).collect();
        v.sort();
        v
    }

    /// Fewer in-sync copies (the leader's included) than a confirm needs.
    pub fn below_min_insync(&self) -> bool {
        self.lock().isr.len() + 1 < self.min_insync
    }

    /// Clients are about to be served: from now on metadata changes wait for the
    /// followers (see [`Shipping::wait`]).
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    /// The lease is valid until `until` (a renewal succeeded).
    pub fn lease_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.epoch).as_millis() as u64;
        self.valid_until.fetch_max(ms, Ordering::AcqRel);
        let mut s = self.lock();
        self.advance(&mut s);
    }

    /// Leadership is lost: confirm nothing more, wake everyone (they see no progress).
    pub fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
        self.floored.notify_all();
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// The lease is known valid and leadership not given up.
    pub fn lease_valid(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        !self.is_fenced() && now < self.valid_until.load(Ordering::Acquire)
    }

    /// Move the floor to what enough copies hold, and confirm what it covers.
    fn advance(&self, s: &mut State) {
        if !self.lease_valid() || s.isr.len() + 1 < self.min_insync {
            return;
        }
        let floor = s.isr.values().map(|r| r.acked).min().unwrap_or(s.last);
        if floor > s.floor {
            s.floor = floor;
            self.floored.notify_all();
        }
        // A batch's point can come after the followers acknowledged its changes (they
        // are shipped before the leader's own sync): points are looked at either way.
        let floor = s.floor;
        let mut watermark = None;
        while s.points.front().is_some_and(|(seq, _)| *seq <= floor) {
            watermark = s.points.pop_front().map(|(_, w)| w);
        }
        let Some(w) = watermark else { return };
        if w > self.confirmed.load(Ordering::Acquire) {
            self.confirmed.store(w, Ordering::Release);
            self.progress.notify_waiters();
            s.waiting.retain(|(n, max)| {
                let covered = *max <= w;
                if covered {
                    n.notify_one();
                }
                !covered
            });
        }
    }

    /// Start-up: message ids up to `recovered` were on disk before this process served.
    pub fn recovered(&self, recovered: u64) {
        self.confirmed.fetch_max(recovered, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(n: u8) -> FileOp {
        FileOp::Append {
            file: "meta.log".into(),
            offset: u64::from(n),
            data: Bytes::from(vec![n]),
        }
    }

    fn leader(min: usize) -> Arc<Shipping> {
        let s = Shipping::new(min);
        s.lease_until(Instant::now() + Duration::from_secs(60));
        s
    }

    #[test]
    fn a_confirm_waits_for_every_isr_follower() {
        let s = leader(2);
        s.join_isr("b", 0);
        s.join_isr("c", 0);
        s.push(op(1));
        s.batch_done(10, Vec::new());
        assert_eq!(s.confirmed(), 0);
        s.acked("b", 1);
        assert_eq!(s.confirmed(), 0, "c has not acknowledged");
        s.acked("c", 1);
        assert_eq!(s.confirmed(), 10);
    }

    #[test]
    fn a_batch_acknowledged_before_it_is_done_is_confirmed_when_done() {
        let s = leader(2);
        s.join_isr("b", 0);
        s.push(op(1));
        s.acked("b", 1);
        s.batch_done(4, Vec::new());
        assert_eq!(s.confirmed(), 4);
    }

    #[test]
    fn below_min_insync_nothing_is_confirmed_and_a_dropped_follower_stops_counting() {
        let s = leader(2);
        s.push(op(1));
        s.batch_done(5, Vec::new());
        assert_eq!(s.confirmed(), 0, "the leader alone is one copy of two");
        s.join_isr("b", 0);
        s.push(op(2));
        s.batch_done(7, Vec::new());
        s.acked("b", 2);
        assert_eq!(s.confirmed(), 7);
        s.join_isr("c", 0);
        s.push(op(3));
        s.batch_done(9, Vec::new());
        s.acked("b", 3);
        assert_eq!(s.confirmed(), 7);
        s.leave_isr("c");
        assert_eq!(s.confirmed(), 9);
    }

    #[test]
    fn a_fenced_or_expired_leader_confirms_nothing() {
        let s = Shipping::new(1);
        s.arm();
        s.push(op(1));
        s.batch_done(3, Vec::new());
        assert_eq!(s.confirmed(), 0, "no lease yet");
        s.lease_until(Instant::now() + Duration::from_secs(60));
        assert_eq!(s.confirmed(), 3);
        s.fence();
        s.push(op(2));
        s.batch_done(4, Vec::new());
        assert_eq!(s.confirmed(), 3);
        assert!(!s.wait(2, Duration::from_millis(10)));
    }

    #[test]
    fn a_follower_too_far_behind_is_told_so() {
        let s = leader(1);
        for n in 1..=3 {
            s.push(op(n));
        }
        let got = s.take(1, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(got.iter().map(|(q, _)| *q).collect::<Vec<_>>(), [2, 3]);
        s.trim(2);
        assert!(s.take(0, 1 << 20, Duration::ZERO).is_err());
        assert_eq!(s.take(2, 1 << 20, Duration::ZERO).unwrap().len(), 1);
        assert!(s.take(3, 1 << 20, Duration::ZERO).unwrap().is_empty());
    }
}
