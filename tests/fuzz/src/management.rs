//! Target `management`: the management HTTP API's request handling, JSON bodies above
//! all (`management::body_json` and what every handler reads out of it: queue and
//! exchange arguments, bindings, users, permissions, limits, policies, parameters,
//! messages to publish, definitions), against a fresh in-memory broker, through the
//! API's own router (no socket).
//!
//! Input: requests separated by NUL bytes, each `METHOD /path` on its first line and
//! the body after it, e.g. `PUT /api/queues/%2F/q\n{"durable":true}`. The requests run
//! in order against the same broker, authenticated as the default administrator.
//!
//! Checks beyond "no panic": no request is answered 500, and every JSON answer parses.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use http_body_util::BodyExt;
use tower::ServiceExt;
use warren::broker::Broker;

/// The management API of one broker, called in-process.
pub struct Api {
    router: axum::Router,
}

impl Api {
    pub fn new(broker: Arc<Broker>) -> Api {
        let api = warren::management::Api {
            broker,
            amqp_addr: Arc::from("127.0.0.1:5672"),
            management_port: 15672,
            started: std::time::Instant::now(),
            rates: Arc::default(),
            queue_rates: Arc::default(),
        };
        Api {
            router: warren::management::router(api),
        }
    }

    /// One request as guest (administrator). `None` if it is not a valid HTTP request
    /// (an unusable method or path).
    pub async fn call(&self, method: &[u8], path: &[u8], body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let method = Method::from_bytes(method).ok()?;
        let path = std::str::from_utf8(path).ok()?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec()))
            .ok()?;
        let resp = self.router.clone().oneshot(req).await.ok()?;
        let status = resp.status().as_u16();
        let json = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let bytes = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
        if json && !bytes.is_empty() {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                panic!(
                    "{path}: answer is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
        Some((status, bytes))
    }
}

/// `METHOD /path\nbody`.
pub fn split_request(r: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (line, body) = match r.iter().position(|&b| b == b'\n') {
        Some(i) => (&r[..i], &r[i + 1..]),
        None => (r, &[][..]),
    };
    let sp = line.iter().position(|&b| b == b' ')?;
    Some((&line[..sp], line[sp + 1..].trim_ascii(), body))
}

pub fn run(data: &[u8]) {
    let rt = crate::runtime();
    rt.block_on(async {
        let broker = Broker::new(crate::config());
        let api = Api::new(broker.clone());
        for r in data.split(|&b| b == 0) {
            let Some((method, path, body)) = split_request(r) else {
                continue;
            };
            // A request that waits on a queue is answered within virtual seconds.
            let answer =
                tokio::time::timeout(Duration::from_secs(600), api.call(method, path, body))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "no answer in 10 minutes to {} {}",
                            String::from_utf8_lossy(method),
                            String::from_utf8_lossy(path)
                        )
                    });
            if let Some((status, body)) = answer {
                assert!(
                    status < 500,
                    "{} {} answered {status}: {}",
                    String::from_utf8_lossy(method),
                    String::from_utf8_lossy(path),
                    String::from_utf8_lossy(&body)
                );
            }
            crate::settle().await;
        }
        broker.shut_down();
    });
}
