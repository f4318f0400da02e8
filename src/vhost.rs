//! A virtual host: its exchanges, queues and bindings (the topology), and routing.
//!
//! The topology is read-mostly. Publishers don't take its lock per message: each channel
//! caches routing results and revalidates them against [`Vhost::version`], which every
//! topology change bumps. Changes take the write lock briefly and never across an await.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use amq_protocol::types::FieldTable;

use crate::arguments::{self, EXCHANGE_EQUIVALENCE_KEYS, QUEUE_EQUIVALENCE_KEYS};
use crate::error::{rs, AmqpError};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::policy::PolicySet;
use crate::queue::{Host, QueueHandle, QueueSpec};
use crate::store::meta::{BindingDef, ExchangeDef, QueueDef, VhostDefs};
use crate::store::{Change, Recovered, Store};

mod policies;
pub use policies::QueueDefaults;

/// Exchanges every vhost has (RabbitMQ's set), all durable.
const STANDARD_EXCHANGES: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

#[derive(Default)]
struct Topology {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Arc<QueueHandle>>,
}

pub struct Vhost {
    pub name: Arc<str>,
    topology: RwLock<Topology>,
    version: AtomicU64,
    me: Weak<Vhost>,
    /// Where durable changes and persistent messages go (None: nothing is kept).
    store: Option<Arc<Store>>,
    /// Policies and operator policies (see `policy.rs`): read when a queue or exchange
    /// is created, written by set/clear, which then push the change to what matches.
    /// Taken after `topology` when both are needed, never across an await.
    policies: RwLock<PolicySet>,
    /// Defaults for queues created here that do not come from their arguments.
    queue_defaults: RwLock<QueueDefaults>,
    /// Deleted: its deletion is recorded, and nothing that follows (its queues going
    /// away) may be, lest it land on a new vhost of the same name at replay.
    deleted: AtomicBool,
}

pub struct ExchangeDecl<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

pub struct QueueDecl {
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// An exchange as listed and exported.
pub struct ExchangeInfo {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// Why a publish could not be routed at all (as opposed to routing to nothing).
pub enum RouteError {
    NoExchange,
    Internal,
}

/// The narrow view of a vhost its queues get (see [`Host`]).
impl Host for Vhost {
    fn route(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<QueueHandle>>,
    ) -> bool {
        self.route_keys(exchange, keys, headers, out).is_ok()
    }

    fn store(&self) -> Option<Arc<Store>> {
        Vhost::store(self).cloned()
    }

    fn remove_queue(&self, queue: &Arc<QueueHandle>) {
        Vhost::remove_queue(self, queue)
    }

    fn set_aside(&self, queue: &str, message: &crate::message::Message) {
        if let Some(store) = Vhost::store(self) {
            store.set_aside(&crate::error::rs("queue", queue, &self.name), message);
        }
    }
}

impl Vhost {
    /// A vhost that keeps nothing on disk (tests, benches).
    pub fn new(name: &str) -> Arc<Vhost> {
        Self::with_store(name, None)
    }

    pub fn with_store(name: &str, store: Option<Arc<Store>>) -> Arc<Vhost> {
        let mut topology = Topology::default();
        for (x, kind, internal) in STANDARD_EXCHANGES {
            topology.exchanges.insert(
                (*x).to_owned(),
                Exchange::new(x, *kind, true, false, *internal, FieldTable::default()),
            );
        }
        Arc::new_cyclic(|me| Vhost {
            name: Arc::from(name),
            topology: RwLock::new(topology),
            version: AtomicU64::new(1),
            me: me.clone(),
            store,
            policies: RwLock::default(),
            queue_defaults: RwLock::default(),
            deleted: AtomicBool::new(false),
        })
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Record a durable change; call with the topology lock held so the log keeps the
    /// order of the changes, then [`Vhost::sync_log`] once the lock is released.
    fn log(&self, change: impl FnOnce(String) -> Change) {
        if self.deleted.load(Ordering::Acquire) {
            return;
        }
        if let Some(s) = &self.store {
            s.meta.append(&change(self.name.to_string()));
        }
    }

    /// Record the vhost's deletion (not yet synced) as its last record: under its
    /// topology and policy locks, the two that order its other records, so none of
    /// them can land after it and be replayed onto a new vhost of the same name.
    pub fn record_deletion(&self) {
        let _topology = self.write();
        let _policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
        if !self.deleted.swap(true, Ordering::AcqRel) {
            if let Some(s) = &self.store {
                s.meta.append(&Change::DeleteVhost(self.name.to_string()));
            }
        }
    }

    /// Make logged changes durable before the client hears they happened.
    fn sync_log(&self) {
        if let Some(s) = &self.store {
            s.meta.sync();
        }
    }

    /// Rebuild what the metadata log and message store hold for this vhost (start-up).
    pub fn restore(&self, defs: &VhostDefs, messages: &mut HashMap<u64, Vec<Recovered>>) {
        let mut t = self.write();
        for (name, x) in &defs.exchanges {
            let Some(kind) = ExchangeKind::parse(&x.kind) else {
                continue;
            };
            t.exchanges.insert(
                name.clone(),
                Exchange::new(
                    name,
                    kind,
                    true,
                    x.auto_delete,
                    x.internal,
                    x.arguments.clone(),
                ),
            );
        }
        for (name, q) in &defs.queues {
            let spec = QueueSpec {
                name: name.clone(),
                durable: true,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
                store_qid: Some(q.qid),
                recovered: messages.remove(&q.qid).unwrap_or_default(),
                queue_args: self.queue_args(name, &q.arguments),
            };
            t.queues.insert(
                name.clone(),
                QueueHandle::spawn(spec, self.me.clone(), self.name.clone()),
            );
        }
        for b in defs.bindings() {
            let dest = if b.to_queue {
                Destination::Queue(Arc::from(b.destination.as_str()))
            } else {
                Destination::Exchange(Arc::from(b.destination.as_str()))
            };
            if !Self::destination_exists(&t, &dest) {
                continue;
            }
            if let Some(x) = t.exchanges.get_mut(&b.source) {
                x.bind(Binding {
                    source: Arc::from(b.source.as_str()),
                    destination: dest,
                    routing_key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                });
            }
        }
    }

    /// Durable iff both ends are (RabbitMQ's rule); the binding's record if so.
    fn durable_binding(t: &Topology, b: &Binding) -> Option<BindingDef> {
        let source = t.exchanges.get(&*b.source)?;
        let (to_queue, durable) = match &b.destination {
            Destination::Queue(q) => (true, t.queues.get(&**q)?.durable),
            Destination::Exchange(x) => (false, t.exchanges.get(&**x)?.durable),
        };
        (source.durable && durable).then(|| BindingDef {
            source: b.source.to_string(),
            to_queue,
            destination: b.destination.name().to_owned(),
            routing_key: b.routing_key.clone(),
            arguments: b.arguments.clone(),
        })
    }

    /// Bumped by every topology change; route caches compare against it.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, Topology> {
        // A panic while holding the lock would be a broker bug; keep serving regardless.
        self.topology.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Topology> {
        let guard = self.topology.write().unwrap_or_else(|e| e.into_inner());
        self.version.fetch_add(1, Ordering::AcqRel);
        guard
    }

    fn describe(&self, kind: &str, name: &str) -> String {
        rs(kind, name, &self.name)
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", self.describe("exchange", name)))
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", self.describe("queue", name)))
    }

    // ---- exchanges ----

    pub fn exchange_exists(&self, name: &str) -> bool {
        self.read().exchanges.contains_key(name)
    }

    /// The type of an exchange, if it exists (topic permissions apply to topic ones).
    pub fn exchange_kind(&self, name: &str) -> Option<ExchangeKind> {
        self.read().exchanges.get(name).map(|x| x.kind)
    }

    /// Every exchange as declared, without its bindings (for listing and export).
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        let mut all: Vec<ExchangeInfo> = self
            .read()
            .exchanges
            .values()
            .map(|x| ExchangeInfo {
                name: x.name.to_string(),
                kind: x.kind,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Every explicit binding, by source exchange then in the order made.
    pub fn bindings(&self) -> Vec<Binding> {
        let t = self.read();
        let mut sources: Vec<&Exchange> = t.exchanges.values().collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        sources
            .into_iter()
            .flat_map(|x| x.bindings.iter().cloned())
            .collect()
    }

    /// exchange.declare (non-passive), with RabbitMQ's order of checks.
    pub fn declare_exchange(&self, d: ExchangeDecl<'_>) -> Result<(), AmqpError> {
        let kind = ExchangeKind::parse(d.kind).ok_or_else(|| {
            AmqpError::command_invalid(format!("unknown exchange type '{}'", d.kind))
        })?;
        if d.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let mut t = self.write();
        if let Some(x) = t.exchanges.get(d.name) {
            let what = self.describe("exchange", d.name);
            if x.kind != kind {
                return Err(arguments::field_mismatch(
                    "type",
                    &what,
                    kind.as_str(),
                    x.kind.as_str(),
                ));
            }
            if x.durable != d.durable {
                return Err(arguments::field_mismatch(
                    "durable", &what, d.durable, x.durable,
                ));
            }
            if x.auto_delete != d.auto_delete {
                return Err(arguments::field_mismatch(
                    "auto_delete",
                    &what,
                    d.auto_delete,
                    x.auto_delete,
                ));
            }
            if x.internal != d.internal {
                return Err(arguments::field_mismatch(
                    "internal", &what, d.internal, x.internal,
                ));
            }
            return arguments::assert_equivalent(
                &x.arguments,
                &d.arguments,
                EXCHANGE_EQUIVALENCE_KEYS,
                &what,
            );
        }
        if d.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        if d.durable {
            self.log(|vhost| Change::Exchange {
                vhost,
                name: d.name.to_owned(),
                def: ExchangeDef {
                    kind: kind.as_str().to_owned(),
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments.clone(),
                },
            });
        }
        let mut x = Exchange::new(
            d.name,
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments,
        );
        self.apply_exchange_policy(&mut x);
        t.exchanges.insert(d.name.to_owned(), x);
        drop(t);
        self.sync_log();
        Ok(())
    }

    /// exchange.declare passive=true.
    pub fn check_exchange(&self, name: &str) -> Result<(), AmqpError> {
        if self.exchange_exists(name) {
            Ok(())
        } else {
            Err(self.no_exchange(name))
        }
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system {} not allowed",
                self.describe("exchange", name)
            )));
        }
        let mut t = self.write();
        let Some(x) = t.exchanges.get(name) else {
            return Ok(()); // deleting what isn't there is fine, as in RabbitMQ
        };
        if if_unused && !x.bindings.is_empty() {
            return Err(AmqpError::precondition_failed(format!(
                "{} in use",
                self.describe("exchange", name)
            )));
        }
        self.remove_exchange(&mut t, name);
        drop(t);
        self.sync_log();
        Ok(())
    }

    /// Remove an exchange and every binding to or from it; cascades auto-delete.
    fn remove_exchange(&self, t: &mut Topology, name: &str) {
        let Some(x) = t.exchanges.remove(name) else {
            return;
        };
        if x.durable {
            // Replaying the deletion drops the exchange's bindings too.
            self.log(|vhost| Change::DeleteExchange {
                vhost,
                name: name.to_owned(),
            });
        }
        self.unbind_everywhere(t, &Destination::Exchange(Arc::from(name)));
    }

    /// Drop all bindings to `dest`, then delete auto-delete exchanges left with none.
    fn unbind_everywhere(&self, t: &mut Topology, dest: &Destination) {
        let mut emptied = Vec::new();
        for x in t.exchanges.values_mut() {
            if x.unbind_destination(dest) > 0 && x.auto_delete && x.bindings.is_empty() {
                emptied.push(x.name.to_string());
            }
        }
        for x in emptied {
            self.remove_exchange(t, &x);
        }
    }

    // ---- queues ----

    pub fn lookup_queue(&self, name: &str) -> Option<Arc<QueueHandle>> {
        self.read().queues.get(name).cloned()
    }

    /// A queue by name, checking that `conn_id` may use it (exclusive queues).
    pub fn queue_for(&self, name: &str, conn_id: u64) -> Result<Arc<QueueHandle>, AmqpError> {
        let q = self.lookup_queue(name).ok_or_else(|| self.no_queue(name))?;
        check_exclusive(&q, conn_id)?;
        Ok(q)
    }

    /// queue.declare (non-passive). Returns the queue and whether it was created.
    pub fn declare_queue(
        &self,
        d: QueueDecl,
        conn_id: u64,
    ) -> Result<(Arc<QueueHandle>, bool), AmqpError> {
        let owner = d.exclusive.then_some(conn_id);
        let mut t = self.write();
        if let Some(q) = t.queues.get(&d.name) {
            // rabbit_amqqueue:assert_equivalence: exclusivity (strict), then fields, then args.
            if q.exclusive_owner != owner {
                return Err(locked(q));
            }
            let what = q.describe();
            // Exclusive queues are never durable, whatever was asked (as RabbitMQ).
            let durable = d.durable && !d.exclusive;
            if q.durable != durable {
                return Err(arguments::field_mismatch(
                    "durable", &what, durable, q.durable,
                ));
            }
            if q.auto_delete != d.auto_delete {
                return Err(arguments::field_mismatch(
                    "auto_delete",
                    &what,
                    d.auto_delete,
                    q.auto_delete,
                ));
            }
            arguments::assert_equivalent(
                &q.arguments,
                &d.arguments,
                QUEUE_EQUIVALENCE_KEYS,
                &what,
            )?;
            return Ok((q.clone(), false));
        }
        crate::queue::args::validate(
            &d.arguments,
            &self.describe("queue", &d.name),
            d.durable && !d.exclusive,
            d.exclusive,
            d.auto_delete,
        )?;
        let durable = d.durable && !d.exclusive;
        let store_qid = match &self.store {
            Some(s) if durable => Some(s.next_qid()),
            _ => None,
        };
        if let Some(qid) = store_qid {
            self.log(|vhost| Change::Queue {
                vhost,
                name: d.name.clone(),
                def: QueueDef {
                    qid,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments.clone(),
                },
            });
        }
        let spec = QueueSpec {
            name: d.name.clone(),
            durable,
            exclusive_owner: owner,
            auto_delete: d.auto_delete,
            store_qid,
            recovered: Vec::new(),
            queue_args: self.queue_args(&d.name, &d.arguments),
            arguments: d.arguments,
        };
        let q = QueueHandle::spawn(spec, self.me.clone(), self.name.clone());
        t.queues.insert(d.name, q.clone());
        drop(t);
        self.sync_log();
        Ok((q, true))
    }

    /// Forget a queue (after its actor agreed to stop) and its bindings. Only the
    /// instance given is removed, not a same-named successor.
    pub fn remove_queue(&self, q: &QueueHandle) {
        let mut t = self.write();
        if t.queues.get(&*q.name).is_some_and(|cur| cur.id == q.id) {
            t.queues.remove(&*q.name);
            if q.durable {
                self.log(|vhost| Change::DeleteQueue {
                    vhost,
                    name: q.name.to_string(),
                });
            }
            self.unbind_everywhere(&mut t, &Destination::Queue(q.name.clone()));
        }
        drop(t);
        self.sync_log();
    }

    /// queue.delete: the actor checks if-unused / if-empty and stops; returns the count.
    pub async fn delete_queue(
        &self,
        q: &Arc<QueueHandle>,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, AmqpError> {
        let result = q
            .ask(|reply| crate::queue::QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            })
            .await
            .unwrap_or(Ok(0));
        if result.is_ok() {
            self.remove_queue(q);
        }
        result
    }

    /// All queues (for shutdown and exclusive-queue cleanup).
    pub fn queues(&self) -> Vec<Arc<QueueHandle>> {
        self.read().queues.values().cloned().collect()
    }

    // ---- bindings ----

    fn destination_exists(t: &Topology, dest: &Destination) -> bool {
        match dest {
            Destination::Queue(q) => t.queues.contains_key(&**q),
            Destination::Exchange(x) => t.exchanges.contains_key(&**x),
        }
    }

    fn check_binding(
        &self,
        t: &Topology,
        source: &str,
        dest: &Destination,
        conn_id: u64,
    ) -> Result<(), AmqpError> {
        if source.is_empty() || matches!(dest, Destination::Exchange(x) if x.is_empty()) {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if !t.exchanges.contains_key(source) {
            return Err(self.no_exchange(source));
        }
        if !Self::destination_exists(t, dest) {
            return Err(match dest {
                Destination::Queue(q) => self.no_queue(q),
                Destination::Exchange(x) => self.no_exchange(x),
            });
        }
        if let Destination::Queue(q) = dest {
            if let Some(q) = t.queues.get(&**q) {
                check_exclusive(q, conn_id)?;
            }
        }
        Ok(())
    }

    pub fn bind(
        &self,
        source: &str,
        dest: Destination,
        key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> Result<(), AmqpError> {
        let mut t = self.write();
        self.check_binding(&t, source, &dest, conn_id)?;
        if let Some(x) = t.exchanges.get_mut(source) {
            x.validate_binding(&arguments)
                .map_err(AmqpError::precondition_failed)?;
        }
        let binding = Binding {
            source: Arc::from(source),
            destination: dest,
            routing_key: key.to_owned(),
            arguments,
        };
        let durable = Self::durable_binding(&t, &binding);
        let added = t.exchanges.get_mut(source).is_some_and(|x| x.bind(binding));
        if let (true, Some(b)) = (added, durable) {
            self.log(|vhost| Change::Bind { vhost, binding: b });
        }
        drop(t);
        self.sync_log();
        Ok(())
    }

    pub fn unbind(
        &self,
        source: &str,
        dest: Destination,
        key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> Result<(), AmqpError> {
        let mut t = self.write();
        // Unbinding is idempotent: a missing queue, exchange or binding is success, as in
        // RabbitMQ (rabbit_binding:remove ignores absent ends), because cleanup code
        // unbinds after auto-delete exchanges and exclusive queues may be gone. The
        // default exchange and someone else's exclusive queue are still refused.
        if source.is_empty() || matches!(&dest, Destination::Exchange(x) if x.is_empty()) {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if let Destination::Queue(q) = &dest {
            if let Some(q) = t.queues.get(&**q) {
                check_exclusive(q, conn_id)?;
            }
        }
        if !t.exchanges.contains_key(source) || !Self::destination_exists(&t, &dest) {
            return Ok(());
        }
        let binding = Binding {
            source: Arc::from(source),
            destination: dest,
            routing_key: key.to_owned(),
            arguments,
        };
        let durable = Self::durable_binding(&t, &binding);
        let mut removed = false;
        let emptied = t.exchanges.get_mut(source).is_some_and(|x| {
            removed = x.unbind(&binding);
            removed && x.auto_delete && x.bindings.is_empty()
        });
        if let (true, Some(b)) = (removed, durable) {
            self.log(|vhost| Change::Unbind { vhost, binding: b });
        }
        if emptied {
            self.remove_exchange(&mut t, source);
        }
        drop(t);
        self.sync_log();
        Ok(())
    }

    // ---- routing ----

    /// Route a message: the queues it goes to, each once, following exchange-to-exchange
    /// bindings. `headers` is asked for only if a headers exchange is on the way.
    /// Returns whether the result depends only on (exchange, routing key), i.e. may be cached.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<QueueHandle>>,
    ) -> Result<bool, RouteError> {
        self.route_keys(exchange, &[routing_key], headers, out)
    }

    /// [`Vhost::route`] with several routing keys at once (the publish's own plus its
    /// `CC`/`BCC` ones): each exchange on the way matches every key, and falls back to
    /// its alternate exchange only when no key matched (rabbit_exchange:route with a
    /// message's list of routing keys). Each queue is in `out` once.
    pub fn route_keys(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<QueueHandle>>,
    ) -> Result<bool, RouteError> {
        let t = self.read();
        let x = t.exchanges.get(exchange).ok_or(RouteError::NoExchange)?;
        if x.internal {
            return Err(RouteError::Internal);
        }
        if exchange.is_empty() {
            // The default exchange: implicitly bound to every queue by its name.
            for key in routing_keys {
                if let Some(q) = t.queues.get(*key) {
                    if !out.iter().any(|o| o.id == q.id) {
                        out.push(q.clone());
                    }
                }
            }
            return Ok(true);
        }
        let mut cacheable = true;
        let mut header_table: Option<Option<FieldTable>> = None;
        let mut seen_x: HashSet<&str> = HashSet::new();
        let mut seen_q: HashSet<u64> = HashSet::new();
        let mut pending = vec![x];
        let mut dests = Vec::new();
        seen_x.insert(exchange);
        while let Some(x) = pending.pop() {
            dests.clear();
            let h = if x.routes_by_headers() {
                cacheable = false;
                header_table.get_or_insert_with(&mut *headers).as_ref()
            } else {
                None
            };
            for key in routing_keys {
                x.route(key, h, &mut dests);
            }
            if dests.is_empty() {
                // rabbit_exchange:process_alternate: an exchange that routes a message
                // nowhere hands it to its alternate exchange, if it has one.
                if let Some(ae) = &x.alternate {
                    dests.push(Destination::Exchange(ae.clone()));
                }
            }
            for d in &dests {
                match d {
                    Destination::Queue(name) => {
                        if let Some(q) = t.queues.get(&**name) {
                            if seen_q.insert(q.id) {
                                out.push(q.clone());
                            }
                        }
                    }
                    Destination::Exchange(name) => {
                        if let Some((key, next)) = t.exchanges.get_key_value(&**name) {
                            if seen_x.insert(key.as_str()) {
                                pending.push(next);
                            }
                        }
                    }
                }
            }
        }
        Ok(cacheable)
    }
}

fn locked(q: &QueueHandle) -> AmqpError {
    AmqpError::resource_locked(format!(
        "cannot obtain exclusive access to locked {}. It could be originally declared on another \
         connection or the exclusive property value does not match that of the original declaration.",
        q.describe()
    ))
}

/// rabbit_amqqueue:check_exclusive_access (lenient): an exclusive queue is its owner's.
pub fn check_exclusive(q: &QueueHandle, conn_id: u64) -> Result<(), AmqpError> {
    match q.exclusive_owner {
        Some(owner) if owner != conn_id => Err(locked(q)),
        _ => Ok(()),
    }
}
