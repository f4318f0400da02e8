//! How many of a queue's oldest ready messages keep their bodies in memory: the
//! resident window of `ready.rs`'s paging.
//!
//! A queue nobody consumes from keeps `store.resident_messages` bodies (its backlog is
//! on disk, an index entry each in memory). A queue whose consumers are taking messages
//! keeps as many as they take in [`HORIZON`] at their current pace, however long that
//! is (up to [`MAX_WINDOW_BYTES`] of bodies): paging out a message that a consumer will
//! take a few milliseconds later costs a write, a read and the CPU both take from the
//! consumer, and a queue that a fast consumer only briefly falls behind on would then
//! page every new message, slowing its consumer further, so it would never catch up.
//! RabbitMQ's classic queues size their RAM the same way, by rate times a target duration
//! (rabbit_variable_queue's ram duration).
//!
//! The pace is sampled at most every [`SAMPLE`], and only while it matters (the queue
//! is longer than its floor, or was widened): an idle or short queue reads no clock.

use std::time::{Duration, Instant};

/// Shortest interval over which consumers' pace is measured.
const SAMPLE: Duration = Duration::from_millis(100);
/// Consumers' intake over this long stays in memory.
const HORIZON: Duration = Duration::from_millis(500);
/// Bodies a widened window holds at most (by the queue's average message size).
const MAX_WINDOW_BYTES: u64 = 64 << 20;

pub(super) struct Pace {
    /// `store.resident_messages`: the window without consumers or at a slow pace.
    floor: usize,
    window: usize,
    /// The last sample: when, and how many messages had been handed out by then.
    sampled: Option<(Instant, u64)>,
}

impl Pace {
    pub fn new(floor: usize) -> Pace {
        Pace {
            floor,
            window: floor,
            sampled: None,
        }
    }

    /// Called once per actor wake-up. `taken`: messages handed out since the queue
    /// started (deliveries and gets); `ready`/`ready_bytes`: the queue's length.
    /// Returns the new window when it changed.
    pub fn update(
        &mut self,
        consumed: bool,
        taken: u64,
        ready: usize,
        ready_bytes: u64,
    ) -> Option<usize> {
        if !consumed {
            self.sampled = None;
            return self.set(self.floor);
        }
        if ready <= self.floor / 2 && self.window == self.floor {
            // Short queue: nothing pages; start measuring afresh if it grows.
            self.sampled = None;
            return None;
        }
        let now = Instant::now();
        let Some((then, taken_then)) = self.sampled else {
            self.sampled = Some((now, taken));
            return None;
        };
        let elapsed = now.duration_since(then);
        if elapsed < SAMPLE {
            return None;
        }
        self.sampled = Some((now, taken));
        let per_sec = (taken - taken_then) as f64 / elapsed.as_secs_f64();
        let wanted = (per_sec * HORIZON.as_secs_f64()) as usize;
        let avg = ready_bytes.checked_div(ready as u64).unwrap_or(0).max(1);
        let cap = (MAX_WINDOW_BYTES / avg) as usize;
        // A single slow sample (a consumer's pause) halves the window, not more: what
        // was resident stays so unless the pace really dropped.
        let window = wanted.min(cap).max(self.window / 2).max(self.floor);
        self.set(window)
    }

    fn set(&mut self, window: usize) -> Option<usize> {
        (window != self.window).then(|| {
            self.window = window;
            window
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_consumers_the_window_is_the_floor() {
        let mut p = Pace::new(100);
        assert_eq!(p.update(false, 0, 1_000_000, 16_000_000), None);
        assert_eq!(p.window, 100);
    }

    #[test]
    fn a_fast_consumer_widens_the_window_and_losing_it_narrows_it() {
        let mut p = Pace::new(100);
        assert_eq!(p.update(true, 0, 10_000, 160_000), None);
        // Pretend the first sample was taken SAMPLE ago, 100 000 deliveries back.
        p.sampled = Some((Instant::now() - SAMPLE, 0));
        let w = p.update(true, 100_000, 10_000, 160_000).expect("widened");
        // 100 000 in ~0.1 s is ~1M/s: half a second of that.
        assert!((400_000..=500_000).contains(&w), "{w}");
        assert_eq!(p.update(false, 100_000, 10_000, 160_000), Some(100));
    }

    #[test]
    fn the_window_holds_at_most_its_byte_budget() {
        let mut p = Pace::new(100);
        p.update(true, 0, 10_000, 10_000 << 20);
        p.sampled = Some((Instant::now() - SAMPLE, 0));
        // 1 MiB messages: 64 of them fit, below the floor, so the floor holds.
        assert_eq!(p.update(true, 1_000_000, 10_000, 10_000 << 20), None);
        assert_eq!(p.window, 100);
    }

    #[test]
    fn a_slow_sample_halves_the_window_at_most() {
        let mut p = Pace::new(100);
        p.window = 10_000;
        p.sampled = Some((Instant::now() - SAMPLE, 0));
        assert_eq!(p.update(true, 0, 50_000, 800_000), Some(5_000));
    }
}
