//! /api/parameters (RabbitMQ's runtime parameters), /api/global-parameters and
//! /api/extensions.
//!
//! warren keeps as runtime parameters what RabbitMQ keeps as such and warren has: vhost
//! limits (component `vhost-limits`, name `limits`) and operator policies (component
//! `operator_policy`). Policies are runtime parameters in RabbitMQ too, but its
//! parameter listings leave them out (rabbit_runtime_parameters:list/0). There are no
//! plugins with parameters (federation, shovel) and no global parameters: RabbitMQ's
//! `internal_cluster_id` names a cluster warren does not form, and `cluster_name` is one
//! only once a user sets it. Setting parameters goes through the dedicated endpoints
//! (/api/vhost-limits, /api/operator-policies); here PUT and DELETE take vhost limits.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::list::reply_list;
use super::{
    body_json, created_or_updated, reply, vhost_of, Admin, Api, ApiError, ApiResult, Caller,
};
use crate::policy::Kind;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/parameters", get(list_all))
        .route("/api/parameters/:component", get(list_component))
        .route(
            "/api/parameters/:component/:vhost",
            get(list_component_vhost),
        )
        .route(
            "/api/parameters/:component/:vhost/:name",
            get(one).put(put).delete(remove),
        )
        .route("/api/global-parameters", get(list_global))
        .route("/api/global-parameters/:name", get(one_global))
        .route("/api/extensions", get(extensions))
}

const VHOST_LIMITS: &str = "vhost-limits";
const OPERATOR_POLICY: &str = "operator_policy";

/// rabbit_mgmt_util:is_authorized_policies.
fn authorize(caller: &Caller) -> ApiResult<()> {
    if caller.is_policymaker() {
        Ok(())
    } else {
        Err(ApiError::not_authorised(
            "User not authorised to access object",
        ))
    }
}

/// Every parameter of `component` (all components: None) in `vhost` (all: None), as
/// rabbit_mgmt_format:parameter shows one.
fn parameters(api: &Api, component: Option<&str>, vhost: Option<&str>) -> Vec<Value> {
    let wants = |c: &str| component.is_none_or(|w| w == c);
    let mut out = Vec::new();
    for (v, _) in api.broker.vhosts() {
        if vhost.is_some_and(|w| w != &*v.name) {
            continue;
        }
        if wants(VHOST_LIMITS) {
            let limits = api.broker.access.vhost_limits(&v.name);
            if !limits.is_empty() {
                out.push(json!({
                    "vhost": &*v.name,
                    "component": VHOST_LIMITS,
                    "name": "limits",
                    "value": limits,
                }));
            }
        }
        if wants(OPERATOR_POLICY) {
            for p in v.policies(Kind::Operator) {
                out.push(json!({
                    "vhost": &*v.name,
                    "component": OPERATOR_POLICY,
                    "name": p.name,
                    "value": {
                        "pattern": p.pattern,
                        "definition": p.definition,
                        "priority": p.priority,
                        "apply-to": p.apply_to.as_str(),
                    },
                }));
            }
        }
    }
    out
}

/// rabbit_mgmt_util:filter_vhost: only the vhosts the caller may see.
fn visible(api: &Api, caller: &Caller, items: Vec<Value>) -> Vec<Value> {
    items
        .into_iter()
        .filter(|p| {
            p["vhost"]
                .as_str()
                .is_some_and(|v| caller.sees_vhost(api, v))
        })
        .collect()
}

async fn list_all(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&caller)?;
    reply_list(visible(&api, &caller, parameters(&api, None, None)), &q)
}

async fn list_component(
    State(api): State<Api>,
    caller: Caller,
    Path(component): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&caller)?;
    let items = parameters(&api, Some(&component), None);
    reply_list(visible(&api, &caller, items), &q)
}

async fn list_component_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&caller)?;
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    let items = parameters(&api, Some(&component), Some(&vhost));
    reply_list(visible(&api, &caller, items), &q)
}

fn find(api: &Api, component: &str, vhost: &str, name: &str) -> Option<Value> {
    parameters(api, Some(component), Some(vhost))
        .into_iter()
        .find(|p| p["name"] == name)
}

async fn one(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    authorize(&caller)?;
    caller.require_vhost(&api, &vhost)?;
    find(&api, &component, &vhost, &name)
        .map(reply)
        .ok_or_else(ApiError::not_found)
}

/// PUT `{"value": ...}`: vhost limits only (RabbitMQ's `vhost-limits` component, which
/// has the one name `limits`).
async fn put(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    authorize(&caller)?;
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    let m = body_json(&body)?;
    let value = m
        .get("value")
        .ok_or_else(|| ApiError::bad_request("[{key_missing,value}]"))?;
    settable(&component, &name)?;
    caller.require_admin()?;
    let Value::Object(limits) = value else {
        return Err(ApiError::bad_request("value must be a JSON object"));
    };
    let mut parsed = crate::access::Limits::new();
    for (k, v) in limits {
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| ApiError::bad_request(format!("{k} must be an integer")))?;
        parsed.insert(k.clone(), n);
    }
    let existed = find(&api, &component, &vhost, &name).is_some();
    api.broker
        .access
        .set_vhost_limits(&vhost, parsed)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(created_or_updated(!existed))
}

async fn remove(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    authorize(&caller)?;
    caller.require_vhost(&api, &vhost)?;
    vhost_of(&api, &vhost)?;
    settable(&component, &name)?;
    caller.require_admin()?;
    if find(&api, &component, &vhost, &name).is_none() {
        return Err(ApiError::not_found());
    }
    api.broker
        .access
        .set_vhost_limits(&vhost, Default::default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Which parameters PUT and DELETE take here: vhost limits. Components warren does not
/// have get rabbit_runtime_parameters' "component ... not found".
fn settable(component: &str, name: &str) -> ApiResult<()> {
    match component {
        VHOST_LIMITS if name == "limits" => Ok(()),
        VHOST_LIMITS => Err(ApiError::bad_request(format!(
            "Validation failed\n\nname '{name}' is not valid for component {VHOST_LIMITS}\n"
        ))),
        OPERATOR_POLICY => Err(ApiError::bad_request(
            "operator policies are set through /api/operator-policies",
        )),
        other => Err(ApiError::bad_request(format!(
            "component {other} not found"
        ))),
    }
}

/// No global parameters (see the module doc). Administrators only
/// (rabbit_mgmt_util:is_authorized_global_parameters).
async fn list_global(_: Admin, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    reply_list(Vec::new(), &q)
}

async fn one_global(_: Admin, Path(_name): Path<String>) -> ApiResult {
    Err(ApiError::not_found())
}

/// The management UI's extensions (plugins' pages): none.
async fn extensions(_caller: Caller) -> ApiResult {
    Ok(reply(Value::Array(Vec::new())))
}
