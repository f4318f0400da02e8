//! /api/vhosts: list, get, create (PUT) and delete virtual hosts.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::list::reply_list;
use super::{
    body_json, created_or_updated, node_name, reply, Admin, Api, ApiError, ApiResult, Caller,
};
use crate::broker::VhostMeta;
use crate::vhost::Vhost;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/vhosts", get(list))
        .route("/api/vhosts/:vhost", get(one).put(put).delete(delete))
}

fn vhost_json(v: &Vhost, meta: &VhostMeta) -> Value {
    let (mut ready, mut unacked) = (0u64, 0u64);
    for q in v.queues() {
        ready += q.gauges.ready.load(Relaxed) as u64;
        unacked += q.gauges.unacked.load(Relaxed) as u64;
    }
    json!({
        "name": &*v.name,
        "description": meta.description,
        "tags": meta.tags,
        "metadata": {"description": meta.description, "tags": meta.tags},
        "default_queue_type": "classic",
        "tracing": false,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "cluster_state": {node_name(): "running"},
    })
}

async fn list(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let items = api
        .broker
        .vhosts()
        .iter()
        .filter(|(v, _)| caller.knows_vhost(&api, &v.name))
        .map(|(v, meta)| vhost_json(v, meta))
        .collect();
    reply_list(items, &q)
}

/// rabbit_mgmt_wm_vhost: administrators only (the list is for everyone).
async fn one(State(api): State<Api>, _: Admin, Path(name): Path<String>) -> ApiResult {
    let all = api.broker.vhosts();
    let (v, meta) = all
        .iter()
        .find(|(v, _)| *v.name == *name)
        .ok_or_else(ApiError::not_found)?;
    Ok(reply(vhost_json(v, meta)))
}

/// Tags as RabbitMQ takes them: a list, or one comma-separated string.
pub fn tags_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str())
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `{"description": ..., "tags": ...}`: 201 created, 204 existed. As in RabbitMQ, the
/// creating user gets no permissions in it.
async fn put(
    State(api): State<Api>,
    Admin(caller): Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let m = body_json(&body)?;
    let existed = api.broker.vhost(&name).is_some();
    let meta = VhostMeta {
        description: m
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        tags: tags_of(m.get("tags")),
    };
    api.broker
        .add_vhost(&name, meta)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !existed {
        // The creating user gets full permissions, as RabbitMQ's management plugin does.
        let _ = api
            .broker
            .access
            .set_permissions(&name, &caller.name, ".*", ".*", ".*");
    }
    Ok(created_or_updated(!existed))
}

async fn delete(State(api): State<Api>, _: Admin, Path(name): Path<String>) -> ApiResult<Response> {
    if api.broker.vhost(&name).is_none() {
        return Err(ApiError::not_found());
    }
    api.broker
        .delete_vhost(&name)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
