//! The management HTTP API (RabbitMQ's rabbitmq_management on port 15672): the same
//! paths, JSON field names, status codes and error bodies, so rabbitmqadmin, monitoring
//! scripts and HTTP-based tooling work unchanged. The same port serves the web console
//! ([`console`]), a page that is itself a client of this API.
//!
//! Split by REST resource, one file per URL family, like LavinMQ's http/controller/:
//! [`overview`] (overview, whoami, nodes, health checks), [`vhosts`], [`queues`],
//! [`exchanges`], [`bindings`], [`users`] (users and permissions), [`limits`] (topic
//! permissions, vhost and user limits), [`policies`], [`parameters`] (runtime and
//! global parameters, extensions),
//! [`connections`] and [`definitions`]. This file owns what they share: the router,
//! HTTP basic authentication with RabbitMQ's tag rules ([`Caller`]), the error bodies
//! ([`ApiError`]) and list pagination ([`list`]).
//!
//! Listings read what the broker already keeps for readers (topology snapshots, the
//! queues' gauge atomics): a dashboard polling `/api/queues` never asks a queue actor
//! anything, so it cannot slow message flow.

mod bindings;
mod connections;
mod console;
mod definitions;
mod exchanges;
mod limits;
mod list;
mod message;
mod overview;
mod parameters;
mod policies;
mod queues;
mod rates;
mod server;
mod users;
mod vhosts;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::access::Perm;
use crate::broker::Broker;
use crate::error::AmqpError;
use crate::tls::Tls;

/// What every handler gets: the broker, and the AMQP address connection names use.
#[derive(Clone)]
pub struct Api {
    pub broker: Arc<Broker>,
    /// `host:port` the AMQP listener is bound to: RabbitMQ names connections
    /// `"peer -> local"`, and DELETE /api/connections/{name} takes that name.
    pub amqp_addr: Arc<str>,
    /// The port this API listens on (for the port-listener health check).
    pub management_port: u16,
    /// When the API started serving: the node's uptime.
    pub started: std::time::Instant,
    /// Message rates over the last sampling interval, for /api/overview.
    pub rates: Arc<rates::Rates>,
    /// Each queue's rates over the last sampling interval, for /api/queues.
    pub queue_rates: Arc<rates::QueueRates>,
}

/// The realm RabbitMQ's management plugin announces.
const REALM: &str = "Basic realm=\"RabbitMQ Management\"";

/// Serve the API until the broker shuts down: over HTTP on `plain`, over HTTPS on
/// `https` (with the `[tls]` certificate), or both.
pub async fn serve(
    broker: Arc<Broker>,
    plain: Option<TcpListener>,
    https: Option<(TcpListener, Arc<Tls>)>,
    amqp_addr: String,
) {
    let port = plain
        .as_ref()
        .or(https.as_ref().map(|h| &h.0))
        .and_then(|l| l.local_addr().ok())
        .map_or(0, |a| a.port());
    let api = Api {
        broker,
        amqp_addr: Arc::from(amqp_addr),
        management_port: port,
        started: std::time::Instant::now(),
        rates: Arc::default(),
        queue_rates: Arc::default(),
    };
    let sampled = api.clone();
    tokio::spawn(api.rates.clone().run(
        rates::INTERVAL,
        move || overview::message_stats(&sampled),
        api.broker.shutdown_signal(),
    ));
    tokio::spawn(
        api.queue_rates
            .clone()
            .run(api.broker.clone(), rates::INTERVAL),
    );
    let app = router(api.clone());
    if let Some((listener, tls)) = https {
        tokio::spawn(server::serve(
            app.clone(),
            listener,
            Some(tls),
            api.broker.shutdown_signal(),
        ));
    }
    if let Some(listener) = plain {
        server::serve(app, listener, None, api.broker.shutdown_signal()).await;
    }
}

/// The API's routes (public for the fuzz harness in tests/fuzz, which calls it directly).
pub fn router(api: Api) -> Router {
    let limits = BodyLimits {
        max: api.broker.config.management.max_body_size as usize,
        within: std::time::Duration::from_secs(api.broker.config.management.body_timeout.max(1)),
    };
    Router::new()
        .merge(overview::routes())
        .merge(vhosts::routes())
        .merge(queues::routes())
        .merge(exchanges::routes())
        .merge(bindings::routes())
        .merge(users::routes())
        .merge(limits::routes())
        .merge(policies::routes())
        .merge(parameters::routes())
        .merge(connections::routes())
        .merge(definitions::routes())
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found() })
        .with_state(api)
        // The body is taken whole by `limited_body` below, which enforces the size.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(move |req, next| {
            limited_body(limits, req, next)
        }))
}

/// How much of a request body the API takes, and for how long it waits for it.
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    max: usize,
    within: std::time::Duration,
}

/// Read the request body whole before any handler runs: refused with 413 past the size
/// limit, and with 408 (and the connection closed) when it has not all arrived in time.
/// The head has its own deadline (server.rs); without this one, a client trickling its
/// body a byte at a time would hold a connection open for ever.
async fn limited_body(
    limits: BodyLimits,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(limits.within, axum::body::to_bytes(body, limits.max));
    match read.await {
        Ok(Ok(bytes)) => {
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(req).await
        }
        Ok(Err(_)) => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: "bad_request",
            reason: format!(
                "request body larger than management.max_body_size ({} bytes)",
                limits.max
            ),
        }
        .into_response(),
        Err(_) => {
            let mut r = ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                error: "request_timeout",
                reason: "the request body did not arrive within management.body_timeout".into(),
            }
            .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

// ---- errors ----

/// An API failure as RabbitMQ's management plugin answers it: a status code and a
/// `{"error": ..., "reason": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
}

impl ApiError {
    /// A resource that does not exist (cowboy_rest's resource_exists = false).
    pub fn not_found() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    /// rabbit_mgmt_util:not_found/3, with the broker's explanation.
    pub fn not_found_because(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            reason: reason.into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    /// rabbit_mgmt_util:not_authorised: 401, whether the login failed or the user's
    /// tags or permissions do not allow the request.
    pub fn not_authorised(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorized",
            reason: reason.into(),
        }
    }

    /// An AMQP error from the broker, mapped as rabbit_mgmt_util:direct_request does:
    /// 404 with the explanation for not_found, 401 "Access refused." for access_refused
    /// and not_allowed (the explanation goes to the log), 400 with the explanation
    /// otherwise. The explanation is the text without the "NAME - " prefix of a close.
    pub fn amqp(e: AmqpError) -> ApiError {
        use crate::error::code;
        let prefix = format!("{} - ", code::name(e.code));
        let why = e.text.strip_prefix(&prefix).unwrap_or(&e.text).to_owned();
        match e.code {
            code::NOT_FOUND => ApiError::not_found_because(why),
            code::ACCESS_REFUSED | code::NOT_ALLOWED => {
                tracing::warn!("HTTP API request refused: {why}");
                ApiError::not_authorised("Access refused.")
            }
            _ => ApiError::bad_request(why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "reason": self.reason});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        }
        resp
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

/// 200 with a JSON body (RabbitMQ marks every reply `cache-control: no-cache`).
pub fn reply(v: Value) -> Response {
    let mut resp = axum::Json(v).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// 201 Created (a new object) or 204 No Content (it existed and is unchanged).
pub fn created_or_updated(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// The request body as JSON; an empty body is `{}` (rabbit_mgmt_util:decode).
/// A string field the request body must have; 400 with RabbitMQ's `key_missing` reason.
pub fn required_str<'a>(m: &'a serde_json::Map<String, Value>, key: &str) -> ApiResult<&'a str> {
    m.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(format!("[{{key_missing,{key}}}]")))
}

pub fn body_json(body: &[u8]) -> ApiResult<serde_json::Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    let doc = serde_json::from_slice::<Value>(body);
    if let Ok(v) = &doc {
        crate::definitions::check_json(v).map_err(ApiError::bad_request)?;
    }
    match doc {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Default::default()),
        Ok(Value::String(_)) => Err(ApiError::bad_request(
            "invalid payload: the request body JSON-decoded to a string. Is the input doubly-JSON-encoded?",
        )),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

/// A JSON field that RabbitMQ accepts as a boolean or as the strings "true"/"false".
pub fn json_bool(m: &serde_json::Map<String, Value>, key: &str, default: bool) -> bool {
    match m.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => default,
    }
}

// ---- authentication ----

/// The authenticated user making a request, with their tags (checked once per request
/// against broker.access, like RabbitMQ which has no management sessions either).
pub struct Caller {
    pub name: String,
    pub tags: Vec<String>,
}

impl Caller {
    fn tagged(&self, any: &[&str]) -> bool {
        self.tags.iter().any(|t| any.contains(&t.as_str()))
    }

    pub fn is_admin(&self) -> bool {
        self.tagged(&["administrator"])
    }

    pub fn is_monitor(&self) -> bool {
        self.tagged(&["administrator", "monitoring"])
    }

    pub fn is_policymaker(&self) -> bool {
        self.tagged(&["administrator", "policymaker"])
    }

    /// rabbit_mgmt_util:is_authorized_admin.
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    /// rabbit_mgmt_util:is_authorized_monitor.
    pub fn require_monitor(&self) -> ApiResult<()> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// May this user log in to the vhost (it has permissions there)?
    pub fn can_login(&self, api: &Api, vhost: &str) -> bool {
        api.broker.access.check_vhost(&self.name, vhost).is_ok()
    }

    /// rabbit_mgmt_util:is_authorized_vhost: administrators, or users with access to
    /// the vhost. A vhost that does not exist is the handler's 404.
    pub fn require_vhost(&self, api: &Api, vhost: &str) -> ApiResult<()> {
        if self.is_admin() || api.broker.vhost(vhost).is_none() || self.can_login(api, vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(
                "User not authorised to access virtual host",
            ))
        }
    }

    /// Vhosts whose queues, exchanges, bindings and consumers a listing shows: all for
    /// administrators, else those the user may log in to (rabbit_mgmt_util:filter_vhost;
    /// monitoring alone does not widen it).
    pub fn sees_vhost(&self, api: &Api, vhost: &str) -> bool {
        self.is_admin() || self.can_login(api, vhost)
    }

    /// Vhosts listed by /api/vhosts and counted in /api/overview: monitors learn of
    /// every vhost (rabbit_mgmt_util:list_visible_vhosts).
    pub fn knows_vhost(&self, api: &Api, vhost: &str) -> bool {
        self.is_monitor() || self.can_login(api, vhost)
    }

    /// An AMQP permission check (what the operation would need over AMQP).
    pub fn check(
        &self,
        api: &Api,
        vhost: &str,
        kind: &str,
        name: &str,
        perm: Perm,
    ) -> ApiResult<()> {
        api.broker
            .access
            .check(&self.name, vhost, kind, name, perm)
            .map_err(ApiError::amqp)
    }
}

/// A caller with the administrator tag: the one place the API's admin-only endpoints
/// (users, permissions, limits, vhosts, definitions...) are guarded. A handler that
/// takes an `Admin` is never reached by anyone else; they get RabbitMQ's 401 "Not
/// administrator user" (rabbit_mgmt_util:is_authorized_admin), after the usual login
/// checks.
pub struct Admin(pub Caller);

#[axum::async_trait]
impl FromRequestParts<Api> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Admin, ApiError> {
        let caller = Caller::from_request_parts(parts, api).await?;
        caller.require_admin()?;
        Ok(Admin(caller))
    }
}

#[axum::async_trait]
impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    /// rabbit_mgmt_util:is_authorized: basic credentials, the loopback rule, then a
    /// management tag. Texts as RabbitMQ's.
    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, ApiError> {
        let Some((user, password)) = basic_credentials(parts) else {
            return Err(ApiError::not_authorised("Not_Authorized"));
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        if let Err(why) = api.broker.access.check_password(&user, &password) {
            tracing::warn!("HTTP access denied: {why}");
            return Err(ApiError::not_authorised("Login failed"));
        }
        if api
            .broker
            .access
            .authenticate(&user, &password, peer)
            .is_err()
        {
            tracing::warn!(
                "HTTP access denied: user '{user}' - User can only log in via localhost"
            );
            return Err(ApiError::not_authorised(
                "User can only log in via localhost",
            ));
        }
        let tags = api
            .broker
            .access
            .user(&user)
            .map(|u| u.tags)
            .unwrap_or_default();
        let caller = Caller { name: user, tags };
        if !caller.tagged(&["administrator", "monitoring", "policymaker", "management"]) {
            tracing::warn!(
                "HTTP access denied: user '{}' - Not management user",
                caller.name
            );
            return Err(ApiError::not_authorised("Not management user"));
        }
        Ok(caller)
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The vhosts a listing covers: all the caller may see, or only `only` (whose
/// existence and the caller's access to it the handler has checked).
pub fn visible_vhosts(
    api: &Api,
    caller: &Caller,
    only: Option<&str>,
) -> Vec<Arc<crate::vhost::Vhost>> {
    api.broker
        .vhosts()
        .into_iter()
        .map(|(v, _)| v)
        .filter(|v| only.is_none_or(|n| *v.name == *n) && caller.sees_vhost(api, &v.name))
        .collect()
}

/// The vhost named in a path, or 404 with RabbitMQ's reason.
pub fn vhost_of(api: &Api, name: &str) -> ApiResult<Arc<crate::vhost::Vhost>> {
    api.broker
        .vhost(name)
        .ok_or_else(|| ApiError::not_found_because("vhost_not_found"))
}

/// The node name shown in every object that has one.
pub use crate::broker::node_name;
