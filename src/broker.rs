//! The broker: configuration, virtual hosts, the access model, and the registry of live
//! connections. One per process; shared by every connection as `Arc<Broker>`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::access::{self, Access, AccessError};
use crate::alarm::AlarmState;
use crate::config::Config;
use crate::error::{code, AmqpError};
use crate::event::{ConnEvent, EventTx};
use crate::policy::{Kind as PolicyKind, Policy};
use crate::store::meta::VhostInfo;
use crate::store::{Change, Opened, Snapshot, Store, StoreError};
use crate::vhost::Vhost;

/// The queue settings that come from the configuration.
fn queue_defaults(config: &Config) -> crate::vhost::QueueDefaults {
    crate::vhost::QueueDefaults {
        consumer_timeout: (config.amqp.consumer_timeout > 0)
            .then_some(config.amqp.consumer_timeout),
        timeout_closes_channel: config.amqp.consumer_timeout_action
            == crate::config::ConsumerTimeoutAction::CloseChannel,
        flow: crate::queue::flow::FlowMarks {
            high: config.amqp.flow_high_messages,
            low: config.amqp.flow_low_messages,
        },
    }
}

/// What the broker knows of a live connection: enough to close it, enforce limits and
/// list it (warrenctl list_connections).
pub struct ConnectionEntry {
    pub events: EventTx,
    pub peer: SocketAddr,
    /// Our end of it: the listener address the client reached.
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    /// The client's connection_name property, if it gave one.
    pub name: Option<String>,
    /// Open channels; the connection task updates it, readers only load it.
    pub channels: Arc<AtomicUsize>,
    pub connected_at: SystemTime,
    /// The TLS session's protocol, cipher and client certificate (amqps only).
    pub tls: Option<Arc<crate::tls::PeerTls>>,
    /// `running`, `flow` or `blocked`, as the connection task last set it.
    pub state: Arc<ConnState>,
}

impl ConnectionEntry {
    /// The connection's name as RabbitMQ gives it (rabbit_net:connection_string), the
    /// same in every listing: `peer -> local`. What the client named it is
    /// `user_provided_name`.
    pub fn display_name(&self) -> String {
        format!("{} -> {}", self.peer, self.local)
    }
}

/// A connection's state as listings show it (RabbitMQ's words): `flow` while it is not
/// read because a queue it publishes to is behind (see `queue/flow.rs`), `blocked` while
/// a resource alarm holds it. Written on change only.
#[derive(Debug, Default)]
pub struct ConnState(std::sync::atomic::AtomicU8);

impl ConnState {
    pub const RUNNING: u8 = 0;
    pub const FLOW: u8 = 1;
    pub const BLOCKED: u8 = 2;

    pub fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
    }

    pub fn name(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            Self::FLOW => "flow",
            Self::BLOCKED => "blocked",
            _ => "running",
        }
    }
}

/// A virtual host's description and tags (RabbitMQ's vhost metadata), as the metadata
/// log keeps them.
pub type VhostMeta = VhostInfo;

pub struct Broker {
    pub config: Config,
    /// The data directory's store (None for a broker that keeps nothing, in tests).
    pub store: Option<Arc<Store>>,
    /// Users, permissions and limits: the single owner of who may do what.
    pub access: Access,
    vhosts: DashMap<String, (Arc<Vhost>, VhostMeta)>,
    connections: DashMap<u64, ConnectionEntry>,
    /// Direct reply-to consumers by reply id (see `channel/reply_to.rs`).
    pub reply_to: Arc<crate::reply_to::Registry>,
    /// Flips to true when the broker starts shutting down; listeners stop accepting.
    shutdown: watch::Sender<bool>,
    /// Resource alarms in effect, published by [`crate::alarm::monitor`].
    alarms: Arc<watch::Sender<AlarmState>>,
    /// Message counters since start (see `metrics`).
    pub counters: crate::metrics::Global,
    /// The listeners as bound (name, address), for `warrenctl diagnostics`.
    listeners: std::sync::Mutex<Vec<(String, String)>>,
}

impl Broker {
    /// A broker that keeps nothing on disk, as a new node starts.
    pub fn new(config: Config) -> Arc<Broker> {
        let mut snapshot = Snapshot::default();
        for c in access::seed(&config.defaults) {
            snapshot.apply(c);
        }
        let broker = Self::build(config, None, &snapshot);
        broker.restore_vhosts(&snapshot, &mut Default::default());
        broker
    }

    /// Open the data directory, recover the durable definitions and messages, and build
    /// the broker on them. Must run inside the tokio runtime (queues are tasks).
    pub fn open(config: Config) -> Result<Arc<Broker>, StoreError> {
        Self::open_shipped(config, None)
    }

    /// [`Broker::open`] in a cluster's leader: the store's changes go to `shipping`.
    pub fn open_shipped(
        config: Config,
        shipping: Option<Arc<crate::store::shipping::Shipping>>,
    ) -> Result<Arc<Broker>, StoreError> {
        let Opened {
            store,
            snapshot,
            mut messages,
        } = Store::open_shipped(
            &config.data_dir,
            &config.store,
            &access::seed(&config.defaults),
            shipping,
        )?;
        let broker = Self::build(config, Some(store), &snapshot);
        broker.restore_vhosts(&snapshot, &mut messages);
        let dropped: usize = messages.values().map(Vec::len).sum();
        if dropped > 0 {
            tracing::warn!(
                messages = dropped,
                "stored messages of unknown queues dropped"
            );
        }
        Ok(broker)
    }

    /// The vhosts of the snapshot with what is in them: exchanges, queues (with their
    /// recovered messages), bindings, then the policies, applied to all of those.
    fn restore_vhosts(
        &self,
        snapshot: &Snapshot,
        messages: &mut std::collections::HashMap<u64, Vec<crate::store::Recovered>>,
    ) {
        for (name, defs) in &snapshot.vhosts {
            let vhost = self.new_vhost(name);
            vhost.restore(defs, messages);
            for p in defs.policies.values() {
                let kind = if p.operator {
                    PolicyKind::Operator
                } else {
                    PolicyKind::Policy
                };
                let definition = serde_json::from_str(&p.definition).unwrap_or_default();
                match Policy::new(
                    kind,
                    name,
                    &p.name,
                    &p.pattern,
                    &p.apply_to,
                    &definition,
                    p.priority,
                ) {
                    Ok(policy) => vhost.restore_policy(kind, policy),
                    Err(e) => {
                        tracing::warn!(policy = p.name, vhost = name, "stored policy left out: {e}")
                    }
                }
            }
            self.vhosts.insert(name.clone(), (vhost, defs.info.clone()));
        }
    }

    /// A new vhost object with the broker's queue defaults.
    fn new_vhost(&self, name: &str) -> Arc<Vhost> {
        let v = Vhost::with_store(name, self.store.clone());
        v.set_queue_defaults(queue_defaults(&self.config));
        v
    }

    fn build(config: Config, store: Option<Arc<Store>>, snapshot: &Snapshot) -> Arc<Broker> {
        Arc::new(Broker {
            access: Access::restore(snapshot, &config.defaults, store.clone()),
            store,
            config,
            vhosts: DashMap::new(),
            connections: DashMap::new(),
            reply_to: Arc::default(),
            shutdown: watch::channel(false).0,
            alarms: Arc::new(watch::channel(AlarmState::default()).0),
            counters: Default::default(),
            listeners: Default::default(),
        })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.get(name).map(|v| v.0.clone())
    }

    /// All vhosts, sorted by name.
    pub fn vhosts(&self) -> Vec<(Arc<Vhost>, VhostMeta)> {
        let mut all: Vec<_> = self.vhosts.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        all
    }

    /// add_vhost: succeeds (and changes nothing) if it exists, as in RabbitMQ.
    pub fn add_vhost(&self, name: &str, meta: VhostMeta) -> Result<Arc<Vhost>, AccessError> {
        if name.is_empty() {
            return Err(AccessError::Invalid(
                "virtual host name must not be empty".into(),
            ));
        }
        let vhost = self
            .vhosts
            .entry(name.to_owned())
            .or_insert_with(|| {
                // Recorded under the map's entry lock, so a concurrent delete_vhost of
                // the same name is recorded before or after, as it happens.
                if let Some(s) = &self.store {
                    s.meta.append(&Change::AddVhost(name.to_owned()));
                    s.meta.append(&Change::VhostInfo {
                        vhost: name.to_owned(),
                        info: meta.clone(),
                    });
                }
                (self.new_vhost(name), meta)
            })
            .0
            .clone();
        if let Some(s) = &self.store {
            s.meta.sync();
        }
        Ok(vhost)
    }

    /// delete_vhost: its connections are closed, its queues deleted, and the
    /// permissions in it forgotten.
    pub async fn delete_vhost(&self, name: &str) -> Result<(), AccessError> {
        // Recorded under the map's lock, as add_vhost records: an add_vhost of the same
        // name racing this one is recorded after the deletion, as it happened. The
        // record implies everything in the vhost and every permission on it.
        let removed = self.vhosts.remove_if(name, |_, (vhost, _)| {
            vhost.record_deletion();
            true
        });
        let Some((_, (vhost, _))) = removed else {
            return Err(AccessError::Invalid(format!(
                "Virtual host '{name}' does not exist"
            )));
        };
        if let Some(s) = &self.store {
            s.meta.sync();
        }
        // Its permissions and limits go with it (policies are the vhost's own).
        self.access.vhost_deleted(name);
        for c in self.connections.iter().filter(|c| c.vhost == name) {
            let _ = c.events.send(ConnEvent::Close(
                AmqpError::new(
                    code::CONNECTION_FORCED,
                    format!("vhost '{name}' is deleted"),
                )
                .into(),
            ));
        }
        for q in vhost.queues() {
            let _ = vhost.delete_queue(&q, false, false).await;
        }
        Ok(())
    }

    // ---- connections ----

    /// Before connection.open-ok: the user's permissions on the vhost, then the vhost's
    /// and the user's connection limits (rabbit_reader's order and texts).
    pub fn admit_connection(&self, user: &str, vhost: &str) -> Result<(), AmqpError> {
        // The node-wide limit first (RabbitMQ's connection_max, is_over_node_connection_limit).
        let max = self.config.amqp.connection_max;
        if max > 0 && self.connections.len() as u64 >= max {
            return Err(AmqpError::not_allowed(format!(
                "connection refused: node connection limit ({max}) is reached"
            )));
        }
        self.access.check_vhost(user, vhost)?;
        if let Some(max) = access::limit(&self.access.vhost_limits(vhost), "max-connections") {
            let n = self.connections.iter().filter(|c| c.vhost == vhost).count();
            if n as u64 >= max {
                return Err(AmqpError::not_allowed(format!(
                    "access to vhost '{vhost}' refused for user '{user}': connection limit ({max}) is reached"
                )));
            }
        }
        let user_limits = self.access.user(user).map(|u| u.limits).unwrap_or_default();
        if let Some(max) = access::limit(&user_limits, "max-connections") {
            let n = self.connections.iter().filter(|c| c.user == user).count();
            if n as u64 >= max {
                return Err(AmqpError::not_allowed(format!(
                    "connection refused for user '{user}': user connection limit ({max}) is reached"
                )));
            }
        }
        Ok(())
    }

    /// Before channel.open-ok: the user's max-channels across all their connections.
    pub fn admit_channel(&self, user: &str) -> Result<(), AmqpError> {
        let limits = self.access.user(user).map(|u| u.limits).unwrap_or_default();
        let Some(max) = access::limit(&limits, "max-channels") else {
            return Ok(());
        };
        let n: usize = self
            .connections
            .iter()
            .filter(|c| c.user == user)
            .map(|c| c.channels.load(Ordering::Relaxed))
            .sum();
        if n as u64 >= max {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
            )));
        }
        Ok(())
    }

    /// queue.declare of a new queue: the vhost's max-queues.
    pub fn admit_queue(&self, vhost: &Vhost, queue: &str) -> Result<(), AmqpError> {
        let Some(max) = access::limit(&self.access.vhost_limits(&vhost.name), "max-queues") else {
            return Ok(());
        };
        if vhost.lookup_queue(queue).is_none() && vhost.queues().len() as u64 >= max {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare queue '{queue}': queue limit in vhost '{}' ({max}) is reached",
                vhost.name
            )));
        }
        Ok(())
    }

    pub fn register_connection(&self, id: u64, entry: ConnectionEntry) {
        self.connections.insert(id, entry);
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections.remove(&id);
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Record a bound listener (`amqp`, `amqps`, `prometheus`, `management`, ...).
    pub fn add_listener(&self, name: &str, addr: &str) {
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.push((name.to_owned(), addr.to_owned()));
    }

    /// The listeners as bound.
    pub fn listeners(&self) -> Vec<(String, String)> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Channels open on all connections.
    pub fn channel_count(&self) -> usize {
        self.connections
            .iter()
            .map(|c| c.channels.load(Ordering::Relaxed))
            .sum()
    }

    /// Visit every live connection (for listing).
    pub fn for_each_connection(&self, mut f: impl FnMut(u64, &ConnectionEntry)) {
        for c in self.connections.iter() {
            f(*c.key(), c.value());
        }
    }

    /// close_connection: closes with 320 CONNECTION_FORCED and the operator's reason.
    pub fn close_connection(&self, id: u64, reason: &str) -> bool {
        match self.connections.get(&id) {
            Some(c) => {
                let _ = c.events.send(ConnEvent::Close(
                    AmqpError::new(code::CONNECTION_FORCED, reason).into(),
                ));
                true
            }
            None => false,
        }
    }

    /// Watch the resource alarms (connections block publishers while one is raised).
    pub fn alarms(&self) -> watch::Receiver<AlarmState> {
        self.alarms.subscribe()
    }

    /// Start sampling memory and disk (the broker binary does; tests of other parts
    /// don't need to).
    pub fn start_alarm_monitor(&self) {
        tokio::spawn(crate::alarm::monitor(
            self.config.alarms.clone(),
            self.config.data_dir.clone(),
            self.store.as_ref().map(|s| s.messages.clone()),
            self.alarms.clone(),
        ));
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    // ---- policies ----

    /// set_policy / set_operator_policy: validate (RabbitMQ's texts), record, and apply
    /// to what matches now. Errors are the validation message.
    #[allow(clippy::too_many_arguments)]
    pub fn set_policy(
        &self,
        kind: PolicyKind,
        vhost: &str,
        name: &str,
        pattern: &str,
        definition: &serde_json::Value,
        priority: i64,
        apply_to: &str,
    ) -> Result<(), String> {
        let v = self
            .vhost(vhost)
            .ok_or_else(|| format!("Virtual host '{vhost}' does not exist"))?;
        let policy = Policy::new(kind, vhost, name, pattern, apply_to, definition, priority)?;
        v.set_policy(kind, policy);
        tracing::info!(
            "Successfully set policy '{name}' matching {apply_to} names in virtual host '{vhost}' using pattern '{pattern}'"
        );
        Ok(())
    }

    /// clear_policy / clear_operator_policy; false if there was no such policy.
    pub fn clear_policy(&self, kind: PolicyKind, vhost: &str, name: &str) -> bool {
        self.vhost(vhost)
            .is_some_and(|v| v.clear_policy(kind, name))
    }

    /// A vhost's policies of a kind (all vhosts for `None`), highest priority first as
    /// rabbitmqctl lists them.
    pub fn list_policies(&self, kind: PolicyKind, vhost: Option<&str>) -> Vec<Policy> {
        let mut all: Vec<Policy> = self
            .vhosts()
            .into_iter()
            .filter(|(v, _)| vhost.is_none_or(|n| *v.name == *n))
            .flat_map(|(v, _)| v.policies(kind))
            .collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.priority));
        all
    }

    /// First step of a shutdown: from now on, queues letting go of messages or being
    /// deleted as their consumers disconnect is not recorded, so what is queued now is
    /// there at the next start.
    pub fn freeze_store(&self) {
        if let Some(s) = &self.store {
            s.freeze();
        }
    }

    /// Last step of a shutdown: write and sync what is pending, stop the store.
    pub fn close_store(&self) {
        if let Some(s) = &self.store {
            s.close();
        }
    }

    /// Stop accepting and ask every connection to close with CONNECTION_FORCED.
    pub fn shut_down(&self) {
        // send_replace, not send: send drops the value when nobody has subscribed yet,
        // and a listener task that subscribes a moment later would never stop.
        self.shutdown.send_replace(true);
        for c in self.connections.iter() {
            let _ = c.events.send(ConnEvent::Close(
                AmqpError::new(
                    code::CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                )
                .into(),
            ));
        }
    }
}

/// This node's name, RabbitMQ's `name@host` shape (`warren@host`): the management API
/// and the Prometheus identity show it, and dashboards join on it.
pub fn node_name() -> String {
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("warren@{host}")
    })
    .clone()
}

static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static CLUSTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The cluster's name (`cluster.name`), or, on a single node, the node's name (as a
/// lone RabbitMQ node's cluster is named after it).
pub fn cluster_name() -> String {
    CLUSTER.get().cloned().unwrap_or_else(node_name)
}

/// Set at a cluster node's start.
pub fn set_cluster_name(name: &str) {
    let _ = CLUSTER.set(name.to_owned());
}

/// A cluster node's name is `cluster.node_name`: set before anything asks.
pub fn set_node_name(name: &str) {
    let _ = NAME.set(name.to_owned());
}
