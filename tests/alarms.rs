//! Resource alarms: above the memory high watermark, publishing connections are blocked
//! (connection.blocked, and the broker stops reading them), consumers keep draining, and
//! the alarm clears by itself. warren-only: the limit is set at start.
mod common;
use common::raw::{self, RawConn};
use common::*;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// One body frame each (under the default frame_max).
const BODY: usize = 100 * 1024;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Wait for a connection-level method on channel 0, skipping everything else.
fn wait_for(c: &mut RawConn, class: u16, method: u16, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    c.set_read_timeout(Duration::from_millis(200));
    while Instant::now() < deadline {
        match c.read_frame() {
            Ok(f) if f.channel == 0 && f.method() == Some((class, method)) => {
                return Some(f.args().to_vec())
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection lost: {e}"),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_blocked_at_the_memory_watermark_consumers_drain_and_it_clears() {
    if is_external() {
        eprintln!("skipped: warren's watermark is set at start");
        return;
    }
    let base = {
        let probe = Broker::spawn_warren(&[]);
        std::thread::sleep(Duration::from_millis(200));
        rss_kb(probe.pid()) * 1024
    };
    let limit = base + 48 * 1024 * 1024;
    let broker = Broker::spawn_warren(&[
        "--set",
        &format!("alarms.memory_high_watermark_absolute={limit}"),
        "--set",
        "alarms.check_interval_ms=50",
    ]);
    let (_conn, ch) = broker.channel().await;
    let q = unique("flood");
    declare_queue(&ch, &q).await;

    // A publisher floods 100 KB messages until the broker says it is blocked.
    let addr = broker.addr();
    let queue = q.clone();
    let publisher = std::thread::spawn(move || {
        let (mut c, _) = RawConn::open(&addr);
        c.open_channel(1);
        let body = vec![b'x'; BODY];
        let mut sent = 0u64;
        let mut reason = None;
        c.set_read_timeout(Duration::from_millis(1));
        while sent < 2000 && reason.is_none() {
            let mut frames =
                raw::method_frame(1, 60, 40, &raw::basic_publish_args("", &queue, false));
            frames.extend(raw::content_header_frame(1, BODY as u64));
            frames.extend(raw::body_frame(1, &body));
            if c.send(&frames).is_err() {
                break;
            }
            sent += 1;
            if let Ok(f) = c.read_frame() {
                if f.channel == 0 && f.method() == Some((10, 60)) {
                    reason = Some(raw::Dec::new(f.args()).shortstr());
                }
            }
        }
        if reason.is_none() {
            reason = wait_for(&mut c, 10, 60, Duration::from_secs(10))
                .map(|args| raw::Dec::new(&args).shortstr());
        }
        (c, sent, reason)
    });
    let (mut publisher_conn, sent, reason) =
        tokio::task::spawn_blocking(move || publisher.join().unwrap())
            .await
            .unwrap();
    assert_eq!(
        reason.as_deref(),
        Some("low on memory"),
        "blocked after {sent} messages"
    );
    // Listings show the blocked publisher as RabbitMQ does: state `blocked`.
    let data_dir = broker.data_dir().unwrap();
    let states = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["-q", "list_connections", "state"])
            .output()
            .expect("run warrenctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let blocked = states();
    assert!(blocked.lines().any(|l| l == "blocked"), "{blocked}");
    let used = rss_kb(broker.pid()) * 1024;
    assert!(
        used < limit + 96 * 1024 * 1024,
        "memory stays near the watermark: {used} vs limit {limit}"
    );

    // A consumer on another connection drains what arrived; the alarm then clears and the
    // publisher's remaining messages are read. Nothing is lost.
    let mut received = 0u64;
    let drain_until = Instant::now() + Duration::from_secs(60);
    let mut unblocked = false;
    while received < sent && Instant::now() < drain_until {
        match get(&ch, &q, true).await {
            Some(m) => {
                assert_eq!(m.delivery.data.len(), BODY);
                received += 1;
            }
            None => {
                if !unblocked {
                    let mut c = publisher_conn;
                    let (c, got) = tokio::task::spawn_blocking(move || {
                        let got = wait_for(&mut c, 10, 61, Duration::from_millis(300)).is_some();
                        (c, got)
                    })
                    .await
                    .unwrap();
                    publisher_conn = c;
                    unblocked |= got;
                }
            }
        }
    }
    assert_eq!(received, sent, "every published message was delivered");
    if !unblocked {
        let mut c = publisher_conn;
        unblocked = tokio::task::spawn_blocking(move || {
            wait_for(&mut c, 10, 61, Duration::from_secs(10)).is_some()
        })
        .await
        .unwrap();
    }
    assert!(unblocked, "connection.unblocked once the queue drained");
    let after = states();
    assert!(
        !after.contains("blocked") && after.contains("running"),
        "{after}"
    );
}
