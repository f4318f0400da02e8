//! `warrenctl diagnostics` (also `doctor`): what an operator should look at, each
//! finding with what to do. It reads what the broker already keeps for readers (listener
//! addresses, alarm state, queue gauges, channel counts), so running it on a busy broker
//! costs nothing but the listing.

use serde_json::json;

use super::Response;
use crate::broker::Broker;

/// A connection with more channels than this is reported (clients that open a channel
/// per operation and never close it leak them; RabbitMQ users meet this as thousands of
/// channels on one connection).
const MANY_CHANNELS: usize = 100;
/// Ready messages beyond which a queue with consumers is reported as a deep backlog.
const DEEP_BACKLOG: u32 = 100_000;
/// How long a listener may take to accept a test connection from this host.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn run(broker: &Broker) -> Response {
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
            } else if ready > DEEP_BACKLOG {
                add(
                    "queue",
                    "warning",
                    format!(
                        "queue '{}' in vhost '{}' has a backlog of {ready} ready messages ({consumers} consumers)",
                        q.name, q.vhost
                    ),
                    "add consumers or raise their prefetch; warren keeps the backlog on disk",
                );
            }
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
