//! The Prometheus endpoint: an HTTP (or HTTPS) server for scrapes ([`http`]) and the
//! text it answers with, under rabbitmq_prometheus's metric names ([`render`]). It reads
//! the counters and gauges of [`crate::metrics`], which sit low enough for connections
//! and queues to write them, and the broker's listings; it stands above the broker, as
//! the management API does.

pub mod http;
pub mod render;
