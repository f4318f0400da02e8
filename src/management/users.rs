//! /api/users and /api/permissions: users (password, tags) and their permissions per
//! vhost. Administrators only, as in RabbitMQ, except a user's own permissions.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::list::reply_list;
use super::vhosts::tags_of;
use super::{body_json, created_or_updated, reply, vhost_of, Admin, Api, ApiError, ApiResult};
use crate::access::{password, Permission, User};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/users", get(list_users))
        .route(
            "/api/users/:user",
            get(one_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/:user/permissions", get(user_permissions))
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/:vhost/:user",
            get(one_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/vhosts/:vhost/permissions", get(vhost_permissions))
}

fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": u.limits,
    })
}

fn permission_json(vhost: &str, user: &str, p: &Permission) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": p.configure.as_str(),
        "write": p.write.as_str(),
        "read": p.read.as_str(),
    })
}

async fn list_users(
    State(api): State<Api>,
    _: Admin,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let items = api.broker.access.users().iter().map(user_json).collect();
    reply_list(items, &q)
}

async fn one_user(State(api): State<Api>, _: Admin, Path(name): Path<String>) -> ApiResult {
    let u = api
        .broker
        .access
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(reply(user_json(&u)))
}

/// `{"password": ..., "tags": "a,b"}` or `{"password_hash": ..., "hashing_algorithm":
/// ...}`; an empty password_hash makes a passwordless user. 201 new, 204 updated.
async fn put_user(
    State(api): State<Api>,
    _: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let m = body_json(&body)?;
    let access = &api.broker.access;
    let existed = access.user(&name).is_some();
    let bad = |e: crate::access::AccessError| ApiError::bad_request(e.to_string());
    let password = m.get("password").and_then(Value::as_str);
    let hash = m.get("password_hash").and_then(Value::as_str);
    match (password, hash) {
        (Some(p), _) => {
            if !existed {
                access.add_user(&name, Some(p)).map_err(bad)?;
            } else {
                access.change_password(&name, Some(p)).map_err(bad)?;
            }
        }
        (None, Some(h)) => {
            let algorithm = m
                .get("hashing_algorithm")
                .and_then(Value::as_str)
                .unwrap_or(password::SHA256);
            access
                .insert_user(&name, h.to_owned(), algorithm.to_owned(), true)
                .map_err(bad)?;
        }
        (None, None) if existed => {}
        (None, None) => {
            return Err(ApiError::bad_request(
                "Must provide password or password_hash",
            ))
        }
    }
    if m.contains_key("tags") || !existed {
        access
            .set_user_tags(&name, tags_of(m.get("tags")))
            .map_err(bad)?;
    }
    Ok(created_or_updated(!existed))
}

async fn delete_user(State(api): State<Api>, _: Admin, Path(name): Path<String>) -> ApiResult {
    api.broker
        .access
        .delete_user(&name)
        .map_err(|_| ApiError::not_found())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn permissions(api: &Api, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    api.broker
        .access
        .permissions()
        .iter()
        .filter(|(v, u, _)| keep(v, u))
        .map(|(v, u, p)| permission_json(v, u, p))
        .collect()
}

async fn list_permissions(
    State(api): State<Api>,
    _: Admin,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    reply_list(permissions(&api, |_, _| true), &q)
}

async fn user_permissions(State(api): State<Api>, _: Admin, Path(user): Path<String>) -> ApiResult {
    if api.broker.access.user(&user).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(reply(Value::Array(permissions(&api, |_, u| u == user))))
}

async fn vhost_permissions(
    State(api): State<Api>,
    _: Admin,
    Path(vhost): Path<String>,
) -> ApiResult {
    vhost_of(&api, &vhost)?;
    Ok(reply(Value::Array(permissions(&api, |v, _| v == vhost))))
}

async fn one_permission(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    permissions(&api, |v, u| v == vhost && u == user)
        .pop()
        .map(reply)
        .ok_or_else(ApiError::not_found)
}

/// `{"configure": ".*", "write": ".*", "read": ".*"}`: 201 new, 204 replaced.
async fn put_permission(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    vhost_of(&api, &vhost)?;
    if api.broker.access.user(&user).is_none() {
        return Err(ApiError::bad_request(format!("user '{user}' not found")));
    }
    let m = body_json(&body)?;
    let field = |k: &str| super::required_str(&m, k);
    let (c, w, r) = (field("configure")?, field("write")?, field("read")?);
    let existed = !permissions(&api, |v, u| v == vhost && u == user).is_empty();
    api.broker
        .access
        .set_permissions(&vhost, &user, c, w, r)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(created_or_updated(!existed))
}

async fn delete_permission(
    State(api): State<Api>,
    _: Admin,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    if permissions(&api, |v, u| v == vhost && u == user).is_empty() {
        return Err(ApiError::not_found());
    }
    let _ = api.broker.access.clear_permissions(&vhost, &user);
    Ok(StatusCode::NO_CONTENT.into_response())
}
