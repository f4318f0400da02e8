//! Compaction of the message journal, through the broker process: disk follows the live
//! backlog, and a `kill -9` at any moment of a compaction loses nothing and duplicates
//! nothing. warren-only (these kill the broker and look at its data directory).
use crate::common::*;
use crate::durability::{
    confirming_channel, declare_durable, drain, persistent, segments, skip_external,
};

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Small segments, so that a few seconds of traffic fill and compact many of them.
const SEGMENT: u64 = 64 * 1024;
const PAD: usize = 1000;

fn journal_bytes(dir: &std::path::Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

async fn compactions(broker: &Broker) -> f64 {
    let m = crate::metrics::scrape(broker, "/metrics").await;
    m.get("warren_store_compactions_total")
        .copied()
        .unwrap_or(0.0)
}

/// `busy` is consumed as fast as it fills; one message in ten also goes to `kept`, which
/// nobody consumes (the Celery queue of tasks delayed by a day). Two publishers with
/// confirms and a consumer with acks run while the broker is killed, again and again,
/// at moments that fall during compactions (they run all the time at this rate).
/// Afterwards: every confirmed message is in `kept` (if it went there) exactly once and
/// in `busy` unless consumed; nothing is in either queue twice; and the journal holds
/// about what `kept` holds, not everything published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_compaction_loses_and_duplicates_nothing() {
    if skip_external() {
        return;
    }
    let seg = format!("store.segment_size={SEGMENT}");
    let mut broker = Broker::spawn_warren(&["--set", &seg]);
    {
        let (_conn, ch) = broker.channel().await;
        declare_durable(&ch, "busy", no_args()).await;
        declare_durable(&ch, "kept", no_args()).await;
        within(ch.exchange_declare(
            "compact-x".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        ))
        .await
        .unwrap();
        for (q, key) in [("busy", "b"), ("busy", "k"), ("kept", "k")] {
            within(ch.queue_bind(
                q.into(),
                "compact-x".into(),
                key.into(),
                QueueBindOptions::default(),
                no_args(),
            ))
            .await
            .unwrap();
        }
    }
    let confirmed: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let consumed: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut compacted = 0.0;
    let cycles: u64 = std::env::var("WARREN_COMPACT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let pad = "p".repeat(PAD);
    for cycle in 0..cycles {
        let url = broker.url();
        let stop = Arc::new(AtomicBool::new(false));
        let mut publishers = Vec::new();
        for p in 0..2u64 {
            let (url, confirmed, stop, pad) =
                (url.clone(), confirmed.clone(), stop.clone(), pad.clone());
            let base = (cycle * 2 + p) * 1_000_000;
            publishers.push(tokio::spawn(async move {
                let Some((_conn, ch)) = confirming_channel(&url).await else {
                    return;
                };
                let mut n = base;
                while !stop.load(Ordering::Relaxed) {
                    // A window of 20 in flight: fast enough to fill segments quickly.
                    let mut pending = Vec::new();
                    for _ in 0..20 {
                        let key = if n % 10 == 0 { "k" } else { "b" };
                        let body = format!("{n} {pad}");
                        let Ok(pc) = ch
                            .basic_publish(
                                "compact-x".into(),
                                key.into(),
                                BasicPublishOptions::default(),
                                body.as_bytes(),
                                persistent(),
                            )
                            .await
                        else {
                            return;
                        };
                        pending.push((n, pc));
                        n += 1;
                    }
                    for (n, pc) in pending {
                        match pc.await {
                            Ok(c) if c.is_ack() => {
                                confirmed.lock().unwrap().insert(n);
                            }
                            _ => return,
                        }
                    }
                }
            }));
        }
        let consumer = {
            let (url, stop, got) = (url.clone(), stop.clone(), consumed.clone());
            tokio::spawn(async move {
                let Ok(conn) = try_connect(&url).await else {
                    return;
                };
                let Ok(ch) = conn.create_channel().await else {
                    return;
                };
                let _ = ch.basic_qos(200, BasicQosOptions::default()).await;
                let Ok(mut deliveries) = ch
                    .basic_consume(
                        "busy".into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        no_args(),
                    )
                    .await
                else {
                    return;
                };
                use futures_lite::StreamExt;
                while !stop.load(Ordering::Relaxed) {
                    let next = tokio::time::timeout(
                        std::time::Duration::from_millis(50),
                        deliveries.next(),
                    )
                    .await;
                    match next {
                        Ok(Some(Ok(d))) => {
                            let n: u64 = body_str(&d).split(' ').next().unwrap().parse().unwrap();
                            if d.ack(BasicAckOptions::default()).await.is_err() {
                                return;
                            }
                            got.lock().unwrap().insert(n);
                        }
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(700 + 170 * cycle)).await;
        compacted += compactions(&broker).await;
        let dir = broker.crash();
        stop.store(true, Ordering::Relaxed);
        // A client's futures need not all resolve when its broker dies: what it saw
        // confirmed and consumed is already recorded, so stop waiting after a while.
        for task in publishers.into_iter().chain([consumer]) {
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        broker = Broker::spawn_in(dir, &["--set", &seg]);
    }
    let (_conn, ch) = broker.channel().await;
    let number = |(b, _): (String, bool)| -> u64 { b.split(' ').next().unwrap().parse().unwrap() };
    // First busy, so that what the journal holds is then about kept's messages.
    let busy: Vec<u64> = drain(&ch, "busy").await.into_iter().map(number).collect();
    let kept_count = within(ch.queue_declare(
        "kept".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap()
    .message_count() as u64;
    let kept_bytes = kept_count * (PAD as u64 + 60);
    let dir = broker.data_dir().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let journal = loop {
        let bytes = journal_bytes(&dir);
        if bytes <= 2 * kept_bytes + 3 * SEGMENT {
            break bytes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "journal {bytes} bytes for {kept_bytes} bytes kept"
        );
        // Acks are written with the next batch: give the writer something to write.
        within(ch.basic_publish(
            "".into(),
            "busy".into(),
            BasicPublishOptions::default(),
            b"0 tick",
            persistent(),
        ))
        .await
        .unwrap();
        drain(&ch, "busy").await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        journal >= kept_bytes,
        "kept's messages are on disk: {journal} bytes"
    );
    let kept: Vec<u64> = drain(&ch, "kept").await.into_iter().map(number).collect();
    let confirmed = confirmed.lock().unwrap().clone();
    let consumed = consumed.lock().unwrap().clone();
    assert!(
        compacted > 0.0,
        "compactions ran while the broker was killed"
    );
    assert!(
        confirmed.len() >= 1000,
        "the test published: {}",
        confirmed.len()
    );

    let mut count: HashMap<u64, usize> = HashMap::new();
    for n in &kept {
        *count.entry(*n).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "kept holds duplicates: {twice:?}");
    assert!(kept.iter().all(|n| n % 10 == 0), "only key k went to kept");
    let kept_set: BTreeSet<u64> = kept.iter().copied().collect();
    let lost_kept: Vec<_> = confirmed
        .iter()
        .filter(|n| *n % 10 == 0 && !kept_set.contains(n))
        .collect();
    assert!(
        lost_kept.is_empty(),
        "confirmed and lost from kept: {lost_kept:?}"
    );

    let busy_set: BTreeSet<u64> = busy.iter().copied().collect();
    assert_eq!(busy_set.len(), busy.len(), "busy holds duplicates");
    let lost: Vec<_> = confirmed
        .iter()
        .filter(|n| !busy_set.contains(n) && !consumed.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "confirmed and lost from busy: {:?}",
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "compaction crash test: {cycles} kill -9 cycles, {compacted} compactions seen, {} confirmed, {} consumed, {} kept, journal {} bytes",
        confirmed.len(),
        consumed.len(),
        kept.len(),
        journal
    );
}
