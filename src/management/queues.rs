//! /api/queues: list (all, per vhost), get, declare (PUT), delete (with if-unused /
//! if-empty), purge (DELETE .../contents) and get messages (POST .../get).
//!
//! Counts come from each queue's gauge atomics ([`crate::metrics::QueueGauges`]), so
//! listing thousands of queues never waits on (or wakes) their actors; rates come from
//! the management's sampler ([`super::rates::QueueRates`]), and `memory` is the estimate
//! of [`crate::queue::footprint`].

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Value};

use super::list::reply_list;
use super::message::{payload_json, properties_json};
use super::rates::{details, QUEUE_KEYS};
use super::{
    body_json, created_or_updated, json_bool, node_name, reply, vhost_of, Api, ApiError, ApiResult,
    Caller,
};
use crate::access::Perm;
use crate::admin::queues::QueueInfo;
use crate::definitions::{json_to_table, table_to_json};
use crate::error::AmqpError;
use crate::metrics::QueueCounts;
use crate::queue::{QueueCmd, QueueHandle, Settle};
use crate::vhost::{check_exclusive, QueueDecl, Vhost};

/// The connection id the API acts as: none owns it (connection ids start at 1).
const NO_CONNECTION: u64 = 0;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/queues", get(list_all))
        .route("/api/queues/:vhost", get(list_vhost))
        .route("/api/queues/:vhost/:name", get(one).put(put).delete(remove))
        .route("/api/queues/:vhost/:name/contents", delete(purge))
        .route("/api/queues/:vhost/:name/get", post(get_messages))
}

pub fn queue_json(api: &Api, v: &Vhost, q: &Arc<QueueHandle>) -> Value {
    let info = QueueInfo::current(v, q);
    let s = &info.sizes;
    let g = &q.gauges;
    let rates = api.queue_rates.of(q.id);
    let rate = |key: &str| {
        let i = QUEUE_KEYS.iter().position(|k| *k == key).unwrap_or(0);
        details(rates[i])
    };
    let mut out = json!({
        "name": &*q.name,
        "vhost": &*q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": table_to_json(&q.arguments),
        "node": node_name(),
        "type": "classic",
        "state": "running",
        "policy": info.policy,
        "operator_policy": info.operator_policy,
        "messages": info.messages(),
        "messages_ready": s.ready,
        "messages_unacknowledged": s.unacked,
        "messages_details": rate("messages"),
        "messages_ready_details": rate("messages_ready"),
        "messages_unacknowledged_details": rate("messages_unacknowledged"),
        "messages_paged_out": info.paged_out(),
        "messages_ram": info.ram(),
        "messages_ready_ram": info.ready_ram(),
        "messages_unacknowledged_ram": s.unacked,
        "message_bytes": info.bytes(),
        "message_bytes_ready": s.ready_bytes,
        "message_bytes_unacknowledged": s.unacked_bytes,
        "message_bytes_paged_out": info.paged_out_bytes(),
        "message_bytes_ram": info.ram_bytes(),
        "memory": crate::queue::footprint::memory(g),
        "consumers": s.consumers,
    });
    if let Some(stats) = message_stats(&g.counts.load(), &rates) {
        out["message_stats"] = stats;
    }
    out
}

/// A queue's message_stats as RabbitMQ shows them (rabbit_mgmt_db:queue_stats): the
/// `publish` group once something was published to it, the delivery group (get,
/// get_no_ack, deliver, deliver_no_ack, redeliver, ack, deliver_get, get_empty) once
/// something was delivered, fetched or asked for; no `message_stats` at all for a
/// queue without such traffic.
fn message_stats(c: &QueueCounts, rates: &[f64; QUEUE_KEYS.len()]) -> Option<Value> {
    let mut m = serde_json::Map::new();
    let mut put = |key: &str, value: u64| {
        let i = QUEUE_KEYS.iter().position(|k| *k == key).unwrap_or(0);
        m.insert(key.to_owned(), Value::from(value));
        m.insert(format!("{key}_details"), details(rates[i]));
    };
    if c.publish > 0 {
        put("publish", c.publish);
    }
    if c.deliver_get() + c.get_empty + c.ack + c.redeliver > 0 {
        for (key, value) in c.fields() {
            if key != "publish" {
                put(key, value);
            }
        }
        put("deliver_get", c.deliver_get());
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn queues_of(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    for v in super::visible_vhosts(api, caller, vhost) {
        items.extend(v.queues().iter().map(|q| queue_json(api, &v, q)));
    }
    items
}

async fn list_all(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    reply_list(queues_of(&api, &caller, None), &q)
}

async fn list_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    reply_list(queues_of(&api, &caller, Some(&vhost)), &q)
}

/// The vhost and queue named in the path, after the caller's vhost check.
fn find(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    name: &str,
) -> ApiResult<(Arc<Vhost>, Arc<QueueHandle>)> {
    caller.require_vhost(api, vhost)?;
    let v = vhost_of(api, vhost)?;
    let q = v.lookup_queue(name).ok_or_else(ApiError::not_found)?;
    Ok((v, q))
}

async fn one(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (v, q) = find(&api, &caller, &vhost, &name)?;
    Ok(reply(queue_json(&api, &v, &q)))
}

/// queue.declare with the body's properties, checked as a channel would
/// (rabbit_mgmt_wm_queue → direct_request): 201 if created, 204 if it existed
/// equivalently, 400 with RabbitMQ's reason if not.
async fn put(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    let v = vhost_of(&api, &vhost)?;
    let m = body_json(&body)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("queue name must not be empty"));
    }
    if name.starts_with("amq.") {
        return Err(ApiError::amqp(AmqpError::access_refused(format!(
            "queue name '{name}' contains reserved prefix 'amq.*'"
        ))));
    }
    caller.check(&api, &vhost, "queue", &name, Perm::Configure)?;
    if v.lookup_queue(&name).is_none() {
        api.broker.admit_queue(&v, &name).map_err(ApiError::amqp)?;
    }
    let decl = QueueDecl {
        name: name.clone(),
        durable: json_bool(&m, "durable", false),
        // A queue owned by no connection would live forever: RabbitMQ's HTTP API
        // cannot declare exclusive queues either.
        exclusive: false,
        auto_delete: json_bool(&m, "auto_delete", false),
        arguments: json_to_table(m.get("arguments")),
    };
    let (_, created) = v
        .declare_queue(decl, NO_CONNECTION)
        .map_err(ApiError::amqp)?;
    Ok(created_or_updated(created))
}

async fn remove(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (v, queue) = find(&api, &caller, &vhost, &name)?;
    // The API is no connection: it cannot own an exclusive queue (direct_request).
    check_exclusive(&queue, NO_CONNECTION).map_err(ApiError::amqp)?;
    caller.check(&api, &vhost, "queue", &name, Perm::Configure)?;
    let flag = |k: &str| q.get(k).is_some_and(|s| s == "true");
    v.delete_queue(&queue, flag("if-unused"), flag("if-empty"))
        .await
        .map_err(ApiError::amqp)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn purge(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (_, queue) = find(&api, &caller, &vhost, &name)?;
    check_exclusive(&queue, NO_CONNECTION).map_err(ApiError::amqp)?;
    caller.check(&api, &vhost, "queue", &name, Perm::Read)?;
    queue.ask(|reply| QueueCmd::Purge { reply }).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST .../get: `{"count": N, "ackmode": "ack_requeue_true" | "ack_requeue_false" |
/// "reject_requeue_true" | "reject_requeue_false", "encoding": "auto" | "base64",
/// "truncate": bytes}`. Requeued messages come back flagged redelivered, as
/// RabbitMQ's (it gets them over a channel and nacks them).
async fn get_messages(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (_, queue) = find(&api, &caller, &vhost, &name)?;
    // Over a channel in RabbitMQ (with_channel): the close's code leads the reason.
    if let Err(e) = check_exclusive(&queue, NO_CONNECTION) {
        return Err(ApiError::bad_request(format!("{} {}", e.code, e.text)));
    }
    caller.check(&api, &vhost, "queue", &name, Perm::Read)?;
    let m = body_json(&body)?;
    let count = match m.get("count") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        None => Some(1),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad_request("count must be an integer"))?;
    let ackmode = m
        .get("ackmode")
        .and_then(Value::as_str)
        .unwrap_or("ack_requeue_true");
    let settle = match ackmode {
        "ack_requeue_false" => None,
        "ack_requeue_true" | "reject_requeue_true" => Some(Settle::Requeue),
        "reject_requeue_false" => Some(Settle::Discard),
        other => return Err(ApiError::bad_request(format!("Invalid ackmode: {other}"))),
    };
    let encoding = m.get("encoding").and_then(Value::as_str).unwrap_or("auto");
    if !matches!(encoding, "auto" | "base64") {
        return Err(ApiError::bad_request(format!(
            "Unsupported encoding: {encoding}"
        )));
    }
    let truncate = m
        .get("truncate")
        .and_then(Value::as_u64)
        .map(|t| t as usize);
    // A channel of its own: the queue tracks what it delivered unacknowledged by it.
    let channel_uid = crate::util::next_id();
    let counters = &api.broker.counters;
    let (mut out, mut ids) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let got = queue
            .ask(|reply| QueueCmd::Get {
                channel_uid,
                no_ack: settle.is_none(),
                reply,
            })
            .await
            .flatten();
        let Some(got) = got else {
            if out.is_empty() {
                counters.get_empty.fetch_add(1, Relaxed);
            }
            break;
        };
        counters.delivered.fetch_add(1, Relaxed);
        counters
            .redelivered
            .fetch_add(got.redelivered as u64, Relaxed);
        match settle {
            None => counters.delivered_get_auto_ack.fetch_add(1, Relaxed),
            Some(_) => counters.delivered_get_manual_ack.fetch_add(1, Relaxed),
        };
        let msg = &got.message;
        let (payload, payload_encoding) = payload_json(&msg.body, encoding, truncate);
        out.push(json!({
            "payload_bytes": msg.body.len(),
            "redelivered": got.redelivered,
            "exchange": String::from_utf8_lossy(&msg.exchange),
            "routing_key": String::from_utf8_lossy(&msg.routing_key),
            "message_count": got.remaining,
            "properties": properties_json(&msg.properties),
            "payload": payload,
            "payload_encoding": payload_encoding,
        }));
        ids.push(got.msg_id);
    }
    if let Some(how) = settle {
        if !ids.is_empty() {
            queue.send(QueueCmd::Settle {
                channel_uid,
                ids,
                how,
            });
        }
    }
    Ok(reply(Value::Array(out)))
}
