//! Jepsen's total-queue model for a cluster under faults: publishers with confirms and a
//! consumer with manual acks run against whichever node serves, reconnecting through
//! every URI after an error; a drain then takes what is left; the check compares what
//! the broker confirmed with what it ever delivered.
//!
//! - lost: confirmed but never delivered. Must be 0: a confirm is a promise.
//! - unexpected: delivered but never published. Must be 0.
//! - duplicates: delivered more than once. Allowed when an earlier delivery was not
//!   acked (requeued on a lost connection), or was acked on a connection that then
//!   failed: AMQP acks are not confirmed, so an ack written just before a failover may
//!   never reach the new leader. A redelivery of a message whose ack went out on a
//!   connection that then closed cleanly (or is still open) is a failure.
//!
//! Unconfirmed publishes (connection lost, confirm timed out, nacked) are "unknown":
//! they may or may not be delivered; nothing is republished.
#![allow(dead_code)]

use crate::common::*;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a publisher waits for a confirm before it gives the connection up.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one connect (TCP + AMQP handshake + channel setup).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two connection attempts (after trying a URI that failed).
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Publishes in flight per publisher before it waits for their confirms.
const WINDOW: usize = 10;
const PREFETCH: u16 = 100;

/// What every client saw, shared by all of them.
#[derive(Default)]
struct Record {
    attempted: HashSet<String>,
    confirmed: HashSet<String>,
    nacked: HashSet<String>,
    /// Every ack'd publish: when, and by which node (for time-to-serve and for who
    /// may confirm when).
    confirm_times: Vec<Confirmed>,
    /// Every delivery, in order.
    deliveries: Vec<Delivered>,
    /// Consumer sessions (connections) that ended with an error rather than a clean
    /// close by the client.
    failed_sessions: HashSet<u64>,
    /// Connections opened / lost, for the summary.
    connects: u64,
    connection_errors: u64,
}

type Shared = Arc<Mutex<Record>>;

/// One publish the broker confirmed.
#[derive(Clone, Copy)]
struct Confirmed {
    sent: Instant,
    at: Instant,
    /// 1-based index in the URI list: the host that confirmed it.
    node: usize,
}

/// One delivery to a consumer.
struct Delivered {
    body: String,
    /// The consumer's connection it came on.
    session: u64,
    /// Acked successfully (basic.ack written on a channel still open).
    acked: bool,
}

static SESSION: AtomicU64 = AtomicU64::new(1);

/// Clients running against a cluster: start, inject faults, [`Workload::stop`].
pub struct Workload {
    record: Shared,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    queue: String,
}

impl Workload {
    /// `publishers` publishers and `consumers` consumers on the durable `queue` (which
    /// the test declared), connecting to `uris` in turn.
    pub fn start(uris: Vec<String>, queue: &str, publishers: usize, consumers: usize) -> Workload {
        let record: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..publishers {
            tasks.push(tokio::spawn(publisher(
                format!("p{p}"),
                uris.clone(),
                p,
                queue.to_owned(),
                record.clone(),
                stop.clone(),
            )));
        }
        for c in 0..consumers {
            tasks.push(tokio::spawn(consumer(
                uris.clone(),
                publishers + c,
                queue.to_owned(),
                record.clone(),
                stop.clone(),
                None,
            )));
        }
        Workload {
            record,
            stop,
            tasks,
            queue: queue.to_owned(),
        }
    }

    /// Publishes confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.record.lock().unwrap().confirmed.len()
    }

    /// Deliveries so far.
    pub fn delivered(&self) -> usize {
        self.record.lock().unwrap().deliveries.len()
    }

    /// The first confirm of a message published at `fault` or later, as time since
    /// `fault`; waits at most `timeout` for one (None then). This is the time from a
    /// fault to a leader serving again.
    pub async fn wait_confirm_after(&self, fault: Instant, timeout: Duration) -> Option<Duration> {
        let deadline = fault + timeout;
        loop {
            let first = self
                .record
                .lock()
                .unwrap()
                .confirm_times
                .iter()
                .filter(|c| c.sent >= fault)
                .map(|c| c.at)
                .min();
            if let Some(at) = first {
                return Some(at - fault);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many publishes sent at `sent_after` or later node `node` (1-based, as the
    /// URI list) confirmed.
    pub fn confirms_from(&self, node: usize, sent_after: Instant) -> usize {
        self.record
            .lock()
            .unwrap()
            .confirm_times
            .iter()
            .filter(|c| c.node == node && c.sent >= sent_after)
            .count()
    }

    /// Wait until `n` more publishes are confirmed than now (panics after `timeout`).
    pub async fn wait_progress(&self, n: usize, timeout: Duration) {
        let target = self.confirmed() + n;
        let deadline = Instant::now() + timeout;
        while self.confirmed() < target {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} confirms in {timeout:?} ({} in all)",
                self.confirmed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop every client (each finishes what it awaits, within bounds) and return the
    /// history, to be drained ([`History::drain`]) and checked.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(CONFIRM_TIMEOUT + Duration::from_secs(5), task)
                .await
                .is_err()
            {
                eprintln!("checker: a client did not stop in time; aborted");
                abort.abort();
            }
        }
        History {
            record: self.record,
            queue: self.queue,
        }
    }
}

/// What the clients saw, after they stopped.
pub struct History {
    record: Shared,
    queue: String,
}

impl History {
    /// Consume everything left in the queue (with acks) from whichever of `uris`
    /// serves, until it stays empty for 2 s; reconnects after errors, for at most
    /// `timeout` in all (panics then).
    pub async fn drain(&self, uris: &[String], timeout: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let before = self.record.lock().unwrap().deliveries.len();
        let started = Instant::now();
        let drain = consumer(
            uris.to_vec(),
            0,
            self.queue.clone(),
            self.record.clone(),
            stop,
            Some(Duration::from_secs(2)),
        );
        if tokio::time::timeout(timeout, drain).await.is_err() {
            panic!("drain did not finish within {timeout:?}");
        }
        let got = self.record.lock().unwrap().deliveries.len() - before;
        eprintln!("checker: drained {got} messages in {:?}", started.elapsed());
    }

    /// Count what happened (see the module doc).
    pub fn check(&self) -> Summary {
        let r = self.record.lock().unwrap();
        let mut delivered: BTreeMap<&str, Vec<&Delivered>> = BTreeMap::new();
        for d in &r.deliveries {
            delivered.entry(&d.body).or_default().push(d);
        }
        let mut lost: Vec<String> = r
            .confirmed
            .iter()
            .filter(|b| !delivered.contains_key(b.as_str()))
            .cloned()
            .collect();
        lost.sort_by_key(|b| sort_key(b));
        let unexpected: Vec<String> = delivered
            .keys()
            .filter(|b| !r.attempted.contains(**b))
            .map(|b| b.to_string())
            .collect();
        let (mut dup_unacked, mut dup_ack_lost) = (0, 0);
        let mut dup_after_ack = Vec::new();
        for (body, all) in &delivered {
            if all.len() < 2 {
                continue;
            }
            // Every delivery but the last must be explained: not acked, or acked on a
            // connection that then failed.
            let earlier = &all[..all.len() - 1];
            if earlier.iter().any(|d| !d.acked) {
                dup_unacked += 1;
            } else if earlier
                .iter()
                .all(|d| r.failed_sessions.contains(&d.session))
            {
                dup_ack_lost += 1;
            } else {
                dup_after_ack.push(body.to_string());
            }
        }
        let unknown = r
            .attempted
            .iter()
            .filter(|b| !r.confirmed.contains(*b) && !r.nacked.contains(*b))
            .count();
        let unknown_delivered = r
            .attempted
            .iter()
            .filter(|b| !r.confirmed.contains(*b) && delivered.contains_key(b.as_str()))
            .count();
        Summary {
            attempted: r.attempted.len(),
            confirmed: r.confirmed.len(),
            nacked: r.nacked.len(),
            unknown,
            unknown_delivered,
            deliveries: r.deliveries.len(),
            delivered_unique: delivered.len(),
            acked: r.deliveries.iter().filter(|d| d.acked).count(),
            connects: r.connects,
            connection_errors: r.connection_errors,
            lost,
            unexpected,
            dup_unacked,
            dup_ack_lost,
            dup_after_ack,
        }
    }
}

/// `"p1-42"` sorts as (p1, 42).
fn sort_key(body: &str) -> (String, u64) {
    match body.rsplit_once('-') {
        Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(u64::MAX)),
        None => (body.to_owned(), u64::MAX),
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub attempted: usize,
    pub confirmed: usize,
    pub nacked: usize,
    /// Neither confirmed nor nacked (connection lost or confirm timed out first).
    pub unknown: usize,
    /// Unconfirmed publishes that were delivered anyway (fine; informative).
    pub unknown_delivered: usize,
    pub deliveries: usize,
    pub delivered_unique: usize,
    pub acked: usize,
    pub connects: u64,
    pub connection_errors: u64,
    /// Confirmed, never delivered (sorted by publisher and sequence).
    pub lost: Vec<String>,
    /// Delivered, never published.
    pub unexpected: Vec<String>,
    /// Redelivered after a delivery that was not acked (allowed).
    pub dup_unacked: usize,
    /// Redelivered after acks that all went out on connections that then failed
    /// (allowed: the ack may have died with the old leader).
    pub dup_ack_lost: usize,
    /// Redelivered although acked on a connection that did not fail (not allowed).
    pub dup_after_ack: Vec<String>,
}

impl Summary {
    pub fn duplicates(&self) -> usize {
        self.dup_unacked + self.dup_ack_lost + self.dup_after_ack.len()
    }

    /// Panic with the details unless nothing was lost, nothing unexpected arrived and
    /// every duplicate is explained.
    pub fn assert_ok(&self) {
        eprintln!("checker: {self}");
        let first = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
        let mut errors = Vec::new();
        if !self.lost.is_empty() {
            errors.push(format!(
                "{} confirmed messages lost (first 20: {})",
                self.lost.len(),
                first(&self.lost)
            ));
        }
        if !self.unexpected.is_empty() {
            errors.push(format!(
                "{} unexpected messages delivered (first 20: {})",
                self.unexpected.len(),
                first(&self.unexpected)
            ));
        }
        if !self.dup_after_ack.is_empty() {
            errors.push(format!(
                "{} messages redelivered after a settled ack (first 20: {})",
                self.dup_after_ack.len(),
                first(&self.dup_after_ack)
            ));
        }
        assert!(
            self.confirmed > 0,
            "nothing was confirmed at all: the check proves nothing ({self})"
        );
        assert!(errors.is_empty(), "{}\n{self}", errors.join("\n"));
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attempted {}, confirmed {}, nacked {}, unknown {} ({} of them delivered), \
             deliveries {} ({} distinct), acked {}, lost {}, unexpected {}, duplicates {} \
             ({} after no ack, {} after an ack on a failed connection, {} after a settled \
             ack), connections {} ({} lost)",
            self.attempted,
            self.confirmed,
            self.nacked,
            self.unknown,
            self.unknown_delivered,
            self.deliveries,
            self.delivered_unique,
            self.acked,
            self.lost.len(),
            self.unexpected.len(),
            self.duplicates(),
            self.dup_unacked,
            self.dup_ack_lost,
            self.dup_after_ack.len(),
            self.connects,
            self.connection_errors,
        )
    }
}

/// Connect to the first of `uris` (from `start` on, round the list) that takes an AMQP
/// connection and a channel; None when every one failed (the caller pauses and retries).
/// Also returns which (1-based).
async fn connect_any(uris: &[String], start: usize) -> Option<(usize, Connection, Channel)> {
    for n in 0..uris.len() {
        let index = (start + n) % uris.len();
        let uri = &uris[index];
        let attempt = async {
            let conn = try_connect(uri).await?;
            let ch = conn.create_channel().await?;
            Ok::<_, lapin::Error>((conn, ch))
        };
        if let Ok(Ok(pair)) = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            return Some((index + 1, pair.0, pair.1));
        }
    }
    None
}

/// Close a connection, without waiting long for a broker that may be gone or stopped.
async fn close(conn: Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, "bye".into())).await;
}

/// Publish `"<name>-<seq>"` persistent messages to `queue` with confirms, WINDOW at a
/// time, until told to stop; on any error, drop the connection and connect again.
async fn publisher(
    name: String,
    uris: Vec<String>,
    start: usize,
    queue: String,
    record: Shared,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    let props = BasicProperties::default().with_delivery_mode(2);
    while !stop.load(Ordering::SeqCst) {
        let Some((node, conn, ch)) = connect_any(&uris, start).await else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let confirm = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await;
        if !matches!(confirm, Ok(Ok(()))) {
            record.lock().unwrap().connection_errors += 1;
            close(conn).await;
            continue;
        }
        record.lock().unwrap().connects += 1;
        'session: while !stop.load(Ordering::SeqCst) {
            let mut pending = Vec::with_capacity(WINDOW);
            for _ in 0..WINDOW {
                let body = format!("{name}-{seq}");
                seq += 1;
                record.lock().unwrap().attempted.insert(body.clone());
                let sent = Instant::now();
                let publish = ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props.clone(),
                );
                match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
                    Ok(Ok(confirm)) => pending.push((body, sent, confirm)),
                    _ => break,
                }
            }
            let complete = pending.len() == WINDOW;
            for (body, sent, confirm) in pending {
                match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                    Ok(Ok(c)) if c.is_ack() => {
                        let mut r = record.lock().unwrap();
                        r.confirmed.insert(body);
                        r.confirm_times.push(Confirmed {
                            sent,
                            at: Instant::now(),
                            node,
                        });
                    }
                    Ok(Ok(_)) => {
                        record.lock().unwrap().nacked.insert(body);
                    }
                    // Connection lost or no answer: this one and the rest stay unknown.
                    _ => {
                        record.lock().unwrap().connection_errors += 1;
                        break 'session;
                    }
                }
            }
            if !complete {
                record.lock().unwrap().connection_errors += 1;
                break;
            }
            // ~2000 messages/s per publisher at most: enough traffic, a short drain.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        close(conn).await;
        if !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
}

/// Consume `queue` with manual acks, recording every delivery and every ack sent, until
/// told to stop -- or, with `quiet_end`, until no delivery came for that long (the
/// drain). Reconnects after errors; an idle connection is probed (passive declare) so
/// that one to a stopped or cut-off node is given up.
async fn consumer(
    uris: Vec<String>,
    start: usize,
    queue: String,
    record: Shared,
    stop: Arc<AtomicBool>,
    quiet_end: Option<Duration>,
) {
    let idle_probe = Duration::from_secs(3);
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Some((_, conn, ch)) = connect_any(&uris, start).await else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let session = SESSION.fetch_add(1, Ordering::SeqCst);
        let setup = async {
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            ch.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        };
        let mut deliveries = match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(Ok(c)) => c,
            _ => {
                record.lock().unwrap().connection_errors += 1;
                close(conn).await;
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        record.lock().unwrap().connects += 1;
        let mut last = Instant::now();
        let failed = loop {
            if stop.load(Ordering::SeqCst) {
                break false;
            }
            match tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await {
                Ok(Some(Ok(d))) => {
                    last = Instant::now();
                    let body = String::from_utf8_lossy(&d.data).into_owned();
                    let index = {
                        let mut r = record.lock().unwrap();
                        r.deliveries.push(Delivered {
                            body,
                            session,
                            acked: false,
                        });
                        r.deliveries.len() - 1
                    };
                    let ack = d.ack(BasicAckOptions::default());
                    match tokio::time::timeout(CONFIRM_TIMEOUT, ack).await {
                        Ok(Ok(_)) => record.lock().unwrap().deliveries[index].acked = true,
                        _ => break true,
                    }
                }
                Ok(Some(Err(_))) | Ok(None) => break true,
                Err(_) => {
                    if let Some(quiet) = quiet_end {
                        if last.elapsed() >= quiet {
                            // The drain's end: the queue stayed empty that long.
                            close(conn).await;
                            return;
                        }
                    }
                    if last.elapsed() >= idle_probe {
                        let probe = ch.queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        );
                        if !matches!(
                            tokio::time::timeout(CONNECT_TIMEOUT, probe).await,
                            Ok(Ok(_))
                        ) {
                            break true;
                        }
                        last = Instant::now() - idle_probe / 2;
                    }
                }
            }
        };
        if failed {
            let mut r = record.lock().unwrap();
            r.failed_sessions.insert(session);
            r.connection_errors += 1;
        }
        close(conn).await;
        if failed {
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
}

/// Declare the durable `queue` on whichever of `uris` serves, then wait until confirms
/// work end to end: publish one confirmed persistent message to `<queue>-probe` and
/// consume it back. Panics after `timeout`.
pub async fn wait_confirms_work(uris: &[String], queue: &str, timeout: Duration) {
    let started = Instant::now();
    let probe_queue = format!("{queue}-probe");
    let mut last_error = String::from("no node accepted a connection");
    while started.elapsed() < timeout {
        let Some((_, conn, ch)) = connect_any(uris, 0).await else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let attempt = async {
            for q in [queue, probe_queue.as_str()] {
                ch.queue_declare(
                    q.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            }
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let confirm = ch
                .basic_publish(
                    "".into(),
                    probe_queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"probe",
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            if !confirm.is_ack() {
                return Ok::<_, lapin::Error>(Err("probe nacked".to_owned()));
            }
            // basic.get until the probe is back (it may take a moment to be ready).
            for _ in 0..50 {
                if let Some(m) = ch
                    .basic_get(
                        probe_queue.as_str().into(),
                        BasicGetOptions { no_ack: true },
                    )
                    .await?
                {
                    if &m.delivery.data[..] == b"probe" {
                        return Ok(Ok(()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err("probe confirmed but not delivered back".to_owned()))
        };
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(Ok(()))) => {
                close(conn).await;
                eprintln!("checker: confirms work (after {:?})", started.elapsed());
                return;
            }
            Ok(Ok(Err(e))) => last_error = e,
            Ok(Err(e)) => last_error = format!("{e}"),
            Err(_) => last_error = "probe timed out".to_owned(),
        }
        close(conn).await;
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    panic!("confirms did not work within {timeout:?}: {last_error}");
}

// ----------------------------------------------------------------------------------
// Additions for scenarios2: confirms by arrival time
// ----------------------------------------------------------------------------------

impl Workload {
    /// How many confirms arrived in `[from, to)`, whenever their publish was sent.
    pub fn confirms_arrived(&self, from: Instant, to: Instant) -> usize {
        self.record
            .lock()
            .unwrap()
            .confirm_times
            .iter()
            .filter(|c| c.at >= from && c.at < to)
            .count()
    }

    /// The longest time in `[from, to]` without a confirm arriving: between two
    /// consecutive confirms, from `from` to the first, or from the last to `to`.
    pub fn longest_confirm_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .record
            .lock()
            .unwrap()
            .confirm_times
            .iter()
            .map(|c| c.at)
            .filter(|at| *at >= from && *at <= to)
            .collect();
        times.sort();
        let mut longest = Duration::ZERO;
        let mut previous = from;
        for at in times.into_iter().chain([to]) {
            longest = longest.max(at - previous);
            previous = at;
        }
        longest
    }
}
