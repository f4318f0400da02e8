//! /api/topic-permissions, /api/vhost-limits and /api/user-limits: the rest of the
//! access model over HTTP. Administrators only.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::Router;
use serde_json::{json, Value};

use super::list::reply_list;
use super::{body_json, created_or_updated, reply, vhost_of, Admin, Api, ApiError, ApiResult};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/topic-permissions", get(list_topic))
        .route(
            "/api/topic-permissions/:vhost/:user",
            get(one_topic).put(put_topic).delete(delete_topic),
        )
        .route("/api/vhost-limits", get(list_vhost_limits))
        .route("/api/vhost-limits/:vhost", get(one_vhost_limits))
        .route(
            "/api/vhost-limits/:vhost/:name",
            put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/api/user-limits", get(list_user_limits))
        .route("/api/user-limits/:user", get(one_user_limits))
        .route(
            "/api/user-limits/:user/:name",
            put(put_user_limit).delete(delete_user_limit),
        )
}

fn topic(api: &Api, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    api.broker
        .access
        .topic_permissions()
        .iter()
        .filter(|(v, u, _)| keep(v, u))
        .map(|(v, u, t)| {
            json!({"user": u, "vhost": v, "exchange": t.exchange,
                   "write": t.write.as_str(), "read": t.read.as_str()})
        })
        .collect()
}

async fn list_topic(
    State(api): State<Api>,
    _: Admin,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    reply_list(topic(&api, |_, _| true), &q)
}

async fn one_topic(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    let list = topic(&api, |v, u| v == vhost && u == user);
    if list.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(reply(Value::Array(list)))
}

/// `{"exchange": ..., "write": ..., "read": ...}`.
async fn put_topic(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    vhost_of(&api, &vhost)?;
    let m = body_json(&body)?;
    let field = |k: &str| super::required_str(&m, k);
    let (x, w, r) = (field("exchange")?, field("write")?, field("read")?);
    let existed = !topic(&api, |v, u| v == vhost && u == user).is_empty();
    api.broker
        .access
        .set_topic_permissions(&vhost, &user, x, w, r)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(created_or_updated(!existed))
}

async fn delete_topic(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    if topic(&api, |v, u| v == vhost && u == user).is_empty() {
        return Err(ApiError::not_found());
    }
    let _ = api
        .broker
        .access
        .clear_topic_permissions(&vhost, &user, None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn vhost_limits(api: &Api, only: Option<&str>) -> Vec<Value> {
    api.broker
        .vhosts()
        .iter()
        .filter(|(v, _)| only.is_none_or(|o| *v.name == *o))
        .filter_map(|(v, _)| {
            let l = api.broker.access.vhost_limits(&v.name);
            (!l.is_empty()).then(|| json!({"vhost": &*v.name, "value": l}))
        })
        .collect()
}

async fn list_vhost_limits(State(api): State<Api>, _: Admin) -> ApiResult {
    Ok(reply(Value::Array(vhost_limits(&api, None))))
}

async fn one_vhost_limits(
    State(api): State<Api>,
    _: Admin,
    Path(vhost): Path<String>,
) -> ApiResult {
    vhost_of(&api, &vhost)?;
    Ok(reply(Value::Array(vhost_limits(&api, Some(&vhost)))))
}

/// `{"value": N}` (a negative value: no limit).
fn limit_value(body: &[u8]) -> ApiResult<i64> {
    body_json(body)?
        .get("value")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| ApiError::bad_request("[{key_missing,value}]"))
}

async fn put_vhost_limit(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    vhost_of(&api, &vhost)?;
    let value = limit_value(&body)?;
    let mut limits = api.broker.access.vhost_limits(&vhost);
    limits.insert(name, value);
    api.broker
        .access
        .set_vhost_limits(&vhost, limits)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_vhost_limit(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    vhost_of(&api, &vhost)?;
    let mut limits = api.broker.access.vhost_limits(&vhost);
    if limits.remove(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let _ = api.broker.access.set_vhost_limits(&vhost, limits);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn user_limits(api: &Api, only: Option<&str>) -> Vec<Value> {
    api.broker
        .access
        .users()
        .iter()
        .filter(|u| only.is_none_or(|o| u.name == o) && !u.limits.is_empty())
        .map(|u| json!({"user": u.name, "value": u.limits}))
        .collect()
}

async fn list_user_limits(State(api): State<Api>, _: Admin) -> ApiResult {
    Ok(reply(Value::Array(user_limits(&api, None))))
}

async fn one_user_limits(State(api): State<Api>, _: Admin, Path(user): Path<String>) -> ApiResult {
    if api.broker.access.user(&user).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(reply(Value::Array(user_limits(&api, Some(&user)))))
}

async fn put_user_limit(
    State(api): State<Api>,
    _: Admin,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let u = api
        .broker
        .access
        .user(&user)
        .ok_or_else(ApiError::not_found)?;
    let value = limit_value(&body)?;
    let mut limits = u.limits;
    limits.insert(name, value);
    api.broker
        .access
        .set_user_limits(&user, limits)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_user_limit(
    State(api): State<Api>,
    _: Admin,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult {
    let u = api
        .broker
        .access
        .user(&user)
        .ok_or_else(ApiError::not_found)?;
    let mut limits = u.limits;
    if limits.remove(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let _ = api.broker.access.set_user_limits(&user, limits);
    Ok(StatusCode::NO_CONTENT.into_response())
}
