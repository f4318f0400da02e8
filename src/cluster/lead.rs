//! Leading: the replication listener, the broker opened on the directory with every
//! change shipped, and two tasks for as long as the process leads: one keeps the lease
//! (and fences the leader the moment it may have lapsed), one keeps the ISR (dropping
//! followers that fall silent, adding those that caught up), always through a
//! transaction fenced on this leader's election.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::coordinator::Coordinator;
use super::ship::{self, Followers};
use super::{failed, restart_as_follower, Me, Session};
use crate::config::Config;
use crate::node::{Node, StartError};
use crate::store::shipping::Shipping;
use std::sync::atomic::{AtomicBool, Ordering};

/// How often the ISR and the lease's validity are looked at.
const TICK: Duration = Duration::from_millis(100);

pub(super) async fn start(
    config: Config,
    me: Me,
    coordinator: Arc<dyn Coordinator>,
    session: Session,
    (election, members): (i64, Vec<String>),
) -> Result<Node, StartError> {
    let c = &config.cluster;
    let c_min_insync = c.min_insync_replicas as usize;
    let shipping = Shipping::new(c_min_insync);
    shipping.lease_until(session.valid_until());
    for m in members.iter().filter(|m| **m != me.node) {
        // Confirms wait for them until they catch up or are dropped for silence.
        shipping.join_isr(m, 0);
    }
    let followers = Arc::new(Followers::default());
    let replication_listen = c.replication_listen.clone();
    let ack_timeout = Duration::from_millis(c.ack_timeout_ms);
    let dir = config.data_dir.clone();
    // The lease is kept from the start: recovering a large directory takes a while.
    let lease = session.lease;
    tokio::spawn(keep_lease(coordinator.clone(), session, shipping.clone()));
    tokio::spawn(watch_lease(shipping.clone()));
    let info = me.info(&config, true);
    super::stats::ROLE.store(super::stats::LEADER, std::sync::atomic::Ordering::Relaxed);
    super::stats::LEADER_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let node = Node::start_shipped(config, Some(shipping.clone())).await?;
    // Serving: the followers' fronts may pass clients on to this node's listeners.
    tokio::spawn(register(coordinator.clone(), me.node.clone(), info, lease));
    // Only now: opening the store rewrote meta.log, a change no follower was sent. One
    // that connects from here on reads the files as they are after it.
    let listener = std::net::TcpListener::bind(&replication_listen).map_err(|e| {
        failed(
            71,
            format!("cannot listen for followers on cluster.replication_listen {replication_listen}: {e}"),
        )
    })?;
    let answer = control_answer(node.broker.clone());
    ship::serve(
        listener,
        dir,
        me.clone(),
        shipping.clone(),
        followers.clone(),
        answer,
    );
    let forget = Arc::new(Mutex::new(Vec::new()));
    let _ = LEADING.set(Leading {
        coordinator: coordinator.clone(),
        lease,
        shipping: shipping.clone(),
        me,
        min_insync: c_min_insync,
        followers: followers.clone(),
        forget: forget.clone(),
    });
    let isr = Isr {
        forget,
        coordinator,
        election,
        members,
        shipping,
        followers,
        ack_timeout,
        started: Instant::now(),
        previous_last: 0,
    };
    tokio::spawn(isr.run());
    Ok(node)
}

/// Control requests that followers pass on (`ops::ask`), run on this broker
/// from the replication threads.
fn control_answer(broker: Arc<crate::broker::Broker>) -> ship::Answer {
    let runtime = tokio::runtime::Handle::current();
    Arc::new(move |request| {
        let response = match serde_json::from_slice::<crate::control::Request>(&request) {
            Ok(req) => runtime.block_on(crate::control::answer(&broker, req, "a follower")),
            Err(e) => crate::control::Response::error(
                crate::control::EX_USAGE,
                format!("malformed control request: {e}"),
            ),
        };
        serde_json::to_vec(&response).unwrap_or_default()
    })
}

/// The process leads: what a graceful stop needs to hand leadership over at once, and
/// what the cluster commands look at.
pub(super) struct Leading {
    pub coordinator: Arc<dyn Coordinator>,
    lease: i64,
    shipping: Arc<Shipping>,
    pub me: Me,
    pub min_insync: usize,
    followers: Arc<Followers>,
    /// Nodes `forget_cluster_node` removed, for the ISR upkeep to drop.
    forget: Arc<Mutex<Vec<String>>>,
}

impl Leading {
    /// Have the ISR upkeep drop `node` (it is down, and forgotten).
    pub fn forget(&self, node: &str) {
        self.forget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node.to_owned());
    }

    /// In-sync followers (the leader not counted).
    pub fn shipping_isr(&self) -> usize {
        self.shipping.isr().len()
    }

    /// The leader's Prometheus families.
    pub fn render(&self, out: &mut String) {
        let isr = self.shipping.isr().len() + 1;
        super::stats::render_followers(out, isr, self.min_insync, &self.replication());
    }

    /// Each follower's replication state, for cluster_status and the API.
    pub fn replication(&self) -> serde_json::Value {
        let last = self.shipping.last();
        let isr: Vec<String> = self.shipping.isr().into_iter().map(|(n, _)| n).collect();
        let mut peers: Vec<(String, ship::Peer)> = self.followers.snapshot().into_iter().collect();
        peers.sort_by(|a, b| a.0.cmp(&b.0));
        let rows: Vec<serde_json::Value> = peers
            .into_iter()
            .map(|(node, p)| {
                let behind = last.saturating_sub(p.acked);
                let seconds = if p.synced && behind == 0 {
                    0.0
                } else {
                    p.progress_at.elapsed().as_secs_f64()
                };
                serde_json::json!({
                    "node": node,
                    "connected": p.connected,
                    "synced": p.synced,
                    "in_sync": isr.contains(&node),
                    "acked": p.acked,
                    "lag_changes": if p.synced { behind } else { last },
                    "lag_seconds": seconds,
                })
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

/// The leadership this process holds, if it leads.
pub(super) fn leading() -> Option<&'static Leading> {
    LEADING.get()
}

static LEADING: std::sync::OnceLock<Leading> = std::sync::OnceLock::new();

/// A graceful stop is under way: the fenced leader stops rather than re-executing.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Leadership is lost: re-execute as a follower, unless the process is stopping anyway.
fn lost(why: &str) {
    if !STOPPING.load(Ordering::Acquire) {
        restart_as_follower(why);
    }
}

/// The lease this process leads under, if it leads.
pub(super) fn lease() -> Option<i64> {
    LEADING.get().map(|l| l.lease)
}

/// A graceful stop begins: confirm nothing more (the followers may lead any moment now).
pub fn fence_for_stop() {
    STOPPING.store(true, Ordering::Release);
    if let Some(l) = LEADING.get() {
        l.shipping.fence();
    }
}

/// A graceful stop ended: give the lease up, so that a follower leads now rather than
/// once the lease lapses.
pub async fn resign() {
    if let Some(l) = LEADING.get() {
        match l.coordinator.revoke(l.lease).await {
            Ok(()) => tracing::info!("leadership handed over"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot give the lease up; a follower leads once it lapses")
            }
        }
    }
}

/// Renew the lease every sixth of its TTL (so that an etcd election of a second or two
/// does not cost the leadership); each success extends what confirms may rely on. An
/// expired lease ends leadership at once.
async fn keep_lease(c: Arc<dyn Coordinator>, mut s: Session, shipping: Arc<Shipping>) {
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(s.ttl / 6).await;
        }
        let sent = Instant::now();
        let renewal = c.renew(s.lease).await;
        super::stats::renewed(renewal.is_ok());
        match renewal {
            Ok(true) => {
                s.renewed = sent;
                shipping.lease_until(s.valid_until());
            }
            Ok(false) => {
                shipping.fence();
                lost("the leader's etcd lease expired");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader's lease"),
        }
    }
}

/// Publish this node's addresses under its lease, retried until etcd takes them.
async fn register(c: Arc<dyn Coordinator>, node: String, info: String, lease: i64) {
    while let Err(e) = c.register(&node, &info, lease).await {
        tracing::debug!(error = %e, "cannot register as a member; retrying");
        tokio::time::sleep(TICK * 5).await;
    }
}

/// The lease may have lapsed (etcd unreachable, or this process was paused): confirm
/// nothing more and stop serving.
async fn watch_lease(shipping: Arc<Shipping>) {
    loop {
        tokio::time::sleep(TICK).await;
        if !shipping.lease_valid() {
            shipping.fence();
            lost("the leader's etcd lease could not be renewed in time");
            return;
        }
    }
}

/// The leader's view of the ISR, kept equal to what etcd stores.
struct Isr {
    /// Nodes forgotten by the operator, to drop now.
    forget: Arc<Mutex<Vec<String>>>,
    coordinator: Arc<dyn Coordinator>,
    election: i64,
    /// The leader first.
    members: Vec<String>,
    shipping: Arc<Shipping>,
    followers: Arc<Followers>,
    ack_timeout: Duration,
    started: Instant,
    /// The last change at the previous tick: a follower that holds it is caught up.
    previous_last: u64,
}

impl Isr {
    async fn run(mut self) {
        loop {
            tokio::time::sleep(TICK).await;
            self.tick().await;
        }
    }

    async fn tick(&mut self) {
        let peers = self.followers.snapshot();
        let last = self.shipping.last();
        let forget = std::mem::take(&mut *self.forget.lock().unwrap_or_else(|e| e.into_inner()));
        for node in self.members.iter().skip(1).cloned().collect::<Vec<_>>() {
            let lag = match peers.get(&node) {
                _ if forget.contains(&node) => Duration::MAX,
                Some(p) if p.connected && p.synced && p.acked >= last => Duration::ZERO,
                Some(p) if p.connected => p.progress_at.elapsed(),
                Some(p) => p.progress_at.elapsed().min(self.started.elapsed()),
                None => self.started.elapsed(),
            };
            if lag > self.ack_timeout {
                let fewer: Vec<String> = self
                    .members
                    .iter()
                    .filter(|m| **m != node)
                    .cloned()
                    .collect();
                if self.store(&fewer).await {
                    // Stored first: from now on confirms go out without it.
                    self.shipping.leave_isr(&node);
                    self.members = fewer;
                    tracing::warn!(node, lag_ms = lag.as_millis() as u64, isr = ?self.members, "follower dropped from the in-sync replicas");
                } else if forget.contains(&node) {
                    self.forget
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(node);
                }
            }
        }
        let joining: Vec<(String, u64)> = peers
            .iter()
            .filter(|(n, p)| {
                !self.members.contains(n)
                    && p.connected
                    && p.synced
                    && p.acked >= self.previous_last
            })
            .map(|(n, p)| (n.clone(), p.acked))
            .collect();
        for (node, acked) in joining {
            // Counted first: a confirm from now on waits for it, before etcd says it
            // may lead.
            self.shipping.join_isr(&node, acked);
            let mut more = self.members.clone();
            more.push(node.clone());
            if self.store(&more).await {
                self.members = more;
                tracing::info!(node, isr = ?self.members, "follower joined the in-sync replicas");
            } else {
                self.shipping.leave_isr(&node);
            }
        }
        self.shipping.trim(self.followers.needed(last));
        self.previous_last = last;
    }

    /// Store a new ISR, fenced on this leader's election; false if etcd did not answer.
    /// Leadership found lost ends the process's leadership.
    async fn store(&self, members: &[String]) -> bool {
        match self.coordinator.set_isr(self.election, members).await {
            Ok(true) => true,
            Ok(false) => {
                self.shipping.fence();
                lost("another node leads (the ISR could not be stored)");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the in-sync replicas");
                false
            }
        }
    }
}
