//! basic.publish once its content is complete: routing (through a per-channel route
//! cache), mandatory returns, publisher confirms and transactions.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::protocol::{confirm, tx, AMQPClass};
use bytes::Bytes;

use super::{Channel, Session, Unacked};
use crate::access::{Grant, Perm};
use crate::error::{code, rs, AmqpError};
use crate::exchange::ExchangeKind;
use crate::message::Message;
use crate::protocol::method::{self, Publish};
use crate::protocol::properties::Properties;
use crate::queue::{QueueHandle, Settle};
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
    by_exchange: HashMap<Bytes, HashMap<Bytes, Route>>,
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

/// Publisher confirms: sequence numbers given and acks owed.
#[derive(Default)]
pub(super) struct ConfirmState {
    /// Sequence number of the last publish.
    published: u64,
    /// Highest sequence number confirmed but not yet acked on the wire.
    confirmed: u64,
    /// Highest sequence number acked on the wire.
    sent: u64,
}

/// A transaction's pending work, applied at commit.
#[derive(Default)]
pub(super) struct TxState {
    publishes: Vec<(Publish, Bytes, Properties, Bytes)>,
    /// Settlements taken out of the unacked list at ack time (so tags are checked then),
    /// applied at commit or put back at rollback.
    settles: Vec<(Vec<Unacked>, Settle)>,
}

impl Channel {
    pub(super) fn publish(
        &mut self,
        s: &mut Session,
        p: Publish,
        properties: Bytes,
        props: Properties,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        self.authorize_publish(s, &p).map_err(|e| e.on(60, 40))?;
        if let Some(claimed) = props.user_id(&properties) {
            if claimed != s.user.as_bytes() {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    String::from_utf8_lossy(claimed),
                    s.user
                ))
                .on(60, 40));
            }
        }
        if let Some(tx) = &mut self.tx {
            // Checked now so a bad exchange fails the publish, not the commit.
            let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
            if !s.vhost.exchange_exists(exchange) {
                return Err(AmqpError::not_found(format!(
                    "no {}",
                    rs("exchange", exchange, &s.vhost.name)
                ))
                .on(60, 40));
            }
            tx.publishes.push((p, properties, props, body));
            return Ok(());
        }
        self.route_and_enqueue(s, p, properties, props, body)
    }

    /// Write on the exchange (the default one as `amq.default`), then topic write on the
    /// routing key if the user has topic permissions there; the verdict is cached per
    /// exchange until permissions or the topology change.
    fn authorize_publish(&mut self, s: &Session, p: &Publish) -> Result<(), AmqpError> {
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
        Ok(())
    }

    fn route_and_enqueue(
        &mut self,
        s: &mut Session,
        p: Publish,
        properties: Bytes,
        props: Properties,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let version = s.vhost.version();
        let route = match self.routes.get(version, &p.exchange, &p.routing_key) {
            Some(r) => r,
            None => {
                let exchange = std::str::from_utf8(&p.exchange).unwrap_or("\u{fffd}");
                let key = String::from_utf8_lossy(&p.routing_key);
                let mut queues = Vec::new();
                let mut headers = || props.headers(&properties);
                match s.vhost.route(exchange, &key, &mut headers, &mut queues) {
                    Ok(cacheable) => {
                        let route: Route = queues.into();
                        if cacheable {
                            self.routes.put(&p.exchange, &p.routing_key, route.clone());
                        }
                        route
                    }
                    Err(RouteError::NoExchange) => {
                        return Err(AmqpError::not_found(format!(
                            "no {}",
                            rs("exchange", exchange, &s.vhost.name)
                        ))
                        .on(60, 40))
                    }
                    Err(RouteError::Internal) => {
                        return Err(AmqpError::access_refused(format!(
                            "cannot publish to internal {}",
                            rs("exchange", exchange, &s.vhost.name)
                        ))
                        .on(60, 40))
                    }
                }
            }
        };
        if route.is_empty() {
            if p.mandatory {
                method::encode_return(
                    &mut s.out.buf,
                    self.number,
                    code::NO_ROUTE,
                    "NO_ROUTE",
                    &p.exchange,
                    &p.routing_key,
                );
                let m = Message {
                    exchange: p.exchange,
                    routing_key: p.routing_key,
                    properties,
                    body,
                };
                m.write_content(&mut s.out, self.number, s.frame_max);
            }
        } else {
            let m = Arc::new(Message {
                exchange: p.exchange,
                routing_key: p.routing_key,
                properties,
                body,
            });
            for q in route.iter() {
                s.publishes.push(q, m.clone());
            }
        }
        // Without durability every routed (or returned) message is settled once handed to
        // its queues, so the confirm is due at once, after any basic.return.
        if let Some(c) = &mut self.confirm {
            c.published += 1;
            c.confirmed = c.published;
            if c.sent + 1 == c.confirmed {
                s.confirms_due.push(self.number);
            }
        }
        Ok(())
    }

    /// Write the acks owed to a confirming publisher, coalesced with `multiple`.
    pub fn flush_confirms(&mut self, s: &mut Session) {
        if let Some(c) = &mut self.confirm {
            if c.confirmed > c.sent {
                let multiple = c.confirmed - c.sent > 1;
                method::encode_confirm(&mut s.out.buf, self.number, c.confirmed, multiple, false);
                c.sent = c.confirmed;
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
            self.confirm = Some(ConfirmState::default());
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
            self.tx = Some(TxState::default());
        }
        s.send(
            self.number,
            AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        );
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, s: &mut Session) -> Result<(), AmqpError> {
        let Some(state) = self.tx.replace(TxState::default()) else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        for (p, properties, props, body) in state.publishes {
            self.route_and_enqueue(s, p, properties, props, body)?;
        }
        s.publishes.flush();
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
        let Some(state) = self.tx.replace(TxState::default()) else {
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
