//! RabbitMQ's cluster runbook, with warrenctl, against a running three-node cluster:
//! cluster_status on every node (text and JSON), commands given to a follower run on
//! the leader, stop_app / reset / join_cluster / start_app on a follower and stop_app
//! on the leader, set_cluster_name, forget_cluster_node for a dead node, and the
//! commands that have nothing to do.
use super::harness::{Cluster, Opts};
use super::scenarios::{secs, wait_full_isr, wait_isr_state};
use crate::common::*;
use crate::durability::{declare_durable, warrenctl};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// warrenctl's exit code, stdout and stderr.
fn ctl(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(warrenctl_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run warrenctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cluster_status --formatter json` on node `i`.
fn status_json(cluster: &Cluster, i: usize) -> serde_json::Value {
    let out = warrenctl(
        &cluster.data_dir(i),
        &["-q", "--formatter", "json", "cluster_status"],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("n{i}: {e}: {out}"))
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `f()` holds; panics with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} (after {limit:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Proves that the cluster commands of RabbitMQ's runbooks work with warrenctl in the
/// same order and do what they say for warren (see the module's comment); each step
/// checks its effect: who serves, who is in the in-sync replicas, what is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cluster_runbook_commands_work() {
    let mut cluster = Cluster::start(3, Opts::default());
    let leader = cluster.wait_leader(secs(30)).await;
    wait_full_isr(&cluster, leader).await;
    let node = |i: usize| format!("warren@n{i}");
    let followers: Vec<usize> = (1..=3).filter(|&i| i != leader).collect();
    let (f, g) = (followers[0], followers[1]);

    // cluster_status on every node: RabbitMQ's sections and warren's.
    for i in 1..=3 {
        let text = warrenctl(&cluster.data_dir(i), &["cluster_status"]);
        for section in [
            "Cluster status of node",
            "Disk Nodes",
            "Running Nodes",
            "Versions",
            "Alarms",
            "Network Partitions",
            "Listeners",
            "Replication (warren)",
        ] {
            assert!(text.contains(section), "n{i}: no {section:?} in:\n{text}");
        }
        assert!(
            text.contains(&format!("Leader: {}", node(leader))),
            "{text}"
        );
        let doc = status_json(&cluster, i);
        assert_eq!(doc["leader"], node(leader), "n{i}: {doc}");
        let mut all: Vec<String> = (1..=3).map(node).collect();
        all.sort();
        assert_eq!(names(&doc["disk_nodes"]), all, "n{i}: {doc}");
        assert_eq!(names(&doc["running_nodes"]), all, "n{i}: {doc}");
        assert_eq!(names(&doc["in_sync_replicas"]).len(), 3, "n{i}: {doc}");
        let replication = doc["replication"].as_array().expect("replication rows");
        assert_eq!(replication.len(), 2, "n{i}: {doc}");
        assert!(replication.iter().all(|r| r["in_sync"] == true), "{doc}");
    }
    eprintln!(
        "operations: cluster_status on n{f}:\n{}",
        warrenctl(&cluster.data_dir(f), &["cluster_status"])
    );
    let healthy = warrenctl(&cluster.data_dir(f), &["diagnostics", "--interval", "0"]);
    assert!(
        healthy.contains(&format!("leader {}, 3 in-sync replicas", node(leader))),
        "{healthy}"
    );

    // A command given to a follower runs on the leader.
    let conn = connect(&cluster.uri(leader)).await;
    let ch = within(conn.create_channel()).await.unwrap();
    declare_durable(&ch, "ops-queue", no_args()).await;
    let listed = warrenctl(&cluster.data_dir(f), &["list_queues", "name"]);
    assert!(
        listed.contains("ops-queue"),
        "list_queues on n{f}: {listed}"
    );
    let _ = conn.close(200, "done".into()).await;
    warrenctl(&cluster.data_dir(g), &["set_cluster_name", "prod-mq"]);
    assert_eq!(status_json(&cluster, f)["cluster_name"], "prod-mq");
    for cmd in [
        ["update_cluster_nodes", &node(leader)],
        ["change_cluster_node_type", "disc"],
    ] {
        warrenctl(&cluster.data_dir(f), &cmd);
    }

    // A follower: reset is refused while its app runs.
    let (code, _, err) = ctl(&cluster.data_dir(f), &["reset"]);
    assert_eq!(code, 69, "reset while running: {err}");
    assert!(err.contains("stop_app"), "{err}");

    // stop_app: it stops serving clients and following, and leaves the ISR.
    warrenctl(&cluster.data_dir(f), &["stop_app"]);
    assert!(
        std::net::TcpStream::connect_timeout(&cluster.amqp_addr(f).parse().unwrap(), secs(2))
            .is_err(),
        "n{f} still accepts AMQP connections after stop_app"
    );
    wait_isr_state(&cluster, leader, f, false, secs(15)).await;
    let (code, out, _) = ctl(&cluster.data_dir(g), &["diagnostics", "--interval", "0"]);
    assert_eq!(code, 1, "diagnostics with a follower out of the ISR: {out}");
    let out_of_isr = format!("follower {} is not in the in-sync replicas", node(f));
    assert!(out.contains(&out_of_isr), "{out}");
    let doc = status_json(&cluster, g);
    assert!(!names(&doc["running_nodes"]).contains(&node(f)), "{doc}");
    assert!(names(&doc["disk_nodes"]).contains(&node(f)), "{doc}");

    // reset, join_cluster, start_app: it syncs everything again and rejoins.
    let dir = cluster.data_dir(f);
    warrenctl(&dir, &["reset"]);
    assert!(!dir.join("meta.log").exists(), "reset left meta.log");
    assert!(
        dir.join("cluster-sync.pending").exists(),
        "reset did not mark the node unsynced"
    );
    warrenctl(&dir, &["join_cluster", &node(leader)]);
    let (code, _, err) = ctl(&dir, &["join_cluster", "warren@elsewhere"]);
    assert_eq!(code, 69, "join_cluster to a node of no cluster: {err}");
    warrenctl(&dir, &["start_app"]);
    wait_isr_state(&cluster, leader, f, true, secs(30)).await;
    assert!(
        dir.join("meta.log").exists(),
        "n{f} did not sync meta.log again"
    );
    assert!(!dir.join("cluster-sync.pending").exists());
    let conn = connect(&cluster.uri(f)).await;
    assert!(queue_exists(&conn, "ops-queue").await, "through n{f}");
    let _ = conn.close(200, "done".into()).await;

    // stop_app on the leader: it hands over and stays up, stopped; start_app brings it
    // back as a follower.
    let old = leader;
    let pid = cluster.pid(old);
    warrenctl(&cluster.data_dir(old), &["stop_app"]);
    let leader = cluster.wait_new_leader(old, secs(15)).await;
    assert_eq!(
        cluster.pid(old),
        pid,
        "stop_app ended the old leader's process"
    );
    let status = warrenctl(
        &cluster.data_dir(old),
        &["-q", "--formatter", "json", "status"],
    );
    assert!(status.contains("\"app_running\": false"), "{status}");
    let (code, _, err) = ctl(&cluster.data_dir(leader), &["reset"]);
    assert_eq!(code, 69, "reset on the running leader: {err}");
    warrenctl(&cluster.data_dir(old), &["start_app"]);
    wait_isr_state(&cluster, leader, old, true, secs(30)).await;
    assert_eq!(cluster.expect_one_leader(secs(2)).await, leader);

    // forget_cluster_node: refused for a running node, done for a dead one.
    let dead = (1..=3).find(|&i| i != leader).unwrap();
    let (code, _, err) = ctl(
        &cluster.data_dir(leader),
        &["forget_cluster_node", &node(dead)],
    );
    assert_eq!(code, 69, "forgetting a running node: {err}");
    cluster.kill(dead);
    let survivor = (1..=3).find(|&i| i != leader && i != dead).unwrap();
    let lapse = secs(Opts::default().lease_ttl + 5);
    eventually(lapse, "the killed node still counts as running", || {
        !names(&status_json(&cluster, leader)["running_nodes"]).contains(&node(dead))
    })
    .await;
    let (_, out, _) = ctl(
        &cluster.data_dir(leader),
        &["diagnostics", "--interval", "0"],
    );
    assert!(
        out.contains(&format!("node {} is down", node(dead))),
        "{out}"
    );
    warrenctl(
        &cluster.data_dir(survivor),
        &["forget_cluster_node", &node(dead)],
    );
    let doc = status_json(&cluster, leader);
    assert!(!names(&doc["disk_nodes"]).contains(&node(dead)), "{doc}");
    assert!(
        !names(&doc["in_sync_replicas"]).contains(&node(dead)),
        "{doc}"
    );
}

/// Proves that under systemd (`Type=notify`, `WatchdogSec=`) every node is up as soon as
/// it follows, not only once it leads: each sends `READY=1` and pings the watchdog
/// (twice a second for `WatchdogSec=1s`). A follower that waited to lead before saying
/// READY would be killed by `TimeoutStartSec` and restarted, over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_is_up_for_systemd_and_pings_its_watchdog() {
    let cluster = Cluster::start(
        3,
        Opts {
            systemd: true,
            ..Opts::default()
        },
    );
    let mut cluster = cluster;
    let leader = cluster.wait_leader(secs(30)).await;
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); 3];
    let start = Instant::now();
    loop {
        for (i, s) in seen.iter_mut().enumerate() {
            s.extend(cluster.notifications(i + 1));
        }
        let done = seen.iter().all(|s| {
            s.iter().any(|m| m.lines().any(|l| l == "READY=1"))
                && s.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3
        });
        if done {
            break;
        }
        assert!(
            start.elapsed() < secs(15),
            "not every node is up and pinging (leader n{leader}): {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, s) in seen.iter().enumerate() {
        let ready = s.iter().find(|m| m.contains("READY=1")).unwrap();
        eprintln!("systemd: n{} said {ready:?}", i + 1);
    }
}
