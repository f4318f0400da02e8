//! The web console: one hand-written page (HTML, JS, CSS in `console/`) served from
//! the management port, like RabbitMQ's management UI on 15672. It is a client of the
//! same `/api` endpoints rabbitmqadmin uses, so it adds no broker access of its own.
//!
//! The assets are compiled into the binary (`include_str!`): an installed warren needs
//! no web root, and the page loads nothing from elsewhere (no CDN), which
//! tests/it/console.rs checks. The assets are public, as RabbitMQ's are: the page asks for
//! credentials and sends them with each API call.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Api;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The page may load and call only its own origin (the browser then enforces "no
/// CDN" too), and no other site may frame it (a framed console could be clicked
/// through by a page the operator visits while logged in).
const PAGE_POLICY: &str =
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route(
            "/js/console.js",
            get(|| async { asset(CONSOLE_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/css/console.css",
            get(|| async { asset(CONSOLE_CSS, "text/css; charset=utf-8") }),
        )
}

async fn page() -> Response {
    let mut resp = asset(INDEX_HTML, "text/html; charset=utf-8");
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// An embedded file with its type. `no-cache` (revalidate each load) rather than a long
/// max-age: the assets have no versioned names, and after an upgrade the page must not
/// run an old script against a new API.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}
