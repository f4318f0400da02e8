//! /api/connections, /api/channels and /api/consumers: what clients are connected and
//! doing, and DELETE /api/connections/{name} to close one (320 CONNECTION_FORCED with
//! the `X-Reason` header's text, as RabbitMQ).
//!
//! Users see their own connections; monitors and administrators see all; only
//! administrators close other users' (rabbit_mgmt_util:is_authorized_user).
//! Connection lists read the broker's registry; channel lists ask each connection
//! task (the owner of its channels), consumer lists each queue, as warrenctl does.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::list::reply_list;
use super::{node_name, reply, vhost_of, Api, ApiError, ApiResult, Caller};
use crate::broker::ConnectionEntry;
use crate::definitions::table_to_json;

/// Longest wait for the connections' (or queues') answers to a listing.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/connections", get(list_all))
        .route("/api/vhosts/:vhost/connections", get(list_vhost))
        .route("/api/connections/:name", get(one).delete(close))
        .route(
            "/api/connections/:name/channels",
            get(channels_of_connection),
        )
        .route("/api/channels", get(all_channels))
        .route("/api/vhosts/:vhost/channels", get(vhost_channels))
        .route("/api/consumers", get(all_consumers))
        .route("/api/consumers/:vhost", get(vhost_consumers))
}

/// RabbitMQ's connection name: `"peer -> local"`.
fn conn_json(c: &ConnectionEntry) -> Value {
    let connected_at = c
        .connected_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "name": c.display_name(),
        "node": node_name(),
        "vhost": c.vhost,
        "user": c.user,
        "user_provided_name": c.name,
        "client_properties": c.name.as_ref().map_or(json!({}), |n| json!({"connection_name": n})),
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "channels": c.channels.load(std::sync::atomic::Ordering::Relaxed),
        "connected_at": connected_at,
        "state": c.state.name(),
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "ssl": false,
    })
}

/// (id, JSON) of the connections the caller may see, optionally in one vhost.
fn connections(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    api.broker.for_each_connection(|id, c| {
        if vhost.is_some_and(|v| v != c.vhost) || !(caller.is_monitor() || c.user == caller.name) {
            return;
        }
        out.push((id, conn_json(c)));
    });
    out
}

async fn list_all(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    reply_list(
        connections(&api, &caller, None)
            .into_iter()
            .map(|c| c.1)
            .collect(),
        &q,
    )
}

async fn list_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    reply_list(
        connections(&api, &caller, Some(&vhost))
            .into_iter()
            .map(|c| c.1)
            .collect(),
        &q,
    )
}

/// The connection with this name, if the caller may see it.
fn find(api: &Api, caller: &Caller, name: &str) -> ApiResult<(u64, Value)> {
    let all = connections(
        api,
        &Caller {
            name: caller.name.clone(),
            tags: vec!["monitoring".into()],
        },
        None,
    );
    let (id, c) = all
        .into_iter()
        .find(|(_, c)| c["name"] == name)
        .ok_or_else(ApiError::not_found)?;
    if !(caller.is_monitor() || c["user"] == caller.name.as_str()) {
        return Err(ApiError::not_authorised(
            "User not authorised to access object",
        ));
    }
    Ok((id, c))
}

async fn one(State(api): State<Api>, caller: Caller, Path(name): Path<String>) -> ApiResult {
    Ok(reply(find(&api, &caller, &name)?.1))
}

async fn close(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (id, c) = find(&api, &caller, &name)?;
    if !(caller.is_admin() || c["user"] == caller.name.as_str()) {
        return Err(ApiError::not_authorised(
            "User not authorised to access object",
        ));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    api.broker.close_connection(id, reason);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The channels of the connections listed (those the caller may see), described.
async fn channels(api: &Api, conns: Vec<(u64, Value)>) -> Vec<Value> {
    let ids: std::collections::HashSet<u64> = conns.iter().map(|c| c.0).collect();
    crate::admin::channels::gather(&api.broker, |id, _| ids.contains(&id), ASK_TIMEOUT)
        .await
        .into_iter()
        .map(|row| {
            let ch = &row.info;
            json!({
                "name": row.name(),
                "number": ch.number,
                "node": node_name(),
                "user": row.user,
                "vhost": row.vhost,
                "connection_details": {
                    "name": row.conn_name,
                    "peer_host": row.peer.ip().to_string(),
                    "peer_port": row.peer.port(),
                },
                "consumer_count": ch.consumer_count,
                "messages_unacknowledged": ch.messages_unacknowledged,
                "messages_unconfirmed": ch.messages_unconfirmed,
                "messages_uncommitted": ch.messages_uncommitted,
                "acks_uncommitted": ch.acks_uncommitted,
                "prefetch_count": ch.prefetch_count,
                "global_prefetch_count": ch.global_prefetch_count,
                "confirm": ch.confirm,
                "transactional": ch.transactional,
                "state": "running",
            })
        })
        .collect()
}

async fn channels_of_connection(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let c = find(&api, &caller, &name)?;
    Ok(reply(Value::Array(channels(&api, vec![c]).await)))
}

async fn all_channels(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let conns = connections(&api, &caller, None);
    reply_list(channels(&api, conns).await, &q)
}

async fn vhost_channels(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    let conns = connections(&api, &caller, Some(&vhost));
    reply_list(channels(&api, conns).await, &q)
}

/// The consumers of the queues the caller may see, described.
async fn consumers(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let mut names: HashMap<u64, Value> = HashMap::new();
    api.broker.for_each_connection(|id, c| {
        names.insert(id, conn_json(c));
    });
    let vhosts = super::visible_vhosts(api, caller, vhost);
    crate::admin::consumers::gather(&vhosts, ASK_TIMEOUT)
        .await
        .into_iter()
        .map(|row| {
            let c = &row.info;
            let conn = names.get(&c.conn_id).cloned().unwrap_or(Value::Null);
            json!({
                "consumer_tag": &*c.tag,
                "queue": {"name": &*row.queue.name, "vhost": &*row.vhost},
                "channel_details": {
                    "name": format!("{} ({})", conn["name"].as_str().unwrap_or(""), c.channel),
                    "number": c.channel,
                    "connection_name": conn["name"],
                    "peer_host": conn["peer_host"],
                    "peer_port": conn["peer_port"],
                    "user": conn["user"],
                },
                "ack_required": !c.no_ack,
                "exclusive": c.exclusive,
                "prefetch_count": c.prefetch,
                "arguments": table_to_json(&c.arguments),
                "active": c.active,
                "activity_status": c.activity_status,
            })
        })
        .collect()
}

async fn all_consumers(State(api): State<Api>, caller: Caller) -> ApiResult {
    Ok(reply(Value::Array(consumers(&api, &caller, None).await)))
}

async fn vhost_consumers(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    Ok(reply(Value::Array(
        consumers(&api, &caller, Some(&vhost)).await,
    )))
}
