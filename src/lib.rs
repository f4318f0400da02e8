//! warren: a RabbitMQ-compatible AMQP 0-9-1 message broker.
//!
//! Module map, in the order a message travels:
//! - [`server`]: the TCP listeners (AMQP, and amqps through [`tls`]); one
//!   [`connection`] task per client. [`accept`]: what every accept loop does when
//!   accepting fails (out of file descriptors).
//! - [`connection`]: handshake, frame reading, heartbeats, and the writer task that
//!   coalesces outgoing frames; drives the connection's channels.
//! - [`protocol`]: the wire format: frames, methods (hand-written on the per-message
//!   path, amq-protocol elsewhere), content-header properties, the outgoing buffer. A
//!   crate of its own (`crates/protocol`, warren-protocol), re-exported here.
//! - [`channel`]: per-channel protocol state: publishing (routing, confirms, tx) and
//!   consuming (consumers, deliveries, acks, prefetch). [`reply_to`]: direct reply-to,
//!   replies delivered straight to a consuming channel, no queue involved.
//! - [`vhost`]: a virtual host's topology (exchanges, queues, bindings) and routing.
//! - [`exchange`]: the exchange types, one router per file (direct, fanout, topic, headers).
//! - [`queue`]: queue actors, each the single owner of its messages and consumers.
//! - [`message`]: a published message, shared by every queue it reaches.
//! - [`store`]: the data directory: the metadata log (every durable definition: topology,
//!   policies, users, permissions, limits) and persistent messages, with group-committed
//!   syncs behind publisher confirms.
//! - [`broker`]: the process-wide state (vhosts, the access model, live connections).
//! - [`access`]: users, password hashes, permissions, topic permissions and limits.
//! - [`auth`]: SASL mechanisms. [`config`]: configuration loading (`crates/config`,
//!   shared with warrenctl). [`logfile`]: `log.file`,
//!   reopened on SIGHUP.
//! - [`control`]: the control socket `warrenctl` talks to; [`definitions`]: RabbitMQ's
//!   definitions JSON (export, import, load at boot); [`admin`]: what warrenctl and the
//!   management API both render (queue listings).
//! - [`cluster`]: replication to followers through an ordered log of the data
//!   directory's changes, with etcd electing the leader and holding the in-sync replicas;
//!   a follower's front door passes clients on to the leader with [`proxy`]'s PROXY
//!   lines. [`membership`]: what the control socket, the API and Prometheus may ask
//!   about the cluster (installed by `cluster` when it leads; nothing below imports it).
//! - [`node`]: a running node: the broker with every listener bound and served (the
//!   `warren` binary runs one; tests can run one in their own process).
//! - [`service`]: running under systemd (the notify protocol: ready, stopping, watchdog).
//! - [`alarm`]: memory and disk alarms that block publishers while they last.
//! - [`metrics`]: message counters and queue gauges; [`prometheus`]: the endpoint that
//!   shows them under rabbitmq_prometheus's names.
//! - [`management`]: the management HTTP API (RabbitMQ's rabbitmq_management paths).
//! - [`arguments`]: x-argument equivalence with RabbitMQ's error texts.
//! - [`policy`]: policies and operator policies: validation, matching, and how they
//!   merge with a queue's own arguments.
//! - [`error`]: protocol errors as values carrying their reply codes.
//! - [`event`]: a connection's mailbox: what queues, the broker and the control
//!   surfaces tell it (deliveries, cancellations, closes, listings).

pub mod accept;
pub mod access;
pub mod admin;
pub mod alarm;
pub mod app;
pub mod arguments;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod cluster;
pub use warren_config as config;
pub mod connection;
pub mod control;
pub mod definitions;
pub mod error;
pub mod event;
pub mod exchange;
pub mod logfile;
pub mod management;
pub mod membership;
pub mod message;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod prometheus;
pub mod proxy;
pub use warren_protocol as protocol;
pub mod queue;
pub mod reply_to;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod util;
pub mod vhost;

/// The RabbitMQ release whose behaviour warren follows, announced as `version` in
/// connection.start so that clients choose RabbitMQ's semantics.
pub const RABBITMQ_COMPAT_VERSION: &str = "3.13.7";
