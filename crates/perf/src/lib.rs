//! warren-perf: a PerfTest/lavinmqperf-style load generator for any AMQP 0-9-1 broker.
//!
//! The tool must cost the broker as little CPU as possible on a small machine, so it
//! uses plain threads, blocking sockets and a hand-written client instead of tokio
//! and a client library:
//! - [`config`]: the command-line flags and the scenario presets (issue #9's table).
//! - [`client`]: the handshake and setup RPCs on a blocking socket, with the broker's
//!   own method codec; server closes become errors carrying the reply code and text.
//! - [`producer`]: pre-encoded publishes, 16 patched bytes per message, batched
//!   writes, confirms read on a second thread, intended-time stamps under `-r`.
//! - [`consumer`]: deliveries parsed in place, one clock read per socket read,
//!   batched multi-acks, per-producer sequence-gap detection.
//! - [`stats`]: the latency histogram, the shared counters, /proc CPU and RSS.
//! - [`scenario`]: one run from declare to cleanup; [`report`]: its summary.

pub mod client;
pub mod config;
pub mod consumer;
pub mod producer;
pub mod report;
pub mod scenario;
pub mod stats;

pub use config::Args;
pub use report::Report;
pub use scenario::run;
