//! /api/definitions: export (GET) and import (POST) everything as RabbitMQ's
//! definitions JSON, the same document `warrenctl export_definitions` writes
//! ([`crate::definitions`]), for the whole broker or one vhost
//! (`/api/definitions/{vhost}`: its queues, exchanges, bindings and policies, without
//! `vhost` fields, importable into another vhost). Administrators only.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{Map, Value};

use super::{reply, vhost_of, Admin, Api, ApiError, ApiResult};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/definitions", get(export).post(import))
        .route(
            "/api/definitions/:vhost",
            get(export_vhost).post(import_vhost),
        )
}

/// What a vhost's definitions hold.
const VHOST_KEYS: &[&str] = &["queues", "exchanges", "bindings", "policies", "parameters"];

async fn export(State(api): State<Api>, _: Admin) -> ApiResult {
    Ok(reply(crate::definitions::export(&api.broker)))
}

/// Import a definitions document: 204, or 400 listing what could not be applied.
async fn import(State(api): State<Api>, _: Admin, body: Bytes) -> ApiResult {
    let doc: Value =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad_request("not_json"))?;
    apply(&api, &doc)
}

/// The vhost's own items of the export, without their `vhost` fields.
async fn export_vhost(State(api): State<Api>, _: Admin, Path(vhost): Path<String>) -> ApiResult {
    vhost_of(&api, &vhost)?;
    let all = crate::definitions::export(&api.broker);
    let mut out = Map::new();
    for key in [
        "rabbit_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
    ] {
        if let Some(v) = all.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    for key in VHOST_KEYS {
        let items: Vec<Value> = all
            .get(*key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|item| item["vhost"] == vhost.as_str())
            .map(|item| {
                let mut item = item.clone();
                if let Some(o) = item.as_object_mut() {
                    o.remove("vhost");
                }
                item
            })
            .collect();
        out.insert((*key).into(), Value::Array(items));
    }
    Ok(reply(Value::Object(out)))
}

/// Import a vhost's definitions into `vhost` (any `vhost` fields are overridden).
async fn import_vhost(
    State(api): State<Api>,
    _: Admin,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    vhost_of(&api, &vhost)?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad_request("not_json"))?;
    let mut only = Map::new();
    for key in VHOST_KEYS {
        let items: Vec<Value> = doc
            .get(*key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| {
                let mut item = item.clone();
                if let Some(o) = item.as_object_mut() {
                    o.insert("vhost".into(), Value::from(vhost.as_str()));
                }
                item
            })
            .collect();
        only.insert((*key).into(), Value::Array(items));
    }
    apply(&api, &Value::Object(only))
}

fn apply(api: &Api, doc: &Value) -> ApiResult {
    let report = crate::definitions::import(&api.broker, doc);
    for w in &report.warnings {
        tracing::warn!("definitions import over HTTP: {w}");
    }
    if !report.errors.is_empty() {
        return Err(ApiError::bad_request(report.errors.join("; ")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
