//! Placeholder, filled in by a later commit.

use axum::Router;

use super::Api;

pub fn routes() -> Router<Api> {
    Router::new()
}
