//! basic.publish once its content is complete: routing (through a per-channel route
//! cache), mandatory returns, publisher confirms and transactions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::protocol::{confirm, tx, AMQPClass};
use bytes::Bytes;

use super::{sender_selected, Channel, Session, Unacked};
use crate::access::{Grant, Perm};
use crate::error::{code, rs, AmqpError};
use crate::exchange::ExchangeKind;
use crate::message::Message;
use crate::protocol::method::{self, Publish};
use crate::protocol::properties::Properties;
use crate::queue::{QueueCmd, QueueHandle, Settle};
use crate::reply_to;
use crate::util::KeyHash;
use crate::vhost::RouteError;

/// Beyond this many distinct routing keys per exchange the cache starts over, so RPC
/// reply keys (one per client) can't grow it without bound.
const ROUTE_CACHE_KEYS: usize = 4096;

type Route = Arc<[Arc<QueueHandle>]>;

/// Routing results by (exchange, routing key), valid while the vhost's topology version
/// is unchanged. A hit costs two hash lookups and no lock.
#[derive(Default)]
pub(super) struct RouteCache {
    version: u64,
    by_exchange: HashMap<Bytes, HashMap<Bytes, Route, KeyHash>, KeyHash>,
}

impl RouteCache {
    fn get(&mut self, version: u64, exchange: &[u8], key: &[u8]) -> Option<Route> {
        if self.version != version {
            self.by_exchange.clear();
            self.version = version;
            return None;
        }
        self.by_exchange.get(exchange)?.get(key).cloned()
    }

    fn put(&mut self, exchange: &Bytes, key: &Bytes, route: Route) {
        let keys = self.by_exchange.entry(exchange.clone()).or_default();
        if keys.len() >= ROUTE_CACHE_KEYS {
            keys.clear();
        }
        keys.insert(key.clone(), route);
    }
}

/// Publisher confirms: sequence numbers given and outcomes owed.
#[derive(Default)]
pub(super) struct ConfirmState {
    /// Sequence number of the last publish.
    published: u64,
    /// Highest sequence number whose outcome is on the wire.
    sent: u64,
    /// Publishes after `sent` that are not plain acks yet, in order. Every other
    /// sequence number up to `published` is an ack.
    pending: VecDeque<(u64, Outcome)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Acked once the store has synced this message id.
    Stored(u64),
    /// Refused (reject-publish overflow, store failure).
    Nack,
}

impl ConfirmState {
    /// Publishes whose confirm is not on the wire yet.
    pub(super) fn unconfirmed(&self) -> u64 {
        self.published - self.sent
    }
}

/// A transaction's pending work, applied at commit.
#[derive(Default)]
pub(super) struct TxState {
    publishes: Vec<(Publish, Bytes, Properties, Bytes, Vec<String>)>,
    /// Settlements taken out of the unacked list at ack time (so tags are checked then),
    /// applied at commit or put back at rollback.
    settles: Vec<(Vec<Unacked>, Settle)>,
}

impl TxState {
    /// Publishes and acknowledgements waiting for tx.commit.
    pub(super) fn uncommitted(&self) -> (usize, usize) {
        (
            self.publishes.len(),
            self.settles.iter().map(|(u, _)| u.len()).sum(),
        )
    }
}

impl Channel {
    /// basic.publish with its content, as rabbit_channel reads it: a row of checks
    /// (write permission, user_id, expiration, the CC/BCC keys' topic permissions),
    /// the property rewrites (sender-selected keys stripped, direct reply-to named),
    /// then held for the transaction or routed and enqueued now.
    pub(super) fn publish(
        &mut self,
        s: &mut Session,
        p: Publish,
        properties: Bytes,
        props: Properties,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let in_publish = |e: AmqpError| e.on(60, 40);
        let grant = self.authorize_publish(s, &p).map_err(in_publish)?;
        s.tally.received += 1;
        if self.confirm.is_some() {
            s.tally.received_confirm += 1;
        }
        check_user_id(s, &properties, &props).map_err(in_publish)?;
        check_expiration(&properties, &props).map_err(in_publish)?;
        // Sender-selected distribution: CC/BCC keys route too, and BCC is not delivered.
        let mut extra_keys = Vec::new();
        let (properties, props) =
            match sender_selected::parse(&properties, &props).map_err(in_publish)? {
                None => (properties, props),
                Some(ss) => {
                    extra_keys = ss.keys;
                    ss.stripped.unwrap_or((properties, props))
                }
            };
        if grant == Grant::TopicCheck {
            authorize_extra_keys(s, &p, &extra_keys).map_err(in_publish)?;
        }
        // Direct reply-to: `reply_to: amq.rabbitmq.reply-to` names this channel's consumer.
        let (properties, props) =
            match reply_to::rewrite(&properties, &props, self.reply_consumer.as_deref())
                .map_err(in_publish)?
            {
                Some(rewritten) => rewritten,
                None => (properties, props),
            };
        if let Some(tx) = &mut self.tx {
            // Checked now so a bad exchange fails the publish, not the commit.
            let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
            if !s.vhost.exchange_exists(exchange) {
                return Err(in_publish(AmqpError::not_found(format!(
                    "no {}",
                    rs("exchange", exchange, &s.vhost.name)
                ))));
            }
            tx.publishes.push((p, properties, props, body, extra_keys));
            return Ok(());
        }
        self.route_and_enqueue(s, p, properties, props, body, extra_keys)
            .map(|_| ())
    }

    /// Write on the exchange (the default one as `amq.default`), then topic write on the
    /// routing key if the user has topic permissions there; the verdict is cached per
    /// exchange until permissions or the topology change.
    fn authorize_publish(&mut self, s: &Session, p: &Publish) -> Result<Grant, AmqpError> {
        let generation = (s.broker.access.generation(), s.vhost.version());
        let grant = match self.grants.get(generation, &p.exchange) {
            Some(g) => g,
            None => {
                let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
                s.authorize("exchange", exchange, Perm::Write)?;
                let topic = s.vhost.exchange_kind(exchange) == Some(ExchangeKind::Topic)
                    && s.broker
                        .access
                        .topic_restricted(&s.user, &s.vhost.name, exchange);
                let g = if topic {
                    Grant::TopicCheck
                } else {
                    Grant::Allowed
                };
                self.grants.put(&p.exchange, g);
                g
            }
        };
        if grant == Grant::TopicCheck {
            let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
            s.broker.access.check_topic(
                &s.user,
                &s.vhost.name,
                exchange,
                &String::from_utf8_lossy(&p.routing_key),
                Perm::Write,
            )?;
        }
        Ok(grant)
    }

    /// Route, then enqueue (or return, if routed nowhere), then note what the confirm
    /// waits for. Now, or at tx.commit for each held publish. The message's store id if
    /// it was persisted.
    fn route_and_enqueue(
        &mut self,
        s: &mut Session,
        p: Publish,
        properties: Bytes,
        props: Properties,
        body: Bytes,
        extra_keys: Vec<String>,
    ) -> Result<Option<u64>, AmqpError> {
        if p.exchange.is_empty() && reply_to::reply_id_bytes(&p.routing_key).is_some() {
            deliver_reply(s, &p, &properties, &body);
        }
        let route = self.route(s, &p, &properties, &props, &extra_keys)?;
        let m = Message {
            exchange: p.exchange,
            routing_key: p.routing_key,
            properties,
            body,
            store_id: None,
        };
        let (refused, stored) = if route.is_empty() {
            self.unroutable(s, p.mandatory, m);
            (false, None)
        } else {
            s.tally.routed += 1;
            self.enqueue(s, &route, m, props.persistent())
        };
        self.await_confirm(s, refused, stored);
        Ok(stored)
    }

    /// The queues the message goes to: from the channel's route cache (valid while the
    /// vhost's topology version stands), else routed by the exchange and cached when
    /// the route does not depend on the message (no CC/BCC keys, not a headers match).
    fn route(
        &mut self,
        s: &Session,
        p: &Publish,
        properties: &Bytes,
        props: &Properties,
        extra_keys: &[String],
    ) -> Result<Route, AmqpError> {
        let version = s.vhost.version();
        if extra_keys.is_empty() {
            if let Some(r) = self.routes.get(version, &p.exchange, &p.routing_key) {
                return Ok(r);
            }
        }
        let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
        let key = String::from_utf8_lossy(&p.routing_key);
        let mut keys = Vec::with_capacity(1 + extra_keys.len());
        keys.push(&*key);
        keys.extend(extra_keys.iter().map(String::as_str));
        let mut queues = Vec::new();
        let mut headers = || props.headers(properties);
        match s
            .vhost
            .route_keys(exchange, &keys, &mut headers, &mut queues)
        {
            Ok(cacheable) => {
                let route: Route = queues.into();
                if cacheable && extra_keys.is_empty() {
                    self.routes.put(&p.exchange, &p.routing_key, route.clone());
                }
                Ok(route)
            }
            Err(RouteError::NoExchange) => Err(AmqpError::not_found(format!(
                "no {}",
                rs("exchange", exchange, &s.vhost.name)
            ))
            .on(60, 40)),
            Err(RouteError::Internal) => Err(AmqpError::access_refused(format!(
                "cannot publish to internal {}",
                rs("exchange", exchange, &s.vhost.name)
            ))
            .on(60, 40)),
        }
    }

    /// Routed nowhere: counted, and returned to a mandatory publisher (basic.return
    /// 312 NO_ROUTE with the message).
    fn unroutable(&self, s: &mut Session, mandatory: bool, m: Message) {
        if !mandatory {
            s.tally.unroutable_dropped += 1;
            return;
        }
        s.tally.unroutable_returned += 1;
        method::encode_return(
            &mut s.out.buf,
            self.number,
            code::NO_ROUTE,
            "NO_ROUTE",
            &m.exchange,
            &m.routing_key,
        );
        m.write_content(&mut s.out, self.number, s.frame_max);
    }

    /// Into the route's queues, one shared message: admission first (full
    /// reject-publish queues refuse it), then the store for a persistent message bound
    /// for durable queues (its confirm then waits for the sync), then each admitting
    /// queue's batch. Whether some queue refused it, and its store id.
    fn enqueue(
        &mut self,
        s: &mut Session,
        route: &Route,
        mut m: Message,
        persistent: bool,
    ) -> (bool, Option<u64>) {
        let mut refused = false;
        let mut stored = None;
        // Queues that refuse it (see queue/admission.rs). Empty, and so never
        // allocated, for the common publish.
        let mut refusing: Vec<&Arc<QueueHandle>> = Vec::new();
        for q in route.iter() {
            if let Some(a) = q.admission() {
                if !a.try_admit(m.body.len() as u64) {
                    refused = true;
                    refusing.push(q);
                }
            }
        }
        let admitted = |q: &&Arc<QueueHandle>| !refusing.iter().any(|r| r.id == q.id);
        let mut skip_durable = false;
        if persistent {
            if let Some(store) = s.vhost.store() {
                let qids: Vec<u64> = route
                    .iter()
                    .filter(admitted)
                    .filter_map(|q| q.store_qid)
                    .collect();
                if !qids.is_empty() {
                    if store.messages.is_failing() {
                        // Refused, not accepted in memory only: the publisher retries.
                        refused = true;
                        skip_durable = true;
                    } else {
                        let waiter = self.confirm.is_some().then_some(&s.store_synced);
                        let id = store.messages.persist(qids, &m, waiter);
                        m.store_id = Some(id);
                        stored = Some(id);
                    }
                }
            }
        }
        let m = Arc::new(m);
        for q in route.iter().filter(admitted) {
            if !(skip_durable && q.store_qid.is_some()) {
                s.publishes.push(q, m.clone());
            }
        }
        let refused_dlx = refusing
            .iter()
            .filter(|q| q.admission().is_some_and(|a| a.dead_letter()));
        for q in refused_dlx {
            q.send(QueueCmd::Refused(m.clone()));
        }
        (refused, stored)
    }

    /// In confirm mode: the publish's sequence number, and what its confirm waits for
    /// (a nack if refused, the store's sync if stored, else nothing: acked with the
    /// round's confirms).
    fn await_confirm(&mut self, s: &mut Session, refused: bool, stored: Option<u64>) {
        let Some(c) = &mut self.confirm else { return };
        c.published += 1;
        let seq = c.published;
        if refused {
            c.pending.push_back((seq, Outcome::Nack));
        } else if let Some(id) = stored {
            c.pending.push_back((seq, Outcome::Stored(id)));
        }
        if s.confirms_due.last() != Some(&self.number) {
            s.confirms_due.push(self.number);
        }
    }

    /// Write the confirms that are due, in order: acks coalesced with `multiple`, nacks
    /// one by one, stopping at the first publish still waiting for the store.
    pub fn flush_confirms(&mut self, s: &mut Session) {
        let Some(c) = &mut self.confirm else { return };
        let store = s.vhost.store().map(|st| &st.messages);
        let synced = store.map_or(u64::MAX, |m| m.confirmed());
        // Written, or failed (a disk error: nacked); ids past the watermark wait.
        let written = |id: u64| store.is_none_or(|m| !m.is_failed(id));
        loop {
            let (limit, outcome) = match c.pending.front() {
                Some(&(seq, o)) => (seq, Some(o)),
                None => (c.published + 1, None),
            };
            // Everything before the first pending publish is simply acked.
            if limit - 1 > c.sent {
                s.tally.confirmed += limit - 1 - c.sent;
                let multiple = limit - 1 - c.sent > 1;
                method::encode_confirm(&mut s.out.buf, self.number, limit - 1, multiple, false);
                c.sent = limit - 1;
            }
            match outcome {
                None => break,
                Some(Outcome::Stored(id)) if id <= synced && written(id) => {
                    c.pending.pop_front(); // now a plain ack, covered by the next round
                }
                Some(Outcome::Stored(id)) if id > synced && written(id) => break,
                // Refused, or the store failed to write it.
                Some(_) => {
                    method::encode_confirm(&mut s.out.buf, self.number, limit, false, true);
                    c.sent = limit;
                    c.pending.pop_front();
                }
            }
        }
    }

    pub(super) fn confirm_select(
        &mut self,
        s: &mut Session,
        nowait: bool,
    ) -> Result<(), AmqpError> {
        if self.tx.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from tx to confirm mode",
            ));
        }
        if self.confirm.is_none() {
            self.confirm = Some(Box::default());
        }
        if !nowait {
            s.send(
                self.number,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn tx_select(&mut self, s: &mut Session) -> Result<(), AmqpError> {
        if self.confirm.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from confirm to tx mode",
            ));
        }
        if self.tx.is_none() {
            self.tx = Some(Box::default());
        }
        s.send(
            self.number,
            AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        );
        Ok(())
    }

    pub(super) async fn tx_commit(&mut self, s: &mut Session) -> Result<(), AmqpError> {
        let Some(state) = self.tx.as_deref_mut().map(std::mem::take) else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        let mut last_stored = None;
        for (p, properties, props, body, extra_keys) in state.publishes {
            last_stored = self
                .route_and_enqueue(s, p, properties, props, body, extra_keys)?
                .or(last_stored);
        }
        s.publishes.flush();
        // commit-ok means the transaction's persistent messages are on disk.
        if let (Some(id), Some(store)) = (last_stored, s.vhost.store()) {
            if !store.messages.wait_synced(id).await {
                return Err(AmqpError::internal_error(
                    "the message store failed; the transaction's messages are not safe",
                ));
            }
        }
        for (entries, how) in state.settles {
            self.settle(entries, how);
        }
        s.send(
            self.number,
            AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, s: &mut Session) -> Result<(), AmqpError> {
        let Some(state) = self.tx.as_deref_mut().map(std::mem::take) else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        // Acked-in-transaction deliveries become unacked again, in tag order.
        let mut back: Vec<Unacked> = state.settles.into_iter().flat_map(|(e, _)| e).collect();
        back.extend(self.unacked.drain(..));
        back.sort_by_key(|u| u.tag);
        self.unacked = back.into();
        s.send(
            self.number,
            AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
        );
        Ok(())
    }

    pub(super) fn in_tx(&self) -> bool {
        self.tx.is_some()
    }

    pub(super) fn tx_stash(&mut self, entries: Vec<Unacked>, how: Settle) {
        if let Some(tx) = &mut self.tx {
            tx.settles.push((entries, how));
        }
    }
}

/// A `user_id` property must name the authenticated user (RabbitMQ's check, text and
/// all).
fn check_user_id(s: &Session, properties: &Bytes, props: &Properties) -> Result<(), AmqpError> {
    match props.user_id(properties) {
        Some(claimed) if claimed != s.user.as_bytes() => {
            Err(AmqpError::precondition_failed(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                String::from_utf8_lossy(claimed),
                s.user
            )))
        }
        _ => Ok(()),
    }
}

/// An `expiration` property must be a non-negative integer (in ms, as a string).
fn check_expiration(properties: &Bytes, props: &Properties) -> Result<(), AmqpError> {
    match props.expiration(properties) {
        Some(exp) => crate::protocol::properties::parse_expiration(exp)
            .map(|_| ())
            .map_err(|term| {
                AmqpError::precondition_failed(format!(
                    "invalid expiration '{}': {term}",
                    String::from_utf8_lossy(exp)
                ))
            }),
        None => Ok(()),
    }
}

/// Topic permissions cover every routing key of the message, CC and BCC ones included
/// (rabbit_channel:check_write_permitted_on_topics over mc:routing_keys).
fn authorize_extra_keys(s: &Session, p: &Publish, keys: &[String]) -> Result<(), AmqpError> {
    let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
    for key in keys {
        s.broker
            .access
            .check_topic(&s.user, &s.vhost.name, exchange, key, Perm::Write)?;
    }
    Ok(())
}

/// A publish to `amq.rabbitmq.reply-to.<id>`: straight to the requester's channel. No
/// queue is involved, so for everything else (mandatory, confirms) the publish routed
/// nowhere, as in RabbitMQ (rabbit_exchange:route's virtual reply queues).
fn deliver_reply(s: &Session, p: &Publish, properties: &Bytes, body: &Bytes) {
    let key = String::from_utf8_lossy(&p.routing_key);
    s.broker.reply_to.deliver(
        &key,
        Arc::new(Message {
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
            properties: properties.clone(),
            body: body.clone(),
            store_id: None,
        }),
    );
}
