//! Direct reply-to: the `amq.rabbitmq.reply-to` pseudo-queue (rabbit_channel's
//! `reply_consumer` and rabbit_exchange's virtual reply queues).
//!
//! A channel consumes `amq.rabbitmq.reply-to` (no_ack only) and gets an opaque id,
//! registered broker-wide. Its publishes with `reply_to: amq.rabbitmq.reply-to` go out
//! with `amq.rabbitmq.reply-to.<id>`; whoever publishes to the default exchange with
//! that routing key delivers straight to the consumer's connection, no queue involved.
//! The registration lives as long as the consumer: dropping it (cancel, channel or
//! connection close) unregisters.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use crate::error::AmqpError;
use crate::event::{ConnEvent, Delivery, EventTx};
use crate::message::Message;
use crate::protocol::properties::{self, Properties};

/// The pseudo-queue's name, and the prefix of reply routing keys (plus a dot).
pub const NAME: &str = "amq.rabbitmq.reply-to";

/// `queue_id` of a reply delivery: no queue holds it, nothing acks it.
pub(crate) const NO_QUEUE: u64 = 0;

/// Where a reply id leads.
struct Target {
    events: EventTx,
    channel_uid: u64,
    channel: u16,
    tag: Arc<str>,
}

/// Broker-wide: reply id -> the consuming channel. Touched on reply-consumer start and
/// end, and once per reply published.
#[derive(Default)]
pub struct Registry {
    targets: DashMap<Arc<str>, Target>,
}

/// A channel's reply consumer; unregisters when dropped.
pub(crate) struct ReplyConsumer {
    pub tag: Arc<str>,
    /// The reply routing key, `amq.rabbitmq.reply-to.<id>`.
    pub key: Arc<str>,
    id: Arc<str>,
    registry: Arc<Registry>,
}

impl Drop for ReplyConsumer {
    fn drop(&mut self) {
        self.registry.targets.remove(&self.id);
    }
}

impl Registry {
    pub(crate) fn register(
        self: &Arc<Self>,
        tag: Arc<str>,
        events: EventTx,
        channel_uid: u64,
        channel: u16,
    ) -> ReplyConsumer {
        // 128 random bits: unguessable, so only the requester's correspondents reply.
        let id: Arc<str> = Arc::from(&crate::util::generated_name("")[1..]);
        self.targets.insert(
            id.clone(),
            Target {
                events,
                channel_uid,
                channel,
                tag: tag.clone(),
            },
        );
        ReplyConsumer {
            tag,
            key: Arc::from(format!("{NAME}.{id}").as_str()),
            id,
            registry: self.clone(),
        }
    }

    /// Whether `key` (a queue name or routing key) is a live reply id's.
    pub(crate) fn exists(&self, key: &str) -> bool {
        key == NAME || reply_id(key).is_some_and(|id| self.targets.contains_key(id))
    }

    /// Deliver a message published to the default exchange with a reply routing key.
    /// Unknown ids drop it, as RabbitMQ does.
    pub(crate) fn deliver(&self, key: &str, message: Arc<Message>) {
        let Some(t) = reply_id(key).and_then(|id| self.targets.get(id)) else {
            return;
        };
        let _ = t.events.send(ConnEvent::Deliveries(vec![Delivery {
            channel_uid: t.channel_uid,
            channel: t.channel,
            consumer_tag: t.tag.clone(),
            queue_id: NO_QUEUE,
            msg_id: 0,
            message,
            redelivered: false,
        }]));
    }
}

/// The id in `amq.rabbitmq.reply-to.<id>`.
pub(crate) fn reply_id(key: &str) -> Option<&str> {
    key.strip_prefix(NAME)?.strip_prefix('.')
}

/// [`reply_id`] on raw routing-key bytes (the publish path's cheap test).
pub(crate) fn reply_id_bytes(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(NAME.as_bytes())?.strip_prefix(b".")
}

/// The publish's properties with `reply_to: amq.rabbitmq.reply-to` made the channel's
/// reply key; `None` when the property is something else (the usual case, checked on
/// the flag bit first). Without a reply consumer on the channel it is an error.
pub(crate) fn rewrite(
    raw: &[u8],
    props: &Properties,
    consumer: Option<&ReplyConsumer>,
) -> Result<Option<(Bytes, Properties)>, AmqpError> {
    if props.reply_to(raw) != Some(NAME.as_bytes()) {
        return Ok(None);
    }
    let Some(c) = consumer else {
        return Err(AmqpError::precondition_failed(
            "fast reply consumer does not exist",
        ));
    };
    let new = properties::rewrite_reply_to(raw, c.key.as_bytes())
        .ok_or_else(|| AmqpError::frame_error("malformed content header"))?;
    let parsed = Properties::parse(&new)
        .ok_or_else(|| AmqpError::frame_error("malformed content header"))?;
    Ok(Some((Bytes::from(new), parsed)))
}
