//! The metadata log's records: every durable definition as a typed change, and the
//! [`Snapshot`] that replaying the changes builds. Each record is one tag byte and its
//! fields in the store's codec (`codec.rs`); a tag is never reused for another meaning.
//!
//! | tag | change | tag | change |
//! |---|---|---|---|
//! | `V` / `v` | add / delete vhost | `I` | vhost description and tags |
//! | `L` | vhost limits | `E` / `e` | exchange / its deletion |
//! | `Q` / `q` | queue / its deletion | `B` / `b` | bind / unbind |
//! | `P` / `p` | policy / its clearing | `U` / `u` | user / its deletion |
//! | `A` / `a` | permissions / cleared | `T` / `t` | topic permissions / cleared |
//!
//! `V`, `v`, `E`, `e`, `Q`, `q`, `B` and `b` are format 1's `topology.log` records,
//! unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use amq_protocol::types::FieldTable;

use super::super::codec::{Get, Put};

/// RabbitMQ's limit maps (`{"max-connections": 10}`), as given. A negative value means
/// no limit, 0 means none allowed.
pub type Limits = BTreeMap<String, i64>;

/// A vhost's description and tags (RabbitMQ's vhost metadata).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VhostInfo {
    pub description: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserDef {
    /// base64, RabbitMQ's format; empty for a passwordless user.
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
    pub limits: Limits,
}

/// A user's permissions in a vhost: the three patterns as given.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionDef {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's topic permissions on one exchange of a vhost: the patterns as given (before
/// `{username}` / `{vhost}` are expanded).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPermissionDef {
    pub write: String,
    pub read: String,
}

/// A policy or operator policy as set; `definition` is its JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDef {
    pub operator: bool,
    pub name: String,
    pub pattern: String,
    pub apply_to: String,
    pub definition: String,
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    /// The queue's id in the message store (unique across restarts).
    pub qid: u64,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub source: String,
    pub to_queue: bool,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Everything durable that belongs to one virtual host; deleting the vhost deletes it all.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VhostDefs {
    pub info: VhostInfo,
    /// `max-connections` / `max-queues` (empty: no limits).
    pub limits: Limits,
    pub exchanges: BTreeMap<String, ExchangeDef>,
    pub queues: BTreeMap<String, QueueDef>,
    bindings: BindingDefs,
    /// By (operator policy?, name).
    pub policies: BTreeMap<(bool, String), PolicyDef>,
}

impl VhostDefs {
    /// The bindings, in the order they were made.
    pub fn bindings(&self) -> impl Iterator<Item = &BindingDef> {
        self.bindings.by_seq.values()
    }
}

impl BindingDef {
    /// Every part of the binding, encoded as the log writes it: equal bindings have
    /// equal identities.
    fn identity(&self) -> Vec<u8> {
        let mut id = Vec::new();
        self.encode(&mut id);
        id
    }

    fn encode(&self, o: &mut Vec<u8>) {
        o.put_str(&self.source);
        o.put_u8(self.to_queue as u8);
        o.put_str(&self.destination);
        o.put_str(&self.routing_key);
        o.put_table(&self.arguments);
    }
}

/// A vhost's durable bindings in the order they were made, indexed by identity and by
/// each end, so that replaying a log of many binds, unbinds and deletions costs each
/// change a constant amount (a list searched per change made a 40k-binding replay
/// quadratic; the broker's live bindings are indexed the same way, exchange/bindings.rs).
#[derive(Debug, Default, Clone)]
struct BindingDefs {
    next: u64,
    by_seq: BTreeMap<u64, BindingDef>,
    by_identity: HashMap<Vec<u8>, u64>,
    by_source: HashMap<String, BTreeSet<u64>>,
    /// By destination: queues and exchanges apart (`to_queue`).
    by_destination: HashMap<(bool, String), BTreeSet<u64>>,
}

impl PartialEq for BindingDefs {
    fn eq(&self, other: &Self) -> bool {
        self.by_seq.values().eq(other.by_seq.values())
    }
}

impl BindingDefs {
    fn insert(&mut self, b: BindingDef) {
        let identity = b.identity();
        if self.by_identity.contains_key(&identity) {
            return;
        }
        let seq = self.next;
        self.next += 1;
        self.by_identity.insert(identity, seq);
        self.by_source
            .entry(b.source.clone())
            .or_default()
            .insert(seq);
        self.by_destination
            .entry((b.to_queue, b.destination.clone()))
            .or_default()
            .insert(seq);
        self.by_seq.insert(seq, b);
    }

    fn remove(&mut self, b: &BindingDef) {
        if let Some(seq) = self.by_identity.get(&b.identity()).copied() {
            self.remove_seq(seq);
        }
    }

    fn remove_seq(&mut self, seq: u64) {
        let Some(b) = self.by_seq.remove(&seq) else {
            return;
        };
        self.by_identity.remove(&b.identity());
        if let Some(set) = self.by_source.get_mut(&b.source) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_source.remove(&b.source);
            }
        }
        let dest = (b.to_queue, b.destination);
        if let Some(set) = self.by_destination.get_mut(&dest) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_destination.remove(&dest);
            }
        }
    }

    /// Drop every binding to the queue (`to_queue`) or exchange `name`.
    fn remove_destination(&mut self, to_queue: bool, name: &str) {
        let seqs = self
            .by_destination
            .remove(&(to_queue, name.to_owned()))
            .unwrap_or_default();
        for seq in seqs {
            self.remove_seq(seq);
        }
    }

    /// Drop every binding from the exchange `name`.
    fn remove_source(&mut self, name: &str) {
        let seqs = self.by_source.remove(name).unwrap_or_default();
        for seq in seqs {
            self.remove_seq(seq);
        }
    }
}

/// What the log describes, replayed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub vhosts: BTreeMap<String, VhostDefs>,
    pub users: BTreeMap<String, UserDef>,
    /// By (vhost, user).
    pub permissions: BTreeMap<(String, String), PermissionDef>,
    /// By (vhost, user, exchange).
    pub topic_permissions: BTreeMap<(String, String, String), TopicPermissionDef>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    AddVhost(String),
    DeleteVhost(String),
    VhostInfo {
        vhost: String,
        info: VhostInfo,
    },
    /// Empty limits clear them.
    VhostLimits {
        vhost: String,
        limits: Limits,
    },
    Exchange {
        vhost: String,
        name: String,
        def: ExchangeDef,
    },
    DeleteExchange {
        vhost: String,
        name: String,
    },
    Queue {
        vhost: String,
        name: String,
        def: QueueDef,
    },
    DeleteQueue {
        vhost: String,
        name: String,
    },
    Bind {
        vhost: String,
        binding: BindingDef,
    },
    Unbind {
        vhost: String,
        binding: BindingDef,
    },
    Policy {
        vhost: String,
        def: PolicyDef,
    },
    ClearPolicy {
        vhost: String,
        operator: bool,
        name: String,
    },
    User {
        name: String,
        def: UserDef,
    },
    DeleteUser(String),
    Permission {
        vhost: String,
        user: String,
        def: PermissionDef,
    },
    ClearPermission {
        vhost: String,
        user: String,
    },
    TopicPermission {
        vhost: String,
        user: String,
        exchange: String,
        def: TopicPermissionDef,
    },
    /// For one exchange, or (None) every exchange.
    ClearTopicPermission {
        vhost: String,
        user: String,
        exchange: Option<String>,
    },
}

impl Snapshot {
    /// Apply one change, with the same cascades the broker applies in memory: deleting a
    /// queue or exchange removes its bindings; deleting a vhost, everything in it and
    /// every permission on it; deleting a user, their permissions.
    pub fn apply(&mut self, c: Change) {
        match c {
            Change::AddVhost(v) => {
                self.vhosts.entry(v).or_default();
            }
            Change::DeleteVhost(v) => {
                self.permissions.retain(|(pv, _), _| *pv != v);
                self.topic_permissions.retain(|(pv, _, _), _| *pv != v);
                self.vhosts.remove(&v);
            }
            Change::VhostInfo { vhost, info } => {
                self.vhosts.entry(vhost).or_default().info = info;
            }
            Change::VhostLimits { vhost, limits } => {
                self.vhosts.entry(vhost).or_default().limits = limits;
            }
            Change::Exchange { vhost, name, def } => {
                self.vhosts
                    .entry(vhost)
                    .or_default()
                    .exchanges
                    .insert(name, def);
            }
            Change::DeleteExchange { vhost, name } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.exchanges.remove(&name);
                    v.bindings.remove_source(&name);
                    v.bindings.remove_destination(false, &name);
                }
            }
            Change::Queue { vhost, name, def } => {
                self.vhosts
                    .entry(vhost)
                    .or_default()
                    .queues
                    .insert(name, def);
            }
            Change::DeleteQueue { vhost, name } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.queues.remove(&name);
                    v.bindings.remove_destination(true, &name);
                }
            }
            Change::Bind { vhost, binding } => {
                self.vhosts
                    .entry(vhost)
                    .or_default()
                    .bindings
                    .insert(binding);
            }
            Change::Unbind { vhost, binding } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.bindings.remove(&binding);
                }
            }
            Change::Policy { vhost, def } => {
                self.vhosts
                    .entry(vhost)
                    .or_default()
                    .policies
                    .insert((def.operator, def.name.clone()), def);
            }
            Change::ClearPolicy {
                vhost,
                operator,
                name,
            } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.policies.remove(&(operator, name));
                }
            }
            Change::User { name, def } => {
                self.users.insert(name, def);
            }
            Change::DeleteUser(name) => {
                self.users.remove(&name);
                self.permissions.retain(|(_, u), _| *u != name);
                self.topic_permissions.retain(|(_, u, _), _| *u != name);
            }
            Change::Permission { vhost, user, def } => {
                self.permissions.insert((vhost, user), def);
            }
            Change::ClearPermission { vhost, user } => {
                self.permissions.remove(&(vhost, user));
            }
            Change::TopicPermission {
                vhost,
                user,
                exchange,
                def,
            } => {
                self.topic_permissions.insert((vhost, user, exchange), def);
            }
            Change::ClearTopicPermission {
                vhost,
                user,
                exchange: Some(x),
            } => {
                self.topic_permissions.remove(&(vhost, user, x));
            }
            Change::ClearTopicPermission {
                vhost,
                user,
                exchange: None,
            } => {
                self.topic_permissions
                    .retain(|(v, u, _), _| *v != vhost || *u != user);
            }
        }
    }

    /// The changes that rebuild this snapshot, users first (permissions name them),
    /// then each vhost with what is in it, then permissions.
    pub(super) fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for (name, def) in &self.users {
            out.push(Change::User {
                name: name.clone(),
                def: def.clone(),
            });
        }
        for (vhost, defs) in &self.vhosts {
            out.push(Change::AddVhost(vhost.clone()));
            if defs.info != VhostInfo::default() {
                out.push(Change::VhostInfo {
                    vhost: vhost.clone(),
                    info: defs.info.clone(),
                });
            }
            if !defs.limits.is_empty() {
                out.push(Change::VhostLimits {
                    vhost: vhost.clone(),
                    limits: defs.limits.clone(),
                });
            }
            for (name, def) in &defs.exchanges {
                out.push(Change::Exchange {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    def: def.clone(),
                });
            }
            for (name, def) in &defs.queues {
                out.push(Change::Queue {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    def: def.clone(),
                });
            }
            for b in defs.bindings() {
                out.push(Change::Bind {
                    vhost: vhost.clone(),
                    binding: b.clone(),
                });
            }
            for def in defs.policies.values() {
                out.push(Change::Policy {
                    vhost: vhost.clone(),
                    def: def.clone(),
                });
            }
        }
        for ((vhost, user), def) in &self.permissions {
            out.push(Change::Permission {
                vhost: vhost.clone(),
                user: user.clone(),
                def: def.clone(),
            });
        }
        for ((vhost, user, exchange), def) in &self.topic_permissions {
            out.push(Change::TopicPermission {
                vhost: vhost.clone(),
                user: user.clone(),
                exchange: exchange.clone(),
                def: def.clone(),
            });
        }
        out
    }

    pub fn max_qid(&self) -> u64 {
        self.vhosts
            .values()
            .flat_map(|v| v.queues.values().map(|q| q.qid))
            .max()
            .unwrap_or(0)
    }
}

fn put_list(o: &mut Vec<u8>, items: &[String]) {
    o.put_u32(items.len() as u32);
    for s in items {
        o.put_str(s);
    }
}

fn put_limits(o: &mut Vec<u8>, limits: &Limits) {
    o.put_u32(limits.len() as u32);
    for (k, v) in limits {
        o.put_str(k);
        o.put_u64(*v as u64);
    }
}

fn get_list(g: &mut Get<'_>) -> Option<Vec<String>> {
    let n = g.u32()?;
    // Each item takes at least its 4-byte length: a count beyond what is left is damage.
    if n as usize > g.remaining() / 4 {
        return None;
    }
    (0..n).map(|_| g.string()).collect()
}

fn get_limits(g: &mut Get<'_>) -> Option<Limits> {
    let n = g.u32()?;
    if n as usize > g.remaining() / 12 {
        return None;
    }
    (0..n)
        .map(|_| Some((g.string()?, g.u64()? as i64)))
        .collect()
}

pub(super) fn encode(c: &Change, o: &mut Vec<u8>) {
    match c {
        Change::AddVhost(v) => {
            o.put_u8(b'V');
            o.put_str(v);
        }
        Change::DeleteVhost(v) => {
            o.put_u8(b'v');
            o.put_str(v);
        }
        Change::VhostInfo { vhost, info } => {
            o.put_u8(b'I');
            o.put_str(vhost);
            o.put_str(&info.description);
            put_list(o, &info.tags);
        }
        Change::VhostLimits { vhost, limits } => {
            o.put_u8(b'L');
            o.put_str(vhost);
            put_limits(o, limits);
        }
        Change::Exchange { vhost, name, def } => {
            o.put_u8(b'E');
            o.put_str(vhost);
            o.put_str(name);
            o.put_str(&def.kind);
            o.put_u8(def.auto_delete as u8);
            o.put_u8(def.internal as u8);
            o.put_table(&def.arguments);
        }
        Change::DeleteExchange { vhost, name } => {
            o.put_u8(b'e');
            o.put_str(vhost);
            o.put_str(name);
        }
        Change::Queue { vhost, name, def } => {
            o.put_u8(b'Q');
            o.put_str(vhost);
            o.put_str(name);
            o.put_u64(def.qid);
            o.put_u8(def.auto_delete as u8);
            o.put_table(&def.arguments);
        }
        Change::DeleteQueue { vhost, name } => {
            o.put_u8(b'q');
            o.put_str(vhost);
            o.put_str(name);
        }
        Change::Bind { vhost, binding: b } => {
            o.put_u8(b'B');
            o.put_str(vhost);
            b.encode(o);
        }
        Change::Unbind { vhost, binding: b } => {
            o.put_u8(b'b');
            o.put_str(vhost);
            b.encode(o);
        }
        Change::Policy { vhost, def } => {
            o.put_u8(b'P');
            o.put_str(vhost);
            o.put_u8(def.operator as u8);
            o.put_str(&def.name);
            o.put_str(&def.pattern);
            o.put_str(&def.apply_to);
            o.put_str(&def.definition);
            o.put_u64(def.priority as u64);
        }
        Change::ClearPolicy {
            vhost,
            operator,
            name,
        } => {
            o.put_u8(b'p');
            o.put_str(vhost);
            o.put_u8(*operator as u8);
            o.put_str(name);
        }
        Change::User { name, def } => {
            o.put_u8(b'U');
            o.put_str(name);
            o.put_str(&def.password_hash);
            o.put_str(&def.hashing_algorithm);
            put_list(o, &def.tags);
            put_limits(o, &def.limits);
        }
        Change::DeleteUser(name) => {
            o.put_u8(b'u');
            o.put_str(name);
        }
        Change::Permission { vhost, user, def } => {
            o.put_u8(b'A');
            o.put_str(vhost);
            o.put_str(user);
            o.put_str(&def.configure);
            o.put_str(&def.write);
            o.put_str(&def.read);
        }
        Change::ClearPermission { vhost, user } => {
            o.put_u8(b'a');
            o.put_str(vhost);
            o.put_str(user);
        }
        Change::TopicPermission {
            vhost,
            user,
            exchange,
            def,
        } => {
            o.put_u8(b'T');
            o.put_str(vhost);
            o.put_str(user);
            o.put_str(exchange);
            o.put_str(&def.write);
            o.put_str(&def.read);
        }
        Change::ClearTopicPermission {
            vhost,
            user,
            exchange,
        } => {
            o.put_u8(b't');
            o.put_str(vhost);
            o.put_str(user);
            o.put_u8(exchange.is_some() as u8);
            o.put_str(exchange.as_deref().unwrap_or_default());
        }
    }
}

pub(super) fn decode(payload: &[u8]) -> Option<Change> {
    let mut g = Get::new(payload);
    let binding = |g: &mut Get<'_>| -> Option<BindingDef> {
        Some(BindingDef {
            source: g.string()?,
            to_queue: g.u8()? != 0,
            destination: g.string()?,
            routing_key: g.string()?,
            arguments: g.table()?,
        })
    };
    let change = match g.u8()? {
        b'V' => Change::AddVhost(g.string()?),
        b'v' => Change::DeleteVhost(g.string()?),
        b'I' => Change::VhostInfo {
            vhost: g.string()?,
            info: VhostInfo {
                description: g.string()?,
                tags: get_list(&mut g)?,
            },
        },
        b'L' => Change::VhostLimits {
            vhost: g.string()?,
            limits: get_limits(&mut g)?,
        },
        b'E' => Change::Exchange {
            vhost: g.string()?,
            name: g.string()?,
            def: ExchangeDef {
                kind: g.string()?,
                auto_delete: g.u8()? != 0,
                internal: g.u8()? != 0,
                arguments: g.table()?,
            },
        },
        b'e' => Change::DeleteExchange {
            vhost: g.string()?,
            name: g.string()?,
        },
        b'Q' => Change::Queue {
            vhost: g.string()?,
            name: g.string()?,
            def: QueueDef {
                qid: g.u64()?,
                auto_delete: g.u8()? != 0,
                arguments: g.table()?,
            },
        },
        b'q' => Change::DeleteQueue {
            vhost: g.string()?,
            name: g.string()?,
        },
        b'B' => Change::Bind {
            vhost: g.string()?,
            binding: binding(&mut g)?,
        },
        b'b' => Change::Unbind {
            vhost: g.string()?,
            binding: binding(&mut g)?,
        },
        b'P' => Change::Policy {
            vhost: g.string()?,
            def: PolicyDef {
                operator: g.u8()? != 0,
                name: g.string()?,
                pattern: g.string()?,
                apply_to: g.string()?,
                definition: g.string()?,
                priority: g.u64()? as i64,
            },
        },
        b'p' => Change::ClearPolicy {
            vhost: g.string()?,
            operator: g.u8()? != 0,
            name: g.string()?,
        },
        b'U' => Change::User {
            name: g.string()?,
            def: UserDef {
                password_hash: g.string()?,
                hashing_algorithm: g.string()?,
                tags: get_list(&mut g)?,
                limits: get_limits(&mut g)?,
            },
        },
        b'u' => Change::DeleteUser(g.string()?),
        b'A' => Change::Permission {
            vhost: g.string()?,
            user: g.string()?,
            def: PermissionDef {
                configure: g.string()?,
                write: g.string()?,
                read: g.string()?,
            },
        },
        b'a' => Change::ClearPermission {
            vhost: g.string()?,
            user: g.string()?,
        },
        b'T' => Change::TopicPermission {
            vhost: g.string()?,
            user: g.string()?,
            exchange: g.string()?,
            def: TopicPermissionDef {
                write: g.string()?,
                read: g.string()?,
            },
        },
        b't' => {
            let (vhost, user) = (g.string()?, g.string()?);
            let one = g.u8()? != 0;
            let exchange = g.string()?;
            Change::ClearTopicPermission {
                vhost,
                user,
                exchange: one.then_some(exchange),
            }
        }
        _ => return None,
    };
    Some(change)
}
