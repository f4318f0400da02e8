//! The queue arguments warren acts on (`x-message-ttl`, `x-max-length`, dead-lettering,
//! priorities, `x-expires`...): validated on queue.declare with RabbitMQ 3.10's texts,
//! then parsed once into [`QueueArgs`] for the queue's actor.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::arguments::{as_i64, as_str, type_name};
use crate::error::AmqpError;

/// RabbitMQ's ceiling for `x-max-priority` (rabbit_priority_queue's ?MAX_SUPPORTED_PRIORITY).
pub const MAX_PRIORITY: i64 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (and dead-letter) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse the new message: basic.nack to a confirming publisher.
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

/// What the queue's arguments ask for, parsed once at declare time.
#[derive(Debug, Clone, Default)]
pub struct QueueArgs {
    /// `x-message-ttl`, ms.
    pub message_ttl: Option<u64>,
    /// `x-expires`, ms.
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<Arc<str>>,
    pub dead_letter_routing_key: Option<Arc<str>>,
    /// `x-max-priority`: the highest priority level (levels are 0..=max).
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: one consumer receives at a time (see `dispatch.rs`).
    pub single_active_consumer: bool,
    /// `x-queue-type: quorum`: served like a classic queue on one node, plus the quorum
    /// semantics that matter to clients (`x-delivery-count`, `x-delivery-limit`).
    pub quorum: bool,
    /// `x-delivery-limit` (quorum queues only, as in RabbitMQ 3.13): a message returned
    /// more often than this is dead-lettered with reason `delivery_limit`.
    pub delivery_limit: Option<u64>,
    /// `x-consumer-timeout`, else `amqp.consumer_timeout` (ms): how long a delivery may
    /// stay unacknowledged.
    pub consumer_timeout: Option<u64>,
    /// What a consumer timeout does: requeue the delivery (warren's default) or close
    /// the channel (RabbitMQ's behaviour; `amqp.consumer_timeout_action`).
    pub timeout_closes_channel: bool,
    /// The mailbox marks of back-pressure (`amqp.flow_*_messages`; see `flow.rs`).
    pub flow: super::flow::FlowMarks,
}

impl QueueArgs {
    /// Read already-validated arguments; anything unusable is ignored.
    pub fn parse(args: &FieldTable) -> QueueArgs {
        let t = args.inner();
        let int = |k: &str| {
            t.get(k)
                .and_then(as_i64)
                .and_then(|v| u64::try_from(v).ok())
        };
        let string = |k: &str| t.get(k).and_then(as_str).map(Arc::from);
        QueueArgs {
            message_ttl: int("x-message-ttl"),
            expires: int("x-expires").filter(|&v| v > 0),
            max_length: int("x-max-length"),
            max_length_bytes: int("x-max-length-bytes"),
            overflow: match t.get("x-overflow").and_then(as_str).as_deref() {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            },
            dead_letter_exchange: string("x-dead-letter-exchange"),
            dead_letter_routing_key: string("x-dead-letter-routing-key"),
            max_priority: int("x-max-priority").map(|p| p.min(MAX_PRIORITY as u64) as u8),
            single_active_consumer: matches!(
                t.get("x-single-active-consumer"),
                Some(AMQPValue::Boolean(true))
            ),
            quorum: t.get("x-queue-type").and_then(as_str).as_deref() == Some("quorum"),
            delivery_limit: int("x-delivery-limit"),
            consumer_timeout: int("x-consumer-timeout").filter(|&v| v > 0),
            timeout_closes_channel: false,
            flow: Default::default(),
        }
    }

    /// Whether publishers must ask the queue before enqueueing (reject-publish).
    pub fn admission_control(&self) -> bool {
        self.overflow != Overflow::DropHead
            && (self.max_length.is_some() || self.max_length_bytes.is_some())
    }
}

/// The queue.declare checks for a new queue, in RabbitMQ's order: the DLX name's type
/// (rabbit_channel), the queue type, then rabbit_amqqueue:declare_args/0 one by one.
/// `what` is `queue 'q' in vhost '/'`.
pub fn validate(
    args: &FieldTable,
    what: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) -> Result<(), AmqpError> {
    let t = args.inner();
    if let Some(v) = t.get("x-dead-letter-exchange") {
        if as_str(v).is_none() {
            return Err(AmqpError::precondition_failed(format!(
                "invalid type '{}' for arg 'x-dead-letter-exchange' in {what}",
                type_name(v)
            )));
        }
    }
    let invalid = |key: &str, term: String| {
        AmqpError::precondition_failed(format!("invalid arg '{key}' for {what}: {term}"))
    };
    if let Some(v) = t.get("x-queue-type") {
        match as_str(v).as_deref() {
            None => return Err(invalid("x-queue-type", unacceptable(v))),
            Some("classic") => {}
            Some("quorum") => {
                // rabbit_quorum_queue:declare's property checks. Warren serves a
                // quorum queue as a classic one (no replication on a single node).
                for (bad, property) in [
                    (auto_delete, "auto-delete"),
                    (exclusive, "exclusive-owner"),
                    (!durable, "non-durable"),
                ] {
                    if bad {
                        return Err(AmqpError::precondition_failed(format!(
                            "invalid property '{property}' for {what}"
                        )));
                    }
                }
            }
            // Streams are a different storage model and protocol surface: refused
            // plainly rather than served as a queue with other semantics.
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("\"unsupported queue type '{other}'\""),
                ))
            }
        }
    }
    for key in ["x-expires", "x-message-ttl"] {
        if let Some(v) = t.get(key) {
            let n = integer(v).map_err(|e| invalid(key, e))?;
            if n < 0 {
                return Err(invalid(key, format!("{{value_negative,{n}}}")));
            }
            if n == 0 && key == "x-expires" {
                return Err(invalid(key, "{value_zero,0}".to_owned()));
            }
        }
    }
    if let Some(v) = t.get("x-dead-letter-routing-key") {
        if as_str(v).is_none() {
            return Err(invalid("x-dead-letter-routing-key", unacceptable(v)));
        }
        if !t.contains_key("x-dead-letter-exchange") {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".to_owned(),
            ));
        }
    }
    for key in [
        "x-max-length",
        "x-max-length-bytes",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-max-priority",
        "x-delivery-limit",
        "x-consumer-timeout",
    ] {
        if let Some(v) = t.get(key) {
            let n = integer(v).map_err(|e| invalid(key, e))?;
            if n < 0 {
                return Err(invalid(key, format!("{{value_negative,{n}}}")));
            }
            if key == "x-max-priority" && n > MAX_PRIORITY {
                return Err(invalid(key, format!("{{max_value_exceeded,{n}}}")));
            }
        }
    }
    if let Some(v) = t.get("x-overflow") {
        match as_str(v).as_deref() {
            None => return Err(invalid("x-overflow", unacceptable(v))),
            Some("drop-head" | "reject-publish" | "reject-publish-dlx") => {}
            Some(_) => return Err(invalid("x-overflow", "invalid_overflow".to_owned())),
        }
    }
    if let Some(v) = t.get("x-single-active-consumer") {
        if !matches!(v, AMQPValue::Boolean(_)) {
            return Err(invalid("x-single-active-consumer", unacceptable(v)));
        }
    }
    Ok(())
}

/// rabbit_amqqueue:check_int_arg as 3.10 words it.
fn integer(v: &AMQPValue) -> Result<i64, String> {
    as_i64(v).ok_or_else(|| format!("\"expected integer, got {}\"", type_name(v)))
}

fn unacceptable(v: &AMQPValue) -> String {
    format!("{{unacceptable_type,{}}}", type_name(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(k: &str, v: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(k.into(), v);
        t
    }

    const Q: &str = "queue 'q' in vhost '/'";

    fn text(t: FieldTable) -> String {
        validate(&t, Q, false, false, false).unwrap_err().text
    }

    #[test]
    fn texts_match_rabbitmq_3_10() {
        assert_eq!(
            text(args("x-message-ttl", AMQPValue::LongInt(-1))),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        assert_eq!(
            text(args("x-message-ttl", AMQPValue::LongString("a".into()))),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert_eq!(
            text(args("x-expires", AMQPValue::LongInt(0))),
            "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        assert_eq!(
            text(args("x-max-priority", AMQPValue::LongInt(256))),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}"
        );
        assert_eq!(
            text(args("x-overflow", AMQPValue::LongString("x".into()))),
            "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"
        );
        assert_eq!(
            text(args("x-dead-letter-exchange", AMQPValue::LongInt(1))),
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
        );
        assert_eq!(
            text(args("x-queue-type", AMQPValue::LongString("quorum".into()))),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q' in vhost '/'"
        );
        assert!(validate(
            &args("x-queue-type", AMQPValue::LongString("quorum".into())),
            Q,
            true,
            false,
            false
        )
        .is_ok());
        assert!(validate(
            &args("x-max-length", AMQPValue::LongInt(0)),
            Q,
            false,
            false,
            false
        )
        .is_ok());
    }
}
