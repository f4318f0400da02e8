//! Per-queue back-pressure (RabbitMQ's credit flow, in spirit): one fast publisher must
//! not grow a queue's mailbox without bound while the actor falls behind.
//!
//! Senders add a batch's message count to [`Inflow::queued`] when they send it, and the
//! actor subtracts it when it takes the batch: one atomic add per batch on each side,
//! nothing per message. A connection whose send leaves a queue above the high mark stops
//! reading its socket (its state shows `flow`) until the queue's mailbox falls below the
//! low mark; the actor signals that crossing on [`Inflow::drained`], so nobody polls.
//!
//! RabbitMQ's credit_flow grants 400 messages per sender and process hop and gives 200
//! more after 200 are processed (high 400, low 200). warren hands a whole socket read
//! (up to 64 KiB: a thousand small messages or more) to a queue in one batch, so marks
//! that small would pause nearly every read; the defaults (20 000 / 10 000, same 2:1
//! ratio) bound a mailbox to a few MB of small messages, i.e. milliseconds of actor
//! work, while a queue that keeps up never makes its publishers wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// The marks, from `amqp.flow_high_messages` and `amqp.flow_low_messages`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowMarks {
    /// Above this many messages in a queue's mailbox its publishers stop being read
    /// (0: flow control off).
    pub high: u64,
    /// They are read again once the mailbox is below this.
    pub low: u64,
}

/// A queue's mailbox depth, shared by its handle (senders) and its actor.
#[derive(Debug, Default)]
pub struct Inflow {
    queued: AtomicU64,
    marks: FlowMarks,
    /// Set when the actor stopped: its mailbox will never drain, nobody waits on it.
    closed: AtomicBool,
    drained: Notify,
}

impl Inflow {
    pub fn new(marks: FlowMarks) -> Inflow {
        Inflow {
            marks: FlowMarks {
                high: marks.high,
                low: marks.low.min(marks.high),
            },
            ..Default::default()
        }
    }

    /// Messages sent to the queue that its actor has not taken yet.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// A sender put `n` messages in the mailbox: true if that left it above the high mark.
    pub(super) fn sent(&self, n: u64) -> bool {
        let after = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        self.marks.high > 0 && after > self.marks.high
    }

    /// The actor took `n` messages out of the mailbox.
    pub(super) fn taken(&self, n: u64) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        let after = before.saturating_sub(n);
        // Only the one subtraction that crosses the low mark wakes the waiters: the
        // Notify's lock is taken once per drain, not once per batch.
        if before >= self.marks.low && after < self.marks.low {
            self.drained.notify_waiters();
        }
    }

    /// The actor stopped (queue deleted): release anyone waiting for it.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.drained.notify_waiters();
    }

    /// Wait until the mailbox is below the low mark (or the queue is gone). Cancel-safe.
    pub async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the check, so a crossing between the two is not missed.
            notified.as_mut().enable();
            if self.queued() < self.marks.low || self.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_resumes_once_the_mailbox_is_below_the_low_mark() {
        let f = std::sync::Arc::new(Inflow::new(FlowMarks { high: 10, low: 5 }));
        assert!(!f.sent(10));
        assert!(f.sent(1));
        let w = tokio::spawn({
            let f = f.clone();
            async move { f.wait_drained().await }
        });
        tokio::task::yield_now().await;
        f.taken(6); // 5 left: not below the low mark yet
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!w.is_finished());
        f.taken(1);
        tokio::time::timeout(std::time::Duration::from_secs(2), w)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn high_mark_zero_turns_flow_control_off() {
        let f = Inflow::new(FlowMarks::default());
        assert!(!f.sent(1_000_000));
    }
}
