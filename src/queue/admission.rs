//! Admission for `x-overflow: reject-publish(-dlx)` queues: the publishing channel must
//! know at routing time whether the queue takes a message, to nack it in confirm mode.
//!
//! Rather than a round trip to the actor per publish, the queue shares this small
//! counter of its ready messages (and bytes). A channel reserves room before it hands
//! the message over; the actor gives room back when a message leaves the ready list and
//! takes it again on requeue. The count therefore includes messages still on their way
//! to the actor, which is exactly what makes the verdict race-free. Queues without
//! reject-publish have no `Admission` and their publishers pay nothing.

//!
//! A policy can change the limits or the overflow mode of a live queue: the limits are
//! atomics the actor updates, and a queue whose policy no longer asks for reject-publish
//! keeps the counter but disabled (publishers then skip it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub struct Admission {
    max_length: AtomicU64,
    max_bytes: AtomicU64,
    /// Dead-letter refused messages (reject-publish-dlx).
    dead_letter: AtomicBool,
    /// Off when a policy change removed reject-publish from the queue.
    enabled: AtomicBool,
    /// (messages, body bytes) ready or on their way.
    used: Mutex<(u64, u64)>,
}

impl Admission {
    pub fn new(max_length: Option<u64>, max_bytes: Option<u64>, dead_letter: bool) -> Admission {
        Admission {
            max_length: AtomicU64::new(max_length.unwrap_or(u64::MAX)),
            max_bytes: AtomicU64::new(max_bytes.unwrap_or(u64::MAX)),
            dead_letter: AtomicBool::new(dead_letter),
            enabled: AtomicBool::new(true),
            used: Mutex::new((0, 0)),
        }
    }

    /// Whether refused messages are dead-lettered (reject-publish-dlx).
    pub fn dead_letter(&self) -> bool {
        self.dead_letter.load(Ordering::Relaxed)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A policy changed the queue's limits or overflow mode.
    pub fn reconfigure(
        &self,
        enabled: bool,
        max_length: Option<u64>,
        max_bytes: Option<u64>,
        dead_letter: bool,
    ) {
        self.max_length
            .store(max_length.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.max_bytes
            .store(max_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.dead_letter.store(dead_letter, Ordering::Relaxed);
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Start counting from what the queue holds now (admission installed on a live
    /// queue). Messages already on their way were not reserved and are not counted.
    pub fn reset(&self, n: u64, bytes: u64) {
        *self.used() = (n, bytes);
    }

    fn used(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserve room for one message of `bytes` body bytes; false if it would overflow
    /// (rabbit_amqqueue_process:will_overflow).
    pub fn try_admit(&self, bytes: u64) -> bool {
        let mut u = self.used();
        if u.0 + 1 > self.max_length.load(Ordering::Relaxed)
            || u.1.saturating_add(bytes) > self.max_bytes.load(Ordering::Relaxed)
        {
            return false;
        }
        u.0 += 1;
        u.1 += bytes;
        true
    }

    /// Messages left the ready list (delivered, fetched, expired, purged...).
    pub fn release(&self, n: u64, bytes: u64) {
        let mut u = self.used();
        u.0 = u.0.saturating_sub(n);
        u.1 = u.1.saturating_sub(bytes);
    }

    /// Messages came back (requeue): they count again, even beyond the limit.
    pub fn add(&self, n: u64, bytes: u64) {
        let mut u = self.used();
        u.0 += n;
        u.1 += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limits() {
        let a = Admission::new(Some(2), Some(10), false);
        assert!(a.try_admit(4));
        assert!(a.try_admit(4));
        assert!(!a.try_admit(0));
        a.release(1, 4);
        assert!(!a.try_admit(7));
        assert!(a.try_admit(6));
    }
}
