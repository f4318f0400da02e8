//! Every integration test, in one crate: each module is one area of the broker, tested
//! over TCP against a broker process (`common::Broker` spawns the real binary; a few use
//! raw sockets, `common::raw`), except `in_process`, which runs a node inside the test
//! process and looks at the broker's own structures too. One crate, so that `common` and the client library are
//! compiled and linked once rather than once per file; the modules are what the files
//! under tests/ used to be, and `cargo test --test it durability::` runs one of them.

mod common;

mod access;
mod alarms;
mod basic;
mod cluster;
mod compaction;
mod confirm;
mod connection;
mod console;
mod disk_full;
mod durability;
mod exchange;
mod exchange_extensions;
mod extensions_more;
mod flow;
mod in_process;
mod management;
mod management_stats;
mod metrics;
mod policies;
mod queue;
mod queue_extensions;
mod raw_frames;
mod service;
mod startup_errors;
mod tls;
mod tx;
mod warrenctl;
