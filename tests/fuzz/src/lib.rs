//! The fuzz targets' bodies, one module per target; `targets/*.rs` are one-line
//! libFuzzer entry points that call them. Kept in a library so that the recorder and
//! the seed tools share the wire helpers, and so that a crash can be replayed under a
//! debugger without libFuzzer's main (see README.md).
//!
//! Every target must crash (panic, abort, stack overflow) on a bug and on nothing else:
//! refusing an input is the normal outcome. libfuzzer-sys installs a panic hook that
//! aborts, so a panic inside a tokio task (which tokio would otherwise catch) is reported
//! as a crash too.

pub mod connection;
pub mod definitions;
pub mod frame;
pub mod known;
pub mod management;
pub mod method;
pub mod store;
pub mod table;
pub mod wire;

use std::time::Duration;

/// A current-thread runtime with paused time: timers (heartbeats, the handshake timeout,
/// close timeouts, TTLs) fire as soon as every task is idle, so an input that waits an
/// hour costs only the events in that hour, and a run is reproducible.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

/// Let every task run until all are idle (with paused time, a sleep ends only then).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A broker configuration for in-process use: nothing on disk, nothing listening.
pub fn config() -> warren::config::Config {
    let mut c = warren::config::Config::default();
    c.amqp.listen = "127.0.0.1:0".to_owned();
    c.store.fsync = false;
    c
}
