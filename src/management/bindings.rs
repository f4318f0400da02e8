//! /api/bindings: list (all, per vhost, between two objects, by source or destination),
//! create (POST, 201 with Location) and delete by properties key, for exchange→queue
//! (`/e/{src}/q/{dst}`) and exchange→exchange (`/e/{src}/e/{dst}`) bindings.
//!
//! A binding is named in URLs by its properties key, as in RabbitMQ: the routing key
//! when it has no arguments, else the routing key, `~`, and a hash of the arguments.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::exchanges::exchange_name;
use super::list::reply_list;
use super::{body_json, reply, vhost_of, Api, ApiError, ApiResult, Caller};
use crate::access::Perm;
use crate::definitions::{json_to_table, table_to_json};
use crate::exchange::{Binding, Destination};
use crate::vhost::Vhost;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/bindings", get(list_all))
        .route("/api/bindings/:vhost", get(list_vhost))
        .route(
            "/api/bindings/:vhost/e/:source/:dtype/:dest",
            get(list_between).post(create),
        )
        .route(
            "/api/bindings/:vhost/e/:source/:dtype/:dest/:props",
            get(one).delete(remove),
        )
        .route(
            "/api/exchanges/:vhost/:name/bindings/source",
            get(by_source),
        )
        .route(
            "/api/exchanges/:vhost/:name/bindings/destination",
            get(by_exchange_destination),
        )
        .route("/api/queues/:vhost/:name/bindings", get(by_queue))
}

/// rabbit_http_util:quote_plus, with `~` escaped too (it separates the key's parts).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A short, stable digest of the arguments (FNV-1a over their JSON, whose keys
/// serde_json keeps sorted), base64url: only needs to tell bindings apart.
fn args_hash(args: &Value) -> String {
    use base64::Engine;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in args.to_string().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.to_be_bytes())
}

fn properties_key(routing_key: &str, args: &Value) -> String {
    let empty = args.as_object().is_none_or(|m| m.is_empty());
    match (routing_key.is_empty(), empty) {
        (true, true) => "~".to_owned(),
        (_, true) => quote(routing_key),
        _ => format!("{}~{}", quote(routing_key), args_hash(args)),
    }
}

fn binding_json(vhost: &str, source: &str, dest: &Destination, key: &str, args: Value) -> Value {
    let (dtype, dname) = match dest {
        Destination::Queue(q) => ("queue", &**q),
        Destination::Exchange(x) => ("exchange", &**x),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": dname,
        "destination_type": dtype,
        "routing_key": key,
        "arguments": args,
        "properties_key": properties_key(key, &args),
    })
}

/// Every binding of a vhost, starting with the default exchange's implicit one to each
/// queue (RabbitMQ lists those too).
fn bindings_of(v: &Vhost) -> Vec<Value> {
    let mut out: Vec<Value> = v
        .queues()
        .iter()
        .map(|q| {
            binding_json(
                &v.name,
                "",
                &Destination::Queue(q.name.clone()),
                &q.name,
                json!({}),
            )
        })
        .collect();
    out.extend(v.bindings().iter().map(|b: &Binding| {
        binding_json(
            &v.name,
            &b.source,
            &b.destination,
            &b.routing_key,
            table_to_json(&b.arguments),
        )
    }));
    out
}

fn visible(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    for v in super::visible_vhosts(api, caller, vhost) {
        items.extend(bindings_of(&v));
    }
    items
}

/// Bindings keep the order they were made in: sort only when asked.
fn reply_bindings(items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult {
    if q.contains_key("sort") || q.contains_key("page") {
        reply_list(items, q)
    } else {
        Ok(reply(Value::Array(items)))
    }
}

async fn list_all(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    reply_bindings(visible(&api, &caller, None), &q)
}

async fn list_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    reply_bindings(visible(&api, &caller, Some(&vhost)), &q)
}

/// The vhost and the two ends named in a path; 404 if either end is missing.
fn ends(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    source: &str,
    dtype: &str,
    dest: &str,
) -> ApiResult<(Arc<Vhost>, String, Destination)> {
    caller.require_vhost(api, vhost)?;
    let v = vhost_of(api, vhost)?;
    let source = exchange_name(source).to_owned();
    let dest = match dtype {
        "q" if v.lookup_queue(dest).is_some() => Destination::Queue(Arc::from(dest)),
        "e" if v.exchange_exists(exchange_name(dest)) => {
            Destination::Exchange(Arc::from(exchange_name(dest)))
        }
        _ => return Err(ApiError::not_found()),
    };
    if !v.exchange_exists(&source) {
        return Err(ApiError::not_found());
    }
    Ok((v, source, dest))
}

fn between(v: &Vhost, source: &str, dest: &Destination) -> Vec<Value> {
    bindings_of(v)
        .into_iter()
        .filter(|b| {
            b["source"] == source
                && b["destination"] == dest.name()
                && b["destination_type"]
                    == match dest {
                        Destination::Queue(_) => "queue",
                        Destination::Exchange(_) => "exchange",
                    }
        })
        .collect()
}

async fn list_between(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, dtype, dest)): Path<(String, String, String, String)>,
) -> ApiResult {
    let (v, source, dest) = ends(&api, &caller, &vhost, &source, &dtype, &dest)?;
    Ok(reply(Value::Array(between(&v, &source, &dest))))
}

/// queue.bind / exchange.bind with `{"routing_key": ..., "arguments": {...}}`: 201 and
/// a Location naming the new binding.
async fn create(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, dtype, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let (v, source, dest) = ends(&api, &caller, &vhost, &source, &dtype, &dest)?;
    let m = body_json(&body)?;
    let key = m
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let args = m.get("arguments").cloned().unwrap_or(json!({}));
    let (kind, perm_name) = match &dest {
        Destination::Queue(q) => ("queue", q.to_string()),
        Destination::Exchange(x) => ("exchange", x.to_string()),
    };
    caller.check(&api, &vhost, kind, &perm_name, Perm::Write)?;
    caller.check(&api, &vhost, "exchange", &source, Perm::Read)?;
    v.bind(&source, dest.clone(), &key, json_to_table(Some(&args)), 0)
        .map_err(ApiError::amqp)?;
    let location = format!(
        "/api/bindings/{}/e/{}/{dtype}/{}/{}",
        quote(&vhost),
        quote(&source),
        quote(dest.name()),
        properties_key(&key, &args)
    );
    let mut resp = StatusCode::CREATED.into_response();
    if let Ok(h) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, h);
    }
    Ok(resp)
}

fn find_one(
    api: &Api,
    caller: &Caller,
    (vhost, source, dtype, dest, props): &(String, String, String, String, String),
) -> ApiResult<(Arc<Vhost>, String, Destination, Value)> {
    let (v, source, dest) = ends(api, caller, vhost, source, dtype, dest)?;
    let b = between(&v, &source, &dest)
        .into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .ok_or_else(ApiError::not_found)?;
    Ok((v, source, dest, b))
}

async fn one(
    State(api): State<Api>,
    caller: Caller,
    Path(p): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let (_, _, _, b) = find_one(&api, &caller, &p)?;
    Ok(reply(b))
}

async fn remove(
    State(api): State<Api>,
    caller: Caller,
    Path(p): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let (v, source, dest, b) = find_one(&api, &caller, &p)?;
    let (kind, name) = match &dest {
        Destination::Queue(q) => ("queue", q.to_string()),
        Destination::Exchange(x) => ("exchange", x.to_string()),
    };
    caller.check(&api, &p.0, kind, &name, Perm::Write)?;
    caller.check(&api, &p.0, "exchange", &source, Perm::Read)?;
    let key = b["routing_key"].as_str().unwrap_or("");
    v.unbind(
        &source,
        dest.clone(),
        key,
        json_to_table(b.get("arguments")),
        0,
    )
    .map_err(ApiError::amqp)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn filtered(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    keep: impl Fn(&Value) -> bool,
) -> ApiResult<Vec<Value>> {
    caller.require_vhost(api, vhost)?;
    let v = vhost_of(api, vhost)?;
    Ok(bindings_of(&v).into_iter().filter(keep).collect())
}

async fn by_source(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let name = exchange_name(&name).to_owned();
    if !vhost_of(&api, &vhost)?.exchange_exists(&name) {
        return Err(ApiError::not_found());
    }
    Ok(reply(Value::Array(filtered(&api, &caller, &vhost, |b| {
        b["source"] == name.as_str()
    })?)))
}

async fn by_exchange_destination(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let name = exchange_name(&name).to_owned();
    if !vhost_of(&api, &vhost)?.exchange_exists(&name) {
        return Err(ApiError::not_found());
    }
    Ok(reply(Value::Array(filtered(&api, &caller, &vhost, |b| {
        b["destination_type"] == "exchange" && b["destination"] == name.as_str()
    })?)))
}

async fn by_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    if vhost_of(&api, &vhost)?.lookup_queue(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(reply(Value::Array(filtered(&api, &caller, &vhost, |b| {
        b["destination_type"] == "queue" && b["destination"] == name.as_str()
    })?)))
}
