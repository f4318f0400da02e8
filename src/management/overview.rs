//! The node as a whole: /api/overview, /api/whoami, /api/nodes and the health checks
//! (/api/health/checks/...), which load balancers and Kubernetes probes call.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::{node_name, reply, Api, ApiError, ApiResult, Caller};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/:node", get(one_node))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route("/api/health/checks/virtual-hosts", get(virtual_hosts))
        .route("/api/health/checks/port-listener/:port", get(port_listener))
        .route("/api/health/checks/is-in-service", get(is_in_service))
        .route("/api/health/checks/is-leader", get(is_leader))
        .route("/api/aliveness-test/:vhost", get(aliveness))
}

/// The message counters since start, under RabbitMQ's message_stats names.
pub fn message_stats(api: &Api) -> Value {
    let c = &api.broker.counters;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    let deliver = n(&c.delivered_consume_manual_ack);
    let deliver_no_ack = n(&c.delivered_consume_auto_ack);
    let get = n(&c.delivered_get_manual_ack);
    let get_no_ack = n(&c.delivered_get_auto_ack);
    json!({
        "publish": n(&c.received),
        "confirm": n(&c.confirmed),
        "return_unroutable": n(&c.unroutable_returned),
        "drop_unroutable": n(&c.unroutable_dropped),
        "deliver": deliver,
        "deliver_no_ack": deliver_no_ack,
        "get": get,
        "get_no_ack": get_no_ack,
        "get_empty": n(&c.get_empty),
        "deliver_get": deliver + deliver_no_ack + get + get_no_ack,
        "redeliver": n(&c.redelivered),
        "ack": n(&c.acknowledged),
    })
}

async fn overview(State(api): State<Api>, caller: Caller) -> ApiResult {
    let (mut exchanges, mut queues, mut consumers) = (0u64, 0u64, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for (v, _) in api.broker.vhosts() {
        if !caller.knows_vhost(&api, &v.name) {
            continue;
        }
        exchanges += v.exchanges().len() as u64;
        for q in v.queues() {
            queues += 1;
            ready += q.gauges.ready.load(Relaxed) as u64;
            unacked += q.gauges.unacked.load(Relaxed) as u64;
            consumers += q.gauges.consumers.load(Relaxed) as u64;
        }
    }
    let (mut connections, mut channels) = (0u64, 0u64);
    api.broker.for_each_connection(|_, c| {
        if caller.is_monitor() || c.user == caller.name {
            connections += 1;
            channels += c.channels.load(Relaxed) as u64;
        }
    });
    let node = node_name();
    let cluster_name = match crate::membership::get() {
        Some(cluster) => cluster.api_view().await.cluster_name,
        None => node.clone(),
    };
    let exchange_types: Vec<Value> = ["direct", "fanout", "headers", "topic"]
        .iter()
        .map(|t| json!({"name": t, "description": "", "enabled": true}))
        .collect();
    let (ip, port) = api.amqp_addr.rsplit_once(':').unwrap_or(("", "0"));
    let mut stats = message_stats(&api);
    api.rates.decorate(&mut stats);
    Ok(reply(json!({
        "management_version": crate::RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": crate::RABBITMQ_COMPAT_VERSION,
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": cluster_name,
        "node": node,
        "rates_mode": "none",
        "disable_stats": false,
        "enable_queue_totals": true,
        "exchange_types": exchange_types,
        "message_stats": stats,
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "connections": connections,
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "listeners": [{"node": node, "protocol": "amqp", "ip_address": ip,
                       "port": port.parse::<u16>().unwrap_or(0)}],
    })))
}

async fn whoami(caller: Caller) -> Response {
    reply(json!({"name": caller.name, "tags": caller.tags}))
}

fn node_json(api: &Api) -> Value {
    let alarms = *api.broker.alarms().borrow();
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "mem_alarm": alarms.memory,
        "disk_free_alarm": alarms.disk,
        "mem_used": crate::alarm::resident_memory(),
        "mem_limit": crate::alarm::memory_limit(&api.broker.config.alarms),
        "disk_free": crate::alarm::free_disk(&api.broker.config.data_dir),
        "disk_free_limit": api.broker.config.alarms.disk_free_limit,
        "uptime": api.started.elapsed().as_millis() as u64,
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

/// rabbit_mgmt_wm_nodes: monitors only. A cluster's leader lists every known node: its
/// own object in full, the others with what it knows (running, and warren's role,
/// in-sync state and replication lag).
async fn nodes(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require_monitor()?;
    let mut me = node_json(&api);
    let Some(cluster) = crate::membership::get() else {
        return Ok(reply(json!([me])));
    };
    let view = cluster.api_view().await;
    if let (Some(m), Value::Object(extra)) = (me.as_object_mut(), view.leader) {
        m.extend(extra);
    }
    let mut all = vec![me];
    all.extend(view.others);
    Ok(reply(Value::Array(all)))
}

async fn one_node(State(api): State<Api>, caller: Caller, Path(node): Path<String>) -> ApiResult {
    caller.require_monitor()?;
    if node == node_name() {
        return Ok(reply(node_json(&api)));
    }
    let view = match crate::membership::get() {
        Some(cluster) => Some(cluster.api_view().await),
        None => None,
    };
    match view.and_then(|v| v.others.into_iter().find(|n| n["name"] == node.as_str())) {
        Some(other) => Ok(reply(other)),
        None => Err(ApiError::not_found()),
    }
}

/// 200 {"status":"ok"} or 503 {"status":"failed","reason":...,"alarms":[...]} as
/// rabbit_mgmt_wm_health_check_alarms.
async fn alarms(State(api): State<Api>, _caller: Caller) -> Response {
    let a = *api.broker.alarms().borrow();
    if !a.any() {
        return reply(json!({"status": "ok"}));
    }
    let mut list = Vec::new();
    if a.memory {
        list.push(json!({"node": node_name(), "resource": "memory"}));
    }
    if a.disk {
        list.push(json!({"node": node_name(), "resource": "disk"}));
    }
    failed(
        "resource alarm(s) in effect in the cluster",
        json!({"alarms": list}),
    )
}

fn failed(reason: &str, extra: Value) -> Response {
    use axum::response::IntoResponse;
    let mut body = json!({"status": "failed", "reason": reason});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(body),
    )
        .into_response()
}

/// RabbitMQ's: the node is running and serves clients. Here: this node serves (a
/// single node, or a cluster's leader); a follower's front answers for itself
/// (`cluster::front`). No credentials needed: a load balancer's probe has none, and
/// the answer tells no more than whether the port answers.
async fn is_in_service() -> Response {
    reply(json!({"status": "ok"}))
}

/// warren's: 200 only on the node that serves, so that a load balancer can route to
/// the leader alone (followers answer 503 from their front). A single node serves.
async fn is_leader() -> Response {
    reply(json!({"status": "ok", "node": node_name()}))
}

/// Every vhost is served by this node's process: ok while it runs.
async fn virtual_hosts(_caller: Caller) -> Response {
    reply(json!({"status": "ok"}))
}

async fn port_listener(
    State(api): State<Api>,
    _caller: Caller,
    Path(port): Path<String>,
) -> ApiResult {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request(format!("Invalid port: {port}")))?;
    let listening = [&*api.amqp_addr, &api.broker.config.metrics.listen];
    let mut ports: Vec<u16> = listening
        .iter()
        .filter_map(|a| a.rsplit_once(':').and_then(|p| p.1.parse().ok()))
        .collect();
    ports.push(api.management_port);
    ports.retain(|p| *p != 0);
    if ports.contains(&port) {
        Ok(reply(json!({"status": "ok", "port": port})))
    } else {
        Ok(failed(
            &format!("No active listener on port {port}"),
            json!({"missing": port, "ports": ports}),
        ))
    }
}

/// rabbit_mgmt_wm_aliveness_test: declare the queue `aliveness-test`, publish a
/// message to it through the default exchange and get it back.
async fn aliveness(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    let v = super::vhost_of(&api, &vhost)?;
    const QUEUE: &str = "aliveness-test";
    const BODY: &[u8] = b"test_message";
    let decl = crate::vhost::QueueDecl {
        name: QUEUE.to_owned(),
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: Default::default(),
    };
    let (q, _) = v.declare_queue(decl, 0).map_err(ApiError::amqp)?;
    let msg = crate::message::Message {
        exchange: bytes::Bytes::new(),
        routing_key: bytes::Bytes::from_static(QUEUE.as_bytes()),
        // No properties: the flags word alone.
        properties: bytes::Bytes::from_static(&[0, 0]),
        body: bytes::Bytes::from_static(BODY),
        store_id: None,
    };
    q.send(crate::queue::QueueCmd::Publish(std::sync::Arc::new(msg)));
    let channel_uid = crate::util::next_id();
    let got = q
        .ask(|reply| crate::queue::QueueCmd::Get {
            channel_uid,
            no_ack: true,
            reply,
        })
        .await
        .flatten();
    match got {
        Some(g) if &g.message.body[..] == BODY => Ok(reply(json!({"status": "ok"}))),
        _ => Ok(failed("aliveness test failed", json!({}))),
    }
}
