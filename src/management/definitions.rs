//! /api/definitions: export (GET) and import (POST) everything as RabbitMQ's
//! definitions JSON, the same document `warrenctl export_definitions` writes
//! ([`crate::definitions`]). Administrators only.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use super::{reply, Api, ApiError, ApiResult, Caller};

pub fn routes() -> Router<Api> {
    Router::new().route("/api/definitions", get(export).post(import))
}

async fn export(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require_admin()?;
    Ok(reply(crate::definitions::export(&api.broker)))
}

/// Import a definitions document: 204, or 400 listing what could not be applied.
async fn import(State(api): State<Api>, caller: Caller, body: Bytes) -> ApiResult {
    caller.require_admin()?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad_request("not_json"))?;
    let report = crate::definitions::import(&api.broker, &doc);
    for w in &report.warnings {
        tracing::warn!("definitions import over HTTP: {w}");
    }
    api.broker.save_access();
    if !report.errors.is_empty() {
        return Err(ApiError::bad_request(report.errors.join("; ")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
