//! Queues. Each queue is one tokio task (the actor in `actor.rs`) that alone owns its
//! messages, consumers and unacknowledged deliveries; everyone else holds a
//! [`QueueHandle`] and sends it [`QueueCmd`]s. Deliveries flow back to connections as
//! [`ConnEvent`](crate::event::ConnEvent)s.
//!
//! RabbitMQ's queue extensions live beside the core, one concept per file: `args`
//! (validation and parsing of x-arguments), `ready` (the ready list, with priority
//! levels), `admission` (reject-publish), `dead_letter` (x-death and republishing),
//! `dispatch` (consumer priorities, single active consumer), `quorum` (delivery count and
//! limit), `flow` (the mailbox count behind publishers' back-pressure), `footprint` (the
//! memory estimate shown for a queue);
//! TTL and x-expires are timers in the actor.

mod actor;
pub mod admission;
pub mod args;
pub mod consumer;
pub mod dead_letter;
mod dispatch;
pub mod flow;
pub mod footprint;
mod pace;
mod quorum;
mod ready;
mod stored;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use amq_protocol::types::FieldTable;
use tokio::sync::{mpsc, oneshot};

pub use consumer::{ChannelLimiter, Consumer};

use admission::Admission;
use args::{Overflow, QueueArgs};

use crate::error::AmqpError;
use crate::event::EventTx;
use crate::message::Message;
use crate::store::Store;

/// What a channel does with delivered messages it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// nack/reject with requeue, or recovery: back to the queue, flagged redelivered.
    Requeue,
    /// nack/reject without requeue: dropped, or dead-lettered (reason `rejected`).
    Discard,
}

#[derive(Debug)]
pub struct GetOk {
    pub msg_id: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Messages left ready after this one.
    pub remaining: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub messages_ready: u32,
    pub messages_unacked: u32,
    pub consumers: u32,
    /// Ready messages whose bodies are only on disk (see `ready.rs`).
    pub messages_paged_out: u32,
}

/// One consumer as listings show it (rabbitmqctl list_consumers).
#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    pub tag: Arc<str>,
    /// The connection and channel number the consumer belongs to.
    pub conn_id: u64,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch in effect (0 = none).
    pub prefetch: u32,
    pub arguments: FieldTable,
    /// Gets deliveries: every consumer, or on a single-active-consumer queue only the
    /// first (the others wait their turn).
    pub active: bool,
    /// RabbitMQ's `activity_status`: `up`, or `single_active` / `waiting` on a
    /// single-active-consumer queue.
    pub activity_status: &'static str,
}

pub enum QueueCmd {
    Publish(Arc<Message>),
    PublishBatch(Vec<Arc<Message>>),
    Consume {
        consumer: Consumer,
        reply: oneshot::Sender<Result<(), AmqpError>>,
    },
    /// Client basic.cancel; the queue answers with [`ConnEvent::CancelOk`](crate::event::ConnEvent::CancelOk) on `events`.
    Cancel {
        channel_uid: u64,
        tag: Arc<str>,
        nowait: bool,
        events: EventTx,
    },
    Settle {
        /// The settling channel (see the actor's `settle`).
        channel_uid: u64,
        ids: Vec<u64>,
        how: Settle,
    },
    /// A channel closed: drop its consumers and requeue what it had unacked. `done`,
    /// when given, is answered once that happened (and an auto-delete queue is gone).
    ChannelDown {
        channel_uid: u64,
        done: Option<oneshot::Sender<()>>,
    },
    /// basic.recover: requeue everything this channel has unacked.
    Recover {
        channel_uid: u64,
        reply: oneshot::Sender<()>,
    },
    Get {
        channel_uid: u64,
        no_ack: bool,
        reply: oneshot::Sender<Option<GetOk>>,
    },
    Purge {
        reply: oneshot::Sender<u32>,
    },
    /// queue.declare's counts: asking counts as use for `x-expires`, and drops what
    /// has expired first (rabbit_amqqueue_process's `stat`).
    Stats {
        reply: oneshot::Sender<QueueStats>,
    },
    /// Listings: the sizes the gauges would show once everything sent before is
    /// handled. Asking changes nothing (not even the `x-expires` clock).
    Sizes {
        reply: oneshot::Sender<crate::metrics::QueueSizes>,
    },
    /// warrenctl list_consumers: the queue's consumers as they are now. Unlike
    /// `Stats`, asking does not count as use for `x-expires`.
    Consumers {
        reply: oneshot::Sender<Vec<ConsumerInfo>>,
    },
    Delete {
        if_unused: bool,
        if_empty: bool,
        reply: oneshot::Sender<Result<u32, AmqpError>>,
    },
    /// Credit may have come back (channel.flow on, global prefetch released): try again.
    Kick,
    /// The queue was redeclared without asking for its counts (nowait): it counts as
    /// used for `x-expires`.
    Touch,
    /// A reject-publish-dlx queue refused this message at admission: dead-letter it
    /// (reason `maxlen`).
    Refused(Arc<Message>),
    /// A policy change: the arguments the queue runs with from now on (its declared
    /// ones merged with the policies that match; see `policy.rs`).
    ArgsChanged(Box<QueueArgs>),
}

/// The queue as everyone but its actor sees it: identity, declared properties, and
/// the mailbox.
#[derive(Debug)]
pub struct QueueHandle {
    /// Unique across the broker's lifetime: tells a re-created queue from the old one.
    pub id: u64,
    pub name: Arc<str>,
    pub vhost: Arc<str>,
    pub durable: bool,
    /// The connection that declared an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The durable queue's id in the message store; persistent messages routed here are
    /// stored before they are confirmed.
    pub store_qid: Option<u64>,
    /// Set for reject-publish queues with a length limit: publishers reserve room here
    /// before enqueueing (see `admission.rs`). Set once, at creation or by the actor
    /// when a policy first asks for reject-publish; a policy turning it off disables it.
    admission: OnceLock<Arc<Admission>>,
    tx: mpsc::UnboundedSender<QueueCmd>,
    /// The lane for settlements (see [`Inbox`]).
    urgent: mpsc::UnboundedSender<QueueCmd>,
    /// Counts for monitoring, kept current by the actor.
    pub gauges: Arc<crate::metrics::QueueGauges>,
    /// Messages in the mailbox not yet taken by the actor: publishers' back-pressure
    /// (see `flow.rs`).
    pub inflow: Arc<flow::Inflow>,
}

/// A queue actor's mailbox: two lanes. Settlements (acks, nacks, rejects) and credit
/// kicks have their own lane, always emptied before the other one, so a consumer's acks
/// are never stuck behind a flood of publishes (which would starve it of prefetch credit
/// while the queue grows). Everything else keeps its order in the main lane; since the
/// settlement lane is emptied first, a command never overtakes a settlement sent before it.
pub(crate) struct Inbox {
    urgent: mpsc::UnboundedReceiver<QueueCmd>,
    main: mpsc::UnboundedReceiver<QueueCmd>,
}

impl Inbox {
    /// The next command; `None` once the queue's handle is gone.
    pub(crate) async fn recv(&mut self) -> Option<QueueCmd> {
        if let Ok(cmd) = self.urgent.try_recv() {
            return Some(cmd);
        }
        tokio::select! {
            biased;
            cmd = self.urgent.recv() => cmd,
            cmd = self.main.recv() => cmd,
        }
    }

    /// Refuse further commands (the actor is stopping).
    pub(crate) fn close(&mut self) {
        self.urgent.close();
        self.main.close();
    }

    pub(crate) fn try_recv(&mut self) -> Option<QueueCmd> {
        self.urgent
            .try_recv()
            .ok()
            .or_else(|| self.main.try_recv().ok())
    }
}

/// How many messages a command puts in the mailbox's flow count.
pub(crate) fn publish_count(cmd: &QueueCmd) -> u64 {
    match cmd {
        QueueCmd::Publish(_) => 1,
        QueueCmd::PublishBatch(ms) => ms.len() as u64,
        _ => 0,
    }
}

static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

pub struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The queue's id in the message store (durable queues of a broker with a store).
    pub store_qid: Option<u64>,
    /// Messages found in the store at start-up, in order.
    pub recovered: Vec<crate::store::Recovered>,
    /// What the queue runs with: `arguments` merged with policies and broker defaults.
    pub queue_args: QueueArgs,
}

/// What a queue asks of the vhost that holds it. A queue is handed a `Weak` of this and
/// of nothing else above it (the vhost implements it), so the queue layer looks only
/// down: routing its dead letters and leaving the vhost are the two ways up it has.
pub trait Host: Send + Sync {
    /// Route by `exchange` and routing `keys` into `out`; false if the exchange is gone.
    fn route(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<QueueHandle>>,
    ) -> bool;
    /// The data directory's store, where the broker has one.
    fn store(&self) -> Option<Arc<Store>>;
    /// Take `queue` out of the vhost (auto-delete, x-expires).
    fn remove_queue(&self, queue: &Arc<QueueHandle>);
    /// Keep a message the queue cannot pass on (see [`Store::set_aside`]).
    fn set_aside(&self, queue: &str, message: &Message);
}

impl QueueHandle {
    /// Start a queue's actor. Must run inside the tokio runtime.
    pub fn spawn(spec: QueueSpec, host: Weak<dyn Host>, vhost_name: Arc<str>) -> Arc<QueueHandle> {
        let (tx, main) = mpsc::unbounded_channel();
        let (urgent_tx, urgent) = mpsc::unbounded_channel();
        let rx = Inbox { urgent, main };
        let args = spec.queue_args;
        let admission = OnceLock::new();
        if args.admission_control() {
            let _ = admission.set(Arc::new(Admission::new(
                args.max_length,
                args.max_length_bytes,
                args.overflow == Overflow::RejectPublishDlx,
            )));
        }
        let handle = Arc::new(QueueHandle {
            id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(spec.name.as_str()),
            vhost: vhost_name,
            durable: spec.durable,
            exclusive_owner: spec.exclusive_owner,
            auto_delete: spec.auto_delete,
            arguments: spec.arguments,
            store_qid: spec.store_qid,
            admission,
            tx,
            urgent: urgent_tx,
            gauges: Arc::default(),
            inflow: Arc::new(flow::Inflow::new(args.flow)),
        });
        // Every queue of a broker with a store can page out; durable ones also journal.
        let store = host
            .upgrade()
            .and_then(|h| h.store())
            .map(|s| stored::StoreLink::new(s.messages.clone(), spec.store_qid));
        actor::QueueActor::start(&handle, args, host, store, spec.recovered, rx);
        handle
    }

    /// The reject-publish admission counter, if this queue has one in effect.
    pub fn admission(&self) -> Option<&Admission> {
        self.admission.get().map(|a| &**a).filter(|a| a.enabled())
    }

    /// Send a command; false if the queue is gone (deleted), which callers may ignore.
    pub fn send(&self, cmd: QueueCmd) -> bool {
        match cmd {
            QueueCmd::Settle { .. } | QueueCmd::Kick => self.urgent.send(cmd).is_ok(),
            QueueCmd::Publish(_) | QueueCmd::PublishBatch(_) => self.publish(cmd).0,
            _ => self.tx.send(cmd).is_ok(),
        }
    }

    /// Send a Publish or PublishBatch, counting it in the mailbox (one atomic add per
    /// batch): (sent, the mailbox is now above the flow high mark).
    pub fn publish(&self, cmd: QueueCmd) -> (bool, bool) {
        let over = self.inflow.sent(publish_count(&cmd));
        (self.tx.send(cmd).is_ok(), over)
    }

    /// Ask the queue something and wait for the answer; `None` if it was deleted.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> QueueCmd) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        if !self.send(make(reply)) {
            return None;
        }
        rx.await.ok()
    }

    /// RabbitMQ's name for it in error texts: `queue 'q' in vhost '/'`.
    pub fn describe(&self) -> String {
        crate::error::rs("queue", &self.name, &self.vhost)
    }
}
