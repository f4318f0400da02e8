//! The web console: one hand-written page (HTML, JS, CSS in `console/`) served from
//! the management port, like RabbitMQ's management UI on 15672. It is a client of the
//! same `/api` endpoints rabbitmqadmin uses, so it adds no broker access of its own.
//!
//! The assets are compiled into the binary (`include_str!`): an installed warren needs
//! no web root, and the page loads nothing from elsewhere (no CDN), which
//! tests/console.rs checks. The assets are public, as RabbitMQ's are: the page asks for
//! credentials and sends them with each API call.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Api;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/index.html",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/js/console.js",
            get(|| async { asset(CONSOLE_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/css/console.css",
            get(|| async { asset(CONSOLE_CSS, "text/css; charset=utf-8") }),
        )
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
