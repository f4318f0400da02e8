//! /api/exchanges: list (all, per vhost), get, declare (PUT), delete (if-unused) and
//! publish (POST .../publish). The default exchange is `amq.default` in paths and
//! `""` in bodies, as in RabbitMQ.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::list::reply_list;
use super::message::{payload_from_json, properties_from_json};
use super::{
    body_json, created_or_updated, json_bool, reply, vhost_of, Api, ApiError, ApiResult, Caller,
};
use crate::access::Perm;
use crate::definitions::{json_to_table, table_to_json};
use crate::error::AmqpError;
use crate::message::Message;
use crate::policy::Target;
use crate::protocol::properties::Properties;
use crate::queue::QueueCmd;
use crate::vhost::{ExchangeDecl, ExchangeInfo, RouteError, Vhost};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/exchanges", get(list_all))
        .route("/api/exchanges/:vhost", get(list_vhost))
        .route(
            "/api/exchanges/:vhost/:name",
            get(one).put(put).delete(remove),
        )
        .route("/api/exchanges/:vhost/:name/publish", post(publish))
}

/// The exchange a path names: `amq.default` is the default exchange.
pub fn exchange_name(path: &str) -> &str {
    if path == "amq.default" {
        ""
    } else {
        path
    }
}

fn exchange_json(v: &Vhost, x: &ExchangeInfo) -> Value {
    let [policy, _] = v.policy_names(&x.name, Target::Exchange);
    json!({
        "name": x.name,
        "vhost": &*v.name,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": policy,
    })
}

fn exchanges_of(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    for v in super::visible_vhosts(api, caller, vhost) {
        items.extend(v.exchanges().iter().map(|x| exchange_json(&v, x)));
    }
    items
}

async fn list_all(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    reply_list(exchanges_of(&api, &caller, None), &q)
}

async fn list_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    reply_list(exchanges_of(&api, &caller, Some(&vhost)), &q)
}

fn find(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    name: &str,
) -> ApiResult<(Arc<Vhost>, ExchangeInfo)> {
    caller.require_vhost(api, vhost)?;
    let v = vhost_of(api, vhost)?;
    let x = v
        .exchanges()
        .into_iter()
        .find(|x| x.name == exchange_name(name))
        .ok_or_else(ApiError::not_found)?;
    Ok((v, x))
}

async fn one(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (v, x) = find(&api, &caller, &vhost, &name)?;
    Ok(reply(exchange_json(&v, &x)))
}

/// exchange.declare with the body's properties (`type` is required): 201 created, 204
/// equivalent, 400 with RabbitMQ's reason otherwise.
async fn put(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    let v = vhost_of(&api, &vhost)?;
    let m = body_json(&body)?;
    let name = exchange_name(&name);
    let kind = m
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,type}]"))?;
    if !name.is_empty() && !name.starts_with("amq.") {
        caller.check(&api, &vhost, "exchange", name, Perm::Configure)?;
    }
    let existed = v.exchange_exists(name);
    v.declare_exchange(ExchangeDecl {
        name,
        kind,
        durable: json_bool(&m, "durable", false),
        auto_delete: json_bool(&m, "auto_delete", false),
        internal: json_bool(&m, "internal", false),
        arguments: json_to_table(m.get("arguments")),
    })
    .map_err(ApiError::amqp)?;
    Ok(created_or_updated(!existed))
}

async fn remove(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (v, x) = find(&api, &caller, &vhost, &name)?;
    if !x.name.is_empty() && !x.name.starts_with("amq.") {
        caller.check(&api, &vhost, "exchange", &x.name, Perm::Configure)?;
    }
    let if_unused = q.get("if-unused").is_some_and(|s| s == "true");
    v.delete_exchange(&x.name, if_unused)
        .map_err(ApiError::amqp)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST .../publish: `{"properties": {...}, "routing_key": "...", "payload": "...",
/// "payload_encoding": "string" | "base64"}` → `{"routed": bool}`. Routed like a
/// basic.publish: persistent messages to durable queues go to the store first, and
/// full reject-publish queues refuse them.
async fn publish(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    let v = vhost_of(&api, &vhost)?;
    let m = body_json(&body)?;
    let exchange = exchange_name(&name).to_owned();
    caller.check(&api, &vhost, "exchange", &exchange, Perm::Write)?;
    let routing_key = m
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let props = match m.get("properties") {
        Some(Value::Object(p)) => p.clone(),
        None | Some(Value::Null) => Default::default(),
        Some(_) => return Err(ApiError::bad_request("properties must be an object")),
    };
    let properties = properties_from_json(&props).map_err(ApiError::bad_request)?;
    let body = payload_from_json(&m).map_err(ApiError::bad_request)?;
    if body.len() as u64 > api.broker.config.amqp.max_message_size {
        return Err(ApiError::bad_request(format!(
            "message size {} is larger than configured max size {}",
            body.len(),
            api.broker.config.amqp.max_message_size
        )));
    }
    let parsed = Properties::parse(&properties)
        .ok_or_else(|| ApiError::bad_request("invalid properties"))?;
    let mut queues = Vec::new();
    let mut headers = || parsed.headers(&properties);
    match v.route(&exchange, &routing_key, &mut headers, &mut queues) {
        Ok(_) => {}
        Err(RouteError::NoExchange) => return Err(ApiError::not_found()),
        Err(RouteError::Internal) => {
            return Err(ApiError::amqp(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            ))))
        }
    }
    let counters = &api.broker.counters;
    counters.received.fetch_add(1, Relaxed);
    let admitted: Vec<_> = queues
        .into_iter()
        .filter(|q| q.admission().is_none_or(|a| a.try_admit(body.len() as u64)))
        .collect();
    if admitted.is_empty() {
        counters.unroutable_dropped.fetch_add(1, Relaxed);
        return Ok(reply(json!({"routed": false})));
    }
    counters.routed.fetch_add(1, Relaxed);
    let mut msg = Message {
        exchange: Bytes::from(exchange.into_bytes()),
        routing_key: Bytes::from(routing_key.into_bytes()),
        properties,
        body,
        store_id: None,
    };
    if parsed.persistent() {
        if let Some(store) = v.store() {
            let qids: Vec<u64> = admitted.iter().filter_map(|q| q.store_qid).collect();
            if !qids.is_empty() {
                if store.messages.is_failing() {
                    return Err(ApiError::bad_request("the message store is unavailable"));
                }
                msg.store_id = Some(store.messages.persist(qids, &msg, None));
            }
        }
    }
    let msg = Arc::new(msg);
    for q in &admitted {
        q.send(QueueCmd::Publish(msg.clone()));
    }
    Ok(reply(json!({"routed": true})))
}
