//! The cluster's numbers for Prometheus: counters that the lease keepers, the
//! replication threads and the start loop bump (one relaxed atomic add per event or per
//! write round, never per message), and the leader's view of its followers.
//!
//! Every node renders them: the leader after the broker's metrics (with its followers'
//! lag, [`render_followers`]), a follower on its own metrics port (its front door
//! answers `/metrics` itself).

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};

pub static LEASE_RENEWALS: AtomicU64 = AtomicU64::new(0);
pub static LEASE_RENEWAL_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Whether etcd answered the last call that renews this node's lease.
pub static ETCD_UP: AtomicBool = AtomicBool::new(false);
pub static BYTES_SHIPPED: AtomicU64 = AtomicU64::new(0);
pub static BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);
/// Times this node saw the leadership go to another node (or took it).
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);
/// 0: no cluster; 1: follower; 2: leader; 3: app stopped.
pub static ROLE: AtomicU8 = AtomicU8::new(0);

pub const FOLLOWER: u8 = 1;
pub const LEADER: u8 = 2;
pub const STOPPED: u8 = 3;

/// A renewal's outcome.
pub fn renewed(ok: bool) {
    if ok {
        LEASE_RENEWALS.fetch_add(1, Relaxed);
    } else {
        LEASE_RENEWAL_FAILURES.fetch_add(1, Relaxed);
    }
    ETCD_UP.store(ok, Relaxed);
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}\n# HELP {name} {help}");
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The cluster's families, appended to a scrape; nothing on a single node.
pub fn render(out: &mut String) {
    let role = ROLE.load(Relaxed);
    if role == 0 {
        return;
    }
    family(
        out,
        "warren_cluster_role",
        "gauge",
        "1 for this node's role in the cluster: leader, follower or stopped (warrenctl stop_app)",
    );
    for (r, name) in [
        (LEADER, "leader"),
        (FOLLOWER, "follower"),
        (STOPPED, "stopped"),
    ] {
        let _ = writeln!(
            out,
            "warren_cluster_role{{role=\"{name}\"}} {}",
            (role == r) as u8
        );
    }
    let counters = [
        (
            "warren_cluster_lease_renewals_total",
            "Renewals of this node's etcd lease",
            &LEASE_RENEWALS,
        ),
        (
            "warren_cluster_lease_renewal_failures_total",
            "Renewals of this node's etcd lease that etcd did not answer",
            &LEASE_RENEWAL_FAILURES,
        ),
        (
            "warren_cluster_replication_sent_bytes_total",
            "Bytes of files and changes this node sent its followers",
            &BYTES_SHIPPED,
        ),
        (
            "warren_cluster_replication_received_bytes_total",
            "Bytes of files and changes this node received from its leader",
            &BYTES_RECEIVED,
        ),
        (
            "warren_cluster_leader_changes_total",
            "Times the leadership moved, as this node saw it",
            &LEADER_CHANGES,
        ),
    ];
    for (name, help, c) in counters {
        one(out, name, "counter", help, c.load(Relaxed));
    }
    one(
        out,
        "warren_cluster_etcd_up",
        "gauge",
        "1 if etcd answered this node's last lease renewal",
        ETCD_UP.load(Relaxed) as u8,
    );
}

/// The leader's families: the in-sync replicas and each follower's lag.
pub fn render_followers(out: &mut String, isr: usize, min_insync: usize, rows: &serde_json::Value) {
    one(
        out,
        "warren_cluster_in_sync_replicas",
        "gauge",
        "Nodes in the in-sync replicas, the leader included",
        isr,
    );
    one(
        out,
        "warren_cluster_min_insync_replicas",
        "gauge",
        "cluster.min_insync_replicas: below it publishers are blocked",
        min_insync,
    );
    let rows = rows.as_array().cloned().unwrap_or_default();
    for (name, key, help) in [
        (
            "warren_cluster_follower_connected",
            "connected",
            "1 if the follower's replication connection is up",
        ),
        (
            "warren_cluster_follower_in_sync",
            "in_sync",
            "1 if the follower is in the in-sync replicas",
        ),
        (
            "warren_cluster_follower_lag_changes",
            "lag_changes",
            "Changes the follower has not acknowledged yet",
        ),
        (
            "warren_cluster_follower_lag_seconds",
            "lag_seconds",
            "Seconds since the follower last caught up (0 when level)",
        ),
    ] {
        family(out, name, "gauge", help);
        for r in &rows {
            let v = match &r[key] {
                serde_json::Value::Bool(b) => (*b as u8).to_string(),
                other => other.to_string(),
            };
            let node = r["node"].as_str().unwrap_or_default().replace('"', "");
            let _ = writeln!(out, "{name}{{follower=\"{node}\"}} {v}");
        }
    }
}
