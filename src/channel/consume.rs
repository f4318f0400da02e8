//! The consuming side of a channel: consumers, basic.get, deliveries arriving from
//! queues, and settling them (ack, nack, reject, recover), with prefetch.

use std::sync::Arc;

use amq_protocol::protocol::basic::{self, AMQPMethod};
use amq_protocol::protocol::AMQPClass;

use super::{Channel, ConsumerRef, Session, State, Unacked};
use crate::access::Perm;
use crate::error::AmqpError;
use crate::event::Delivery;
use crate::protocol::{method, short};
use crate::queue::{Consumer, QueueCmd, Settle};
use crate::reply_to;
use crate::vhost::check_exclusive;

impl Channel {
    pub(super) async fn consume(
        &mut self,
        s: &mut Session,
        c: basic::Consume,
    ) -> Result<(), AmqpError> {
        if c.queue.as_str() == reply_to::NAME {
            return self.consume_reply_to(s, c);
        }
        let name = self.expand_queue(c.queue.as_str())?;
        if self.consumers.contains_key(c.consumer_tag.as_str()) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{}'",
                c.consumer_tag
            )));
        }
        s.authorize("queue", &name, Perm::Read)?;
        let q = s.vhost.queue_for(&name, s.conn_id)?;
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            Arc::from(crate::util::generated_name("amq.ctag"))
        } else {
            Arc::from(c.consumer_tag.as_str())
        };
        // rabbit_amqqueue:check_consume_arguments: x-priority must be an integer (3.10's text).
        let priority = match c.arguments.inner().get("x-priority") {
            None => 0,
            Some(v) => crate::arguments::as_i64(v).ok_or_else(|| {
                AmqpError::precondition_failed(format!(
                    "invalid arg 'x-priority' for {}: \"expected integer, got {}\"",
                    q.describe(),
                    crate::arguments::type_name(v)
                ))
            })?,
        };
        let consumer = Consumer {
            uid: crate::util::next_id(),
            tag: tag.clone(),
            channel_uid: self.uid,
            channel: self.number,
            conn_id: s.conn_id,
            events: s.events.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: self.consumer_prefetch,
            limiter: self.limiter.clone(),
            arguments: c.arguments,
            priority,
            in_flight: 0,
        };
        match q.ask(|reply| QueueCmd::Consume { consumer, reply }).await {
            None => return Err(AmqpError::not_found(format!("no {}", q.describe()))),
            Some(Err(e)) => return Err(e),
            Some(Ok(())) => {}
        }
        self.queues.insert(q.id, q.clone());
        self.consumers.insert(
            tag.clone(),
            ConsumerRef {
                queue: q,
                no_ack: c.no_ack,
            },
        );
        if !c.nowait {
            s.send(
                self.number,
                AMQPClass::Basic(AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(&*tag),
                })),
            );
        }
        Ok(())
    }

    /// basic.consume of `amq.rabbitmq.reply-to` (rabbit_channel's reply_consumer).
    fn consume_reply_to(&mut self, s: &mut Session, c: basic::Consume) -> Result<(), AmqpError> {
        if self.consumers.contains_key(c.consumer_tag.as_str()) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{}'",
                c.consumer_tag
            )));
        }
        if !c.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply_consumer.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            Arc::from(crate::util::generated_name("amq.ctag"))
        } else {
            Arc::from(c.consumer_tag.as_str())
        };
        self.reply_consumer = Some(Box::new(s.broker.reply_to.register(
            tag.clone(),
            s.events.clone(),
            self.uid,
            self.number,
        )));
        if !c.nowait {
            s.send(
                self.number,
                AMQPClass::Basic(AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(&*tag),
                })),
            );
        }
        Ok(())
    }

    pub(super) fn cancel(&mut self, s: &mut Session, c: basic::Cancel) -> Result<(), AmqpError> {
        if self
            .reply_consumer
            .as_ref()
            .is_some_and(|r| *r.tag == *c.consumer_tag.as_str())
        {
            self.reply_consumer = None;
            if !c.nowait {
                s.send(
                    self.number,
                    AMQPClass::Basic(AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    })),
                );
            }
            return Ok(());
        }
        match self.consumers.get(c.consumer_tag.as_str()) {
            // The queue answers through our event stream, behind any deliveries it
            // already sent, so cancel-ok follows them (see `cancel_ok`).
            Some(cr) => {
                cr.queue.send(QueueCmd::Cancel {
                    channel_uid: self.uid,
                    tag: Arc::from(c.consumer_tag.as_str()),
                    nowait: c.nowait,
                    events: s.events.clone(),
                });
            }
            None if !c.nowait => s.send(
                self.number,
                AMQPClass::Basic(AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: c.consumer_tag,
                })),
            ),
            None => {}
        }
        Ok(())
    }

    /// The queue has dropped the consumer the client cancelled.
    pub fn cancel_ok(&mut self, s: &mut Session, tag: &str, nowait: bool) {
        self.consumers.remove(tag);
        if !nowait && self.state == State::Open {
            s.send(
                self.number,
                AMQPClass::Basic(AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: short(tag),
                })),
            );
        }
    }

    /// The queue went away under a consumer (deleted): tell clients that asked to know.
    pub fn consumer_cancelled(&mut self, s: &mut Session, tag: &str) {
        if self.consumers.remove(tag).is_some()
            && s.caps.consumer_cancel_notify
            && self.state == State::Open
        {
            s.send(
                self.number,
                AMQPClass::Basic(AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: short(tag),
                    nowait: true,
                })),
            );
        }
    }

    /// A delivery from a queue: give it a delivery tag and write it out.
    pub fn deliver(&mut self, s: &mut Session, d: Delivery) {
        if d.queue_id == reply_to::NO_QUEUE {
            return self.deliver_reply(s, d);
        }
        let consumer = match self.consumers.get(&d.consumer_tag) {
            Some(c) if self.state == State::Open => c,
            _ => {
                // Consumer gone (server-side cancel raced it): give the message back.
                if let Some(q) = self.queues.get(&d.queue_id) {
                    q.send(QueueCmd::Settle {
                        channel_uid: self.uid,
                        ids: vec![d.msg_id],
                        how: Settle::Requeue,
                    });
                }
                return;
            }
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        s.tally.delivery(false, consumer.no_ack, d.redelivered);
        if !consumer.no_ack {
            self.unacked.push_back(Unacked {
                tag,
                queue: consumer.queue.clone(),
                msg_id: d.msg_id,
                counted: true,
            });
        }
        let m = &d.message;
        method::encode_deliver(
            &mut s.out.buf,
            self.number,
            d.consumer_tag.as_bytes(),
            tag,
            d.redelivered,
            &m.exchange,
            &m.routing_key,
        );
        m.write_content(&mut s.out, self.number, s.frame_max);
    }

    /// A reply for this channel's direct reply-to consumer: no ack, nothing to requeue.
    fn deliver_reply(&mut self, s: &mut Session, d: Delivery) {
        let live = self
            .reply_consumer
            .as_ref()
            .is_some_and(|r| r.tag == d.consumer_tag);
        if !live || self.state != State::Open {
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let m = &d.message;
        method::encode_deliver(
            &mut s.out.buf,
            self.number,
            d.consumer_tag.as_bytes(),
            tag,
            false,
            &m.exchange,
            &m.routing_key,
        );
        m.write_content(&mut s.out, self.number, s.frame_max);
    }

    pub(super) async fn get(&mut self, s: &mut Session, g: basic::Get) -> Result<(), AmqpError> {
        let name = self.expand_queue(g.queue.as_str())?;
        s.authorize("queue", &name, Perm::Read)?;
        let q = s.vhost.queue_for(&name, s.conn_id)?;
        check_exclusive(&q, s.conn_id)?;
        let got = q
            .ask(|reply| QueueCmd::Get {
                channel_uid: self.uid,
                no_ack: g.no_ack,
                reply,
            })
            .await
            .ok_or_else(|| AmqpError::not_found(format!("no {}", q.describe())))?;
        let Some(got) = got else {
            s.tally.get_empty += 1;
            s.send(
                self.number,
                AMQPClass::Basic(AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        s.tally.delivery(true, g.no_ack, got.redelivered);
        if !g.no_ack {
            self.queues.insert(q.id, q.clone());
            self.unacked.push_back(Unacked {
                tag,
                queue: q,
                msg_id: got.msg_id,
                counted: false,
            });
        }
        let m = &got.message;
        method::encode_get_ok(
            &mut s.out.buf,
            self.number,
            tag,
            got.redelivered,
            &m.exchange,
            &m.routing_key,
            got.remaining,
        );
        m.write_content(&mut s.out, self.number, s.frame_max);
        Ok(())
    }

    /// Take the deliveries a (multiple) ack/nack/reject names out of the unacked list.
    /// Like RabbitMQ, the tag itself must be outstanding, even with `multiple`; tag 0
    /// with `multiple` means everything.
    /// A tag a consumer timeout took back counts as outstanding (and settles nothing).
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        if multiple && tag == 0 {
            self.timed_out.clear();
            return Ok(self.unacked.drain(..).collect());
        }
        let timed_out = self.timed_out.remove(&tag);
        if multiple && !self.timed_out.is_empty() {
            self.timed_out.retain(|&t| t > tag);
        }
        Ok(match self.unacked.binary_search_by_key(&tag, |u| u.tag) {
            Ok(i) if multiple => self.unacked.drain(..=i).collect(),
            Ok(i) => self.unacked.remove(i).into_iter().collect(),
            Err(i) if timed_out && multiple => self.unacked.drain(..i).collect(),
            Err(_) if timed_out => Vec::new(),
            Err(_) => {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )))
            }
        })
    }

    /// A consumer timeout requeued one of this channel's deliveries (warren's default
    /// action): forget it, give back its channel-wide prefetch credit, and remember its
    /// tag so that the client's late ack or reject of it is not an error.
    pub fn delivery_timed_out(&mut self, queue_id: u64, msg_id: u64) {
        let Some(i) = self
            .unacked
            .iter()
            .position(|u| u.queue.id == queue_id && u.msg_id == msg_id)
        else {
            return; // settled meanwhile
        };
        if let Some(u) = self.unacked.remove(i) {
            self.timed_out.insert(u.tag);
            if self.limiter.release(u.counted as u32) {
                self.kick_queues();
            }
        }
    }

    pub(super) fn ack(
        &mut self,
        s: &mut Session,
        tag: u64,
        multiple: bool,
    ) -> Result<(), AmqpError> {
        let entries = self.take_unacked(tag, multiple).map_err(|e| e.on(60, 80))?;
        s.tally.acknowledged += entries.len() as u64;
        if self.in_tx() {
            self.tx_stash(entries, Settle::Ack);
        } else {
            self.settle(entries, Settle::Ack);
        }
        Ok(())
    }

    pub(super) fn reject(
        &mut self,
        _s: &mut Session,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), AmqpError> {
        let entries = self
            .take_unacked(tag, multiple)
            .map_err(|e| e.on(60, 120))?;
        let how = if requeue {
            Settle::Requeue
        } else {
            Settle::Discard
        };
        if self.in_tx() {
            self.tx_stash(entries, how);
        } else {
            self.settle(entries, how);
        }
        Ok(())
    }

    /// Tell each queue what became of its deliveries, one command per queue.
    pub(super) fn settle(&mut self, entries: Vec<Unacked>, how: Settle) {
        let mut counted = 0u32;
        let mut per_queue: Vec<(&Arc<crate::queue::QueueHandle>, Vec<u64>)> = Vec::new();
        for u in &entries {
            counted += u.counted as u32;
            match per_queue.iter_mut().find(|(q, _)| q.id == u.queue.id) {
                Some((_, ids)) => ids.push(u.msg_id),
                None => per_queue.push((&u.queue, vec![u.msg_id])),
            }
        }
        // Credit first: the channel was at its global prefetch, so queues wait on it, and
        // they hear of it before the settled queues do (a settled queue tries to deliver
        // again on its own, and going first it would take the credit every time).
        if self.limiter.release(counted) {
            self.kick_queues();
        }
        for (q, ids) in per_queue {
            q.send(QueueCmd::Settle {
                channel_uid: self.uid,
                ids,
                how,
            });
        }
    }

    pub(super) async fn recover(
        &mut self,
        s: &mut Session,
        requeue: bool,
        reply: bool,
    ) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let entries: Vec<Unacked> = self.unacked.drain(..).collect();
        self.settle(entries, Settle::Requeue);
        if reply {
            s.send(
                self.number,
                AMQPClass::Basic(AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn qos(
        &mut self,
        s: &mut Session,
        size: u32,
        count: u16,
        global: bool,
    ) -> Result<(), AmqpError> {
        if size != 0 {
            return Err(
                AmqpError::not_implemented(format!("prefetch_size!=0 ({size})")).on(60, 10),
            );
        }
        if global {
            self.limiter.set_global_prefetch(count as u32);
            self.kick_queues();
        } else {
            self.consumer_prefetch = count as u32;
        }
        s.send(
            self.number,
            AMQPClass::Basic(AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }
}
