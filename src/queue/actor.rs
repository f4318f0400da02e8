//! The queue actor: the single owner of a queue's messages, consumers and unacked
//! deliveries. It handles a burst of commands, then delivers what consumer credit allows,
//! batching deliveries per connection so each connection is woken once per burst.
//!
//! Time-based rules (message TTL, `x-expires`) are one timer: the actor sleeps until the
//! earliest deadline only when it has one, so a queue without them never looks at a clock.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::args::{Overflow, QueueArgs};
use super::dead_letter::{self, DeadLetterTarget, Reason};
use super::dispatch::Consumers;
use super::pace::Pace;
use super::quorum;

mod consumer_timeout;
mod reconfigure;
use super::ready::{Entry, Pager, Ready, Restored};
use super::stored::{StoreLink, Stored};
use super::{
    Consumer, ConsumerInfo, GetOk, Host, Inbox, QueueCmd, QueueHandle, QueueStats, Settle,
};
use crate::error::AmqpError;
use crate::event::{ConnEvent, Delivery, EventTx};
use crate::message::Message;
use crate::metrics::{QueueCounts, QueueSizes};
use crate::protocol::properties;
use crate::store::Recovered;
use crate::util::IdHash;

/// Work (commands; a published message counts as one) handled before delivering, and
/// deliveries made before yielding: bounds the time one busy queue holds a worker thread
/// and keeps deliveries going while publishes pour in.
const BURST: usize = 256;
const DELIVER_BUDGET: usize = 512;

struct Unacked {
    /// Kept whole so a requeue restores its place, priority and expiry.
    entry: Entry,
    channel_uid: u64,
    /// The consumer whose credit it holds (None for basic.get).
    consumer_uid: Option<u64>,
    /// When the consumer timeout fires for it (None: no timeout).
    timeout_at: Option<Instant>,
}

/// For the memory estimate (`footprint.rs`): an unacked map entry, and the actor.
pub(super) const UNACKED_ENTRY_BYTES: usize = std::mem::size_of::<(u64, Unacked)>();
pub(super) const ACTOR_BYTES: usize = std::mem::size_of::<QueueActor>();

pub(super) struct QueueActor {
    handle: Weak<QueueHandle>,
    name: Arc<str>,
    /// The vhost, as far as a queue may see it.
    host: Weak<dyn Host>,
    auto_delete: bool,
    args: QueueArgs,
    dead_letter: Option<DeadLetterTarget>,
    /// Ready messages, by priority then id (see `ready.rs`).
    ready: Ready,
    unacked: HashMap<u64, Unacked, IdHash>,
    /// In delivery order: priorities, round-robin, single active consumer.
    consumers: Consumers,
    next_id: u64,
    /// Auto-delete applies only once the queue has had a consumer.
    had_consumer: bool,
    deleted: bool,
    /// Set once a message with an expiry is enqueued (or the queue has a TTL): from then
    /// on the head's expiry is a timer deadline and deliveries check the clock.
    may_expire: bool,
    /// `x-expires`: when the queue, unused until then, deletes itself.
    idle_deadline: Option<Instant>,
    /// The link to the message store (journaling for a durable queue; paging for all).
    store: Option<StoreLink>,
    /// When to look for unacked deliveries past their consumer timeout; set while
    /// there are deliveries that can time out. A periodic scan rather than a per-delivery
    /// timer: it costs nothing per message and its memory is the unacked map's.
    timeout_scan: Option<Instant>,
    /// Messages wait to be paged out until the store has written them: when the queue
    /// goes quiet before that, this timer comes back for them.
    page_retry: Option<Instant>,
    /// Shared with the handle: where this actor publishes its counts.
    gauges: Arc<crate::metrics::QueueGauges>,
    /// The mailbox's flow count, shared with the handle (see `flow.rs`).
    inflow: Arc<super::flow::Inflow>,
    /// message_stats since the queue was created: plain integers bumped per message,
    /// published into `gauges.counts` once per burst (no atomic per message).
    counts: QueueCounts,
    /// Bytes of the unacked messages' bodies (message_bytes_unacknowledged).
    unacked_bytes: u64,
    /// Sizes the ready list's resident window by the consumers' pace.
    pace: Pace,
    /// Listings waiting for this burst's sizes (`QueueCmd::Sizes`): answered with the
    /// gauges, once the burst's deliveries and page-outs are done.
    sizes_asked: Vec<tokio::sync::oneshot::Sender<QueueSizes>>,
}

/// How soon a quiet queue comes back for messages still waiting to be paged out.
const PAGE_RETRY: Duration = Duration::from_millis(20);

/// How much work a command is, for bounding a burst.
fn weight(cmd: &QueueCmd) -> usize {
    match cmd {
        QueueCmd::PublishBatch(ms) => ms.len(),
        _ => 1,
    }
}

/// What woke the actor.
enum Wake {
    Cmd(Option<QueueCmd>),
    Timer,
}

impl QueueActor {
    pub(super) fn start(
        handle: &Arc<QueueHandle>,
        args: QueueArgs,
        host: Weak<dyn Host>,
        store: Option<StoreLink>,
        recovered: Vec<Recovered>,
        rx: Inbox,
    ) {
        let dead_letter = args
            .dead_letter_exchange
            .clone()
            .map(|exchange| DeadLetterTarget {
                exchange,
                routing_key: args.dead_letter_routing_key.clone(),
            });
        let single_active = args.single_active_consumer;
        let mut actor = QueueActor {
            handle: Arc::downgrade(handle),
            name: handle.name.clone(),
            host,
            auto_delete: handle.auto_delete,
            ready: Ready::new(
                args.max_priority,
                handle.admission.get().cloned(),
                store
                    .as_ref()
                    .map(|s| Pager::new(s.store.clone(), s.tokens.clone())),
            ),
            may_expire: args.message_ttl.is_some(),
            idle_deadline: None,
            args,
            dead_letter,
            unacked: HashMap::default(),
            consumers: Consumers::new(single_active),
            next_id: 1,
            had_consumer: false,
            deleted: false,
            gauges: handle.gauges.clone(),
            inflow: handle.inflow.clone(),
            counts: QueueCounts::default(),
            unacked_bytes: 0,
            pace: Pace::new(store.as_ref().map_or(usize::MAX, |s| s.store.resident())),
            store,
            timeout_scan: None,
            page_retry: None,
            sizes_asked: Vec::new(),
        };
        actor.touch();
        for r in recovered {
            actor.restore(r);
        }
        // Listings and metrics see what was recovered before the first command arrives.
        actor.publish_gauges();
        tokio::spawn(actor.run(rx));
    }

    async fn run(mut self, mut rx: Inbox) {
        // One timer for the actor's life, moved only when the deadline changes: a busy
        // queue with a steady deadline (the consumer-timeout scan, a TTL head) does not
        // register a timer on every wake.
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let wake = match self.deadline() {
                None => Wake::Cmd(rx.recv().await),
                Some(at) => {
                    if armed != Some(at) {
                        timer.as_mut().reset(at.into());
                        armed = Some(at);
                    }
                    tokio::select! {
                        cmd = rx.recv() => Wake::Cmd(cmd),
                        _ = &mut timer => {
                            armed = None;
                            Wake::Timer
                        }
                    }
                }
            };
            match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(cmd)) => {
                    let mut work = weight(&cmd);
                    self.handle(cmd);
                    self.handle_burst(&mut rx, &mut work);
                }
                Wake::Timer => self.on_timer(),
            }
            let handed_out = self.counts.deliver_get();
            while !self.deleted && self.deliver() {
                // More could go out but the budget ran out: let others run, then go on
                // (commands that arrived meanwhile are handled first).
                tokio::task::yield_now().await;
                self.handle_burst(&mut rx, &mut 0);
            }
            // After deliveries: what is still deep in the queue now pages out.
            if let Some(window) = self.pace.update(
                !self.consumers.is_empty(),
                self.counts.deliver_get(),
                self.ready.len(),
                self.ready.bytes(),
            ) {
                self.ready.set_window(window);
            }
            self.ready.page_out();
            self.page_retry = match (self.ready.paging_pending(), self.page_retry) {
                (false, _) => None,
                (true, Some(at)) if at > Instant::now() => Some(at),
                (true, _) => Some(Instant::now() + PAGE_RETRY),
            };
            self.flush_store();
            self.publish_gauges();
            if self.deleted {
                break;
            }
            // Deliveries just woke the consumers' connection tasks, most likely onto this
            // worker: let them write the messages out (and read the acks that give the
            // consumers more credit) before the next burst of publishes. Without this, a
            // queue whose mailbox never empties runs until tokio's budget stops it, its
            // consumers wait for credit meanwhile, and it grows while they starve.
            if self.counts.deliver_get() != handed_out {
                tokio::task::yield_now().await;
            }
        }
        self.flush_store();
        rx.close();
        self.inflow.close();
        tracing::debug!(queue = %self.name, "queue actor stopped");
    }

    /// Handle what is waiting, up to [`BURST`] units of work (a message published is one
    /// unit), so that a flood of publishes can't keep deliveries (and the consumers whose
    /// acks would let more go out) waiting.
    fn handle_burst(&mut self, rx: &mut Inbox, work: &mut usize) {
        while *work < BURST {
            let Some(cmd) = rx.try_recv() else { break };
            *work += weight(&cmd);
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: QueueCmd) {
        let taken = super::publish_count(&cmd);
        if taken > 0 {
            self.inflow.taken(taken);
        }
        if self.deleted {
            // Late commands to a deleted queue: answer the ones that wait for a reply.
            match cmd {
                QueueCmd::Cancel {
                    channel_uid,
                    tag,
                    nowait,
                    events,
                } => {
                    let _ = events.send(ConnEvent::CancelOk {
                        channel_uid,
                        consumer_tag: tag,
                        nowait,
                    });
                }
                QueueCmd::Consume { reply, .. } => {
                    let _ = reply.send(Err(AmqpError::not_found(self.describe())));
                }
                _ => {}
            }
            return;
        }
        match cmd {
            QueueCmd::Publish(m) => self.enqueue(m),
            QueueCmd::PublishBatch(ms) => ms.into_iter().for_each(|m| self.enqueue(m)),
            QueueCmd::Consume { consumer, reply } => {
                let result = self.add_consumer(consumer);
                let _ = reply.send(result);
            }
            QueueCmd::Cancel {
                channel_uid,
                tag,
                nowait,
                events,
            } => {
                self.consumers
                    .retain(|c| !(c.channel_uid == channel_uid && c.tag == tag));
                let _ = events.send(ConnEvent::CancelOk {
                    channel_uid,
                    consumer_tag: tag,
                    nowait,
                });
                self.consumers_changed();
            }
            QueueCmd::Settle {
                channel_uid,
                ids,
                how,
            } => self.settle(Some(channel_uid), ids, how),
            QueueCmd::ChannelDown { channel_uid, done } => {
                self.consumers.retain(|c| c.channel_uid != channel_uid);
                self.requeue_channel(channel_uid);
                self.consumers_changed();
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            QueueCmd::Recover { channel_uid, reply } => {
                self.requeue_channel(channel_uid);
                let _ = reply.send(());
            }
            QueueCmd::Get {
                channel_uid,
                no_ack,
                reply,
            } => {
                self.touch();
                let mut expired = Vec::new();
                let got = self.ready.pop_live(self.now(), &mut expired).map(|e| {
                    self.counts.delivery(true, no_ack, e.redelivered);
                    if let (Some(id), false) = (
                        e.stored.as_ref().and_then(|s| s.durable_id()),
                        e.redelivered,
                    ) {
                        self.mark_delivered(vec![id]);
                    }
                    let got = GetOk {
                        msg_id: e.id,
                        message: e.message.clone(),
                        redelivered: e.redelivered,
                        remaining: self.ready.len() as u32,
                    };
                    if !no_ack {
                        // basic.get deliveries have no consumer to time out (and no
                        // connection to tell): only consumers' deliveries do.
                        let timeout_at = None;
                        self.unacked_bytes += e.message.body.len() as u64;
                        self.unacked.insert(
                            e.id,
                            Unacked {
                                entry: e,
                                channel_uid,
                                consumer_uid: None,
                                timeout_at,
                            },
                        );
                    }
                    got
                });
                self.counts.get_empty += got.is_none() as u64;
                let _ = reply.send(got);
                self.dead_letter(expired, Reason::Expired);
            }
            QueueCmd::Purge { reply } => {
                // Like RabbitMQ, purge removes ready messages only; unacked ones stay.
                let n = self.ready.drain() as u32;
                let _ = reply.send(n);
            }
            QueueCmd::Stats { reply } => {
                // Asked by queue.declare: a (re)declare counts as use for x-expires, and
                // the count must not include what has expired (rabbit_amqqueue_process
                // handles `stat` the same way).
                self.touch();
                if let Some(now) = self.now() {
                    self.expire(now);
                }
                self.ready.page_out();
                let _ = reply.send(self.stats());
            }
            QueueCmd::Sizes { reply } => self.sizes_asked.push(reply),
            QueueCmd::Consumers { reply } => {
                let single_active = self.consumers.single_active();
                let _ = reply.send(
                    self.consumers
                        .iter()
                        .enumerate()
                        .map(|(i, c)| ConsumerInfo {
                            tag: c.tag.clone(),
                            conn_id: c.conn_id,
                            channel: c.channel,
                            no_ack: c.no_ack,
                            exclusive: c.exclusive,
                            prefetch: c.prefetch,
                            arguments: c.arguments.clone(),
                            // With a single active consumer, the first delivers (see
                            // dispatch.rs `pick`).
                            active: !single_active || i == 0,
                            activity_status: match (single_active, i) {
                                (false, _) => "up",
                                (true, 0) => "single_active",
                                (true, _) => "waiting",
                            },
                        })
                        .collect(),
                );
            }
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                if if_unused && !self.consumers.is_empty() {
                    let _ = reply.send(Err(AmqpError::precondition_failed(format!(
                        "{} in use",
                        self.describe()
                    ))));
                } else if if_empty && !self.ready.is_empty() {
                    let _ = reply.send(Err(AmqpError::precondition_failed(format!(
                        "{} not empty",
                        self.describe()
                    ))));
                } else {
                    let n = self.ready.len() as u32;
                    self.shut_down();
                    let _ = reply.send(Ok(n));
                }
            }
            QueueCmd::Kick => {}
            QueueCmd::Touch => self.touch(),
            QueueCmd::Refused(m) => self.dead_letter_messages(vec![m], Reason::Maxlen),
            QueueCmd::ArgsChanged(args) => self.args_changed(*args),
        }
    }

    // ---- time: message TTL and x-expires ----

    /// The clock, for queues whose messages can expire (others never read it).
    fn now(&self) -> Option<Instant> {
        self.may_expire.then(Instant::now)
    }

    /// When the actor must wake up by itself, if ever.
    fn deadline(&self) -> Option<Instant> {
        let expiry = if self.may_expire {
            self.ready.next_expiry()
        } else {
            None
        };
        let idle = if self.consumers.is_empty() {
            self.idle_deadline
        } else {
            None
        };
        let timeout = self.timeout_scan;
        [expiry, idle, timeout, self.page_retry]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.may_expire {
            self.expire(now);
        }
        if self.timeout_scan.is_some_and(|at| at <= now) {
            self.consumer_timeouts(now);
        }
        if self.consumers.is_empty() && self.idle_deadline.is_some_and(|at| at <= now) {
            tracing::debug!(queue = %self.name, "queue expired (x-expires)");
            self.remove_from_vhost();
            self.shut_down();
        }
    }

    /// Drop (dead-letter) the expired messages at the head.
    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.ready.pop_expired(now, &mut expired);
        self.dead_letter(expired, Reason::Expired);
    }

    /// The queue was used: restart the x-expires countdown.
    fn touch(&mut self) {
        if let Some(ms) = self.args.expires {
            self.idle_deadline = Some(Instant::now() + Duration::from_millis(ms));
        }
    }

    fn consumers_changed(&mut self) {
        if self.consumers.is_empty() {
            self.touch();
        }
        self.maybe_auto_delete();
    }

    /// A message's lifetime in this queue: the lower of the queue's TTL and its own
    /// `expiration` (rabbit_basic:msg_ttl, rabbit_amqqueue_process:calculate_msg_expiry).
    fn ttl_of(&self, m: &Message) -> Option<u64> {
        self.ttl_with(properties::expiration_ms(&m.properties))
    }

    fn ttl_with(&self, expiration_ms: Option<u64>) -> Option<u64> {
        match (self.args.message_ttl, expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- dead-lettering ----

    fn dead_letter(&mut self, entries: Vec<Entry>, reason: Reason) {
        if entries.is_empty() {
            return;
        }
        self.dead_letter_messages(entries.into_iter().map(|e| e.message).collect(), reason);
    }

    fn dead_letter_messages(&mut self, messages: Vec<Arc<Message>>, reason: Reason) {
        let (Some(target), Some(host)) = (&self.dead_letter, self.host.upgrade()) else {
            return;
        };
        dead_letter::publish(&*host, target, &self.name, reason, &messages);
    }

    /// x-max-length / x-max-length-bytes exceeded (drop-head only: reject-publish queues
    /// are kept within bounds by admission, though requeues may overshoot).
    fn over_limit(&self) -> bool {
        self.args.overflow == Overflow::DropHead
            && (self
                .args
                .max_length
                .is_some_and(|m| self.ready.len() as u64 > m)
                || self
                    .args
                    .max_length_bytes
                    .is_some_and(|m| self.ready.bytes() > m))
    }

    fn describe(&self) -> String {
        let vhost = self
            .handle
            .upgrade()
            .map(|h| h.vhost.clone())
            .unwrap_or_else(|| Arc::from(""));
        crate::error::rs("queue", &self.name, &vhost)
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            messages_ready: self.ready.len() as u32,
            messages_unacked: self.unacked.len() as u32,
            consumers: self.consumers.len() as u32,
            messages_paged_out: self.ready.paged() as u32,
        }
    }

    fn sizes(&self) -> QueueSizes {
        QueueSizes {
            ready: self.ready.len(),
            unacked: self.unacked.len(),
            consumers: self.consumers.len(),
            paged_out: self.ready.paged(),
            ready_bytes: self.ready.bytes(),
            paged_out_bytes: self.ready.paged_bytes(),
            unacked_bytes: self.unacked_bytes,
        }
    }

    /// Make this burst's outcome visible to scrapes and listings (see `metrics`), and
    /// tell the listings that asked for it.
    fn publish_gauges(&mut self) {
        let sizes = self.sizes();
        self.gauges.set(sizes);
        self.gauges.counts.store(&self.counts);
        for reply in self.sizes_asked.drain(..) {
            let _ = reply.send(sizes);
        }
    }

    /// Report to the store what this queue let go of (see `stored.rs`).
    fn flush_store(&self) {
        if let Some(s) = &self.store {
            s.flush();
        }
    }

    /// The store token for a persistent message, if this queue is durable.
    fn token(&self, message: &Message) -> Option<Stored> {
        self.store.as_ref()?.token(message.store_id?)
    }

    /// Record first deliveries of stored messages, so that after a crash they come back
    /// flagged redelivered.
    fn mark_delivered(&self, ids: Vec<u64>) {
        if let Some(s) = &self.store {
            s.delivered(ids);
        }
    }

    /// A message found in the store at start-up.
    fn restore(&mut self, r: Recovered) {
        let Some(stored) = self.store.as_ref().and_then(|s| s.token(r.store_id)) else {
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let priority = match self.args.max_priority {
            Some(_) => self.ready.level_for(r.priority.unwrap_or(0)),
            None => 0,
        };
        let expires = self.ttl_with(r.expiration_ms).map(|ms| {
            self.may_expire = true;
            Instant::now() + Duration::from_millis(ms)
        });
        self.ready.restore(Restored {
            id,
            message: r.message,
            bytes: r.size,
            redelivered: r.delivered,
            priority,
            expires,
            stored,
        });
    }

    fn enqueue(&mut self, message: Arc<Message>) {
        self.counts.publish += 1;
        let id = self.next_id;
        self.next_id += 1;
        let ttl = self.ttl_of(&message);
        let priority = match self.args.max_priority {
            Some(_) => self
                .ready
                .level_for(properties::priority(&message.properties).unwrap_or(0)),
            None => 0,
        };
        if ttl == Some(0) {
            let stored = self.token(&message);
            return self.enqueue_ttl0(Entry {
                id,
                message,
                redelivered: false,
                expires: None,
                priority,
                stored,
            });
        }
        let expires = ttl.map(|ms| {
            self.may_expire = true;
            Instant::now() + Duration::from_millis(ms)
        });
        let stored = self.token(&message);
        self.ready.push_back(Entry {
            id,
            message,
            redelivered: false,
            expires,
            priority,
            stored,
        });
        if self.over_limit() {
            // RabbitMQ hands a message to a waiting consumer before applying the limit:
            // deliver first, then drop from the head what is still too much.
            self.deliver();
            self.drop_over_limit();
        }
    }

    /// Drop (dead-letter, reason maxlen) from the head until the queue is within its
    /// length limits.
    fn drop_over_limit(&mut self) {
        let mut dropped = Vec::new();
        while self.over_limit() {
            match self.ready.pop_front() {
                Some(e) => dropped.push(e),
                None => break,
            }
        }
        self.dead_letter(dropped, Reason::Maxlen);
    }

    /// TTL 0: deliverable only if a consumer takes it right now, behind what is already
    /// ready; otherwise it expires at once (rabbit_amqqueue_process:deliver_or_enqueue).
    fn enqueue_ttl0(&mut self, entry: Entry) {
        let (id, now) = (entry.id, Instant::now());
        self.deliver();
        if self.ready.is_empty() {
            self.ready.push_back(entry);
            self.deliver();
            // If a consumer took it, a later requeue finds it already expired.
            if let Some(u) = self.unacked.get_mut(&id) {
                u.entry.expires = Some(now);
                self.may_expire = true;
            }
            let left = self.ready.pop_front();
            self.dead_letter(left.into_iter().collect(), Reason::Expired);
        } else {
            self.dead_letter(vec![entry], Reason::Expired);
        }
    }

    fn add_consumer(&mut self, consumer: Consumer) -> Result<(), AmqpError> {
        if consumer.exclusive && self.consumers.single_active() {
            // rabbit_amqqueue_process: exclusive_consume_unavailable.
            return Err(AmqpError::access_refused(format!(
                "{} in exclusive use",
                self.describe()
            )));
        }
        if self.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !self.consumers.is_empty())
        {
            return Err(AmqpError::access_refused(format!(
                "{} in exclusive use",
                self.describe()
            )));
        }
        self.touch();
        self.consumers.add(consumer);
        self.had_consumer = true;
        Ok(())
    }

    /// Settle deliveries. `channel`, when given, is the channel settling them: a
    /// delivery that has meanwhile gone to another channel (requeued by a consumer
    /// timeout, then redelivered) is not its to settle.
    fn settle(&mut self, channel: Option<u64>, ids: Vec<u64>, how: Settle) {
        let mut dead = Vec::new();
        let mut limit_exceeded = Vec::new();
        let mut requeued = Vec::new();
        for id in ids {
            if channel.is_some_and(|ch| self.unacked.get(&id).is_some_and(|u| u.channel_uid != ch))
            {
                continue;
            }
            let Some(u) = self.unacked.remove(&id) else {
                continue;
            };
            self.unacked_bytes -= u.entry.message.body.len() as u64;
            if let Some(cuid) = u.consumer_uid {
                if let Some(c) = self.consumers.by_uid(cuid) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
            }
            match how {
                Settle::Requeue => match quorum::returned(&self.args, u.entry) {
                    Ok(mut e) => {
                        e.redelivered = true;
                        requeued.push(e);
                    }
                    Err(e) => limit_exceeded.push(e),
                },
                Settle::Discard => dead.push(u.entry),
                Settle::Ack => self.counts.ack += 1,
            }
        }
        let requeues = !requeued.is_empty();
        self.ready.requeue_all(requeued);
        if requeues && self.over_limit() {
            // rabbit_amqqueue_process:requeue_and_run: a drop-head queue that a requeue
            // took over its limit drops from the head (dead-lettering, reason maxlen)
            // before it delivers again. reject-publish queues may overshoot: their
            // limit refuses publishes only.
            self.drop_over_limit();
        }
        self.dead_letter(dead, Reason::Rejected);
        self.dead_letter(limit_exceeded, Reason::DeliveryLimit);
    }

    fn requeue_channel(&mut self, channel_uid: u64) {
        let ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.channel_uid == channel_uid)
            .map(|(id, _)| *id)
            .collect();
        self.settle(None, ids, Settle::Requeue);
    }

    fn maybe_auto_delete(&mut self) {
        if self.auto_delete && self.had_consumer && self.consumers.is_empty() {
            tracing::debug!(queue = %self.name, "auto-delete queue lost its last consumer");
            self.remove_from_vhost();
            self.shut_down();
        }
    }

    fn remove_from_vhost(&self) {
        if let (Some(host), Some(handle)) = (self.host.upgrade(), self.handle.upgrade()) {
            host.remove_queue(&handle);
        }
    }

    /// Stop for good: consumers are told (basic.cancel), messages dropped.
    fn shut_down(&mut self) {
        for c in self.consumers.take_all() {
            let _ = c.events.send(ConnEvent::ConsumerCancelled {
                channel_uid: c.channel_uid,
                consumer_tag: c.tag.clone(),
            });
        }
        self.ready.drain();
        self.unacked.clear();
        self.unacked_bytes = 0;
        self.timeout_scan = None;
        self.deleted = true;
    }

    /// Deliver ready messages while consumers have credit. Returns true if it stopped
    /// only because the budget ran out.
    fn deliver(&mut self) -> bool {
        if self.consumers.is_empty() || self.ready.is_empty() {
            return false;
        }
        let queue_id = self.handle.upgrade().map(|h| h.id).unwrap_or_default();
        let mut batches: Vec<(u64, EventTx, Vec<Delivery>)> = Vec::new();
        let mut budget = DELIVER_BUDGET;
        let now = self.now();
        let mut expired = Vec::new();
        let mut first_deliveries = Vec::new();
        // One clock read per batch, not per message.
        let timeout_at = self.timeout_deadline();
        while budget > 0 && !self.ready.is_empty() {
            let Some(i) = self.consumers.pick() else {
                break;
            };
            let Some(e) = self.ready.pop_live(now, &mut expired) else {
                self.consumers.untake(i);
                break;
            };
            if let (Some(id), false) = (
                e.stored.as_ref().and_then(|s| s.durable_id()),
                e.redelivered,
            ) {
                first_deliveries.push(id);
            }
            let c = &self.consumers[i];
            self.counts.delivery(false, c.no_ack, e.redelivered);
            let d = Delivery {
                channel_uid: c.channel_uid,
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                queue_id,
                msg_id: e.id,
                message: e.message.clone(),
                redelivered: e.redelivered,
            };
            if !c.no_ack {
                self.unacked_bytes += e.message.body.len() as u64;
                self.unacked.insert(
                    e.id,
                    Unacked {
                        entry: e,
                        channel_uid: c.channel_uid,
                        consumer_uid: Some(c.uid),
                        timeout_at,
                    },
                );
            }
            match batches.iter_mut().find(|b| b.0 == c.conn_id) {
                Some(b) => b.2.push(d),
                None => batches.push((c.conn_id, c.events.clone(), vec![d])),
            }
            budget -= 1;
        }
        for (_, tx, ds) in batches {
            // A closed connection's channels are torn down via ChannelDown, which
            // requeues what we just marked unacked; nothing to do on failure here.
            let _ = tx.send(ConnEvent::Deliveries(ds));
        }
        if timeout_at.is_some() && !self.unacked.is_empty() {
            self.arm_timeout_scan();
        }
        self.mark_delivered(first_deliveries);
        self.dead_letter(expired, Reason::Expired);
        budget == 0 && !self.ready.is_empty()
    }
}
