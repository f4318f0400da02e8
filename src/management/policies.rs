//! /api/policies and /api/operator-policies: list, get, set (PUT) and clear (DELETE),
//! validated by [`crate::policy`] with RabbitMQ's texts. Policymakers and
//! administrators only (rabbit_mgmt_util:is_authorized_policies).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use super::list::reply_list;
use super::{body_json, created_or_updated, reply, vhost_of, Api, ApiError, ApiResult, Caller};
use crate::policy::Kind;

pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/policies",
            get(|s, c, q| list(s, c, q, Kind::Policy, None)),
        )
        .route(
            "/api/policies/:vhost",
            get(|s, c, p: Path<String>, q| list(s, c, q, Kind::Policy, Some(p.0))),
        )
        .route(
            "/api/policies/:vhost/:name",
            get(|s, c, p| one(s, c, p, Kind::Policy))
                .put(|s, c, p, b| put(s, c, p, b, Kind::Policy))
                .delete(|s, c, p| remove(s, c, p, Kind::Policy)),
        )
        .route(
            "/api/operator-policies",
            get(|s, c, q| list(s, c, q, Kind::Operator, None)),
        )
        .route(
            "/api/operator-policies/:vhost",
            get(|s, c, p: Path<String>, q| list(s, c, q, Kind::Operator, Some(p.0))),
        )
        .route(
            "/api/operator-policies/:vhost/:name",
            get(|s, c, p| one(s, c, p, Kind::Operator))
                .put(|s, c, p, b| put(s, c, p, b, Kind::Operator))
                .delete(|s, c, p| remove(s, c, p, Kind::Operator)),
        )
}

/// Administrators; policymakers in vhosts they have access to. Operator policies are
/// administrators' only.
fn authorize(api: &Api, caller: &Caller, vhost: Option<&str>, kind: Kind) -> ApiResult<()> {
    let allowed = caller.is_admin()
        || (kind == Kind::Policy
            && caller.is_policymaker()
            && vhost.is_none_or(|v| caller.can_login(api, v)));
    if allowed {
        Ok(())
    } else {
        Err(ApiError::not_authorised(
            "User not authorised to access object",
        ))
    }
}

async fn list(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
    kind: Kind,
    vhost: Option<String>,
) -> ApiResult {
    authorize(&api, &caller, vhost.as_deref(), kind)?;
    if let Some(v) = &vhost {
        vhost_of(&api, v)?;
    }
    let items = api
        .broker
        .list_policies(kind, vhost.as_deref())
        .iter()
        .filter(|p| caller.is_admin() || caller.can_login(&api, &p.vhost))
        .map(|p| p.to_json())
        .collect();
    reply_list(items, &q)
}

fn find(api: &Api, vhost: &str, name: &str, kind: Kind) -> Option<Value> {
    api.broker
        .list_policies(kind, Some(vhost))
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.to_json())
}

async fn one(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    kind: Kind,
) -> ApiResult {
    authorize(&api, &caller, Some(&vhost), kind)?;
    find(&api, &vhost, &name, kind)
        .map(reply)
        .ok_or_else(ApiError::not_found)
}

/// `{"pattern": ..., "definition": {...}, "priority": N, "apply-to": ...}`.
async fn put(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
    kind: Kind,
) -> ApiResult {
    authorize(&api, &caller, Some(&vhost), kind)?;
    vhost_of(&api, &vhost)?;
    let m = body_json(&body)?;
    let pattern = m
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,pattern}]"))?;
    let definition = m
        .get("definition")
        .ok_or_else(|| ApiError::bad_request("[{key_missing,definition}]"))?;
    let priority = match m.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("priority must be an integer"))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| ApiError::bad_request("priority must be an integer"))?,
        Some(_) => return Err(ApiError::bad_request("priority must be an integer")),
    };
    let apply_to = m.get("apply-to").and_then(Value::as_str).unwrap_or("all");
    let existed = find(&api, &vhost, &name, kind).is_some();
    api.broker
        .set_policy(kind, &vhost, &name, pattern, definition, priority, apply_to)
        .map_err(ApiError::bad_request)?;
    Ok(created_or_updated(!existed))
}

async fn remove(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    kind: Kind,
) -> ApiResult {
    authorize(&api, &caller, Some(&vhost), kind)?;
    if !api.broker.clear_policy(kind, &vhost, &name) {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
