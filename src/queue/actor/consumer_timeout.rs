//! The consumer timeout (`amqp.consumer_timeout`, `x-consumer-timeout`): deliveries
//! left unacknowledged too long. Each unacked delivery records its deadline (one clock
//! read per delivery batch); a scan of the unacked map, due at most once a second while
//! deliveries can time out, finds the late ones. Nothing is added per message beyond that
//! field, and memory stays what the unacked map holds.

use std::time::{Duration, Instant};

use super::super::Settle;
use super::QueueActor;
use crate::error::AmqpError;
use crate::event::ConnEvent;

impl QueueActor {
    /// Deliveries left unacknowledged past the consumer timeout. Warren's default
    /// requeues each such delivery: its channel stays open and is told
    /// ([`ConnEvent::DeliveryTimedOut`]) so that the client's late ack of that delivery
    /// tag is accepted and ignored, and the channel's prefetch credit comes back. With `amqp.consumer_timeout_action = "close_channel"` the consumer's
    /// channel is closed as RabbitMQ does, which requeues everything it had unacked.
    pub(super) fn consumer_timeouts(&mut self, now: Instant) {
        let timeout_ms = self.args.consumer_timeout.unwrap_or(0);
        let mut requeue = Vec::new();
        let mut closed: Vec<u64> = Vec::new();
        let queue_id = self.handle.upgrade().map(|h| h.id).unwrap_or_default();
        let mut late: Vec<(u64, Option<u64>)> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.timeout_at.is_some_and(|at| at <= now))
            .map(|(id, u)| (*id, u.consumer_uid))
            .collect();
        late.sort_unstable();
        for (id, consumer_uid) in late {
            let consumer = consumer_uid.and_then(|c| self.consumers.by_uid(c));
            match consumer {
                Some(c) if self.args.timeout_closes_channel => {
                    if !closed.contains(&c.channel_uid) {
                        closed.push(c.channel_uid);
                        tracing::warn!(
                            queue = %self.name,
                            channel = c.channel,
                            timeout_ms,
                            "consumer timeout: closing the channel"
                        );
                        let _ = c.events.send(ConnEvent::CloseChannel {
                            channel_uid: c.channel_uid,
                            error: AmqpError::precondition_failed(format!(
                                "delivery acknowledgement on channel {} timed out. Timeout value \
                                 used: {timeout_ms} ms. This timeout value can be configured, see \
                                 consumers doc guide to learn more",
                                c.channel
                            ))
                            .into(),
                        });
                    }
                    // Once is enough: the channel's teardown requeues it.
                    if let Some(u) = self.unacked.get_mut(&id) {
                        u.timeout_at = None;
                    }
                }
                c => {
                    tracing::warn!(
                        queue = %self.name,
                        timeout_ms,
                        "consumer timeout: delivery not acknowledged in time, requeued"
                    );
                    // Sent before any redelivery of it, on the same connection queue.
                    if let Some(c) = c {
                        let _ = c.events.send(ConnEvent::DeliveryTimedOut {
                            channel_uid: c.channel_uid,
                            queue_id,
                            msg_id: id,
                        });
                    }
                    requeue.push(id);
                }
            }
        }
        if !requeue.is_empty() {
            self.settle(None, requeue, Settle::Requeue);
        }
        self.timeout_scan = None;
        if self.unacked.values().any(|u| u.timeout_at.is_some()) {
            self.arm_timeout_scan();
        }
    }

    /// Deliveries that can time out were made: make sure a scan is due, one timeout
    /// period from now but at most a second (so a delivery is caught at most that late).
    pub(super) fn arm_timeout_scan(&mut self) {
        if let (Some(ms), None) = (self.args.consumer_timeout, self.timeout_scan) {
            self.timeout_scan = Some(Instant::now() + Duration::from_millis(ms.min(1000)));
        }
    }

    /// When a delivery made now times out, if the queue has a consumer timeout.
    pub(super) fn timeout_deadline(&self) -> Option<Instant> {
        self.args
            .consumer_timeout
            .map(|ms| Instant::now() + Duration::from_millis(ms))
    }
}
