//! Running a cluster node with `warrenctl`, under rabbitmqctl's command names.
//!
//! Every node has a control socket. A follower's (`serve_follower`) answers what is
//! about the node itself (`status`, `stop_app`, `start_app`, `reset`, `join_cluster`,
//! ...) and passes every other command on to the leader over the replication port
//! ([`ask`]; the request is signed with the cluster's secret), so `warrenctl
//! list_queues` on any node lists the cluster's queues, as `rabbitmqctl` does. The
//! leader's socket is the broker's own; the cluster commands there land in
//! `on_leader` (through [`crate::membership`]).
//!
//! `stop_app` keeps the process and its control socket: a follower stops following
//! and closes its front door; the leader stops serving as at a SIGTERM (leadership goes
//! to a follower at once) and re-executes itself stopped. `start_app` undoes it. `reset`
//! (app stopped only) empties the data directory and marks it unsynced, so the node can
//! never lead before it has synced everything from a leader again.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::coordinator::{Coordinator, Leader};
use super::wire::{self, Frame};
use super::Me;
use crate::control::cluster::{alarm_list, listener, nothing_to_do, status_response};
use crate::control::{Request, Response};
use crate::membership::{ApiView, BoxFuture, Finding, Membership};

/// rabbitmqctl's exit codes.
use crate::control::{EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};

/// How long a command passed on to the leader may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(120);

/// A node's cluster side as its control socket sees it: shared by the start loop (which
/// follows, campaigns and keeps the front door) and the follower's control socket.
pub(crate) struct Local {
    pub me: Me,
    pub coordinator: Arc<dyn Coordinator>,
    pub dir: PathBuf,
    pub min_insync: usize,
    app_stopped: AtomicBool,
    /// What the loop did about `app_stopped` last: the front is open and it follows.
    running: AtomicBool,
    following: Mutex<Option<Leader>>,
    pub wake: tokio::sync::Notify,
}

impl Local {
    pub fn new(
        me: Me,
        coordinator: Arc<dyn Coordinator>,
        dir: &Path,
        min_insync: usize,
        stopped: bool,
    ) -> Arc<Local> {
        Arc::new(Local {
            me,
            coordinator,
            dir: dir.to_path_buf(),
            min_insync,
            app_stopped: AtomicBool::new(stopped),
            running: AtomicBool::new(false),
            following: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn app_stopped(&self) -> bool {
        self.app_stopped.load(Ordering::Acquire)
    }

    /// The loop reports what it does: serving (front open, following) or not.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    pub fn set_following(&self, leader: Option<Leader>) {
        *self.following.lock().unwrap_or_else(|e| e.into_inner()) = leader;
    }

    fn following(&self) -> Option<Leader> {
        self.following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ask the loop to stop or start the app, and wait (a while) until it did.
    async fn set_app_stopped(&self, stopped: bool) -> bool {
        self.app_stopped.store(stopped, Ordering::Release);
        self.wake.notify_one();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running.load(Ordering::Acquire) == stopped {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

// ----------------------------------------------------------------------------------
// A follower's control socket
// ----------------------------------------------------------------------------------

/// Serve a follower's control socket until the task is aborted (the node leads, and
/// the broker's own socket takes over).
pub(crate) async fn serve_follower(local: Arc<Local>, listener: tokio::net::UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let local = local.clone();
        tokio::spawn(async move {
            let local = &local;
            crate::control::serve_requests(stream, |req| async move {
                if req.command != "await_startup" {
                    tracing::info!(command = %req.command, "control request");
                }
                on_follower(local, req).await
            })
            .await
        });
    }
}

async fn on_follower(local: &Arc<Local>, req: Request) -> Response {
    let me = &local.me.node;
    match req.command.as_str() {
        "status" | "ping" | "await_startup" => {
            let leader = local.following().map(|l| l.node);
            Response {
                document: Some(json!({
                    "node": me,
                    "version": env!("CARGO_PKG_VERSION"),
                    "role": "follower",
                    "leader": leader,
                    "app_running": !local.app_stopped(),
                })),
                ..Default::default()
            }
        }
        "stop_app" => {
            if local.set_app_stopped(true).await {
                Response::default()
            } else {
                Response::error(EX_SOFTWARE, "the node did not stop in time")
            }
        }
        "start_app" => {
            if local.set_app_stopped(false).await {
                Response::default()
            } else {
                Response::error(EX_SOFTWARE, "the node did not start in time")
            }
        }
        "reset" | "force_reset" => {
            if !local.app_stopped() {
                return still_running(me);
            }
            match reset(&local.dir) {
                Ok(()) => Response::default(),
                Err(e) => Response::error(EX_SOFTWARE, format!("cannot reset: {e}")),
            }
        }
        "join_cluster" => join_cluster(local, &req).await,
        "update_cluster_nodes" | "change_cluster_node_type" => nothing_to_do(&req.command),
        "cluster_status" => match forward(local, &req).await {
            Some(r) => r,
            None => {
                cluster_status(
                    local.coordinator.as_ref(),
                    &local.me,
                    local.min_insync,
                    None,
                )
                .await
            }
        },
        _ => match forward(local, &req).await {
            Some(r) => r,
            None => Response::error(
                EX_UNAVAILABLE,
                format!(
                    "{me} is a cluster follower and knows no leader to run '{}' on{}",
                    req.command,
                    if local.app_stopped() {
                        " (its app is stopped: warrenctl start_app)"
                    } else {
                        ""
                    }
                ),
            ),
        },
    }
}

/// Pass `req` on to the leader; `None` if there is none to ask.
async fn forward(local: &Arc<Local>, req: &Request) -> Option<Response> {
    let leader = local.following()?;
    let (me, request) = (local.me.clone(), serde_json::to_vec(req).ok()?);
    let address = leader.address.clone();
    let asked = tokio::task::spawn_blocking(move || ask(&address, &me, &request)).await;
    Some(match asked {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::error(
            EX_UNAVAILABLE,
            format!(
                "cannot reach the leader {} to run '{}': {e}",
                leader.node, req.command
            ),
        ),
        Err(e) => Response::error(EX_SOFTWARE, e.to_string()),
    })
}

fn still_running(node: &str) -> Response {
    Response::error(
        EX_UNAVAILABLE,
        format!("warren is still running on node {node}.\nPlease stop it with 'warrenctl stop_app' first."),
    )
}

/// `reset`: the node is marked unsynced first, so that it never leads on what is left
/// (it syncs everything from the leader at `start_app`), then its store goes.
fn reset(dir: &Path) -> io::Result<()> {
    super::follow::mark_unsynced(dir)?;
    crate::store::wipe(dir)?;
    tracing::warn!(dir = %dir.display(), "reset: the node's data is gone; it syncs from the leader when started");
    Ok(())
}

/// `join_cluster NODE`: a warren node is in the cluster its `[cluster]` section names;
/// joining one of its members is what it does anyway (at `start_app`).
async fn join_cluster(local: &Arc<Local>, req: &Request) -> Response {
    let me = &local.me.node;
    let Some(other) = req.args.first() else {
        return Response::error(EX_USAGE, "join_cluster needs a node");
    };
    if !local.app_stopped() {
        return still_running(me);
    }
    if other == me {
        return Response::error(EX_UNAVAILABLE, "Error: cannot_cluster_node_with_itself");
    }
    let known = known_nodes(local.coordinator.as_ref()).await;
    if known.iter().any(|n| n == other) {
        Response::message(format!(
            "{me} is in cluster '{}' with {other}; it syncs from the leader at start_app",
            local.me.cluster
        ))
    } else {
        Response::error(
            EX_UNAVAILABLE,
            format!(
                "{other} is not a member of cluster '{}'. A warren node joins the cluster its [cluster] section names: set cluster.name and cluster.etcd_endpoints as on {other}, restart, and start_app",
                local.me.cluster
            ),
        )
    }
}

// ----------------------------------------------------------------------------------
// Commands passed on to the leader over the replication port
// ----------------------------------------------------------------------------------

/// Run `request` (a control request, JSON) on the leader at `address` (blocking).
pub fn ask(address: &str, me: &Me, request: &[u8]) -> io::Result<Response> {
    let stream = super::follow::connect(address)?;
    stream.set_read_timeout(Some(ASK_TIMEOUT))?;
    let mut out = BufWriter::new(stream.try_clone()?);
    let mut input = BufReader::new(stream);
    let nonce = match wire::read(&mut input)? {
        Frame::Challenge(n) => n,
        Frame::Refuse(why) => return Err(io::Error::other(why)),
        _ => {
            return Err(io::Error::other(
                "the leader did not start with a challenge",
            ))
        }
    };
    let proof = wire::command_proof(&me.secret, &nonce, &me.node, request);
    wire::write(
        &mut out,
        &Frame::Command {
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            proof: Bytes::copy_from_slice(&proof),
            request: Bytes::copy_from_slice(request),
        },
    )?;
    out.flush()?;
    match wire::read(&mut input)? {
        Frame::Answer(a) => serde_json::from_slice(&a).map_err(io::Error::other),
        Frame::Refuse(why) => Err(io::Error::other(why)),
        _ => Err(io::Error::other("the leader answered with something else")),
    }
}

// ----------------------------------------------------------------------------------
// The leader's cluster commands
// ----------------------------------------------------------------------------------

/// A cluster command given to the leader's control socket (the broker's own).
async fn on_leader(broker: &crate::broker::Broker, req: &Request) -> Response {
    let Some(l) = super::lead::leading() else {
        return Response::error(EX_SOFTWARE, "this node does not lead");
    };
    let me = &l.me.node;
    match req.command.as_str() {
        "cluster_status" => {
            let extras = LeaderView { broker, leading: l };
            cluster_status(l.coordinator.as_ref(), &l.me, l.min_insync, Some(extras)).await
        }
        "stop_app" => {
            crate::app::request_stop();
            Response::default()
        }
        "start_app" => Response::default(),
        "reset" | "force_reset" | "join_cluster" => still_running(me),
        "update_cluster_nodes" | "change_cluster_node_type" => nothing_to_do(&req.command),
        "set_cluster_name" => {
            let Some(name) = req.args.first() else {
                return Response::error(EX_USAGE, "set_cluster_name needs a name");
            };
            match l.coordinator.set_setting("cluster_name", name).await {
                Ok(()) => Response::default(),
                Err(e) => Response::error(EX_UNAVAILABLE, format!("cannot reach etcd: {e}")),
            }
        }
        "forget_cluster_node" => forget(l, req).await,
        other => Response::error(EX_USAGE, format!("'{other}' is not a cluster command")),
    }
}

/// `forget_cluster_node NODE`, on the leader: NODE must be down (its process holds no
/// lease); it leaves the in-sync replicas (through the leader's ISR upkeep, fenced on
/// its election) and the list of known nodes.
async fn forget(l: &super::lead::Leading, req: &Request) -> Response {
    let Some(node) = req.args.first() else {
        return Response::error(EX_USAGE, "forget_cluster_node needs a node");
    };
    if *node == l.me.node {
        return Response::error(
            EX_UNAVAILABLE,
            format!("Error: {node} is the node running the command (the leader); stop it and run the command on another node"),
        );
    }
    let c = l.coordinator.as_ref();
    let live = match c.members().await {
        Ok(m) => m,
        Err(e) => return Response::error(EX_UNAVAILABLE, format!("cannot reach etcd: {e}")),
    };
    if live.iter().any(|m| m.node == *node) {
        return Response::error(
            EX_UNAVAILABLE,
            format!("Error: {node} is running (it holds an etcd lease). Stop the node's process first, then forget it."),
        );
    }
    let known = known_nodes(c).await;
    if !known.contains(node) {
        return Response::error(
            EX_UNAVAILABLE,
            format!(
                "Error: {node} is not a cluster node (not in cluster '{}')",
                l.me.cluster
            ),
        );
    }
    l.forget(node);
    if let Err(e) = c.clear_setting(&format!("nodes/{node}")).await {
        return Response::error(EX_UNAVAILABLE, format!("cannot reach etcd: {e}"));
    }
    // The ISR upkeep drops it within a tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c
        .isr()
        .await
        .ok()
        .flatten()
        .is_some_and(|i| i.members.contains(node))
    {
        if Instant::now() > deadline {
            return Response::error(
                EX_SOFTWARE,
                format!("{node} is still in the in-sync replicas"),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(
        node,
        "node forgotten: it is no longer a member of the cluster"
    );
    Response::default()
}

/// Every node the cluster knows: those that ever registered and were not forgotten,
/// the live ones and the in-sync replicas.
async fn known_nodes(c: &dyn Coordinator) -> Vec<String> {
    let mut nodes: Vec<String> = c
        .settings("nodes/")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    nodes.extend(
        c.members()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.node),
    );
    nodes.extend(
        c.isr()
            .await
            .ok()
            .flatten()
            .map(|i| i.members)
            .unwrap_or_default(),
    );
    nodes.sort();
    nodes.dedup();
    nodes
}

/// What only the leader adds to `cluster_status`: its alarms and how far each follower
/// is behind.
struct LeaderView<'a> {
    broker: &'a crate::broker::Broker,
    leading: &'a super::lead::Leading,
}

/// `cluster_status`: RabbitMQ's sections (cluster name, disk and running nodes,
/// versions, maintenance, alarms, partitions, listeners), then warren's (leader, ISR,
/// replication lag). The document is the `--formatter json` output; the message is
/// the text.
async fn cluster_status(
    c: &dyn Coordinator,
    me: &Me,
    min_insync: usize,
    leader_view: Option<LeaderView<'_>>,
) -> Response {
    let members = match c.members().await {
        Ok(m) => m,
        Err(e) => return Response::error(EX_UNAVAILABLE, format!("cannot reach etcd: {e}")),
    };
    let known = known_nodes(c).await;
    let leader = c.leader().await.ok().flatten();
    let isr = c
        .isr()
        .await
        .ok()
        .flatten()
        .map(|i| i.members)
        .unwrap_or_default();
    let name = c
        .setting("cluster_name")
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| me.cluster.clone());
    let info = |node: &str| -> Value {
        members
            .iter()
            .find(|m| m.node == node)
            .and_then(|m| serde_json::from_str(&m.info).ok())
            .unwrap_or(Value::Null)
    };
    let running: Vec<&String> = known
        .iter()
        .filter(|n| {
            let i = info(n);
            !i.is_null() && i.get("running").and_then(Value::as_bool) != Some(false)
        })
        .collect();
    let mut versions = serde_json::Map::new();
    let mut listeners = serde_json::Map::new();
    let mut maintenance = serde_json::Map::new();
    for n in &known {
        let i = info(n);
        if let Some(v) = i.get("version").and_then(Value::as_str) {
            versions.insert(n.clone(), json!({"warren_version": v}));
        }
        let mut l = vec![];
        for (protocol, key) in [
            ("amqp", "amqp"),
            ("amqp/ssl", "amqps"),
            ("http", "management"),
            ("https", "management_tls"),
            ("clustering", "address"),
        ] {
            if let Some(at) = i.get(key).and_then(Value::as_str) {
                l.push(listener(n, protocol, at));
            }
        }
        if !l.is_empty() {
            listeners.insert(n.clone(), Value::Array(l));
        }
        maintenance.insert(n.clone(), json!("not under maintenance"));
    }
    let mut doc = json!({
        "cluster_name": name,
        "disk_nodes": known,
        "ram_nodes": [],
        "running_nodes": running,
        "versions": versions,
        "maintenance_status": maintenance,
        "alarms": [],
        "partitions": {},
        "listeners": listeners,
        "leader": leader.as_ref().map(|l| &l.node),
        "election": leader.as_ref().map(|l| l.revision),
        "in_sync_replicas": isr,
        "min_insync_replicas": min_insync,
    });
    if let Some(v) = leader_view {
        doc["alarms"] = alarm_list(v.broker, &v.leading.me.node);
        doc["replication"] = v.leading.replication();
    }
    status_response(doc)
}

// ----------------------------------------------------------------------------------
// The management API's view
// ----------------------------------------------------------------------------------

/// `None` unless this process leads.
async fn api_view() -> Option<ApiView> {
    let l = super::lead::leading()?;
    let c = l.coordinator.as_ref();
    let cluster_name = c
        .setting("cluster_name")
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| l.me.cluster.clone());
    let members = c.members().await.unwrap_or_default();
    let replication = l.replication();
    let rows = replication.as_array().cloned().unwrap_or_default();
    let others = known_nodes(c)
        .await
        .into_iter()
        .filter(|n| *n != l.me.node)
        .map(|n| {
            let info: Value = members
                .iter()
                .find(|m| m.node == n)
                .and_then(|m| serde_json::from_str(&m.info).ok())
                .unwrap_or(Value::Null);
            let running = !info.is_null() && info["running"] != false;
            let r = rows.iter().find(|r| r["node"] == n.as_str());
            let role = match (info.is_null(), running) {
                (true, _) => "down",
                (false, false) => "stopped",
                (false, true) => "follower",
            };
            json!({
                "name": n,
                "type": "disc",
                "running": running,
                "being_drained": false,
                "warren_role": role,
                "warren_version": info.get("version"),
                "warren_in_sync": r.is_some_and(|r| r["in_sync"] == true),
                "warren_connected": r.is_some_and(|r| r["connected"] == true),
                "warren_lag_changes": r.map(|r| r["lag_changes"].clone()),
                "warren_lag_seconds": r.map(|r| r["lag_seconds"].clone()),
            })
        })
        .collect();
    Some(ApiView {
        cluster_name,
        leader: json!({
            "warren_role": "leader",
            "warren_in_sync": true,
            "warren_connected": true,
            "warren_lag_changes": 0,
            "warren_lag_seconds": 0.0,
        }),
        others,
    })
}

/// `warrenctl diagnostics`' cluster findings, on the leader.
async fn findings() -> Vec<Finding> {
    let Some(l) = super::lead::leading() else {
        return vec![];
    };
    let mut out = vec![];
    let c = l.coordinator.as_ref();
    if !super::stats::ETCD_UP.load(Ordering::Relaxed) {
        out.push((
            "warning",
            "etcd did not answer the leader's last lease renewal".to_owned(),
            "check etcd's members (etcdctl endpoint health) and the network to them: without etcd's majority the leader stops serving within cluster.lease_ttl",
        ));
    }
    let members = c.members().await.unwrap_or_default();
    let known = known_nodes(c).await;
    let rows = l.replication();
    let rows = rows.as_array().cloned().unwrap_or_default();
    let isr = 1 + l.shipping_isr();
    if isr < l.min_insync {
        out.push((
            "warning",
            format!(
                "{isr} in-sync replica(s), fewer than cluster.min_insync_replicas = {}: publishers are blocked",
                l.min_insync
            ),
            "bring the followers back (warrenctl cluster_status shows which are out), or lower min_insync_replicas",
        ));
    }
    for node in known.iter().filter(|n| **n != l.me.node) {
        let row = rows.iter().find(|r| r["node"] == node.as_str());
        let live = members.iter().any(|m| m.node == *node);
        if !live {
            out.push((
                "warning",
                format!("node {node} is down (it holds no etcd lease)"),
                "start it; if it is gone for good, warrenctl forget_cluster_node it",
            ));
        } else if row.is_none_or(|r| r["in_sync"] != true) {
            let how = row.map_or("never connected".to_owned(), |r| {
                format!(
                    "connected: {}, {} changes behind, {:.1} s",
                    r["connected"],
                    r["lag_changes"],
                    r["lag_seconds"].as_f64().unwrap_or(0.0)
                )
            });
            out.push((
                "warning",
                format!("follower {node} is not in the in-sync replicas ({how})"),
                "check that it follows (warrenctl status on it; its app may be stopped) and its network to the leader's replication port; it rejoins once caught up",
            ));
        } else if row.is_some_and(|r| r["lag_seconds"].as_f64().unwrap_or(0.0) > 1.0) {
            out.push((
                "warning",
                format!("follower {node} lags: {} changes behind", row.map_or(Value::Null, |r| r["lag_changes"].clone())),
                "a slow disk or network on the follower slows every confirm: check its fsync latency and link",
            ));
        }
    }
    let mut versions: Vec<(String, String)> = members
        .iter()
        .filter_map(|m| {
            let info: Value = serde_json::from_str(&m.info).ok()?;
            Some((info["version"].as_str()?.to_owned(), m.node.clone()))
        })
        .collect();
    versions.sort();
    if versions.first().map(|v| &v.0) != versions.last().map(|v| &v.0) {
        let list: Vec<String> = versions.iter().map(|(v, n)| format!("{n}: {v}")).collect();
        out.push((
            "warning",
            format!("the nodes run different versions ({})", list.join(", ")),
            "finish the rolling upgrade (followers first, then the leader)",
        ));
    }
    if out.is_empty() {
        out.push((
            "ok",
            format!(
                "leader {}, {isr} in-sync replicas of {} nodes",
                l.me.node,
                known.len()
            ),
            "",
        ));
    }
    out
}

/// What the control socket, the API and Prometheus ask of the cluster, once this
/// process leads ([`crate::membership`]).
pub(super) struct Leading;

impl Membership for Leading {
    fn role(&self) -> &'static str {
        "leader"
    }

    fn command<'a>(
        &'a self,
        broker: &'a crate::broker::Broker,
        req: &'a Request,
    ) -> BoxFuture<'a, Response> {
        Box::pin(on_leader(broker, req))
    }

    fn api_view(&self) -> BoxFuture<'_, ApiView> {
        Box::pin(async {
            api_view().await.unwrap_or_else(|| ApiView {
                cluster_name: crate::broker::cluster_name(),
                leader: Value::Null,
                others: vec![],
            })
        })
    }

    fn findings(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(findings())
    }

    fn render_metrics(&self, out: &mut String) {
        super::stats::render(out);
        if let Some(l) = super::lead::leading() {
            l.render(out);
        }
    }
}
