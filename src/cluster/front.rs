//! A follower's front door: while a node follows, it listens where it would serve
//! (`amqp.listen`, `tls.listen`, `management.listen`, `management.tls_listen`) and
//! passes each connection on to the leader's matching listener, preceded by a PROXY
//! line naming the real client ([`crate::proxy`]). Clients may therefore connect to
//! any node; one that came through a follower is a client of the leader like any other
//! and, on a failover, is disconnected and reconnects like any other.
//!
//! A follower's metrics port (`metrics.listen`) is answered here with its own numbers
//! (`cluster::stats`): the broker's are the leader's. Two health checks are answered
//! here rather than by the leader, since they are about this node: `/api/health/checks/is-in-service` (200: it can serve clients, through
//! the leader) and `/api/health/checks/is-leader` (503 here: a load balancer that
//! routes to the leader alone asks this one).
//!
//! A connection that arrives with a PROXY line already came through a front: passing
//! it on again could loop between two nodes with different views of who leads, so it
//! is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Config;
use crate::node::StartError;

/// The leader's listeners, as it advertises them (`Me::info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub leader: String,
    pub amqp: Option<String>,
    pub amqps: Option<String>,
    pub management: Option<String>,
    pub management_tls: Option<String>,
}

impl Targets {
    /// From a member's published info (JSON).
    pub fn of(leader: &str, info: &str) -> Targets {
        let v: serde_json::Value = serde_json::from_str(info).unwrap_or_default();
        let get = |k: &str| v.get(k).and_then(|a| a.as_str()).map(str::to_owned);
        Targets {
            leader: leader.to_owned(),
            amqp: get("amqp"),
            amqps: get("amqps"),
            management: get("management"),
            management_tls: get("management_tls"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Amqp,
    Amqps,
    Management,
    ManagementTls,
    /// Prometheus: answered here, with this node's own numbers.
    Metrics,
}

impl Kind {
    fn target(self, t: &Targets) -> Option<&String> {
        match self {
            Kind::Amqp => t.amqp.as_ref(),
            Kind::Amqps => t.amqps.as_ref(),
            Kind::Management => t.management.as_ref(),
            Kind::ManagementTls => t.management_tls.as_ref(),
            Kind::Metrics => None,
        }
    }
}

/// How long a client's connection waits for a leader to be known before it is closed.
const WAIT_FOR_LEADER: Duration = Duration::from_secs(3);
/// How long the leader may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client may take to send its first bytes (AMQP's protocol header, TLS's
/// hello, an HTTP request's head).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Each direction's buffer when passing a connection on.
const COPY_BUF: usize = 64 << 10;
/// The largest HTTP request head looked at.
const MAX_HEAD: usize = 16 * 1024;

pub struct Front {
    node: String,
    targets: watch::Sender<Option<Targets>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Front {
    /// Bind every client-facing listener the configuration names. A port in use is a
    /// start-up failure, as for a leader.
    pub async fn start(config: &Config, node: &str) -> Result<Front, StartError> {
        let mut listens = vec![];
        if !config.amqp.listen.is_empty() {
            listens.push((Kind::Amqp, "amqp.listen", config.amqp.listen.clone()));
        }
        if config.tls.enabled() {
            listens.push((Kind::Amqps, "tls.listen", config.tls.listen.clone()));
        }
        let m = &config.management;
        if !m.listen.is_empty() {
            listens.push((Kind::Management, "management.listen", m.listen.clone()));
        }
        if config.tls.enabled() && !m.tls_listen.is_empty() {
            let key = "management.tls_listen";
            listens.push((Kind::ManagementTls, key, m.tls_listen.clone()));
        }
        if !config.metrics.listen.is_empty() {
            let key = "metrics.listen";
            listens.push((Kind::Metrics, key, config.metrics.listen.clone()));
        }
        let (targets, _) = watch::channel(None);
        let (stop, _) = watch::channel(false);
        let mut front = Front {
            node: node.to_owned(),
            targets,
            stop,
            tasks: vec![],
        };
        for (kind, key, listen) in listens {
            let listener = TcpListener::bind(&listen).await.map_err(|e| StartError {
                code: 71,
                message: crate::server::bind_error_for(key, &listen, &e),
            })?;
            tracing::info!(
                listen,
                "{key}: passing connections on to the leader while following"
            );
            let at = Door {
                kind,
                node: Arc::from(front.node.as_str()),
                targets: front.targets.subscribe(),
                stop: front.stop.subscribe(),
            };
            front.tasks.push(tokio::spawn(at.accept(listener)));
        }
        Ok(front)
    }

    /// Who leads now (`None`: no one known), for the connections accepted from now on.
    pub fn point_at(&self, targets: Option<Targets>) {
        self.targets.send_if_modified(|t| {
            let changed = *t != targets;
            if changed {
                tracing::info!(leader = ?targets.as_ref().map(|t| &t.leader), amqp = ?targets.as_ref().and_then(|t| t.amqp.as_ref()), "clients are passed on to the leader");
            }
            *t = targets;
            changed
        });
    }

    /// The leader the front points at.
    pub fn leader(&self) -> Option<String> {
        self.targets.borrow().as_ref().map(|t| t.leader.clone())
    }

    /// Close the listeners and every connection passed on (this node is about to serve
    /// on the same ports, or to stop).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// One listener of the front.
struct Door {
    kind: Kind,
    node: Arc<str>,
    targets: watch::Receiver<Option<Targets>>,
    stop: watch::Receiver<bool>,
}

impl Door {
    async fn accept(self, listener: TcpListener) {
        let name = match self.kind {
            Kind::Amqp => "front amqp",
            Kind::Amqps => "front amqps",
            Kind::Management => "front management",
            Kind::ManagementTls => "front management tls",
            Kind::Metrics => "front metrics",
        };
        let mut failures = crate::accept::Failures::new(name);
        loop {
            let (client, peer) = failures.next(&listener).await;
            let (kind, node) = (self.kind, self.node.clone());
            let (targets, mut stop) = (self.targets.clone(), self.stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = pass_on(kind, &node, client, peer, targets) => {}
                    _ = stop.wait_for(|&s| s) => {}
                }
            });
        }
    }
}

/// One client's connection: its first bytes, then the leader, then both ways until
/// either side closes.
async fn pass_on(
    kind: Kind,
    node: &str,
    mut client: TcpStream,
    peer: SocketAddr,
    mut targets: watch::Receiver<Option<Targets>>,
) {
    let _ = client.set_nodelay(true);
    let Some(first) = first_bytes(kind, &mut client).await else {
        return;
    };
    if first.starts_with(b"PROXY ") {
        tracing::warn!(%peer, "a connection passed on by another node's front: dropped (the nodes disagree on who leads)");
        return;
    }
    if kind == Kind::Metrics {
        let _ = client.write_all(metrics(node).as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    if kind == Kind::Management {
        let answer = local_answer(node, &first, &targets.borrow());
        if let Some(answer) = answer {
            let _ = client.write_all(answer.as_bytes()).await;
            let _ = client.shutdown().await;
            return;
        }
    }
    let waited = tokio::time::timeout(
        WAIT_FOR_LEADER,
        targets.wait_for(|t| t.as_ref().is_some_and(|t| kind.target(t).is_some())),
    )
    .await;
    let Some(to) = waited
        .ok()
        .and_then(|r| r.ok())
        .and_then(|t| t.as_ref().and_then(|t| kind.target(t).cloned()))
    else {
        tracing::debug!(%peer, "no leader known: connection closed");
        return;
    };
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&to)).await;
    let mut leader = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, leader = to, error = %e, "cannot reach the leader for a client");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, leader = to, "the leader did not accept in time");
            return;
        }
    };
    let _ = leader.set_nodelay(true);
    let local = client.local_addr().unwrap_or(peer);
    let mut opening = crate::proxy::header(peer, local).into_bytes();
    opening.extend_from_slice(&first);
    if leader.write_all(&opening).await.is_err() {
        return;
    }
    // 64 KiB each way rather than tokio's 8 KiB: a busy publisher's or consumer's
    // bytes cross in an eighth of the reads and writes.
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut leader, COPY_BUF, COPY_BUF)
        .await;
}

/// What the client sends first: for HTTP the request head (to see whether it is a
/// health check of this node), otherwise the first bytes that arrive. `None`: nothing
/// in time, or the client went away.
async fn first_bytes(kind: Kind, client: &mut TcpStream) -> Option<Vec<u8>> {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        loop {
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let whole_head = buf.windows(4).any(|w| w == b"\r\n\r\n");
            let http = matches!(kind, Kind::Management | Kind::Metrics);
            if !http || whole_head || buf.len() >= MAX_HEAD {
                return Some(buf);
            }
        }
    };
    tokio::time::timeout(FIRST_BYTES_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

/// A follower's scrape: its identity and the cluster's numbers as it sees them (the
/// broker's own metrics are the leader's).
fn metrics(node: &str) -> String {
    let cluster = crate::broker::cluster_name();
    let mut body = format!(
        "# TYPE rabbitmq_identity_info gauge\n# HELP rabbitmq_identity_info RabbitMQ node & cluster identity info\nrabbitmq_identity_info{{rabbitmq_node=\"{node}\",rabbitmq_cluster=\"{cluster}\",rabbitmq_cluster_permanent_id=\"{cluster}\"}} 1\n"
    );
    super::stats::render(&mut body);
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The answer to a health check about this node, if the request is one.
fn local_answer(node: &str, head: &[u8], targets: &Option<Targets>) -> Option<String> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next()?, words.next()?);
    let path = target.split('?').next()?.trim_end_matches('/');
    let leader = targets.as_ref().map(|t| t.leader.as_str());
    let (status, body) = match path {
        "/api/health/checks/is-leader" => (
            503,
            serde_json::json!({
                "status": "failed",
                "reason": format!("{node} is a follower{}", leader.map(|l| format!(" of {l}")).unwrap_or_default()),
                "leader": leader,
            }),
        ),
        "/api/health/checks/is-in-service" => match leader {
            Some(l) => (200, serde_json::json!({"status": "ok", "leader": l})),
            None => (
                503,
                serde_json::json!({"status": "failed", "reason": format!("{node} knows no leader to pass clients on to")}),
            ),
        },
        _ => return None,
    };
    let body = body.to_string();
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let body = if method == "HEAD" { "" } else { &body };
    Some(format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_about_this_node_are_answered_here() {
        let t = Some(Targets {
            leader: "warren@a".into(),
            ..Default::default()
        });
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nhost: x\r\n\r\n").into_bytes();
        let a = local_answer("warren@b", &get("/api/health/checks/is-leader"), &t).unwrap();
        assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
        assert!(a.contains("warren@b is a follower of warren@a"), "{a}");
        let a = local_answer("warren@b", &get("/api/health/checks/is-in-service/"), &t).unwrap();
        assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
        let a = local_answer("warren@b", &get("/api/health/checks/is-in-service"), &None).unwrap();
        assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
        assert!(local_answer("warren@b", &get("/api/overview"), &t).is_none());
        assert!(local_answer("warren@b", &get("/api/health/checks/alarms"), &t).is_none());
    }

    #[test]
    fn targets_come_from_the_leaders_info() {
        let t = Targets::of(
            "warren@a",
            r#"{"version":"1","address":"10.0.0.1:25672","amqp":"10.0.0.1:5672","management":"10.0.0.1:15672"}"#,
        );
        assert_eq!(t.amqp.as_deref(), Some("10.0.0.1:5672"));
        assert_eq!(t.management.as_deref(), Some("10.0.0.1:15672"));
        assert_eq!(t.amqps, None);
    }
}
