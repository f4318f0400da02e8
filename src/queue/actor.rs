//! The queue actor: the single owner of a queue's messages, consumers and unacked
//! deliveries. It handles a burst of commands, then delivers what consumer credit allows,
//! batching deliveries per connection so each connection is woken once per burst.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::{
    ConnEvent, Consumer, Delivery, EventTx, GetOk, QueueCmd, QueueHandle, QueueStats, Settle,
};
use crate::error::AmqpError;
use crate::message::Message;
use crate::vhost::Vhost;

/// Commands handled before delivering, and deliveries made before yielding: bounds the
/// time one busy queue holds a worker thread.
const BURST: usize = 256;
const DELIVER_BUDGET: usize = 512;

struct Entry {
    id: u64,
    message: Arc<Message>,
    redelivered: bool,
}

struct Unacked {
    message: Arc<Message>,
    channel_uid: u64,
    /// The consumer whose credit it holds (None for basic.get).
    consumer_uid: Option<u64>,
}

pub(super) struct QueueActor {
    handle: Weak<QueueHandle>,
    name: Arc<str>,
    vhost: Weak<Vhost>,
    auto_delete: bool,
    /// Ready messages, ordered by id. Every unacked id is lower than every ready id
    /// (delivery takes the head), which is what lets requeue restore the original order
    /// by pushing to the front.
    ready: VecDeque<Entry>,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    /// Round-robin position among consumers.
    next_consumer: usize,
    next_id: u64,
    /// Auto-delete applies only once the queue has had a consumer.
    had_consumer: bool,
    deleted: bool,
}

impl QueueActor {
    pub(super) fn start(
        handle: &Arc<QueueHandle>,
        vhost: Weak<Vhost>,
        rx: mpsc::UnboundedReceiver<QueueCmd>,
    ) {
        let actor = QueueActor {
            handle: Arc::downgrade(handle),
            name: handle.name.clone(),
            vhost,
            auto_delete: handle.auto_delete,
            ready: VecDeque::new(),
            unacked: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            next_id: 1,
            had_consumer: false,
            deleted: false,
        };
        tokio::spawn(actor.run(rx));
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<QueueCmd>) {
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
            for _ in 0..BURST {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            while !self.deleted && self.deliver() {
                // More could go out but the budget ran out: let others run, then go on
                // (commands that arrived meanwhile are handled first).
                tokio::task::yield_now().await;
                while let Ok(cmd) = rx.try_recv() {
                    self.handle(cmd);
                }
            }
            if self.deleted {
                break;
            }
        }
        tracing::debug!(queue = %self.name, "queue actor stopped");
    }

    fn handle(&mut self, cmd: QueueCmd) {
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
                self.maybe_auto_delete();
            }
            QueueCmd::Settle { ids, how } => self.settle(ids, how),
            QueueCmd::ChannelDown { channel_uid } => {
                self.consumers.retain(|c| c.channel_uid != channel_uid);
                self.requeue_channel(channel_uid);
                self.maybe_auto_delete();
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
                let got = self.ready.pop_front().map(|e| {
                    if !no_ack {
                        self.unacked.insert(
                            e.id,
                            Unacked {
                                message: e.message.clone(),
                                channel_uid,
                                consumer_uid: None,
                            },
                        );
                    }
                    GetOk {
                        msg_id: e.id,
                        message: e.message,
                        redelivered: e.redelivered,
                        remaining: self.ready.len() as u32,
                    }
                });
                let _ = reply.send(got);
            }
            QueueCmd::Purge { reply } => {
                // Like RabbitMQ, purge removes ready messages only; unacked ones stay.
                let n = self.ready.len() as u32;
                self.ready.clear();
                let _ = reply.send(n);
            }
            QueueCmd::Stats { reply } => {
                let _ = reply.send(self.stats());
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
        }
    }

    fn describe(&self) -> String {
        let vhost = self
            .vhost
            .upgrade()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        crate::error::rs("queue", &self.name, &vhost)
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            messages_ready: self.ready.len() as u32,
            messages_unacked: self.unacked.len() as u32,
            consumers: self.consumers.len() as u32,
        }
    }

    fn enqueue(&mut self, message: Arc<Message>) {
        let id = self.next_id;
        self.next_id += 1;
        self.ready.push_back(Entry {
            id,
            message,
            redelivered: false,
        });
    }

    fn add_consumer(&mut self, consumer: Consumer) -> Result<(), AmqpError> {
        if self.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !self.consumers.is_empty())
        {
            return Err(AmqpError::access_refused(format!(
                "{} in exclusive use",
                self.describe()
            )));
        }
        self.consumers.push(consumer);
        self.had_consumer = true;
        Ok(())
    }

    fn settle(&mut self, ids: Vec<u64>, how: Settle) {
        let mut back = Vec::new();
        for id in ids {
            let Some(u) = self.unacked.remove(&id) else {
                continue;
            };
            if let Some(cuid) = u.consumer_uid {
                if let Some(c) = self.consumers.iter_mut().find(|c| c.uid == cuid) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
            }
            if how == Settle::Requeue {
                back.push(Entry {
                    id,
                    message: u.message,
                    redelivered: true,
                });
            }
        }
        self.requeue(back);
    }

    fn requeue_channel(&mut self, channel_uid: u64) {
        let ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.channel_uid == channel_uid)
            .map(|(id, _)| *id)
            .collect();
        self.settle(ids, Settle::Requeue);
    }

    /// Put messages back at the head in their original order.
    fn requeue(&mut self, mut back: Vec<Entry>) {
        back.sort_unstable_by_key(|e| std::cmp::Reverse(e.id));
        for e in back {
            self.ready.push_front(e);
        }
    }

    fn maybe_auto_delete(&mut self) {
        if self.auto_delete && self.had_consumer && self.consumers.is_empty() {
            if let (Some(vhost), Some(handle)) = (self.vhost.upgrade(), self.handle.upgrade()) {
                tracing::debug!(queue = %self.name, "auto-delete queue lost its last consumer");
                vhost.remove_queue(&handle);
            }
            self.shut_down();
        }
    }

    /// Stop for good: consumers are told (basic.cancel), messages dropped.
    fn shut_down(&mut self) {
        for c in self.consumers.drain(..) {
            let _ = c.events.send(ConnEvent::ConsumerCancelled {
                channel_uid: c.channel_uid,
                consumer_tag: c.tag.clone(),
            });
        }
        self.ready.clear();
        self.unacked.clear();
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
        while budget > 0 && !self.ready.is_empty() {
            let n = self.consumers.len();
            let Some(i) = (0..n)
                .map(|k| (self.next_consumer + k) % n)
                .find(|&i| self.consumers[i].try_take())
            else {
                break;
            };
            self.next_consumer = (i + 1) % n;
            let Some(e) = self.ready.pop_front() else {
                break;
            };
            let c = &self.consumers[i];
            if !c.no_ack {
                self.unacked.insert(
                    e.id,
                    Unacked {
                        message: e.message.clone(),
                        channel_uid: c.channel_uid,
                        consumer_uid: Some(c.uid),
                    },
                );
            }
            let d = Delivery {
                channel_uid: c.channel_uid,
                channel: c.channel,
                consumer_tag: c.tag.clone(),
                queue_id,
                msg_id: e.id,
                message: e.message,
                redelivered: e.redelivered,
            };
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
        budget == 0 && !self.ready.is_empty()
    }
}
