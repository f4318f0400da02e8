//! Consumers as a queue sees them, and the channel-wide limiter they share. What a queue
//! sends back to a consumer's connection is in [`crate::event`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use amq_protocol::types::FieldTable;

use crate::event::EventTx;

/// Channel-wide state that queues consult before each delivery: client flow control
/// (channel.flow), the connection's socket backing up (the client is not reading what
/// it is sent), and the prefetch shared by all the channel's consumers
/// (basic.qos global=true). The channel owns it; queues only read it and take credit.
#[derive(Debug)]
pub struct ChannelLimiter {
    active: AtomicBool,
    /// The connection's writer's congestion flag (see connection/writer.rs).
    congested: Arc<AtomicBool>,
    global_prefetch: AtomicU32,
    in_flight: AtomicU32,
}

impl Default for ChannelLimiter {
    fn default() -> Self {
        ChannelLimiter::on(Arc::default())
    }
}

impl ChannelLimiter {
    /// A channel's limiter on a connection whose writer sets `congested`.
    pub fn on(congested: Arc<AtomicBool>) -> ChannelLimiter {
        ChannelLimiter {
            active: AtomicBool::new(true),
            congested,
            global_prefetch: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }

    /// Whether deliveries may go out now: not stopped by channel.flow, and the socket
    /// not backed up.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) && !self.congested.load(Ordering::Acquire)
    }

    pub fn global_prefetch(&self) -> u32 {
        self.global_prefetch.load(Ordering::Acquire)
    }

    pub fn set_global_prefetch(&self, n: u32) {
        self.global_prefetch.store(n, Ordering::Release);
    }

    /// Whether the channel is below its global prefetch (always, without one).
    pub fn has_room(&self) -> bool {
        let limit = self.global_prefetch.load(Ordering::Acquire);
        limit == 0 || self.in_flight.load(Ordering::Acquire) < limit
    }

    /// Take one unit of channel-wide credit for an acknowledged delivery.
    pub fn try_acquire(&self) -> bool {
        let limit = self.global_prefetch.load(Ordering::Acquire);
        if limit == 0 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Return credit; true if the channel was at its global limit (queues may be waiting).
    pub fn release(&self, n: u32) -> bool {
        if n == 0 {
            return false;
        }
        let before = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
                Some(x.saturating_sub(n))
            })
            .unwrap_or(0);
        let limit = self.global_prefetch.load(Ordering::Acquire);
        limit != 0 && before >= limit
    }
}

#[derive(Debug)]
pub struct Consumer {
    /// Unique across the broker; names the consumer in acks (tags are per channel).
    pub uid: u64,
    pub tag: Arc<str>,
    pub channel_uid: u64,
    pub channel: u16,
    pub conn_id: u64,
    pub events: EventTx,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false in effect at consume time); 0 = none.
    pub prefetch: u32,
    pub limiter: Arc<ChannelLimiter>,
    pub arguments: FieldTable,
    /// `x-priority` from the consume arguments (0 without): higher priorities receive
    /// first (see `dispatch.rs`).
    pub priority: i64,
    /// Unacknowledged deliveries to this consumer; owned by the queue.
    pub in_flight: u32,
}

impl Consumer {
    /// Whether this consumer can take one more message now; takes the credit if so.
    pub(crate) fn try_take(&mut self) -> bool {
        if !self.limiter.is_active() {
            return false;
        }
        if self.no_ack {
            // A no-ack delivery is never acked, so it takes no credit; but while the
            // channel is at its global prefetch it waits too, as RabbitMQ's limiter
            // refuses every delivery then (rabbit_limiter's can_send), until acks of
            // the channel's other consumers free credit.
            return self.limiter.has_room();
        }
        if self.prefetch != 0 && self.in_flight >= self.prefetch {
            return false;
        }
        if !self.limiter.try_acquire() {
            return false;
        }
        self.in_flight += 1;
        true
    }

    /// Give back the credit [`Consumer::try_take`] took, when there was nothing to
    /// deliver after all (the messages had expired).
    pub(crate) fn untake(&mut self) {
        if self.no_ack {
            return;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.limiter.release(1);
    }
}
