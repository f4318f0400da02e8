//! A queue's ready messages: one FIFO per priority level (a single one unless the queue
//! has `x-max-priority`), with the counts that `x-max-length(-bytes)` and reject-publish
//! admission need.
//!
//! Invariant: within a level, every unacked id is lower than every later-published ready
//! id, because delivery always takes a level's head. Requeue inserts by id, which puts a
//! message back exactly where it was within its priority.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::admission::Admission;
use crate::message::Message;

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
    pub stored: Option<super::stored::Stored>,
}

impl Entry {
    pub fn bytes(&self) -> u64 {
        self.message.body.len() as u64
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

pub(super) struct Ready {
    /// Indexed by priority; delivery takes from the highest non-empty level.
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    bytes: u64,
    /// Shared with publishers of a reject-publish queue; kept in step with `len`/`bytes`
    /// for messages leaving or re-entering (publishers reserve the arrivals).
    admission: Option<Arc<Admission>>,
}

impl Ready {
    pub fn new(max_priority: Option<u8>, admission: Option<Arc<Admission>>) -> Ready {
        let levels = max_priority.map_or(1, |p| p as usize + 1);
        Ready {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            admission,
        }
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

    /// A priority queue's level for a message priority.
    pub fn level_for(&self, priority: u8) -> u8 {
        priority.min((self.levels.len() - 1) as u8)
    }

    /// A newly published message (already admitted by its publisher).
    pub fn push_back(&mut self, e: Entry) {
        self.len += 1;
        self.bytes += e.bytes();
        let level = e.priority as usize;
        self.levels[level].push_back(e);
    }

    /// A message coming back (requeue): to its original place in its level.
    pub fn requeue(&mut self, e: Entry) {
        self.len += 1;
        self.bytes += e.bytes();
        if let Some(a) = &self.admission {
            a.add(1, e.bytes());
        }
        let level = &mut self.levels[e.priority as usize];
        let at = level.partition_point(|x| x.id < e.id);
        level.insert(at, e);
    }

    fn taken(&mut self, e: &Entry) {
        self.len -= 1;
        self.bytes -= e.bytes();
        if let Some(a) = &self.admission {
            a.release(1, e.bytes());
        }
    }

    /// The next message to deliver.
    pub fn pop_front(&mut self) -> Option<Entry> {
        let e = self.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        self.taken(&e);
        Some(e)
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
            while self.levels[i].front().is_some_and(|e| e.expired(now)) {
                if let Some(e) = self.levels[i].pop_front() {
                    self.taken(&e);
                    expired.push(e);
                }
            }
        }
    }

    /// When the earliest head expires: the moment the queue's timer must fire.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.levels.iter().filter_map(|l| l.front()?.expires).min()
    }

    /// Remove everything (purge, delete).
    pub fn drain(&mut self) -> Vec<Entry> {
        let all: Vec<Entry> = self.levels.iter_mut().flat_map(|l| l.drain(..)).collect();
        if let Some(a) = &self.admission {
            a.release(self.len as u64, self.bytes);
        }
        self.len = 0;
        self.bytes = 0;
        all
    }
}
