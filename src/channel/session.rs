//! What a connection lends its channels while they handle a frame: identity, the vhost,
//! the outgoing buffer, and the per-connection batches flushed once per read.

use std::sync::Arc;

use amq_protocol::protocol::AMQPClass;

use crate::access::Perm;
use crate::broker::Broker;
use crate::error::AmqpError;
use crate::event::EventTx;
use crate::message::Message;
use crate::protocol::method;
use crate::protocol::outbuf::OutBuf;
use crate::queue::{QueueCmd, QueueHandle};
use crate::vhost::Vhost;

/// Client capabilities announced in connection.start-ok that change what we send.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCaps {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

pub struct Session {
    pub conn_id: u64,
    pub broker: Arc<Broker>,
    pub vhost: Arc<Vhost>,
    pub user: String,
    pub frame_max: u32,
    pub caps: ClientCaps,
    /// Where queues send deliveries and notifications for this connection.
    pub events: EventTx,
    /// Notified by the message store when what this connection persisted is on disk:
    /// publisher confirms waiting for it may go out.
    pub store_synced: Arc<tokio::sync::Notify>,
    pub out: OutBuf,
    /// Exclusive queues this connection declared: deleted when it closes.
    pub exclusive_queues: Vec<Arc<QueueHandle>>,
    /// Messages routed during this read, per queue, sent as one command each at flush.
    pub publishes: PublishBatch,
    /// Channels that have publisher confirms to send at flush.
    pub confirms_due: Vec<u16>,
    /// The connection has published: resource alarms block it (see `alarm.rs`).
    pub published: bool,
    /// Message counts of this read, added to the broker's totals at flush.
    pub tally: crate::metrics::Tally,
}

impl Session {
    /// `perm` access for this connection's user to a resource in its vhost.
    pub fn authorize(&self, kind: &str, name: &str, perm: Perm) -> Result<(), AmqpError> {
        self.broker
            .access
            .check(&self.user, &self.vhost.name, kind, name, perm)
    }

    /// Topic permission on a routing key, if `exchange` is a topic exchange.
    pub fn authorize_topic(&self, exchange: &str, key: &str, perm: Perm) -> Result<(), AmqpError> {
        if self.vhost.exchange_kind(exchange) != Some(crate::exchange::ExchangeKind::Topic) {
            return Ok(());
        }
        self.broker
            .access
            .check_topic(&self.user, &self.vhost.name, exchange, key, perm)
    }

    /// Queue a method frame.
    pub fn send(&mut self, channel: u16, class: AMQPClass) {
        method::encode(&mut self.out.buf, channel, &class);
    }
}

/// Per-queue batches of routed messages. Batching turns N publishes to a queue into one
/// mailbox send and one wake-up of its actor.
#[derive(Default)]
pub struct PublishBatch {
    pending: Vec<(Arc<QueueHandle>, Vec<Arc<Message>>)>,
    /// Queues a flush left above their flow high mark: the connection stops reading
    /// until they drain (see `queue/flow.rs`). Taken by the connection after each read.
    pub throttled: Vec<Arc<QueueHandle>>,
}

impl PublishBatch {
    pub fn push(&mut self, queue: &Arc<QueueHandle>, message: Arc<Message>) {
        match self.pending.iter_mut().find(|(q, _)| q.id == queue.id) {
            Some((_, msgs)) => msgs.push(message),
            None => self.pending.push((queue.clone(), vec![message])),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hand every batch to its queue. Must run before anything that must observe these
    /// messages (a later get, purge, declare-ok count...) and at the end of each read.
    pub fn flush(&mut self) {
        for (q, mut msgs) in self.pending.drain(..) {
            let cmd = if msgs.len() == 1 {
                QueueCmd::Publish(msgs.pop().expect("one message"))
            } else {
                QueueCmd::PublishBatch(msgs)
            };
            if let (true, true) = q.publish(cmd) {
                self.throttled.push(q);
            }
        }
    }
}
