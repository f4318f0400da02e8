//! What the cluster asks of its coordination service: a lease per node, one leader key
//! bound to the leader's lease, and the in-sync replica set (ISR) that only the current
//! leader may change. etcd provides it ([`super::etcd`]); an embedded Raft backend could
//! later, behind the same trait, without touching replication.
//!
//! Every change the leader makes is fenced on its *election revision* (the revision at
//! which it created the leader key): once another node holds the key, the old leader's
//! writes fail, however late they arrive.

use std::future::Future;
use std::pin::Pin;

/// A coordination call's result. Errors are the service being unreachable or refusing;
/// a compare that fails is not an error (`Ok(false)` / `Ok(None)`).
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, CoordError>> + Send + 'a>>;

#[derive(Debug, Clone)]
pub struct CoordError(pub String);

impl std::fmt::Display for CoordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The node that holds the leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    /// Its replication address (host:port).
    pub address: String,
    /// The revision the key was created at: the leader's term, and its fencing token.
    pub revision: i64,
}

/// The in-sync replicas: the nodes that hold every confirmed change, leader included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isr {
    pub members: Vec<String>,
    /// The key's modification revision (for compare-and-swap); 0 when it does not exist.
    pub revision: i64,
}

/// A live member as it registered itself (under its own lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    /// Free-form JSON the node published about itself (version, addresses).
    pub info: String,
}

pub trait Coordinator: Send + Sync {
    /// A new lease of `ttl` seconds; its id.
    fn grant(&self, ttl: u64) -> Fut<'_, i64>;
    /// Keep the lease alive; `Ok(false)` once it has expired (it cannot be revived).
    fn renew(&self, lease: i64) -> Fut<'_, bool>;
    /// Give the lease up (its keys go at once).
    fn revoke(&self, lease: i64) -> Fut<'_, ()>;
    /// The current leader, if any.
    fn leader(&self) -> Fut<'_, Option<Leader>>;
    /// The ISR as stored; `None` before any leader ever wrote one (a new cluster).
    fn isr(&self) -> Fut<'_, Option<Isr>>;
    /// Become leader: atomically, only if no node holds the leader key and the ISR is
    /// still at `isr_revision` (0: it must not exist yet), write the leader key (bound to
    /// `lease`) and the ISR `members`. The election revision if this node won.
    fn campaign<'a>(
        &'a self,
        node: &'a str,
        address: &'a str,
        lease: i64,
        isr_revision: i64,
        members: &'a [String],
    ) -> Fut<'a, Option<i64>>;
    /// Replace the ISR, only while the leader key is still the one created at
    /// `election`; false if leadership is gone.
    fn set_isr<'a>(&'a self, election: i64, members: &'a [String]) -> Fut<'a, bool>;
    /// Publish this node as a live member under its lease.
    fn register<'a>(&'a self, node: &'a str, info: &'a str, lease: i64) -> Fut<'a, ()>;
    /// The live members.
    fn members(&self) -> Fut<'_, Vec<Member>>;
    /// A cluster-wide setting an operator made (`set_cluster_name`), if any.
    fn setting<'a>(&'a self, name: &'a str) -> Fut<'a, Option<String>>;
    /// Store a cluster-wide setting (not bound to any lease).
    fn set_setting<'a>(&'a self, name: &'a str, value: &'a str) -> Fut<'a, ()>;
    /// Every setting whose name starts with `prefix`: (the rest of the name, value).
    fn settings<'a>(&'a self, prefix: &'a str) -> Fut<'a, Vec<(String, String)>>;
    /// Remove a setting.
    fn clear_setting<'a>(&'a self, name: &'a str) -> Fut<'a, ()>;
}
