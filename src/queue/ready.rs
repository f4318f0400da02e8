//! A queue's ready messages: one FIFO per priority level (a single one unless the queue
//! has `x-max-priority`), with the counts that `x-max-length(-bytes)` and reject-publish
//! admission need.
//!
//! Invariant: within a level, every unacked id is lower than every later-published ready
//! id, because delivery always takes a level's head. Requeue inserts by id, which puts a
//! message back exactly where it was within its priority.
//!
//! Paging: a queue keeps the bodies of only its oldest ready messages in memory (its
//! window: `store.resident_messages`, wider while consumers take them fast, see
//! `pace.rs`). A message published while the queue is longer than that
//! is paged out once the store has written it (a persistent message of a durable queue is
//! there already; others get a transient copy, dropped at restart); its entry keeps the
//! store id, not the body; taking a paged message off the head reads it back from the store,
//! together with the paged messages behind it, so a draining backlog costs one read per
//! batch. Everything that takes a message out ([`Ready::pop_front`] and friends) hands
//! back a resident [`Entry`]; only [`Ready::drain`] (purge, delete) doesn't need bodies.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::admission::Admission;
use super::stored::{Stored, Tokens};
use crate::message::Message;
use crate::store::MessageStore;

/// Paged messages read back in one go when the head reaches them.
const PAGE_IN_BATCH: usize = 512;

/// A message taken out of (or going into) the ready list, with its body.
pub(super) struct Entry {
    pub id: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// When it expires (queue TTL or the message's `expiration`), fixed at enqueue time
    /// and kept across requeues, as RabbitMQ does.
    pub expires: Option<Instant>,
    /// Its level: the message's priority capped at the queue's maximum (0 without one).
    pub priority: u8,
    /// Set when the message is in the store on this (durable) queue's behalf: dropping
    /// the entry, wherever the queue lets go of it, records that (see `stored.rs`).
    pub stored: Option<Stored>,
}

impl Entry {
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// A ready message as the list holds it: the body only while it is resident.
struct Queued {
    id: u64,
    /// None: paged out; `stored` says where to read it back.
    message: Option<Arc<Message>>,
    bytes: u32,
    redelivered: bool,
    priority: u8,
    expires: Option<Deadline>,
    stored: Option<Stored>,
}

/// An expiry time in 8 bytes (an `Option<Instant>` takes 16): nanoseconds since the
/// process's first deadline. A deep queue holds one entry per message, so entries are
/// kept small: 48 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline(std::num::NonZeroU64);

impl Deadline {
    fn epoch() -> Instant {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn new(at: Instant) -> Deadline {
        let nanos = at.saturating_duration_since(Self::epoch()).as_nanos();
        Deadline(
            std::num::NonZeroU64::new(nanos.clamp(1, u64::MAX as u128) as u64)
                .unwrap_or(std::num::NonZeroU64::MIN),
        )
    }

    fn at(self) -> Instant {
        Self::epoch() + std::time::Duration::from_nanos(self.0.get())
    }
}

// One per queued message: keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<Queued>() == 48);

/// What one ready message costs in the list, body aside (for `footprint`).
pub(super) const QUEUED_BYTES: usize = std::mem::size_of::<Queued>();

impl Queued {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at.at() <= now)
    }

    fn into_entry(self, message: Arc<Message>) -> Entry {
        Entry {
            id: self.id,
            message,
            redelivered: self.redelivered,
            expires: self.expires.map(Deadline::at),
            priority: self.priority,
            stored: self.stored,
        }
    }
}

impl From<Entry> for Queued {
    fn from(e: Entry) -> Queued {
        Queued {
            id: e.id,
            bytes: e.message.body.len() as u32,
            message: Some(e.message),
            redelivered: e.redelivered,
            priority: e.priority,
            expires: e.expires.map(Deadline::new),
            stored: e.stored,
        }
    }
}

/// A message found in the store at start-up, as the queue restores it.
pub(super) struct Restored {
    pub id: u64,
    pub message: Option<Arc<Message>>,
    pub bytes: u32,
    pub redelivered: bool,
    pub priority: u8,
    pub expires: Option<Instant>,
    pub stored: Stored,
}

/// A queue's link to the store for paging.
pub(super) struct Pager {
    store: Arc<MessageStore>,
    tokens: Tokens,
    /// Bodies kept in memory at the head of the queue: `store.resident_messages`, or
    /// more while consumers take messages fast (see `pace.rs`).
    resident: usize,
    /// Messages to page out once the store has written them: (level, entry id, store id),
    /// in publish order.
    pending: VecDeque<(u8, u64, u64)>,
    /// Messages past the resident limit that the store does not hold (transient, or of
    /// a non-durable queue): (level, entry id). Their copies are written at the end of
    /// the burst, and only if they are still deep in the queue then; most of a burst
    /// that briefly overshoots the limit is delivered before that and never written.
    unwritten: VecDeque<(u8, u64)>,
}

impl Pager {
    /// Queue a resident message for [`Ready::page_out`] (which checks again, when it
    /// runs, that the message is still past the window).
    fn queue_page_out(&mut self, level: u8, q: &Queued) {
        if q.message.is_none() {
            return;
        }
        match &q.stored {
            Some(st) => self.pending.push_back((level, q.id, st.id())),
            None => self.unwritten.push_back((level, q.id)),
        }
    }

    pub fn new(store: Arc<MessageStore>, tokens: Tokens) -> Pager {
        Pager {
            resident: store.resident(),
            store,
            tokens,
            pending: VecDeque::new(),
            unwritten: VecDeque::new(),
        }
    }
}

pub(super) struct Ready {
    /// Indexed by priority; delivery takes from the highest non-empty level.
    levels: Vec<VecDeque<Queued>>,
    len: usize,
    bytes: u64,
    /// Messages whose bodies are only on disk.
    paged: usize,
    /// Their bytes: what of `bytes` is not in memory.
    paged_bytes: u64,
    /// Shared with publishers of a reject-publish queue; kept in step with `len`/`bytes`
    /// for messages leaving or re-entering (publishers reserve the arrivals).
    admission: Option<Arc<Admission>>,
    pager: Option<Pager>,
}

impl Ready {
    pub fn new(
        max_priority: Option<u8>,
        admission: Option<Arc<Admission>>,
        pager: Option<Pager>,
    ) -> Ready {
        let levels = max_priority.map_or(1, |p| p as usize + 1);
        Ready {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            paged: 0,
            paged_bytes: 0,
            admission,
            pager,
        }
    }

    /// Admission installed on a live queue by a policy (see the actor's
    /// `update_admission`).
    pub fn set_admission(&mut self, a: Arc<Admission>) {
        self.admission = Some(a);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many ready messages have their bodies only on disk.
    pub fn paged(&self) -> usize {
        self.paged
    }

    /// Bytes of the ready messages whose bodies are only on disk.
    pub fn paged_bytes(&self) -> u64 {
        self.paged_bytes
    }

    /// A priority queue's level for a message priority.
    pub fn level_for(&self, priority: u8) -> u8 {
        priority.min((self.levels.len() - 1) as u8)
    }

    /// A newly published message (already admitted by its publisher).
    pub fn push_back(&mut self, e: Entry) {
        self.len += 1;
        self.bytes += e.message.body.len() as u64;
        if let Some(p) = &mut self.pager {
            if self.len > p.resident {
                match &e.stored {
                    Some(st) => p.pending.push_back((e.priority, e.id, st.id())),
                    None => p.unwritten.push_back((e.priority, e.id)),
                }
            }
        }
        let level = e.priority as usize;
        self.levels[level].push_back(e.into());
    }

    /// A message from the store at start-up (in id order, so it goes at the back).
    pub fn restore(&mut self, r: Restored) {
        self.len += 1;
        self.bytes += r.bytes as u64;
        if let Some(a) = &self.admission {
            a.add(1, r.bytes as u64);
        }
        if r.message.is_none() {
            self.paged += 1;
            self.paged_bytes += r.bytes as u64;
        }
        self.levels[r.priority as usize].push_back(Queued {
            id: r.id,
            message: r.message,
            bytes: r.bytes,
            redelivered: r.redelivered,
            priority: r.priority,
            expires: r.expires.map(Deadline::new),
            stored: Some(r.stored),
        });
    }

    /// Messages coming back (requeue), each to its original place in its level. What
    /// lands past the resident window, or is pushed past it, is queued for paging out
    /// like a new message there: a consumer that took a whole backlog and then went away
    /// (or never read its socket) leaves it on disk again, not in memory.
    pub fn requeue_all(&mut self, mut entries: Vec<Entry>) {
        // Highest id first: each of the others then goes in front of those, which for
        // the usual case (a channel closing with all its deliveries) is the head of the
        // level, where inserting moves nothing.
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.id));
        let back: Vec<(u8, u64)> = entries.iter().map(|e| (e.priority, e.id)).collect();
        for e in entries {
            self.requeue(e);
        }
        let Some(p) = &mut self.pager else { return };
        let resident = p.resident;
        for (level, id) in back.iter().copied() {
            let l = &self.levels[level as usize];
            let at = l.partition_point(|x| x.id < id);
            if at >= resident {
                if let Some(q) = l.get(at).filter(|q| q.id == id) {
                    p.queue_page_out(level, q);
                }
            }
        }
        // Those the requeued ones pushed out of the window.
        for (level, l) in self.levels.iter().enumerate() {
            let end = l.len().min(resident + back.len());
            for q in l.range(resident.min(end)..end) {
                p.queue_page_out(level as u8, q);
            }
        }
    }

    /// A message coming back (requeue): to its original place in its level.
    fn requeue(&mut self, e: Entry) {
        let bytes = e.message.body.len() as u64;
        self.len += 1;
        self.bytes += bytes;
        if let Some(a) = &self.admission {
            a.add(1, bytes);
        }
        let level = &mut self.levels[e.priority as usize];
        let at = level.partition_point(|x| x.id < e.id);
        level.insert(at, e.into());
    }

    /// Page out what the store has written of the messages waiting for it, except those
    /// that have meanwhile come near the head. Called once per burst.
    pub fn page_out(&mut self) {
        let Some(p) = &mut self.pager else { return };
        // Write copies of the messages still deep in the queue; they page out once
        // the store has them, like persistent ones.
        // (level, entry id, position): positions hold until the copies are made.
        let mut deep: Vec<(u8, u64, usize)> = Vec::new();
        let mut copies: Vec<&Message> = Vec::new();
        while let Some((level, id)) = p.unwritten.pop_front() {
            let l = &self.levels[level as usize];
            let at = l.partition_point(|x| x.id < id);
            if at < p.resident {
                continue;
            }
            if let Some(q) = l.get(at).filter(|q| q.id == id && q.stored.is_none()) {
                if let Some(m) = &q.message {
                    deep.push((level, id, at));
                    copies.push(m);
                }
            }
        }
        if !copies.is_empty() {
            let first = p.store.persist_transient(&copies);
            drop(copies);
            for ((level, id, at), store_id) in deep.into_iter().zip(first..) {
                self.levels[level as usize][at].stored = Some(p.tokens.transient(store_id));
                p.pending.push_back((level, id, store_id));
            }
        }
        if p.unwritten.capacity() > 8192 {
            p.unwritten.shrink_to(0);
        }
        if p.pending.is_empty() {
            return;
        }
        let synced = p.store.synced();
        let keep = p.resident / 2;
        while let Some(&(level, id, store_id)) = p.pending.front() {
            if store_id > synced {
                break;
            }
            p.pending.pop_front();
            // The store could not write it (a disk error): the body stays here.
            if p.store.is_failed(store_id) {
                continue;
            }
            let level = &mut self.levels[level as usize];
            let at = level.partition_point(|x| x.id < id);
            if at < keep {
                continue;
            }
            if let Some(q) = level.get_mut(at).filter(|q| q.id == id) {
                if q.message.take().is_some() {
                    self.paged += 1;
                    self.paged_bytes += q.bytes as u64;
                }
            }
        }
        // A burst of publishes can queue many page-outs at once; don't keep that capacity.
        if p.pending.capacity() > 8192 && p.pending.len() < p.pending.capacity() / 4 {
            p.pending.shrink_to(p.pending.len() * 2);
        }
    }

    /// Change how many bodies stay in memory at the head (see `pace.rs`). Narrowing the
    /// window queues what is now past it for paging out, as if it had just been published
    /// there; widening it lets [`Ready::page_out`] keep what is waiting and now inside.
    pub fn set_window(&mut self, window: usize) {
        let Some(p) = &mut self.pager else { return };
        let old = std::mem::replace(&mut p.resident, window);
        if window >= old {
            return;
        }
        // Positions only move towards the head (requeues aside), so what was never queued
        // for paging lies inside the old window.
        for (level, l) in self.levels.iter().enumerate() {
            for q in l.range(window.min(l.len())..old.min(l.len())) {
                p.queue_page_out(level as u8, q);
            }
        }
    }

    /// Messages are waiting to be written or paged out (see [`Ready::page_out`]).
    pub fn paging_pending(&self) -> bool {
        self.pager
            .as_ref()
            .is_some_and(|p| !p.pending.is_empty() || !p.unwritten.is_empty())
    }

    /// Read back the paged messages at the head of `level` (up to a batch). Those the
    /// store can't give back (it logged why) are dropped.
    fn page_in(&mut self, level: usize) {
        let Some(p) = &self.pager else { return };
        let l = &mut self.levels[level];
        let n = l.len().min(PAGE_IN_BATCH);
        let (positions, ids): (Vec<usize>, Vec<u64>) = l
            .iter()
            .take(n)
            .enumerate()
            .filter(|(_, q)| q.message.is_none())
            .filter_map(|(i, q)| Some((i, q.stored.as_ref()?.id())))
            .unzip();
        // On this task, measured: one `pread` per batch of neighbours, and moving it off
        // the worker with `block_in_place` made an unrelated queue's p99 about 6x worse
        // while a cold 4 KB backlog drained (see benches/paging-latency.sh).
        let read = p.store.read(&ids);
        let mut lost = Vec::new();
        for (i, m) in positions.into_iter().zip(read) {
            match m {
                Some(m) => l[i].message = Some(Arc::new(m)),
                None => lost.push(i),
            }
            self.paged -= 1;
            self.paged_bytes -= l[i].bytes as u64;
        }
        for i in lost.into_iter().rev() {
            if let Some(q) = l.remove(i) {
                self.len -= 1;
                self.bytes -= q.bytes as u64;
                if let Some(a) = &self.admission {
                    a.release(1, q.bytes as u64);
                }
            }
        }
    }

    /// Take the head of `level`, reading it back first if it is paged.
    fn take(&mut self, level: usize) -> Option<Entry> {
        loop {
            let head = self.levels[level].front()?;
            if head.message.is_none() {
                self.page_in(level);
                continue;
            }
            let q = self.levels[level].pop_front()?;
            self.len -= 1;
            self.bytes -= q.bytes as u64;
            if let Some(a) = &self.admission {
                a.release(1, q.bytes as u64);
            }
            let message = q.message.clone()?;
            return Some(q.into_entry(message));
        }
    }

    /// The next message to deliver.
    pub fn pop_front(&mut self) -> Option<Entry> {
        loop {
            let level = self.levels.iter().rposition(|l| !l.is_empty())?;
            // A level can empty itself while paging in (messages the store lost).
            if let Some(e) = self.take(level) {
                return Some(e);
            }
        }
    }

    /// The next live message, putting the expired ones met on the way in `expired`.
    pub fn pop_live(&mut self, now: Option<Instant>, expired: &mut Vec<Entry>) -> Option<Entry> {
        while let Some(e) = self.pop_front() {
            match now {
                Some(now) if e.expired(now) => expired.push(e),
                _ => return Some(e),
            }
        }
        None
    }

    /// Drop expired messages at the head of every level (RabbitMQ expires from the head
    /// only; a message behind a longer-lived one waits, but is never delivered).
    pub fn pop_expired(&mut self, now: Instant, expired: &mut Vec<Entry>) {
        for i in 0..self.levels.len() {
            while self.levels[i].front().is_some_and(|q| q.expired(now)) {
                match self.take(i) {
                    Some(e) => expired.push(e),
                    None => break,
                }
            }
        }
    }

    /// When the earliest head expires: the moment the queue's timer must fire.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|l| l.front()?.expires)
            .min()
            .map(Deadline::at)
    }

    /// Remove everything (purge, delete); returns how many went.
    pub fn drain(&mut self) -> usize {
        for l in &mut self.levels {
            l.clear();
        }
        if let Some(p) = &mut self.pager {
            p.pending.clear();
        }
        if let Some(a) = &self.admission {
            a.release(self.len as u64, self.bytes);
        }
        let n = self.len;
        self.len = 0;
        self.bytes = 0;
        self.paged = 0;
        self.paged_bytes = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::queue::stored::StoreLink;
    use bytes::Bytes;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            message: Arc::new(Message {
                exchange: Bytes::new(),
                routing_key: Bytes::from_static(b"q"),
                properties: Bytes::new(),
                body: Bytes::from(format!("m{id}")),
                store_id: None,
            }),
            redelivered: false,
            expires: None,
            priority: 0,
            stored: None,
        }
    }

    fn paging_ready(name: &str, resident: u64) -> (Ready, StoreLink) {
        let dir = std::env::temp_dir().join(format!("warren-ready-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = StoreConfig {
            fsync: false,
            resident_messages: resident,
            ..StoreConfig::default()
        };
        let (store, _) =
            MessageStore::open(&dir, &Default::default(), &config).expect("store opens");
        let link = StoreLink::new(store.clone(), None);
        let ready = Ready::new(None, None, Some(Pager::new(store, link.tokens.clone())));
        (ready, link)
    }

    #[test]
    fn narrowing_the_window_pages_out_what_lies_past_it() {
        let (mut ready, link) = paging_ready("narrow", 1000);
        for id in 1..=1000 {
            ready.push_back(entry(id));
        }
        ready.page_out();
        assert_eq!(ready.paged(), 0, "all inside the window");
        ready.set_window(100);
        ready.page_out(); // writes the copies
        link.store.flush();
        ready.page_out(); // drops the bodies the store now holds
        assert_eq!(ready.paged(), 900);
        // Read back in order, bodies intact.
        for id in 1..=1000 {
            let e = ready.pop_front().expect("a message");
            assert_eq!(
                (e.id, &e.message.body[..]),
                (id, format!("m{id}").as_bytes())
            );
        }
        assert_eq!(ready.paged(), 0);
        assert!(ready.is_empty());
    }

    #[test]
    fn a_wider_window_keeps_in_memory_what_it_covers() {
        let (mut ready, link) = paging_ready("widen", 100);
        for id in 1..=1000 {
            ready.push_back(entry(id));
        }
        // Past the window at publish time, but inside it by the time the copies would
        // be written: nothing is written or paged.
        ready.set_window(2000);
        ready.page_out();
        link.store.flush();
        ready.page_out();
        assert_eq!(ready.paged(), 0);
        assert!(!ready.paging_pending());
    }

    #[test]
    fn a_requeued_backlog_goes_back_to_disk_past_the_window() {
        let (mut ready, link) = paging_ready("requeue", 100);
        for id in 1..=1000 {
            ready.push_back(entry(id));
        }
        ready.page_out();
        link.store.flush();
        ready.page_out();
        assert_eq!(ready.paged(), 900);
        // A consumer takes everything (all of it read back into memory)...
        let mut taken: Vec<Entry> = std::iter::from_fn(|| ready.pop_front()).collect();
        assert_eq!((taken.len(), ready.paged()), (1000, 0));
        // ...and goes away: everything comes back, in any order, ahead of a new message.
        ready.push_back(entry(1001));
        taken.reverse();
        taken.swap(3, 700);
        ready.requeue_all(taken);
        ready.page_out();
        link.store.flush();
        ready.page_out();
        assert_eq!(
            ready.paged(),
            901,
            "all but the window's 100 bodies back on disk"
        );
        for id in 1..=1001 {
            let e = ready.pop_front().expect("a message");
            assert_eq!(
                (e.id, &e.message.body[..]),
                (id, format!("m{id}").as_bytes())
            );
        }
    }
}
