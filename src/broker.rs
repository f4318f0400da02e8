//! The broker: configuration, virtual hosts, the access model, and the registry of live
//! connections. One per process; shared by every connection as `Arc<Broker>`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use crate::store::{Change, Opened, Store, StoreError};
use crate::vhost::Vhost;

/// Users, vhosts, permissions and limits, in the data directory.
const ACCESS_FILE: &str = "access.json";

/// Policies and operator policies, in the data directory: `{"policies": [...],
/// "operator_policies": [...]}`, each item as RabbitMQ's definitions write a policy.
const POLICIES_FILE: &str = "policies.json";

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

/// A virtual host's description and tags (RabbitMQ's vhost metadata).
#[derive(Debug, Clone, Default)]
pub struct VhostMeta {
    pub description: String,
    pub tags: Vec<String>,
}

pub struct Broker {
    pub config: Config,
    /// The data directory's store (None for a broker that keeps nothing, in tests).
    pub store: Option<Arc<Store>>,
    /// Users, permissions and limits: the single owner of who may do what.
    pub access: Access,
    vhosts: DashMap<String, (Arc<Vhost>, VhostMeta)>,
    /// The access generation last written to the data directory.
    access_saved: AtomicU64,
    connections: DashMap<u64, ConnectionEntry>,
    /// Direct reply-to consumers by reply id (see `channel/reply_to.rs`).
    pub reply_to: Arc<crate::channel::reply_to::Registry>,
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
    /// A broker that keeps nothing on disk.
    pub fn new(config: Config) -> Arc<Broker> {
        Self::build(config, None)
    }

    /// Open the data directory, recover durable state, and build the broker on it.
    /// Must run inside the tokio runtime (queues are tasks).
    pub fn open(config: Config) -> Result<Arc<Broker>, StoreError> {
        let Opened {
            store,
            snapshot,
            mut messages,
        } = Store::open(&config.data_dir, &config.store)?;
        let broker = Self::build(config, Some(store.clone()));
        for (name, defs) in &snapshot.vhosts {
            let vhost = broker
                .vhosts
                .entry(name.clone())
                .or_insert_with(|| (broker.new_vhost(name), VhostMeta::default()))
                .0
                .clone();
            vhost.restore(defs, &mut messages);
        }
        let dropped: usize = messages.values().map(Vec::len).sum();
        if dropped > 0 {
            tracing::warn!(
                messages = dropped,
                "stored messages of unknown queues dropped"
            );
        }
        Ok(broker)
    }

    /// A new vhost object with the broker's queue defaults.
    fn new_vhost(&self, name: &str) -> Arc<Vhost> {
        let v = Vhost::with_store(name, self.store.clone());
        v.set_queue_defaults(queue_defaults(&self.config));
        v
    }

    fn build(config: Config, store: Option<Arc<Store>>) -> Arc<Broker> {
        let vhosts = DashMap::new();
        let default_vhost = Vhost::with_store(&config.defaults.vhost, store.clone());
        default_vhost.set_queue_defaults(queue_defaults(&config));
        vhosts.insert(
            config.defaults.vhost.clone(),
            (
                default_vhost,
                VhostMeta {
                    description: "Default virtual host".to_owned(),
                    tags: Vec::new(),
                },
            ),
        );
        Arc::new(Broker {
            access: Access::new(&config.defaults),
            access_saved: AtomicU64::new(0),
            store,
            config,
            vhosts,
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
                if let Some(s) = &self.store {
                    s.topology.append(&Change::AddVhost(name.to_owned()));
                }
                (self.new_vhost(name), meta)
            })
            .0
            .clone();
        if let Some(s) = &self.store {
            s.topology.sync();
        }
        Ok(vhost)
    }

    /// delete_vhost: its connections are closed, its queues deleted, and the
    /// permissions in it forgotten.
    pub async fn delete_vhost(&self, name: &str) -> Result<(), AccessError> {
        let Some((_, (vhost, _))) = self.vhosts.remove(name) else {
            return Err(AccessError::Invalid(format!(
                "Virtual host '{name}' does not exist"
            )));
        };
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
        if let Some(s) = &self.store {
            s.topology.append(&Change::DeleteVhost(name.to_owned()));
            s.topology.sync();
        }
        self.access.vhost_deleted(name);
        // Its policies went with it.
        self.save_policies();
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
            self.alarms.clone(),
        ));
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Write users, vhosts, permissions and limits to `access.json` in the data
    /// directory if they changed since the last save (RabbitMQ's definitions format,
    /// without queues, exchanges and bindings, which the topology log keeps).
    pub fn save_access(&self) {
        let Some(store) = &self.store else { return };
        let generation = self.access.generation();
        if self.access_saved.swap(generation, Ordering::AcqRel) == generation {
            return;
        }
        let mut doc = crate::definitions::export(self);
        if let Some(o) = doc.as_object_mut() {
            // Topology is in the topology log, policies in their own file.
            for key in ["queues", "exchanges", "bindings", "policies"] {
                o.remove(key);
            }
        }
        let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        if let Err(e) = store.write_file(ACCESS_FILE, &text) {
            tracing::error!(error = %e, "could not save users and permissions");
        }
    }

    /// At start-up: bring back what [`Broker::save_access`] wrote. The saved users
    /// and permissions replace the defaults, so a deleted guest stays deleted.
    pub fn restore_access(&self) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let Some(text) = store.read_file(ACCESS_FILE) else {
            return Ok(());
        };
        let doc: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{ACCESS_FILE} in the data directory is not valid JSON: {e}"))?;
        let saved = |key: &str, field: &str| -> Vec<String> {
            doc.get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.get(field).and_then(|f| f.as_str()).map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let users = saved("users", "name");
        for u in self.access.users() {
            if !users.contains(&u.name) {
                let _ = self.access.delete_user(&u.name);
            }
        }
        let permitted: Vec<(String, String)> = doc
            .get("permissions")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        Some((
                            p.get("vhost")?.as_str()?.to_owned(),
                            p.get("user")?.as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (vhost, user, _) in self.access.permissions() {
            if !permitted.contains(&(vhost.clone(), user.clone())) {
                let _ = self.access.clear_permissions(&vhost, &user);
            }
        }
        let report = crate::definitions::import(self, &doc);
        if !report.errors.is_empty() {
            return Err(format!("{ACCESS_FILE}: {}", report.errors.join("; ")));
        }
        self.access_saved
            .store(self.access.generation(), Ordering::Release);
        Ok(())
    }

    // ---- policies ----

    /// set_policy / set_operator_policy: validate (RabbitMQ's texts), store, apply to
    /// what matches now, and save. Errors are the validation message.
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
        self.save_policies();
        Ok(())
    }

    /// clear_policy / clear_operator_policy; false if there was no such policy.
    pub fn clear_policy(&self, kind: PolicyKind, vhost: &str, name: &str) -> bool {
        let cleared = self
            .vhost(vhost)
            .is_some_and(|v| v.clear_policy(kind, name));
        if cleared {
            self.save_policies();
        }
        cleared
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

    /// Write every vhost's policies to the data directory.
    fn save_policies(&self) {
        let Some(store) = &self.store else { return };
        let json = |kind| {
            self.list_policies(kind, None)
                .iter()
                .map(Policy::to_json)
                .collect::<Vec<_>>()
        };
        let doc = serde_json::json!({
            "policies": json(PolicyKind::Policy),
            "operator_policies": json(PolicyKind::Operator),
        });
        let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        if let Err(e) = store.write_file(POLICIES_FILE, &text) {
            tracing::error!(error = %e, "could not save policies");
        }
    }

    /// At start-up: bring back the policies [`Broker::save_policies`] wrote, applying
    /// them to the recovered queues and exchanges.
    pub fn restore_policies(&self) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let Some(text) = store.read_file(POLICIES_FILE) else {
            return Ok(());
        };
        let doc: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{POLICIES_FILE} in the data directory is not valid JSON: {e}"))?;
        for (key, kind) in [
            ("policies", PolicyKind::Policy),
            ("operator_policies", PolicyKind::Operator),
        ] {
            for p in doc
                .get(key)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                let (vhost, name) = (json_str(p, "vhost"), json_str(p, "name"));
                if let Err(e) = self.set_policy(
                    kind,
                    vhost,
                    name,
                    json_str(p, "pattern"),
                    p.get("definition").unwrap_or(&serde_json::Value::Null),
                    p.get("priority").and_then(|v| v.as_i64()).unwrap_or(0),
                    p.get("apply-to").and_then(|v| v.as_str()).unwrap_or("all"),
                ) {
                    tracing::warn!(policy = name, vhost, "saved policy not restored: {e}");
                }
            }
        }
        Ok(())
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
            s.messages.close();
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

fn json_str<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or_default()
}

/// This node's name, RabbitMQ's `name@host` shape (`warren@host`): the management API
/// and the Prometheus identity show it, and dashboards join on it.
pub fn node_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
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
