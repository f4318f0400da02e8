//! Leading: the replication listener, the broker opened on the directory with every
//! change shipped, and two tasks for as long as the process leads: one keeps the lease
//! (and fences the leader the moment it may have lapsed), one keeps the ISR (dropping
//! followers that fall silent, adding those that caught up), always through a
//! transaction fenced on this leader's election.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::coordinator::Coordinator;
use super::ship::{self, Followers};
use super::{failed, restart_as_follower, Me, Session};
use crate::config::Config;
use crate::node::{Node, StartError};
use crate::store::shipping::Shipping;

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
    let shipping = Shipping::new(c.min_insync_replicas as usize);
    shipping.lease_until(session.valid_until());
    for m in members.iter().filter(|m| **m != me.node) {
        // Confirms wait for them until they catch up or are dropped for silence.
        shipping.join_isr(m, 0);
    }
    let followers = Arc::new(Followers::default());
    let listener = std::net::TcpListener::bind(&c.replication_listen).map_err(|e| {
        failed(
            71,
            format!(
                "cannot listen for followers on cluster.replication_listen {}: {e}",
                c.replication_listen
            ),
        )
    })?;
    ship::serve(
        listener,
        config.data_dir.clone(),
        me.cluster.clone(),
        shipping.clone(),
        followers.clone(),
    );
    let ack_timeout = Duration::from_millis(c.ack_timeout_ms);
    let node = Node::start_shipped(config, Some(shipping.clone())).await?;
    tokio::spawn(keep_lease(coordinator.clone(), session, shipping.clone()));
    tokio::spawn(watch_lease(shipping.clone()));
    let isr = Isr {
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

/// Renew the lease every third of its TTL; each success extends what confirms may rely
/// on. An expired lease ends leadership at once.
async fn keep_lease(c: Arc<dyn Coordinator>, mut s: Session, shipping: Arc<Shipping>) {
    loop {
        tokio::time::sleep(s.ttl / 3).await;
        let sent = Instant::now();
        match c.renew(s.lease).await {
            Ok(true) => {
                s.renewed = sent;
                shipping.lease_until(s.valid_until());
            }
            Ok(false) => {
                shipping.fence();
                restart_as_follower("the leader's etcd lease expired");
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader's lease"),
        }
    }
}

/// The lease may have lapsed (etcd unreachable, or this process was paused): confirm
/// nothing more and stop serving.
async fn watch_lease(shipping: Arc<Shipping>) {
    loop {
        tokio::time::sleep(TICK).await;
        if !shipping.lease_valid() {
            shipping.fence();
            restart_as_follower("the leader's etcd lease could not be renewed in time");
        }
    }
}

/// The leader's view of the ISR, kept equal to what etcd stores.
struct Isr {
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
        for node in self.members.iter().skip(1).cloned().collect::<Vec<_>>() {
            let lag = match peers.get(&node) {
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
                restart_as_follower("another node leads (the ISR could not be stored)");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the in-sync replicas");
                false
            }
        }
    }
}
