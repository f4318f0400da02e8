//! A replicated cluster: one leader serves every client and ships its data directory's
//! changes ([`crate::store::shipping`]) to the followers, which apply them to their own
//! directories ([`follow`]); etcd, behind [`coordinator::Coordinator`], elects the
//! leader and holds the in-sync replicas (ISR).
//!
//! The node's life: it starts as a follower of whoever leads. When no one does and it
//! is in the ISR (or there is no ISR yet: a new cluster) with complete files, it
//! campaigns; the winner opens its directory as at a restart and serves. A leader that
//! cannot renew its lease stops confirming at once and re-executes itself, starting
//! again as a follower: nothing of its old state survives to confirm late.
//!
//! Safety rests on the ISR: a confirm waits for every ISR follower; a follower leaves
//! the ISR only through a transaction fenced on the leader's election, stored before
//! any confirm goes out without it; only ISR members campaign.

pub mod coordinator;
pub mod etcd;
pub mod follow;
pub mod front;
mod lead;
pub mod ops;
pub mod stats;

pub use lead::{fence_for_stop, resign};
pub mod ship;
pub mod wire;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::{Coordinator, Leader};

use crate::config::Config;
use crate::node::{Node, StartError};

use crate::app::RESIGNED_LEASE;

/// How often a follower looks at who leads.
const POLL: Duration = Duration::from_millis(200);

/// This node's identity in the cluster.
#[derive(Clone)]
pub struct Me {
    pub node: String,
    pub cluster: String,
    /// Where followers reach this node's replication listener.
    pub address: String,
    /// `cluster.secret`: what a follower proves it knows.
    pub secret: String,
}

impl Me {
    fn of(config: &Config) -> Me {
        let c = &config.cluster;
        Me {
            node: c.node_name.clone(),
            cluster: c.name.clone(),
            address: if c.advertise.is_empty() {
                c.replication_listen.clone()
            } else {
                c.advertise.clone()
            },
            secret: c.secret.clone(),
        }
    }

    /// What this node publishes about itself (in etcd, under its lease): its version
    /// and where it is reached, by followers and by clients. A follower's front passes
    /// clients on to the leader's client addresses: the advertised host with each
    /// listener's port.
    pub(crate) fn info(&self, config: &Config, running: bool) -> String {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        let at = |listen: &str, on: bool| {
            let port = listen.rsplit_once(':').map(|(_, p)| p)?;
            on.then(|| format!("{host}:{port}"))
        };
        let tls = config.tls.enabled();
        let m = &config.management;
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "address": self.address,
            "amqp": at(&config.amqp.listen, true),
            "amqps": at(&config.tls.listen, tls),
            "management": at(&m.listen, true),
            "management_tls": at(&m.tls_listen, tls),
            "running": running,
        })
        .to_string()
    }
}

/// The lease this process holds, and when it was last known alive.
pub(crate) struct Session {
    pub lease: i64,
    /// When the last successful renewal was sent: etcd counts the TTL from no earlier.
    pub renewed: Instant,
    pub ttl: Duration,
}

impl Session {
    /// Until when the lease is surely valid: etcd counts the TTL from when it got the
    /// renewal, no earlier than it was sent; a tenth (at most half a second) is left
    /// for the clocks' rates and for stopping.
    pub fn valid_until(&self) -> Instant {
        self.renewed + self.ttl - (self.ttl / 10).min(Duration::from_millis(500))
    }
}

/// Follow until this node leads, then start serving: the running node. `up` is told
/// once the node follows (its control socket and front door are up), for systemd.
pub async fn start(config: Config, up: impl FnOnce(&str)) -> Result<Node, StartError> {
    let me = Me::of(&config);
    crate::broker::set_node_name(&me.node);
    crate::broker::set_cluster_name(&me.cluster);
    let c = &config.cluster;
    if c.secret.is_empty() {
        tracing::warn!("cluster.secret is empty: any host that reaches cluster.replication_listen can follow this cluster and read its data; set a secret shared by the nodes");
    }
    if !c.partition_handling.is_empty() {
        tracing::info!(
            cluster_partition_handling = c.partition_handling,
            "cluster_partition_handling has no effect: a warren node without etcd's majority always stops serving (pause_minority)"
        );
    }
    let coordinator: Arc<dyn Coordinator> = Arc::new(etcd::Etcd::new(
        &c.etcd_endpoints,
        &c.name,
        Duration::from_secs(1),
    ));
    let dir = config.data_dir.clone();
    crate::store::files::create_dir(&dir)
        .map_err(|e| failed(73, format!("data dir {}: {e}", dir.display())))?;
    let lock = crate::store::lock(&dir).map_err(|e| failed(73, e.to_string()))?;
    if let Some(old) = std::env::var(RESIGNED_LEASE)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        match coordinator.revoke(old).await {
            Ok(()) => tracing::info!("the lease this process led under is given up"),
            Err(e) => tracing::info!(error = %e, "cannot give the old lease up; it lapses"),
        }
    }
    let ttl = Duration::from_secs(c.lease_ttl);
    let mut session = grant(&*coordinator, ttl).await;
    let stopped = crate::app::started_stopped();
    let local = ops::Local::new(
        me.clone(),
        coordinator.clone(),
        &dir,
        c.min_insync_replicas as usize,
        stopped,
    );
    let control = crate::control::bind(&dir).await.map_err(|e| {
        let path = crate::control::socket_path(&dir);
        failed(
            71,
            format!("cannot create the control socket {}: {e}", path.display()),
        )
    })?;
    let control = tokio::spawn(ops::serve_follower(local.clone(), control));
    let mut front = if stopped {
        None
    } else {
        Some(front::Front::start(&config, &me.node).await?)
    };
    let mut registered: Option<String> = None;
    let mut following: Option<Following> = None;
    let mut last_leader: Option<String> = None;
    tracing::info!(
        node = me.node,
        cluster = me.cluster,
        app_stopped = stopped,
        "cluster node started; following until it leads"
    );
    up(if stopped {
        "cluster node, app stopped"
    } else {
        "cluster node following; clients are passed on to the leader"
    });
    loop {
        let app_stopped = local.app_stopped();
        if app_stopped {
            // stop_app: neither follow nor pass clients on, nor campaign.
            stop(following.take()).await;
            if let Some(f) = front.take() {
                f.stop().await;
                tracing::info!("app stopped: not following, not serving clients");
            }
            local.set_following(None);
        } else if front.is_none() {
            match front::Front::start(&config, &me.node).await {
                Ok(f) => {
                    front = Some(f);
                    tracing::info!("app started");
                }
                Err(e) => tracing::error!(error = e.message, "cannot start the app; retrying"),
            }
        }
        local.set_running(!app_stopped && front.is_some());
        let role = if app_stopped {
            stats::STOPPED
        } else {
            stats::FOLLOWER
        };
        stats::ROLE.store(role, Ordering::Relaxed);
        let info = me.info(&config, !app_stopped);
        session = keep(&*coordinator, session, &me, &info, &mut registered).await;
        if app_stopped {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = local.wake.notified() => {}
            }
            continue;
        }
        match coordinator.leader().await {
            Ok(Some(l)) if l.node != me.node => {
                if let Some(front) = &front {
                    if front.leader().as_deref() != Some(l.node.as_str()) {
                        point_front(&*coordinator, front, &l.node).await;
                    }
                }
                if last_leader.as_deref() != Some(l.node.as_str()) {
                    stats::LEADER_CHANGES.fetch_add(1, Ordering::Relaxed);
                }
                last_leader = Some(l.node.clone());
                local.set_following(Some(l.clone()));
                following = Some(match following.take() {
                    Some(f) if f.leader == l => f,
                    other => {
                        stop(other).await;
                        Following::start(&dir, &me, l)
                    }
                });
            }
            // Our own key: from before a re-execution (it lapses with that process's
            // lease), or a campaign that won although its answer was lost. Give this
            // lease up, so that the key goes in either case, and take a new one.
            Ok(Some(_)) => {
                stop(following.take()).await;
                let _ = coordinator.revoke(session.lease).await;
                session = grant(&*coordinator, ttl).await;
                registered = None;
            }
            Ok(None) => {
                if let Some(front) = &front {
                    front.point_at(None);
                }
                local.set_following(None);
                if let Some(won) = campaign(
                    &*coordinator,
                    &me,
                    &mut session,
                    &dir,
                    last_leader.as_deref(),
                    || stop(following.take()),
                )
                .await
                {
                    // The broker's own control socket and listeners take over.
                    control.abort();
                    let _ = control.await;
                    let _ = std::fs::remove_file(crate::control::socket_path(&dir));
                    if let Some(f) = front.take() {
                        f.stop().await;
                    }
                    drop(lock);
                    // The control socket, the API and Prometheus show the cluster, never
                    // a single node, from the moment they serve.
                    crate::membership::install(Box::new(ops::Leading));
                    return lead::start(config, me, coordinator, session, won).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "etcd unreachable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = local.wake.notified() => {}
        }
    }
}

fn failed(code: u8, message: String) -> StartError {
    StartError { code, message }
}

/// Point the front door at leader `node`'s client listeners, as it published them
/// (not yet, if it has not: the next look tries again).
async fn point_front(c: &dyn Coordinator, front: &front::Front, node: &str) {
    match c.members().await {
        Ok(members) => {
            let leader = members.iter().find(|m| m.node == node);
            front.point_at(leader.map(|m| front::Targets::of(node, &m.info)));
        }
        Err(e) => tracing::debug!(error = %e, "cannot list the members"),
    }
}

/// A lease, retried until etcd answers.
async fn grant(c: &dyn Coordinator, ttl: Duration) -> Session {
    loop {
        let sent = Instant::now();
        match c.grant(ttl.as_secs()).await {
            Ok(lease) => {
                return Session {
                    lease,
                    renewed: sent,
                    ttl,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach etcd for a lease; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Renew the follower's lease when a third of it has passed (a new one if it lapsed),
/// and keep this node listed as a member: `registered` is what it last published
/// under the current lease (`None`: nothing yet, so it is published now).
async fn keep(
    c: &dyn Coordinator,
    mut s: Session,
    me: &Me,
    info: &str,
    registered: &mut Option<String>,
) -> Session {
    let publish = registered.as_deref() != Some(info);
    if s.renewed.elapsed() < s.ttl / 3 && !publish {
        return s;
    }
    if s.renewed.elapsed() >= s.ttl / 3 {
        let sent = Instant::now();
        let renewal = c.renew(s.lease).await;
        stats::renewed(renewal.is_ok());
        match renewal {
            Ok(true) => s.renewed = sent,
            Ok(false) => {
                s = grant(c, s.ttl).await;
                *registered = None;
                tracing::info!("lease lapsed; a new one was granted");
            }
            Err(_) => return s,
        }
    }
    if registered.is_none() {
        // Known to the cluster from now on, until forget_cluster_node.
        if let Err(e) = c.set_setting(&format!("nodes/{}", me.node), "").await {
            tracing::debug!(error = %e, "cannot record this node as known");
            return s;
        }
    }
    match c.register(&me.node, info, s.lease).await {
        Ok(()) => *registered = Some(info.to_owned()),
        Err(e) => tracing::debug!(error = %e, "cannot register as a member"),
    }
    s
}

/// No one leads: if this node may (it is in the ISR, or there is none yet, and its
/// files are complete), stop following and try to take the lead. The election's
/// revision if it won.
async fn campaign<F: std::future::Future<Output = ()>>(
    c: &dyn Coordinator,
    me: &Me,
    s: &mut Session,
    dir: &Path,
    last_leader: Option<&str>,
    stop_following: impl FnOnce() -> F,
) -> Option<(i64, Vec<String>)> {
    let isr = c.isr().await.ok()?;
    // Lead on a freshly renewed lease: one about to lapse would fence the new leader
    // as soon as it starts.
    let sent = Instant::now();
    if !c.renew(s.lease).await.unwrap_or(false) {
        return None;
    }
    s.renewed = sent;
    let eligible = isr.as_ref().is_none_or(|i| i.members.contains(&me.node));
    if !eligible || !follow::complete(dir) {
        return None;
    }
    // Nothing may be written to the files once this node might lead.
    stop_following().await;
    let mut members: Vec<String> = isr
        .as_ref()
        .map(|i| i.members.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| Some(m.as_str()) != last_leader && m != &me.node)
        .collect();
    members.insert(0, me.node.clone());
    let revision = isr.as_ref().map_or(0, |i| i.revision);
    match c
        .campaign(&me.node, &me.address, s.lease, revision, &members)
        .await
    {
        Ok(Some(election)) => {
            tracing::info!(node = me.node, election, isr = ?members, "elected leader");
            Some((election, members))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "campaign failed");
            None
        }
    }
}

/// A follower thread and the leader it follows.
struct Following {
    leader: Leader,
    progress: Arc<follow::Progress>,
    thread: std::thread::JoinHandle<()>,
}

impl Following {
    fn start(dir: &Path, me: &Me, leader: Leader) -> Following {
        let progress = Arc::new(follow::Progress::default());
        let (dir, me, address) = (dir.to_path_buf(), me.clone(), leader.address.clone());
        let p = progress.clone();
        tracing::info!(leader = leader.node, address, "following");
        let thread = std::thread::spawn(move || {
            // Said once per run of failures, not at every retry.
            let mut said = false;
            while !p.stop.load(Ordering::Acquire) {
                match follow::follow(&dir, &me, &address, &p) {
                    follow::Ended::Stopped => break,
                    follow::Ended::Refused(why) if !said => {
                        tracing::error!(why, "the leader refused this follower")
                    }
                    follow::Ended::Lost(e) if !said => {
                        tracing::info!(error = %e, "replication connection lost; reconnecting")
                    }
                    _ => {}
                }
                said = !p.synced_once.swap(false, Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Following {
            leader,
            progress,
            thread,
        }
    }
}

async fn stop(f: Option<Following>) {
    if let Some(f) = f {
        f.progress.stop.store(true, Ordering::Release);
        let _ = tokio::task::spawn_blocking(move || f.thread.join()).await;
    }
}

/// Leadership is lost: confirm nothing more and start over as a follower, in a fresh
/// process image (same pid, same arguments), so that nothing of this one's state —
/// queues, connections, pending confirms — lives on.
pub(crate) fn restart_as_follower(why: &str) -> ! {
    tracing::error!(why, "leadership lost: restarting as a follower");
    // The new image gives the lease up first thing: the leader key goes at once
    // instead of when it lapses, and a follower takes over sooner.
    let lease = lead::lease().map(|l| (RESIGNED_LEASE.into(), l.to_string().into()));
    crate::app::restart(false, lease.into_iter().collect())
}
