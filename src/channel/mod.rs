//! One AMQP channel's state machine: content assembly, and the per-channel protocol
//! state (consumers, unacked deliveries, confirms, transactions). Channels live inside
//! their connection's task and are driven by it; the methods they handle are split by
//! concern: `declare` (exchange.*, queue.*), `publish` (basic.publish, confirm, tx),
//! `consume` (basic.consume/get/ack/..., deliveries from queues).

mod consume;
mod declare;
mod publish;
use crate::reply_to;
mod sender_selected;
pub mod session;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::{access, basic, channel, confirm, exchange, queue, tx, AMQPClass};
use bytes::{Bytes, BytesMut};

use crate::access::PublishGrants;
use crate::error::AmqpError;
use crate::event::ChannelInfo;
use crate::protocol::frame::{Frame, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use crate::protocol::method::{self, Method, Publish};
use crate::protocol::properties::Properties;
use crate::protocol::CLASS_BASIC;
use crate::queue::{ChannelLimiter, QueueCmd, QueueHandle};
use crate::util::{IdHash, KeyHash};
use publish::{ConfirmState, RouteCache, TxState};
pub use session::{ClientCaps, PublishBatch, Session};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent channel.close and wait for close-ok; everything else is ignored.
    Closing,
}

/// Where we are in receiving a publish: method, then header, then body frames.
enum Assembly {
    Idle,
    Header(Publish),
    Body {
        publish: Publish,
        properties: Bytes,
        props: Properties,
        size: usize,
        body: Body,
    },
}

/// A channel's [`Assembly`], boxed and allocated on the channel's first publish: the
/// state holds a parsed basic.publish and content header (a few hundred bytes) that a
/// channel which only consumes, or sits idle, would otherwise carry for nothing. Once
/// allocated the box stays, so publishing allocates nothing per message.
#[derive(Default)]
struct Assembler(Option<Box<Assembly>>);

static IDLE: Assembly = Assembly::Idle;

impl Assembler {
    fn state(&self) -> &Assembly {
        self.0.as_deref().unwrap_or(&IDLE)
    }

    fn state_mut(&mut self) -> &mut Assembly {
        self.0.get_or_insert_with(|| Box::new(Assembly::Idle))
    }

    fn set(&mut self, a: Assembly) {
        *self.state_mut() = a;
    }

    /// The state so far, leaving Idle behind (and the box in place).
    fn take(&mut self) -> Assembly {
        match &mut self.0 {
            Some(a) => std::mem::replace(a, Assembly::Idle),
            None => Assembly::Idle,
        }
    }
}

/// A body as it arrives: one frame stays the read buffer's own slice (no copy); several
/// are joined.
enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(b) => b.len(),
            Body::Many(b) => b.len(),
        }
    }

    fn push(&mut self, chunk: Bytes, total: usize) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => {
                let mut all = BytesMut::with_capacity(total);
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        }
    }
}

/// A delivery the client has yet to settle.
struct Unacked {
    tag: u64,
    queue: Arc<QueueHandle>,
    msg_id: u64,
    /// Holds channel-wide prefetch credit (consumer deliveries do, basic.get doesn't).
    counted: bool,
}

struct ConsumerRef {
    queue: Arc<QueueHandle>,
    no_ack: bool,
}

pub struct Channel {
    pub number: u16,
    /// Unique id of this channel instance (numbers are reused after close).
    pub uid: u64,
    pub state: State,
    assembly: Assembler,
    // Boxed, as is `reply_consumer`: most channels use neither confirms nor transactions,
    // and every open channel would otherwise carry their room.
    confirm: Option<Box<ConfirmState>>,
    tx: Option<Box<TxState>>,
    routes: RouteCache,
    /// Write access per exchange, so publishing doesn't match a regex per message.
    grants: PublishGrants,
    limiter: Arc<ChannelLimiter>,
    /// basic.qos global=false: the prefetch given to consumers created from now on.
    consumer_prefetch: u32,
    consumers: HashMap<Arc<str>, ConsumerRef, KeyHash>,
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    /// Delivery tags whose deliveries a consumer timeout took back (see
    /// `consume.rs`): acking or rejecting them is accepted and does nothing.
    timed_out: BTreeSet<u64>,
    /// Queues this channel consumes from or holds deliveries of: told when it closes.
    queues: HashMap<u64, Arc<QueueHandle>, IdHash>,
    /// Where the next [`Channel::kick_queues`] starts in `queues`: it moves on each time.
    kick_from: std::cell::Cell<usize>,
    /// For the empty-queue-name shortcut (RabbitMQ's most_recently_declared_queue).
    last_queue: Option<String>,
    /// The direct reply-to consumer, if the channel consumes `amq.rabbitmq.reply-to`.
    reply_consumer: Option<Box<reply_to::ReplyConsumer>>,
}

impl Channel {
    /// `congested`: the connection writer's flag (see [`ChannelLimiter`]).
    pub fn new(number: u16, congested: Arc<std::sync::atomic::AtomicBool>) -> Channel {
        Channel {
            number,
            uid: crate::util::next_id(),
            state: State::Open,
            assembly: Assembler::default(),
            confirm: None,
            tx: None,
            routes: RouteCache::default(),
            grants: PublishGrants::default(),
            limiter: Arc::new(ChannelLimiter::on(congested)),
            consumer_prefetch: 0,
            consumers: HashMap::default(),
            next_tag: 1,
            unacked: VecDeque::new(),
            timed_out: BTreeSet::new(),
            queues: HashMap::default(),
            kick_from: std::cell::Cell::new(0),
            last_queue: None,
            reply_consumer: None,
        }
    }

    /// Handle one frame. An error is a channel or connection exception for the caller
    /// to turn into channel.close or connection.close.
    pub async fn handle_frame(&mut self, s: &mut Session, frame: Frame) -> Result<(), AmqpError> {
        match frame.kind {
            FRAME_METHOD => {
                let (class_id, method_id) = method::class_method(&frame.payload);
                if !matches!(self.assembly.state(), Assembly::Idle) {
                    // Reported against the publish whose content was interrupted.
                    return Err(AmqpError::unexpected_frame(format!(
                        "expected content header for class {CLASS_BASIC}, got non content header frame instead"
                    ))
                    .on(60, 40));
                }
                let m =
                    method::decode(&frame.payload).map_err(|e| decode_error(e, &frame.payload))?;
                self.handle_method(s, m)
                    .await
                    .map_err(|e| e.on(class_id, method_id))
            }
            FRAME_HEADER => self.handle_header(s, frame.payload),
            FRAME_BODY => self.handle_body(s, frame.payload),
            _ => Err(AmqpError::frame_error(format!(
                "unexpected frame type {}",
                frame.kind
            ))),
        }
    }

    fn handle_header(&mut self, s: &mut Session, payload: Bytes) -> Result<(), AmqpError> {
        let publish = match self.assembly.take() {
            Assembly::Header(p) => p,
            Assembly::Idle => {
                return Err(AmqpError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                ))
            }
            Assembly::Body { .. } => {
                return Err(AmqpError::unexpected_frame(
                    "expected content body, got non content body frame instead",
                ))
            }
        };
        if payload.len() < 14 {
            return Err(AmqpError::frame_error("content header frame too short").on(60, 40));
        }
        let class = u16::from_be_bytes([payload[0], payload[1]]);
        if class != CLASS_BASIC {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class {CLASS_BASIC}, got one for class {class} instead"
            ))
            .on(60, 40));
        }
        let size = u64::from_be_bytes(payload[4..12].try_into().unwrap_or_default());
        let max = s.broker.config.amqp.max_message_size;
        if size > max {
            // Checked on the header, before buffering any of the body (RabbitMQ checks
            // after; the answer is the same). The rest of the content is ignored because
            // the channel is closing.
            return Err(AmqpError::precondition_failed(format!(
                "message size {size} is larger than configured max size {max}"
            ))
            .on(60, 40));
        }
        let properties = payload.slice(12..);
        let props = Properties::parse(&properties).ok_or_else(|| {
            AmqpError::syntax_error("malformed content header properties").on(60, 40)
        })?;
        if size == 0 {
            return self.publish(s, publish, properties, props, Bytes::new());
        }
        self.assembly.set(Assembly::Body {
            publish,
            properties,
            props,
            size: size as usize,
            body: Body::Empty,
        });
        Ok(())
    }

    fn handle_body(&mut self, s: &mut Session, payload: Bytes) -> Result<(), AmqpError> {
        let Assembly::Body { size, body, .. } = self.assembly.state_mut() else {
            return Err(AmqpError::unexpected_frame(match self.assembly.state() {
                Assembly::Header(_) => {
                    "expected content header for class 60, got non content header frame instead"
                }
                _ => "expected method frame, got non method frame instead",
            }));
        };
        if body.len() + payload.len() > *size {
            return Err(AmqpError::unexpected_frame(format!(
                "content body exceeds the {} bytes announced in its header",
                size
            )));
        }
        let total = *size;
        body.push(payload, total);
        if body.len() < total {
            return Ok(());
        }
        let Assembly::Body {
            publish,
            properties,
            props,
            body,
            ..
        } = self.assembly.take()
        else {
            return Ok(());
        };
        self.publish(s, publish, properties, props, body.freeze())
    }

    async fn handle_method(&mut self, s: &mut Session, m: Method) -> Result<(), AmqpError> {
        let class = match m {
            Method::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                self.assembly.set(Assembly::Header(p));
                s.published = true;
                return Ok(());
            }
            Method::Ack {
                delivery_tag,
                multiple,
            } => return self.ack(s, delivery_tag, multiple),
            Method::Nack {
                delivery_tag,
                multiple,
                requeue,
            } => return self.reject(s, delivery_tag, multiple, requeue),
            Method::Reject {
                delivery_tag,
                requeue,
            } => return self.reject(s, delivery_tag, false, requeue),
            Method::Qos {
                prefetch_size,
                prefetch_count,
                global,
            } => return self.qos(s, prefetch_size, prefetch_count, global),
            Method::Other(class) => *class,
        };
        // Anything else may observe queue state: deliver what was published first.
        s.publishes.flush();
        let n = self.number;
        match class {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                Err(AmqpError::channel_error("second 'channel.open' seen"))
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                self.limiter.set_active(f.active);
                if f.active {
                    self.kick_queues();
                }
                s.send(
                    n,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                s.send(
                    n,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => self.exchange_declare(s, d),
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => self.exchange_delete(s, d),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => self.exchange_bind(s, b),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(u)) => self.exchange_unbind(s, u),
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => self.queue_declare(s, d).await,
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => self.queue_bind(s, b),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(u)) => self.queue_unbind(s, u),
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => self.queue_purge(s, p).await,
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => self.queue_delete(s, d).await,
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => self.consume(s, c).await,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => self.cancel(s, c),
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => self.get(s, g).await,
            AMQPClass::Basic(basic::AMQPMethod::Recover(r)) => {
                self.recover(s, r.requeue, true).await
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(r)) => {
                self.recover(s, r.requeue, false).await
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(c)) => self.confirm_select(s, c.nowait),
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => self.tx_select(s),
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => self.tx_commit(s).await,
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => self.tx_rollback(s),
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    /// Release everything the channel holds: consumers are removed from their queues and
    /// unacked deliveries go back to them, in order. Called on any kind of close.
    pub fn teardown(&mut self) {
        self.release(false);
    }

    /// [`teardown`](Self::teardown), then wait until every queue has processed it, so
    /// that a client that gets close-ok sees its consumers gone and auto-delete queues
    /// deleted (a reconnecting client may redeclare them at once).
    pub async fn teardown_and_wait(&mut self) {
        for done in self.release(true) {
            let _ = done.await;
        }
    }

    fn release(&mut self, wait: bool) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut waits = Vec::new();
        for q in self.queues.values() {
            let done = wait.then(|| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                waits.push(rx);
                tx
            });
            q.send(QueueCmd::ChannelDown {
                channel_uid: self.uid,
                done,
            });
        }
        self.queues.clear();
        self.consumers.clear();
        self.reply_consumer = None;
        self.unacked.clear();
        self.timed_out.clear();
        self.tx = None;
        self.assembly.take();
        waits
    }

    /// What list_channels shows of this channel.
    pub fn info(&self) -> ChannelInfo {
        let (messages_uncommitted, acks_uncommitted) = self
            .tx
            .as_ref()
            .map(|t| t.uncommitted())
            .unwrap_or_default();
        ChannelInfo {
            number: self.number,
            consumer_count: self.consumers.len(),
            messages_unacknowledged: self.unacked.len(),
            prefetch_count: self.consumer_prefetch,
            global_prefetch_count: self.limiter.global_prefetch(),
            confirm: self.confirm.is_some(),
            transactional: self.tx.is_some(),
            messages_unconfirmed: self.confirm.as_ref().map_or(0, |c| c.unconfirmed()),
            messages_uncommitted,
            acks_uncommitted,
        }
    }

    /// Ask every queue this channel consumes from to try delivering again.
    /// Tell every queue with a consumer on this channel that it may deliver again. The
    /// first one told usually takes the credit that was freed, so the order moves on by
    /// one each time: under a shared (global) prefetch every queue gets its turn, where a
    /// fixed order starved all but one (RabbitMQ's limiter varies the order at random).
    pub fn kick_queues(&self) {
        let n = self.queues.len();
        if n == 0 {
            return;
        }
        let from = self.kick_from.get() % n;
        self.kick_from.set(from + 1);
        for q in self.queues.values().cycle().skip(from).take(n) {
            q.send(QueueCmd::Kick);
        }
    }

    /// Empty queue name means the channel's most recently declared queue.
    fn expand_queue(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }
}

/// The connection error for a method frame that doesn't decode, in RabbitMQ's words.
pub fn decode_error(e: method::DecodeError, payload: &[u8]) -> AmqpError {
    match e {
        method::DecodeError::Syntax { .. } if payload.len() < 4 => AmqpError::frame_error(format!(
            "type 1, all octets = {}: unknown_frame",
            crate::protocol::frame::erlang_binary(payload)
        )),
        // RabbitMQ reports undecodable arguments as a frame error.
        method::DecodeError::Syntax {
            class_id,
            method_id,
        } => AmqpError::frame_error(format!(
            "cannot decode {}",
            crate::protocol::frame::erlang_binary(&payload[4..])
        ))
        .on(class_id, method_id),
        // RabbitMQ names neither class nor method for it.
        method::DecodeError::Utf8 => AmqpError::frame_error("Malformed UTF-8 in shortstr"),
        method::DecodeError::Unknown {
            class_id,
            method_id,
        } => AmqpError::command_invalid(format!("unknown method {class_id}.{method_id}"))
            .on(class_id, method_id),
        // RabbitMQ has no bound (Erlang grows the stack); warren refuses what it cannot
        // decode safely, as undecodable arguments.
        method::DecodeError::TooDeep {
            class_id,
            method_id,
        } => AmqpError::syntax_error(crate::protocol::table::Refused::TooDeep.to_string())
            .on(class_id, method_id),
    }
}
