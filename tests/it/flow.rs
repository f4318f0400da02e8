//! Per-connection back-pressure (flow control): a publisher whose queue is behind stops
//! being read, its connection shows state `flow`, the queue's mailbox stays bounded,
//! and nothing is lost; other connections carry on. warren-only: the marks are set at
//! start and read through warrenctl.
use crate::common::*;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::BasicProperties;

/// The marks this test runs with: a mailbox above one message throttles its publisher,
/// so every read that sends a queue two or more messages puts the connection in flow.
const HIGH: u64 = 1;

fn ctl_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(crate::common::warrenctl_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(["-q", "--formatter", "json"])
        .args(args)
        .output()
        .expect("run warrenctl");
    assert!(out.status.success(), "warrenctl {args:?}: {:?}", out);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_publisher_is_throttled_its_queue_stays_bounded_and_nothing_is_lost() {
    if is_external() {
        eprintln!("skipped: warren's flow marks are set at start");
        return;
    }
    let broker = Broker::spawn_warren(&[
        "--set",
        &format!("amqp.flow_high_messages={HIGH}"),
        "--set",
        "amqp.flow_low_messages=1",
    ]);
    let dir = broker.data_dir().unwrap();
    let (_pc, pch) = broker.channel().await;
    let q = unique("flow");
    declare_queue(&pch, &q).await;

    // Another connection's consumer on another queue, fed by a third connection, must
    // keep receiving while the flood is throttled.
    let (_oc, och) = broker.channel().await;
    let other = unique("other");
    declare_queue(&och, &other).await;
    let mut other_consumer = och
        .basic_consume(
            other.as_str().into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap();

    // The sampler: the queue's mailbox and the publisher's connection state, via warrenctl.
    let max_mailbox = Arc::new(AtomicU64::new(0));
    let saw_flow = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max_mailbox, saw_flow, stop, dir, q) = (
            max_mailbox.clone(),
            saw_flow.clone(),
            stop.clone(),
            dir.clone(),
            q.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let qs = ctl_json(&dir, &["list_queues", "name", "mailbox_messages"]);
                for row in qs.as_array().into_iter().flatten() {
                    if row["name"] == q.as_str() {
                        let m = row["mailbox_messages"].as_u64().unwrap();
                        max_mailbox.fetch_max(m, Ordering::Relaxed);
                    }
                }
                let cs = ctl_json(&dir, &["list_connections", "state"]);
                if cs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["state"] == "flow")
                {
                    saw_flow.store(true, Ordering::Relaxed);
                }
            }
        })
    };

    // The flood: 16-byte messages as fast as lapin writes them, without waiting.
    const N: u32 = 20_000;
    let publisher = {
        let (pch, q) = (pch.clone(), q.clone());
        tokio::spawn(async move {
            for i in 0..N {
                // Not waiting for the (absent) confirm: the flood goes out as fast as it can.
                let _confirm = pch
                    .basic_publish(
                        "".into(),
                        q.as_str().into(),
                        BasicPublishOptions::default(),
                        &i.to_be_bytes().repeat(4),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    // Meanwhile the other connection's traffic flows.
    let (_tc, tch) = broker.channel().await;
    let started = Instant::now();
    for i in 0..100u32 {
        tch.basic_publish(
            "".into(),
            other.as_str().into(),
            BasicPublishOptions::default(),
            &i.to_be_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    for _ in 0..100 {
        within(other_consumer.next()).await.unwrap().unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the other connection was held up"
    );
    eprintln!("other connection served in {:?}", started.elapsed());
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("the flood is sent")
        .unwrap();
    eprintln!("flood sent in {:?}", started.elapsed());

    // Everything published is there once a consumer starts, in order, none lost.
    let (_cc, cch) = broker.channel().await;
    let mut consumer = cch
        .basic_consume(
            q.as_str().into(),
            "drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap();
    for i in 0..N {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("all messages arrive")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, i.to_be_bytes().repeat(4), "message {i}");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    // One connection sends at most one socket read's worth (64 KiB: under 1000 of these
    // messages) past the mark before it stops being read.
    let max = max_mailbox.load(Ordering::Relaxed);
    assert!(max <= HIGH + 1000, "mailbox reached {max}");
    assert!(
        saw_flow.load(Ordering::Relaxed),
        "the publisher was never seen in state flow"
    );
    // The publisher's connection is alive and back to running.
    assert_connection_alive(&_pc).await;
    let cs = ctl_json(&dir, &["list_connections", "state"]);
    assert!(
        cs.as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "running"),
        "{cs}"
    );
}

/// A consumer without a prefetch limit whose client never reads its socket: the broker
/// stops delivering to it once its socket is backed up (rather than holding the whole
/// backlog in that connection's outbox), and when it goes, what it held comes back to
/// the queue and pages out to disk again instead of staying in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_does_not_pin_the_backlog_in_memory() {
    use crate::common::raw::{Enc, RawConn};
    if is_external() {
        eprintln!("skipped: reads queue figures through warrenctl");
        return;
    }
    const N: usize = 20_000;
    let broker = Broker::start();
    let dir = broker.data_dir().unwrap();
    let q = unique("never-reads");
    {
        let (_conn, ch) = broker.channel().await;
        declare_queue(&ch, &q).await;
        let body = vec![b'x'; 4096];
        for _ in 0..N {
            within(ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            ))
            .await
            .unwrap();
        }
        wait_message_count(&ch, &q, N as u32).await;
    }
    let figures = |q: &str| {
        let rows = ctl_json(
            &dir,
            &[
                "list_queues",
                "name",
                "messages_unacknowledged",
                "messages_ram",
            ],
        );
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == q)
            .cloned()
            .unwrap();
        (
            row["messages_unacknowledged"].as_u64().unwrap(),
            row["messages_ram"].as_u64().unwrap(),
        )
    };
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(1);
    let consume = Enc::new()
        .u16(0)
        .shortstr(&q)
        .shortstr("ctag")
        .u8(0)
        .table(&[]);
    c.send_method(1, 60, 20, &consume.done());
    // Deliveries stop once ~16 MB wait for the socket (plus what the kernel buffers).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (unacked, _) = figures(&q);
    assert!(unacked > 1000, "deliveries started: {unacked}");
    let settled = figures(&q).0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(figures(&q).0, settled, "deliveries stopped");
    assert!(
        settled < N as u64 / 2,
        "{settled} of {N} sent to a client that reads nothing"
    );
    drop(c);
    // Everything is back, and past the resident window it is on disk, not in memory.
    let deadline = Instant::now() + WAIT;
    loop {
        let (unacked, ram) = figures(&q);
        if unacked == 0 && ram <= 4096 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unacked {unacked}, in memory {ram}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
