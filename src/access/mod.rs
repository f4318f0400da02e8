//! The access model: users (password hashes, tags, limits), their permissions per vhost,
//! topic permissions, and vhost limits. [`Access`] is the single owner of all of it;
//! connections and channels ask it questions (`authenticate`, `check`, ...) and the
//! control socket changes it. Every change bumps [`Access::generation`], which is what
//! per-channel caches of publish verdicts compare against, and is recorded in the
//! metadata log (`store/meta`) under the same lock, synced before the caller returns.
//!
//! Checks follow RabbitMQ's access-control table
//! (<https://www.rabbitmq.com/docs/access-control>) and rabbit_channel.erl; refusal texts
//! are RabbitMQ 3.10's (checked against it by tests/it/access.rs): they name the
//! resource, not which of configure/write/read was missing.

pub mod password;
pub mod permission;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::config::DefaultsConfig;
use crate::error::{rs, AmqpError};
use crate::store::meta::{PermissionDef, Snapshot, TopicPermissionDef, UserDef, VhostInfo};
use crate::store::{Change, Store};
pub use permission::{Grant, Pattern, Perm, Permission, PublishGrants, TopicPermission};

/// The tags RabbitMQ knows; others are accepted and kept, as RabbitMQ does.
pub const KNOWN_TAGS: &[&str] = &[
    "administrator",
    "monitoring",
    "policymaker",
    "management",
    "impersonator",
];

/// What a new node starts with, as RabbitMQ seeds one: the default vhost, and the
/// default user (guest unless configured) with the administrator tag and full
/// permissions on it.
pub fn seed(defaults: &DefaultsConfig) -> Vec<Change> {
    vec![
        Change::AddVhost(defaults.vhost.clone()),
        Change::VhostInfo {
            vhost: defaults.vhost.clone(),
            info: VhostInfo {
                description: "Default virtual host".to_owned(),
                tags: Vec::new(),
            },
        },
        Change::User {
            name: defaults.user.clone(),
            def: UserDef {
                password_hash: password::hash(&defaults.password),
                hashing_algorithm: password::SHA256.to_owned(),
                tags: vec!["administrator".to_owned()],
                limits: Limits::new(),
            },
        },
        Change::Permission {
            vhost: defaults.vhost.clone(),
            user: defaults.user.clone(),
            def: PermissionDef {
                configure: ".*".to_owned(),
                write: ".*".to_owned(),
                read: ".*".to_owned(),
            },
        },
    ]
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// base64, RabbitMQ's format; empty for a passwordless user.
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
    pub limits: Limits,
}

pub use crate::store::meta::Limits;

/// A limit's value if it limits anything.
pub fn limit(limits: &Limits, key: &str) -> Option<u64> {
    limits.get(key).and_then(|v| u64::try_from(*v).ok())
}

/// Why a management operation failed, with rabbitmqctl's wording and exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessError {
    NoSuchUser(String),
    UserExists(String),
    NoSuchVhost(String),
    Invalid(String),
}

impl AccessError {
    /// rabbitmqctl's exit codes: 67 EX_NOUSER, 70 EX_SOFTWARE ("already exists"),
    /// 69 EX_UNAVAILABLE for a missing vhost, 65 EX_DATAERR for bad input.
    pub fn exit_code(&self) -> u8 {
        match self {
            AccessError::NoSuchUser(_) => 67,
            AccessError::UserExists(_) => 70,
            AccessError::NoSuchVhost(_) => 69,
            AccessError::Invalid(_) => 65,
        }
    }
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessError::NoSuchUser(u) => write!(f, "User \"{u}\" does not exist"),
            AccessError::UserExists(u) => write!(f, "User \"{u}\" already exists"),
            AccessError::NoSuchVhost(v) => write!(f, "Virtual host {v} does not exist"),
            AccessError::Invalid(why) => f.write_str(why),
        }
    }
}

#[derive(Default)]
struct State {
    users: BTreeMap<String, User>,
    /// By (vhost, user).
    permissions: BTreeMap<(String, String), Permission>,
    /// By (vhost, user), one entry per exchange.
    topic_permissions: BTreeMap<(String, String), Vec<TopicPermission>>,
    vhost_limits: HashMap<String, Limits>,
}

pub struct Access {
    state: RwLock<State>,
    generation: AtomicU64,
    loopback_only: Vec<String>,
    /// Where every change is recorded (None: a broker that keeps nothing).
    store: Option<Arc<Store>>,
}

impl Access {
    /// A fresh node's access model (see [`seed`]), kept nowhere.
    pub fn new(defaults: &DefaultsConfig) -> Access {
        let mut snapshot = Snapshot::default();
        for c in seed(defaults) {
            snapshot.apply(c);
        }
        Self::restore(&snapshot, defaults, None)
    }

    /// The users, permissions and limits the metadata log holds, recording changes to it
    /// from now on. A stored pattern that no longer compiles (none should: each was
    /// checked when set) is left out with a warning rather than stopping the broker.
    pub fn restore(
        snapshot: &Snapshot,
        defaults: &DefaultsConfig,
        store: Option<Arc<Store>>,
    ) -> Access {
        let mut state = State::default();
        for (name, u) in &snapshot.users {
            state.users.insert(
                name.clone(),
                User {
                    name: name.clone(),
                    password_hash: u.password_hash.clone(),
                    hashing_algorithm: u.hashing_algorithm.clone(),
                    tags: u.tags.clone(),
                    limits: u.limits.clone(),
                },
            );
        }
        for ((vhost, user), p) in &snapshot.permissions {
            match Permission::new(&p.configure, &p.write, &p.read) {
                Ok(perm) => {
                    state
                        .permissions
                        .insert((vhost.clone(), user.clone()), perm);
                }
                Err(e) => tracing::warn!(vhost, user, "stored permissions left out: {e}"),
            }
        }
        for ((vhost, user, exchange), t) in &snapshot.topic_permissions {
            let patterns = Pattern::with_vars(&t.write, user, vhost)
                .and_then(|w| Ok((w, Pattern::with_vars(&t.read, user, vhost)?)));
            match patterns {
                Ok((write, read)) => state
                    .topic_permissions
                    .entry((vhost.clone(), user.clone()))
                    .or_default()
                    .push(TopicPermission {
                        exchange: exchange.clone(),
                        write,
                        read,
                    }),
                Err(e) => tracing::warn!(
                    vhost,
                    user,
                    exchange,
                    "stored topic permissions left out: {e}"
                ),
            }
        }
        for (vhost, defs) in &snapshot.vhosts {
            if !defs.limits.is_empty() {
                state
                    .vhost_limits
                    .insert(vhost.clone(), defs.limits.clone());
            }
        }
        Access {
            state: RwLock::new(state),
            generation: AtomicU64::new(1),
            loopback_only: defaults.loopback_users.clone(),
            store,
        }
    }

    /// Finish a change: record it while the lock that ordered it is still held (so the
    /// log's order is the order of the changes), release the lock, then sync before
    /// the caller (the CLI, the HTTP API, an import) hears that it happened.
    fn commit(&self, guard: RwLockWriteGuard<'_, State>, change: Change) {
        if let Some(s) = &self.store {
            s.meta.append(&change);
        }
        drop(guard);
        if let Some(s) = &self.store {
            s.meta.sync();
        }
    }

    /// Bumped by every change; caches of verdicts compare against it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        let guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        guard
    }

    // ---- authentication ----

    /// Check a user's password and where they connect from. The error is the reason,
    /// for the log (clients only hear RabbitMQ's terse refusal).
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<(), String> {
        self.check_password(user, password)?;
        if self.loopback_only.iter().any(|u| u == user) && !is_loopback(peer) {
            return Err(format!("user '{user}' can only connect via localhost"));
        }
        Ok(())
    }

    /// A login established outside SASL (EXTERNAL: a verified TLS client certificate):
    /// the user must exist, passwordless or not, and loopback_users still applies.
    pub fn authenticate_external(&self, user: &str, peer: IpAddr) -> Result<(), String> {
        if !self.read().users.contains_key(user) {
            return Err(format!("user '{user}' - not found"));
        }
        if self.loopback_only.iter().any(|u| u == user) && !is_loopback(peer) {
            return Err(format!("user '{user}' can only connect via localhost"));
        }
        Ok(())
    }

    /// The password check alone (authenticate_user); texts as rabbit_auth_backend_internal.
    pub fn check_password(&self, user: &str, password: &str) -> Result<(), String> {
        let state = self.read();
        let Some(u) = state.users.get(user) else {
            return Err(format!("user '{user}' - not found"));
        };
        if password::verify(&u.hashing_algorithm, &u.password_hash, password) {
            Ok(())
        } else {
            Err(format!("user '{user}' - invalid credentials"))
        }
    }

    // ---- users ----

    pub fn user(&self, name: &str) -> Option<User> {
        self.read().users.get(name).cloned()
    }

    pub fn users(&self) -> Vec<User> {
        self.read().users.values().cloned().collect()
    }

    /// add_user; `None` makes a passwordless user.
    pub fn add_user(&self, name: &str, password: Option<&str>) -> Result<(), AccessError> {
        let hash = password.map(password::hash).unwrap_or_default();
        self.insert_user(name, hash, password::SHA256.to_owned(), false)
    }

    /// A user from definitions: hash as exported; replaces an existing user's hash
    /// and tags when `replace` (import), refuses otherwise.
    pub fn insert_user(
        &self,
        name: &str,
        hash: String,
        algorithm: String,
        replace: bool,
    ) -> Result<(), AccessError> {
        if name.is_empty() {
            return Err(AccessError::Invalid("user name must not be empty".into()));
        }
        if !password::supported(&algorithm) {
            return Err(AccessError::Invalid(format!(
                "unsupported hashing algorithm {algorithm} for user \"{name}\""
            )));
        }
        if !password::well_formed(&hash) {
            return Err(AccessError::Invalid(format!(
                "malformed password hash for user \"{name}\""
            )));
        }
        let mut state = self.write();
        let user = match state.users.get_mut(name) {
            Some(_) if !replace => return Err(AccessError::UserExists(name.to_owned())),
            Some(u) => {
                u.password_hash = hash;
                u.hashing_algorithm = algorithm;
                u.clone()
            }
            None => {
                let u = User {
                    name: name.to_owned(),
                    password_hash: hash,
                    hashing_algorithm: algorithm,
                    tags: Vec::new(),
                    limits: Limits::new(),
                };
                state.users.insert(name.to_owned(), u.clone());
                u
            }
        };
        self.commit(state, user_change(&user));
        Ok(())
    }

    /// delete_user: the user, their permissions and topic permissions.
    pub fn delete_user(&self, name: &str) -> Result<(), AccessError> {
        let mut state = self.write();
        if state.users.remove(name).is_none() {
            return Err(AccessError::NoSuchUser(name.to_owned()));
        }
        state.permissions.retain(|(_, u), _| u != name);
        state.topic_permissions.retain(|(_, u), _| u != name);
        self.commit(state, Change::DeleteUser(name.to_owned()));
        Ok(())
    }

    fn with_user(&self, name: &str, f: impl FnOnce(&mut User)) -> Result<(), AccessError> {
        let mut state = self.write();
        let u = state
            .users
            .get_mut(name)
            .ok_or_else(|| AccessError::NoSuchUser(name.to_owned()))?;
        f(u);
        let change = user_change(u);
        self.commit(state, change);
        Ok(())
    }

    /// change_password (`None`: clear_password).
    pub fn change_password(&self, name: &str, password: Option<&str>) -> Result<(), AccessError> {
        let hash = password.map(password::hash).unwrap_or_default();
        self.with_user(name, |u| {
            u.password_hash = hash;
            u.hashing_algorithm = password::SHA256.to_owned();
        })
    }

    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AccessError> {
        self.with_user(name, |u| u.tags = tags)
    }

    pub fn set_user_limits(&self, name: &str, limits: Limits) -> Result<(), AccessError> {
        check_limit_keys(&limits, &["max-connections", "max-channels"])?;
        self.with_user(name, |u| u.limits = limits)
    }

    // ---- permissions ----

    /// set_permissions. The caller checks that the vhost exists.
    pub fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AccessError> {
        let p = Permission::new(configure, write, read).map_err(AccessError::Invalid)?;
        let mut state = self.write();
        if !state.users.contains_key(user) {
            return Err(AccessError::NoSuchUser(user.to_owned()));
        }
        state
            .permissions
            .insert((vhost.to_owned(), user.to_owned()), p);
        let change = Change::Permission {
            vhost: vhost.to_owned(),
            user: user.to_owned(),
            def: PermissionDef {
                configure: configure.to_owned(),
                write: write.to_owned(),
                read: read.to_owned(),
            },
        };
        self.commit(state, change);
        Ok(())
    }

    pub fn clear_permissions(&self, vhost: &str, user: &str) -> Result<(), AccessError> {
        let mut state = self.write();
        if !state.users.contains_key(user) {
            return Err(AccessError::NoSuchUser(user.to_owned()));
        }
        state
            .permissions
            .remove(&(vhost.to_owned(), user.to_owned()));
        let change = Change::ClearPermission {
            vhost: vhost.to_owned(),
            user: user.to_owned(),
        };
        self.commit(state, change);
        Ok(())
    }

    /// (vhost, user, permission), sorted by vhost then user.
    pub fn permissions(&self) -> Vec<(String, String, Permission)> {
        self.read()
            .permissions
            .iter()
            .map(|((v, u), p)| (v.clone(), u.clone(), p.clone()))
            .collect()
    }

    pub fn set_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AccessError> {
        let tp = TopicPermission {
            exchange: exchange.to_owned(),
            write: Pattern::with_vars(write, user, vhost).map_err(AccessError::Invalid)?,
            read: Pattern::with_vars(read, user, vhost).map_err(AccessError::Invalid)?,
        };
        let mut state = self.write();
        if !state.users.contains_key(user) {
            return Err(AccessError::NoSuchUser(user.to_owned()));
        }
        let list = state
            .topic_permissions
            .entry((vhost.to_owned(), user.to_owned()))
            .or_default();
        list.retain(|t| t.exchange != exchange);
        list.push(tp);
        list.sort_by(|a, b| a.exchange.cmp(&b.exchange));
        let change = Change::TopicPermission {
            vhost: vhost.to_owned(),
            user: user.to_owned(),
            exchange: exchange.to_owned(),
            def: TopicPermissionDef {
                write: write.to_owned(),
                read: read.to_owned(),
            },
        };
        self.commit(state, change);
        Ok(())
    }

    /// clear_topic_permissions, for one exchange or (None) all of them.
    pub fn clear_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> Result<(), AccessError> {
        let mut state = self.write();
        if !state.users.contains_key(user) {
            return Err(AccessError::NoSuchUser(user.to_owned()));
        }
        let key = (vhost.to_owned(), user.to_owned());
        match exchange {
            None => {
                state.topic_permissions.remove(&key);
            }
            Some(x) => {
                if let Some(list) = state.topic_permissions.get_mut(&key) {
                    list.retain(|t| t.exchange != x);
                }
            }
        }
        let (vhost, user) = key;
        let change = Change::ClearTopicPermission {
            vhost,
            user,
            exchange: exchange.map(str::to_owned),
        };
        self.commit(state, change);
        Ok(())
    }

    /// (vhost, user, topic permission).
    pub fn topic_permissions(&self) -> Vec<(String, String, TopicPermission)> {
        self.read()
            .topic_permissions
            .iter()
            .flat_map(|((v, u), list)| list.iter().map(|t| (v.clone(), u.clone(), t.clone())))
            .collect()
    }

    // ---- vhosts ----

    pub fn set_vhost_limits(&self, vhost: &str, limits: Limits) -> Result<(), AccessError> {
        check_limit_keys(&limits, &["max-connections", "max-queues"])?;
        let mut state = self.write();
        if limits.is_empty() {
            state.vhost_limits.remove(vhost);
        } else {
            state.vhost_limits.insert(vhost.to_owned(), limits.clone());
        }
        let change = Change::VhostLimits {
            vhost: vhost.to_owned(),
            limits,
        };
        self.commit(state, change);
        Ok(())
    }

    pub fn vhost_limits(&self, vhost: &str) -> Limits {
        self.read()
            .vhost_limits
            .get(vhost)
            .cloned()
            .unwrap_or_default()
    }

    /// A vhost went away: so do the permissions and limits in it. Not recorded: the
    /// vhost's deletion, which the broker records, implies it.
    pub fn vhost_deleted(&self, vhost: &str) {
        let mut state = self.write();
        state.permissions.retain(|(v, _), _| v != vhost);
        state.topic_permissions.retain(|(v, _), _| v != vhost);
        state.vhost_limits.remove(vhost);
    }

    // ---- checks (the AMQP side) ----

    /// connection.open: the user needs some permissions in the vhost.
    pub fn check_vhost(&self, user: &str, vhost: &str) -> Result<(), AmqpError> {
        if self
            .read()
            .permissions
            .contains_key(&(vhost.to_owned(), user.to_owned()))
        {
            Ok(())
        } else {
            Err(AmqpError::not_allowed(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )))
        }
    }

    /// `perm` access to the resource `kind` `name` (exchange or queue). The default
    /// exchange is checked under its name `amq.default`, as in RabbitMQ.
    pub fn check(
        &self,
        user: &str,
        vhost: &str,
        kind: &str,
        name: &str,
        perm: Perm,
    ) -> Result<(), AmqpError> {
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let allowed = self
            .read()
            .permissions
            .get(&(vhost.to_owned(), user.to_owned()))
            .is_some_and(|p| p.allows(perm, name));
        if allowed {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "access to {} refused for user '{user}'",
                rs(kind, name, vhost)
            )))
        }
    }

    /// Does the user have topic permissions on this exchange (so routing keys need
    /// checking)? Without any, topic access is unrestricted.
    pub fn topic_restricted(&self, user: &str, vhost: &str, exchange: &str) -> bool {
        self.read()
            .topic_permissions
            .get(&(vhost.to_owned(), user.to_owned()))
            .is_some_and(|l| l.iter().any(|t| t.exchange == exchange))
    }

    /// Topic permission on a routing key (write on publish, read on bind), for topic
    /// exchanges only; the caller checks the type.
    pub fn check_topic(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        perm: Perm,
    ) -> Result<(), AmqpError> {
        let state = self.read();
        let Some(tp) = state
            .topic_permissions
            .get(&(vhost.to_owned(), user.to_owned()))
            .and_then(|l| l.iter().find(|t| t.exchange == exchange))
        else {
            return Ok(());
        };
        let ok = match perm {
            Perm::Read => tp.read.matches(routing_key),
            _ => tp.write.matches(routing_key),
        };
        if ok {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
            )))
        }
    }
}

/// A user's record: the whole user as it now is.
fn user_change(u: &User) -> Change {
    Change::User {
        name: u.name.clone(),
        def: UserDef {
            password_hash: u.password_hash.clone(),
            hashing_algorithm: u.hashing_algorithm.clone(),
            tags: u.tags.clone(),
            limits: u.limits.clone(),
        },
    }
}

fn check_limit_keys(limits: &Limits, allowed: &[&str]) -> Result<(), AccessError> {
    match limits.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(AccessError::Invalid(format!(
            "unknown limit '{k}' (expected one of: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn access() -> Access {
        Access::new(&DefaultsConfig::default())
    }

    #[test]
    fn default_user_is_an_administrator_with_full_permissions() {
        let a = access();
        assert_eq!(a.user("guest").unwrap().tags, vec!["administrator"]);
        assert!(a.authenticate("guest", "guest", LOCAL).is_ok());
        for p in [Perm::Configure, Perm::Write, Perm::Read] {
            assert!(a.check("guest", "/", "queue", "q", p).is_ok());
        }
        assert!(a.check_vhost("guest", "/").is_ok());
    }

    #[test]
    fn guest_only_from_loopback() {
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let e = access().authenticate("guest", "guest", remote).unwrap_err();
        assert!(e.contains("can only connect via localhost"), "{e}");
        let v6_mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(access().authenticate("guest", "guest", v6_mapped).is_ok());
    }

    #[test]
    fn refusal_texts_are_rabbitmqs() {
        let a = access();
        a.add_user("u", Some("p")).unwrap();
        assert_eq!(
            a.check_vhost("u", "/").unwrap_err().text,
            "NOT_ALLOWED - access to vhost '/' refused for user 'u'"
        );
        a.set_permissions("/", "u", "^a", "", "").unwrap();
        assert_eq!(
            a.check("u", "/", "queue", "q", Perm::Configure)
                .unwrap_err()
                .text,
            "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'u'"
        );
        assert_eq!(
            a.check("u", "/", "exchange", "", Perm::Write)
                .unwrap_err()
                .text,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        );
    }

    #[test]
    fn passwordless_users_cannot_log_in() {
        let a = access();
        a.add_user("nopass", None).unwrap();
        assert!(a.check_password("nopass", "").is_err());
        assert_eq!(
            a.add_user("nopass", None),
            Err(AccessError::UserExists("nopass".into()))
        );
    }

    #[test]
    fn every_change_bumps_the_generation() {
        let a = access();
        let g = a.generation();
        a.set_permissions("/", "guest", "", "", "").unwrap();
        assert!(a.generation() > g);
        assert!(matches!(
            a.set_permissions("/", "guest", "(", "", ""),
            Err(AccessError::Invalid(_))
        ));
        assert!(matches!(
            a.set_permissions("/", "nobody", "", "", ""),
            Err(AccessError::NoSuchUser(_))
        ));
    }

    #[test]
    fn topic_permissions_only_restrict_named_exchanges() {
        let a = access();
        a.set_topic_permissions("/", "guest", "amq.topic", "^{username}\\.", ".*")
            .unwrap();
        assert!(a.topic_restricted("guest", "/", "amq.topic"));
        assert!(!a.topic_restricted("guest", "/", "other"));
        assert!(a
            .check_topic("guest", "/", "amq.topic", "guest.x", Perm::Write)
            .is_ok());
        assert_eq!(
            a.check_topic("guest", "/", "amq.topic", "bob.x", Perm::Write)
                .unwrap_err()
                .text,
            "ACCESS_REFUSED - access to topic 'bob.x' in exchange 'amq.topic' in vhost '/' refused for user 'guest'"
        );
    }
}
