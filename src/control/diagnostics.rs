//! `warrenctl diagnostics` (also `doctor`): what an operator should look at, each
//! finding with what to do. It reads what the broker already keeps for readers (listener
//! addresses, alarm state, queue gauges, channel counts), so running it on a busy broker
//! costs nothing but the listing.
//!
//! Growing backlogs are a trend, not a threshold: the queues' ready counts are sampled
//! twice, `--interval` seconds apart (default 3; 0 skips the trend), and every queue whose
//! count grew is reported with its rate. A deep but shrinking backlog is fine; a small one
//! growing steadily is what fills a disk overnight.

use serde_json::json;

use super::Response;
use crate::broker::Broker;

/// A connection with more channels than this is reported (clients that open a channel
/// per operation and never close it leak them; RabbitMQ users meet this as thousands of
/// channels on one connection).
const MANY_CHANNELS: usize = 100;
/// The trend's default sampling interval, seconds (`--interval`).
pub const DEFAULT_INTERVAL_SECS: f64 = 3.0;
/// How long a listener may take to accept a test connection from this host.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Every queue's ready count now, by queue id: (vhost, name, ready).
fn ready_counts(broker: &Broker) -> std::collections::HashMap<u64, (String, String, u32)> {
    let mut out = std::collections::HashMap::new();
    for (vhost, _) in broker.vhosts() {
        for q in vhost.queues() {
            let ready = q.gauges.ready.load(std::sync::atomic::Ordering::Relaxed);
            out.insert(q.id, (q.vhost.to_string(), q.name.to_string(), ready));
        }
    }
    out
}

/// Run the checks; `interval` is how long the backlog trend samples (zero: no trend).
pub async fn run(broker: &Broker, interval: std::time::Duration) -> Response {
    let before = (!interval.is_zero()).then(|| ready_counts(broker));
    if before.is_some() {
        tokio::time::sleep(interval).await;
    }
    let mut rows = Vec::new();
    let mut add = |check: &str, status: &str, detail: String, advice: &str| {
        rows.push(vec![
            json!(check),
            json!(status),
            json!(detail),
            json!(advice),
        ])
    };

    // Listeners: each one reachable from this host? (0.0.0.0 and :: are tried on loopback.)
    for (name, addr) in broker.listeners() {
        let target = match addr.parse::<std::net::SocketAddr>() {
            Ok(mut a) if a.ip().is_unspecified() => {
                a.set_ip(if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
                a.to_string()
            }
            _ => addr.clone(),
        };
        let reached =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&target))
                .await
                .is_ok_and(|r| r.is_ok());
        if reached {
            add("listener", "ok", format!("{name} on {addr}"), "");
        } else {
            add(
                "listener",
                "warning",
                format!("{name} on {addr} does not accept connections from this host"),
                "check the address in the config and local firewall rules",
            );
        }
    }

    let alarms = *broker.alarms().borrow();
    if alarms.memory {
        add(
            "alarm",
            "warning",
            "memory alarm in effect: publishing connections are blocked".to_owned(),
            "let consumers drain the queues, or raise alarms.memory_high_watermark",
        );
    }
    if alarms.disk {
        add(
            "alarm",
            "warning",
            "disk alarm in effect: publishing connections are blocked".to_owned(),
            "free disk space in the data directory, or lower alarms.disk_free_limit",
        );
    }

    // Queues: messages but nobody to take them (zombie queues), and deep backlogs.
    for (vhost, _) in broker.vhosts() {
        for q in vhost.queues() {
            let g = &q.gauges;
            let ready = g.ready.load(std::sync::atomic::Ordering::Relaxed);
            let consumers = g.consumers.load(std::sync::atomic::Ordering::Relaxed);
            if ready > 0 && consumers == 0 {
                add(
                    "queue",
                    "warning",
                    format!(
                        "queue '{}' in vhost '{}' has {ready} ready messages and no consumer",
                        q.name, q.vhost
                    ),
                    "start its consumer, or bound it (x-expires, x-max-length, a policy), or delete it",
                );
            }
        }
    }

    // Growing backlogs: queues whose ready count rose over the interval, consumed or not
    // (a zombie queue that grows is both: forgotten, and filling up).
    if let Some(before) = before {
        let secs = interval.as_secs_f64();
        let mut grown: Vec<_> = ready_counts(broker)
            .into_iter()
            .filter_map(|(id, (vhost, name, now))| {
                let (_, _, then) = before.get(&id)?;
                (now > *then).then_some((vhost, name, *then, now))
            })
            .collect();
        grown.sort();
        for (vhost, name, then, now) in grown {
            let rate = f64::from(now - then) / secs;
            add(
                "backlog",
                "warning",
                format!(
                    "queue '{name}' in vhost '{vhost}' is growing: {then} -> {now} ready messages in {secs}s ({rate:.1}/s)"
                ),
                "its consumers do not keep up: add consumers, raise their prefetch, or find what slows them",
            );
        }
    }

    // A cluster's health, as its leader sees it.
    if let Some(cluster) = crate::membership::get() {
        for (status, detail, advice) in cluster.findings().await {
            add("cluster", status, detail, advice);
        }
    }

    // Connections with many channels.
    broker.for_each_connection(|_, c| {
        let n = c.channels.load(std::sync::atomic::Ordering::Relaxed);
        if n > MANY_CHANNELS {
            add(
                "connection",
                "warning",
                format!(
                    "connection from {} (user '{}') has {n} channels open",
                    c.peer, c.user
                ),
                "the client probably opens a channel per operation without closing it; fix it, or lower amqp.channel_max",
            );
        }
    });

    if !rows.iter().any(|r| r[1] == "warning") {
        rows.push(vec![
            json!("summary"),
            json!("ok"),
            json!("nothing to look at"),
            json!(""),
        ]);
    }
    Response::table(
        ["check", "status", "detail", "advice"]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        rows,
    )
}
