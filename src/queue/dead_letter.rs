//! Dead-lettering (`x-dead-letter-exchange`): a message rejected without requeue, expired,
//! or dropped by `x-max-length` is republished to the queue's DLX with RabbitMQ 3.10's
//! `x-death` bookkeeping (rabbit_dead_letter:make_msg/5 and detect_cycles/3).
//!
//! The copy gets new property bytes (headers rewritten, `expiration` removed; every other
//! property byte-identical) and shares the original body.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Host, QueueCmd};
use crate::message::Message;
use crate::protocol::properties::{self, Properties};
use crate::protocol::table::{self, RawField};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    /// A quorum queue's `delivery-limit` was exceeded.
    DeliveryLimit,
}

impl Reason {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Reason::Rejected => b"rejected",
            Reason::Expired => b"expired",
            Reason::Maxlen => b"maxlen",
            Reason::DeliveryLimit => b"delivery_limit",
        }
    }
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone)]
pub struct DeadLetterTarget {
    pub exchange: Arc<str>,
    /// `x-dead-letter-routing-key`; without it the message keeps its routing key.
    pub routing_key: Option<Arc<str>>,
}

/// One entry of the final x-death list, as cycle detection reads it: queue and reason,
/// `None` for an entry a client wrote in a shape we don't know.
type Death = Option<(Vec<u8>, Vec<u8>)>;

/// Republish dead messages from `queue` to its DLX. A missing exchange drops them
/// silently, as RabbitMQ does.
pub fn publish(
    host: &dyn Host,
    target: &DeadLetterTarget,
    queue: &str,
    reason: Reason,
    messages: &[Arc<Message>],
) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut routed = Vec::new();
    for m in messages {
        let Some((dl, deaths)) = make_message(m, reason, queue, target, now) else {
            // Only a message stored by an older warren can get here (publishes are
            // checked): its properties cannot be rewritten safely, so it is not routed,
            // and not lost either: it is set aside for recovery by hand.
            tracing::warn!(
                queue,
                "dead-lettering skipped a message whose properties do not decode"
            );
            host.set_aside(queue, m);
            continue;
        };
        let props = Properties::parse(&dl.properties);
        let mut headers = || props.and_then(|p| p.headers(&dl.properties));
        let key = String::from_utf8_lossy(&dl.routing_key).into_owned();
        // Without x-dead-letter-routing-key the message's CC keys route it too
        // (rabbit_dead_letter routes by mc:routing_keys; with one, CC was removed).
        let cc = cc_keys(&dl.properties);
        let mut keys = vec![key.as_str()];
        keys.extend(cc.iter().map(String::as_str));
        routed.clear();
        if !host.route(&target.exchange, &keys, &mut headers, &mut routed) {
            continue;
        }
        let mut targets = Vec::with_capacity(routed.len());
        for q in &routed {
            if reason != Reason::Rejected && is_cycle(&deaths, q.name.as_bytes()) {
                tracing::debug!(queue = %q.name, "dead-letter cycle without rejection: message dropped");
                continue;
            }
            if let Some(a) = q.admission() {
                if !a.try_admit(dl.body.len() as u64) {
                    continue;
                }
            }
            targets.push(q);
        }
        // A persistent dead letter reaching durable queues is stored like a publish
        // (nobody waits for a confirm).
        let mut dl = dl;
        if props.is_some_and(|p| p.persistent()) {
            if let Some(store) = host.store() {
                let qids: Vec<u64> = targets.iter().filter_map(|q| q.store_qid).collect();
                if !qids.is_empty() && !store.messages.is_failing() {
                    dl.store_id = Some(store.messages.persist(qids, &dl, None));
                }
            }
        }
        let dl = Arc::new(dl);
        for q in targets {
            q.send(QueueCmd::Publish(dl.clone()));
        }
    }
}

/// The `CC` header's keys (longstr items), if the message has one.
fn cc_keys(raw: &[u8]) -> Vec<String> {
    let Some(fields) = properties::headers_payload(raw).and_then(table::fields) else {
        return Vec::new();
    };
    table::get(&fields, "CC")
        .and_then(table::array_items)
        .map(|items| {
            items
                .into_iter()
                .filter_map(table::as_longstr)
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// rabbit_dead_letter:is_cycle/2: the newest deaths up to and including the first one in
/// `queue` form a cycle; it is dropped only if fully automatic (no `rejected` in it).
fn is_cycle(deaths: &[Death], queue: &[u8]) -> bool {
    let Some(at) = deaths
        .iter()
        .position(|d| matches!(d, Some((q, _)) if q == queue))
    else {
        return false;
    };
    deaths[..=at]
        .iter()
        .all(|d| matches!(d, Some((_, r)) if r != b"rejected"))
}

/// rabbit_dead_letter:make_msg/5: the dead-lettered copy and its x-death list.
fn make_message(
    m: &Message,
    reason: Reason,
    queue: &str,
    target: &DeadLetterTarget,
    now: u64,
) -> Option<(Message, Vec<Death>)> {
    let raw = &m.properties;
    let headers = match properties::headers_payload(raw) {
        Some(p) => table::fields(p)?,
        None => Vec::new(),
    };
    let props = Properties::parse(raw)?;

    // routing-keys: the publish's key, then any CC keys (rabbit_basic:header_routes).
    let mut keys = vec![table::longstr(&m.routing_key)];
    if let Some(cc) = table::get(&headers, "CC").and_then(table::array_items) {
        keys.extend(
            cc.into_iter()
                .filter(|v| v.first() == Some(&b'S'))
                .map(<[u8]>::to_vec),
        );
    }
    let mut info: Vec<(&[u8], Vec<u8>)> = vec![
        (b"reason", table::longstr(reason.as_bytes())),
        (b"queue", table::longstr(queue.as_bytes())),
        (b"time", table::timestamp(now)),
        (b"exchange", table::longstr(&m.exchange)),
        (b"routing-keys", table::array(&keys)),
    ];
    if let Some(exp) = props.expiration(raw) {
        info.push((b"original-expiration", table::longstr(exp)));
    }

    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let old_deaths = table::get(&headers, "x-death").and_then(table::array_items);
    let deaths_value = match old_deaths {
        None => {
            // First death: the entry keeps RabbitMQ's field order, and the
            // x-first-death-* headers are recorded.
            let mut entry = vec![(&b"count"[..], table::long(1))];
            entry.extend(info);
            for (k, v) in [
                ("x-first-death-reason", reason.as_bytes()),
                ("x-first-death-queue", queue.as_bytes()),
                ("x-first-death-exchange", &m.exchange[..]),
            ] {
                out.push((k.as_bytes().to_vec(), table::longstr(v)));
            }
            table::array(&[table::table(&entry)])
        }
        Some(items) => {
            let matches = |item: &[u8]| {
                table::table_fields(item).is_some_and(|f| {
                    table::get(&f, "queue").and_then(table::as_longstr) == Some(queue.as_bytes())
                        && table::get(&f, "reason").and_then(table::as_longstr)
                            == Some(reason.as_bytes())
                })
            };
            let first = match items.iter().position(|i| matches(i)) {
                // Same queue and reason again: that entry's count goes up and it moves
                // to the front, its other fields unchanged (and sorted, as RabbitMQ does).
                Some(at) => {
                    let f = table::table_fields(items[at])?;
                    let count = table::get(&f, "count").and_then(table::as_int).unwrap_or(0);
                    let count = table::long(count + 1);
                    let mut entry: Vec<(&[u8], &[u8])> = f
                        .iter()
                        .filter(|x| x.key != b"count")
                        .map(|x| (x.key, x.value))
                        .collect();
                    entry.push((b"count", &count));
                    entry.sort_by(|a, b| a.0.cmp(b.0));
                    (table::table(&entry), Some(at))
                }
                None => {
                    let mut entry = vec![(&b"count"[..], table::long(1))];
                    entry.extend(info);
                    entry.sort_by(|a, b| a.0.cmp(b.0));
                    (table::table(&entry), None)
                }
            };
            let mut all = vec![first.0];
            all.extend(
                items
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != first.1)
                    .map(|(_, v)| v.to_vec()),
            );
            table::array(&all)
        }
    };
    let deaths = table::array_items(&deaths_value)
        .unwrap_or_default()
        .into_iter()
        .map(|item| {
            let f = table::table_fields(item)?;
            let q = table::get(&f, "queue").and_then(table::as_longstr)?;
            let r = table::get(&f, "reason").and_then(table::as_longstr)?;
            Some((q.to_vec(), r.to_vec()))
        })
        .collect();

    let drop_cc = target.routing_key.is_some();
    for RawField { key, value } in &headers {
        let replaced =
            *key == b"x-death" || out.iter().any(|(k, _)| k == key) || (drop_cc && *key == b"CC");
        if !replaced {
            out.push((key.to_vec(), value.to_vec()));
        }
    }
    out.push((b"x-death".to_vec(), deaths_value));
    // rabbit_misc:set_table_value sorts the whole table by key.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let new_props = properties::rewrite_headers_drop_expiration(raw, &table::table_payload(&out))?;

    let routing_key = match &target.routing_key {
        Some(k) => Bytes::copy_from_slice(k.as_bytes()),
        None => m.routing_key.clone(),
    };
    let message = Message {
        exchange: Bytes::copy_from_slice(target.exchange.as_bytes()),
        routing_key,
        properties: Bytes::from(new_props),
        body: m.body.clone(),
        store_id: None,
    };
    Some((message, deaths))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(properties: Vec<u8>) -> Message {
        Message {
            exchange: Bytes::from_static(b"ex"),
            routing_key: Bytes::from_static(b"rk"),
            properties: Bytes::from(properties),
            body: Bytes::from_static(b"body"),
            store_id: None,
        }
    }

    fn target() -> DeadLetterTarget {
        DeadLetterTarget {
            exchange: Arc::from("dlx"),
            routing_key: None,
        }
    }

    fn x_death(m: &Message) -> Vec<Vec<(String, Vec<u8>)>> {
        let h = table::fields(properties::headers_payload(&m.properties).unwrap()).unwrap();
        table::array_items(table::get(&h, "x-death").unwrap())
            .unwrap()
            .into_iter()
            .map(|i| {
                table::table_fields(i)
                    .unwrap()
                    .into_iter()
                    .map(|f| (String::from_utf8(f.key.to_vec()).unwrap(), f.value.to_vec()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn first_death_in_rabbitmq_field_order_and_expiration_moved() {
        // flags: content-type + expiration
        let mut p = vec![0x81, 0x00, 3, b't', b'/', b'p', 2, b'5', b'0'];
        let m = message(std::mem::take(&mut p));
        let (dl, deaths) = make_message(&m, Reason::Expired, "q1", &target(), 7).unwrap();
        let parsed = Properties::parse(&dl.properties).unwrap();
        assert!(parsed.expiration(&dl.properties).is_none());
        assert_eq!(&dl.properties[2..6], &[3, b't', b'/', b'p']);
        let d = x_death(&dl);
        let keys: Vec<&str> = d[0].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "count",
                "reason",
                "queue",
                "time",
                "exchange",
                "routing-keys",
                "original-expiration"
            ]
        );
        assert_eq!(deaths, vec![Some((b"q1".to_vec(), b"expired".to_vec()))]);
        let h = table::fields(properties::headers_payload(&dl.properties).unwrap()).unwrap();
        let names: Vec<&[u8]> = h.iter().map(|f| f.key).collect();
        assert_eq!(
            names,
            [
                &b"x-death"[..],
                b"x-first-death-exchange",
                b"x-first-death-queue",
                b"x-first-death-reason"
            ]
        );
        assert_eq!(&dl.exchange[..], b"dlx");
        assert_eq!(&dl.routing_key[..], b"rk");

        // The same queue and reason again: count 2, sorted fields; another reason adds
        // a new entry in front.
        let (dl2, _) = make_message(&dl, Reason::Expired, "q1", &target(), 8).unwrap();
        let d2 = x_death(&dl2);
        assert_eq!(d2.len(), 1);
        assert_eq!(d2[0][0], ("count".to_owned(), table::long(2)));
        let (dl3, deaths3) = make_message(&dl2, Reason::Rejected, "q2", &target(), 9).unwrap();
        assert_eq!(x_death(&dl3).len(), 2);
        assert!(!is_cycle(&deaths3, b"q9"));
        assert!(
            !is_cycle(&deaths3, b"q1"),
            "a rejection in the cycle makes it not automatic"
        );
        assert!(is_cycle(&deaths, b"q1"));
    }
}
