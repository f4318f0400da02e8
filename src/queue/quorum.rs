//! Quorum-queue semantics that clients see, on one node: the `x-delivery-count` header
//! on a message that comes back to the queue, and poison-message handling with
//! `x-delivery-limit` (rabbit_fifo in RabbitMQ 3.13: every return of a message, by
//! nack/reject with requeue or by its consumer going away, counts as a failed delivery;
//! once the count exceeds the limit the message is dead-lettered, reason
//! `delivery_limit`).
//!
//! The count lives in the message's own headers, so nothing is added to queue entries
//! and classic queues pay nothing. It is not kept across a broker restart.

use std::sync::Arc;

use super::args::QueueArgs;
use super::ready::Entry;
use crate::message::Message;
use crate::protocol::properties;
use crate::protocol::table::{self, RawField};

const HEADER: &str = "x-delivery-count";

/// How often the message has come back so far (0 for a first delivery).
pub(super) fn delivery_count(m: &Message) -> i64 {
    properties::headers_payload(&m.properties)
        .and_then(table::fields)
        .and_then(|f| table::get(&f, HEADER).and_then(table::as_int))
        .unwrap_or(0)
}

/// The message with `x-delivery-count: count` (other headers and properties kept).
pub(super) fn with_delivery_count(m: &Message, count: i64) -> Option<Message> {
    let fields = match properties::headers_payload(&m.properties) {
        Some(p) => table::fields(p)?,
        None => Vec::new(),
    };
    let value = table::long(count);
    let mut out: Vec<(&[u8], &[u8])> = fields
        .iter()
        .filter(|RawField { key, .. }| *key != HEADER.as_bytes())
        .map(|f| (f.key, f.value))
        .collect();
    out.push((HEADER.as_bytes(), &value));
    let props = properties::rewrite_headers(&m.properties, &table::table_payload(&out))?;
    Some(Message {
        exchange: m.exchange.clone(),
        routing_key: m.routing_key.clone(),
        properties: props.into(),
        body: m.body.clone(),
        store_id: m.store_id,
    })
}

/// A delivery comes back to the queue: for a quorum queue, one more failed delivery.
/// Err when that exceeds the delivery limit (the caller dead-letters it).
pub(super) fn returned(args: &QueueArgs, mut e: Entry) -> Result<Entry, Entry> {
    if !args.quorum {
        return Ok(e);
    }
    let count = delivery_count(&e.message) + 1;
    if args
        .delivery_limit
        .is_some_and(|limit| count as u64 > limit)
    {
        return Err(e);
    }
    if let Some(m) = with_delivery_count(&e.message, count) {
        e.message = Arc::new(m);
    }
    Ok(e)
}
