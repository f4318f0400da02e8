//! Durability: what survives a restart or a crash (`kill -9`) of the broker process, and
//! how the data directory guards itself. warren-only (these restart the broker).
use crate::common::*;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

pub(crate) fn skip_external() -> bool {
    if is_external() {
        eprintln!("skipped: restarts the broker process");
        return true;
    }
    false
}

/// A channel in confirm mode for a crash test's publisher; None once the broker is gone.
pub(crate) async fn confirming_channel(url: &str) -> Option<(Connection, Channel)> {
    let conn = try_connect(url).await.ok()?;
    let ch = conn.create_channel().await.ok()?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok()?;
    Some((conn, ch))
}

pub(crate) async fn declare_durable(ch: &Channel, name: &str, args: FieldTable) {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    ))
    .await
    .expect("durable queue.declare");
}

async fn confirm_publish(ch: &Channel, queue: &str, bodies: &[String], props: BasicProperties) {
    let mut pending = Vec::new();
    for b in bodies {
        pending.push(
            within(ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                props.clone(),
            ))
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        assert!(within(p).await.expect("confirm").is_ack());
    }
}

/// Everything left in a queue, in order, as (body, redelivered); auto-acked.
pub(crate) async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push((body_str(&m.delivery), m.delivery.redelivered));
    }
    out
}

/// A management API GET as guest, over a plain socket; the response body.
fn management_get(broker: &Broker, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(broker.management_addr()).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_string())
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_exchanges_queues_and_bindings_survive_restart_others_dont() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    {
        let (_conn, ch) = broker.channel().await;
        within(ch.exchange_declare(
            "dx".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        ))
        .await
        .unwrap();
        declare_exchange(&ch, "tx", ExchangeKind::Fanout).await;
        declare_durable(
            &ch,
            "dq",
            table(vec![("x-max-priority", AMQPValue::ShortShortUInt(5))]),
        )
        .await;
        declare_queue(&ch, "tq").await;
        within(ch.queue_declare(
            "xq".into(),
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        ))
        .await
        .unwrap();
        bind(&ch, "dq", "dx", "a.#").await;
        bind(&ch, "dq", "amq.direct", "k").await;
    }
    let (dir, status) = broker.stop();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let broker = Broker::spawn_in(dir, &[]);
    let conn = broker.connect().await;
    assert!(exchange_exists(&conn, "dx").await);
    assert!(
        !exchange_exists(&conn, "tx").await,
        "transient exchange gone"
    );
    assert!(queue_exists(&conn, "dq").await);
    assert!(!queue_exists(&conn, "tq").await, "transient queue gone");
    assert!(!queue_exists(&conn, "xq").await, "exclusive queue gone");
    let ch = within(conn.create_channel()).await.unwrap();
    // The bindings and the queue's arguments came back: routing and priorities work.
    publish_props(&ch, "dx", "a.b.c", b"via-topic", persistent()).await;
    publish_props(
        &ch,
        "amq.direct",
        "k",
        b"via-direct",
        persistent().with_priority(5),
    )
    .await;
    wait_message_count(&ch, "dq", 2).await;
    let got: Vec<String> = drain(&ch, "dq").await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, vec!["via-direct", "via-topic"]);
    // Redeclaring with other arguments is still refused: the arguments were kept.
    let r = within(ch.queue_declare(
        "dq".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'dq' in vhost '/': \
         received none but current is the value '5' of type 'unsignedbyte'",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_in_durable_queues_survive_a_crash_transient_ones_dont() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    {
        let (_conn, ch) = broker.channel().await;
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        declare_durable(&ch, "q", no_args()).await;
        declare_queue(&ch, "transient-q").await;
        confirm_publish(&ch, "q", &bodies("p", 3), persistent()).await;
        confirm_publish(&ch, "q", &["t".to_string()], BasicProperties::default()).await;
        confirm_publish(&ch, "transient-q", &["lost".to_string()], persistent()).await;
    }
    let broker = Broker::spawn_in(broker.crash(), &[]);
    // Listings show the recovered messages before any client touches the queue.
    if broker.has_management() {
        let body = management_get(&broker, "/api/queues/%2f/q");
        assert!(body.contains("\"messages\":3,"), "{body}");
    }
    let (_conn, ch) = broker.channel().await;
    assert_eq!(
        drain(&ch, "q").await,
        vec![
            ("p0".to_string(), false),
            ("p1".to_string(), false),
            ("p2".to_string(), false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_never_come_back_unacked_ones_return_redelivered_in_order() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    declare_durable(&ch, "q", no_args()).await;
    confirm_publish(&ch, "q", &bodies("m", 6), persistent()).await;
    // m0 acked, m1 and m2 delivered but not acked, m3.. never delivered.
    let m0 = get(&ch, "q", false).await.unwrap();
    let _m1 = get(&ch, "q", false).await.unwrap();
    let _m2 = get(&ch, "q", false).await.unwrap();
    within(ch.basic_ack(m0.delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    // The ack goes to the store through the queue, a publish straight from the
    // connection: let the queue take the ack first (a passive declare is answered by it,
    // after the ack, which has the queue's priority lane), then a synced publish orders
    // the ack's record before the crash.
    assert_eq!(message_count(&ch, "q").await, 3);
    confirm_publish(&ch, "q", &["m6".to_string()], persistent()).await;
    drop(conn);
    let broker = Broker::spawn_in(broker.crash(), &[]);
    let (_conn, ch) = broker.channel().await;
    let got = drain(&ch, "q").await;
    assert_eq!(
        got,
        vec![
            ("m1".to_string(), true),
            ("m2".to_string(), true),
            ("m3".to_string(), false),
            ("m4".to_string(), false),
            ("m5".to_string(), false),
            ("m6".to_string(), false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_repeated_crashes() {
    if skip_external() {
        return;
    }
    let mut broker = Broker::start();
    {
        let (_conn, ch) = broker.channel().await;
        declare_durable(&ch, "crash", no_args()).await;
    }
    let confirmed: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut consumed: BTreeSet<u64> = BTreeSet::new();
    let mut seq = 0u64;
    // 8 in CI; `WARREN_CRASH_CYCLES=20` for a longer run.
    let cycles: u64 = std::env::var("WARREN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for cycle in 0..cycles {
        let url = broker.url();
        let stop = Arc::new(AtomicBool::new(false));
        // Two publishers with confirms and a consumer with acks run while the broker dies.
        let mut publishers = Vec::new();
        for p in 0..2u64 {
            let (url, confirmed, stop) = (url.clone(), confirmed.clone(), stop.clone());
            let base = seq + p * 1_000_000;
            publishers.push(tokio::spawn(async move {
                let Some((_conn, ch)) = confirming_channel(&url).await else {
                    return;
                };
                let mut n = base;
                while !stop.load(Ordering::Relaxed) {
                    let body = n.to_string();
                    let Ok(pc) = ch
                        .basic_publish(
                            "".into(),
                            "crash".into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            persistent(),
                        )
                        .await
                    else {
                        return;
                    };
                    match pc.await {
                        Ok(c) if c.is_ack() => {
                            confirmed.lock().unwrap().insert(n);
                        }
                        _ => return,
                    }
                    n += 1;
                }
            }));
        }
        let consumer = {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let Ok(conn) = try_connect(&url).await else {
                    return got;
                };
                let Ok(ch) = conn.create_channel().await else {
                    return got;
                };
                while !stop.load(Ordering::Relaxed) {
                    match ch
                        .basic_get("crash".into(), BasicGetOptions { no_ack: false })
                        .await
                    {
                        Ok(Some(m)) => {
                            let n: u64 = body_str(&m.delivery).parse().unwrap();
                            if ch
                                .basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
                                .await
                                .is_err()
                            {
                                return got;
                            }
                            got.push(n);
                        }
                        Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
                        Err(_) => return got,
                    }
                }
                got
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(150 + 40 * cycle)).await;
        let dir = broker.crash();
        stop.store(true, Ordering::Relaxed);
        for p in publishers {
            let _ = p.await;
        }
        // An ack the broker didn't record before dying may bring a message back: that
        // is a redelivery, not a loss, so consumed-then-returned is fine.
        consumed.extend(consumer.await.unwrap_or_default());
        broker = Broker::spawn_in(dir, &[]);
        seq += 10_000;
    }
    let (_conn, ch) = broker.channel().await;
    let left: BTreeSet<u64> = drain(&ch, "crash")
        .await
        .into_iter()
        .map(|(b, _)| b.parse().unwrap())
        .collect();
    let confirmed = confirmed.lock().unwrap().clone();
    assert!(
        confirmed.len() >= 30,
        "the test published: {}",
        confirmed.len()
    );
    let lost: Vec<&u64> = confirmed
        .iter()
        .filter(|n| !left.contains(n) && !consumed.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} confirmed messages lost, e.g. {:?}",
        lost.len(),
        confirmed.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "crash test: {cycles} kill -9 cycles, {} confirmed, {} consumed and acked, {} left in the queue",
        confirmed.len(),
        consumed.len(),
        left.len()
    );
}

pub(crate) fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_earlier_messages_recovered() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    {
        let (_conn, ch) = broker.channel().await;
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        declare_durable(&ch, "q", no_args()).await;
        confirm_publish(&ch, "q", &bodies("m", 3), persistent()).await;
    }
    let dir = broker.crash();
    // A crash in the middle of writing a record: a header and part of a payload.
    let seg = segments(&dir).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let intact = data.len();
    data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'M', 9, 9]);
    std::fs::write(&seg, &data).unwrap();
    let broker = Broker::spawn_in(dir, &[]);
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, intact);
    let (_conn, ch) = broker.channel().await;
    let got: Vec<String> = drain(&ch, "q").await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, bodies("m", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_loses_only_the_damaged_message() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    {
        let (_conn, ch) = broker.channel().await;
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        declare_durable(&ch, "q", no_args()).await;
        for b in ["first", "second-xxxxxxxxxxxxxxxxxxxxxxxxxxxx", "third"] {
            confirm_publish(&ch, "q", &[b.to_string()], persistent()).await;
        }
    }
    let dir = broker.crash();
    let seg = segments(&dir).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let at = data
        .windows(6)
        .position(|w| w == b"second")
        .expect("body on disk");
    data[at + 10] ^= 0xff;
    std::fs::write(&seg, &data).unwrap();
    let broker = Broker::spawn_in(dir, &[]);
    let (_conn, ch) = broker.channel().await;
    let got: Vec<String> = drain(&ch, "q").await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, vec!["first", "third"]);
}

#[test]
fn a_newer_data_format_is_refused_with_a_clear_error() {
    if skip_external() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("warren-format-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("meta.toml"), "format = 99\nnode_id = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("newer warren (format 99)"),
        "stderr names the problem: {err}"
    );
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--data-dir"])
        .arg(broker.data_dir().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another warren process (pid"),
        "stderr names the other process: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_segments_are_deleted() {
    if skip_external() {
        return;
    }
    let broker = Broker::spawn_warren(&["--set", "store.segment_size=8192"]);
    let (_conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    declare_durable(&ch, "q", no_args()).await;
    let body = "x".repeat(1000);
    for _ in 0..10 {
        confirm_publish(&ch, "q", &vec![body.clone(); 10], persistent()).await;
    }
    let before = segments(&broker.data_dir().unwrap()).len();
    assert!(before >= 5, "100 KB in 8 KB segments: {before}");
    assert_eq!(drain(&ch, "q").await.len(), 100);
    // The acks are recorded asynchronously; a later publish rolls past them.
    for _ in 0..3 {
        confirm_publish(&ch, "q", &vec![body.clone(); 10], persistent()).await;
        assert_eq!(drain(&ch, "q").await.len(), 10);
    }
    let after = segments(&broker.data_dir().unwrap()).len();
    assert!(after <= 3, "consumed segments deleted: {before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_keeps_durable_auto_delete_queues_with_consumers() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    within(ch.queue_declare(
        "ad".into(),
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let _consumer = consume(&ch, "ad", false).await;
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        std::future::pending::<()>(),
    )
    .await;
    let (dir, status) = broker.stop();
    assert!(status.success());
    let broker = Broker::spawn_in(dir, &[]);
    let conn = broker.connect().await;
    assert!(
        queue_exists(&conn, "ad").await,
        "shutdown closing its consumer did not auto-delete it"
    );
}

/// `warrenctl --data-dir DIR ARGS` against the broker on `dir`; panics unless it
/// succeeds. Its stdout.
pub(crate) fn warrenctl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(crate::common::warrenctl_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run warrenctl");
    assert!(
        out.status.success(),
        "warrenctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vhosts_and_permissions_survive_restart() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    let dir = broker.data_dir().unwrap();
    warrenctl(&dir, &["add_vhost", "app"]);
    warrenctl(&dir, &["add_user", "alice", "s3cret"]);
    warrenctl(&dir, &["set_user_tags", "alice", "administrator"]);
    warrenctl(
        &dir,
        &["set_permissions", "-p", "app", "alice", ".*", ".*", ".*"],
    );
    warrenctl(&dir, &["delete_user", "guest"]);
    {
        let conn = connect(&broker.url_with("alice", "s3cret", "app")).await;
        let ch = within(conn.create_channel()).await.unwrap();
        declare_durable(&ch, "app-q", no_args()).await;
    }
    let broker = Broker::spawn_in(broker.crash(), &[]);
    let users = warrenctl(&dir, &["list_users"]);
    assert!(users.contains("alice"), "{users}");
    assert!(
        !users.contains("guest"),
        "a deleted default user stays deleted: {users}"
    );
    assert!(warrenctl(&dir, &["list_vhosts"]).contains("app"));
    // The password hash, the permissions and the vhost's queue all came back.
    let conn = connect(&broker.url_with("alice", "s3cret", "app")).await;
    assert!(queue_exists(&conn, "app-q").await);
    assert!(try_connect(&broker.url()).await.is_err(), "guest is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_survives_a_crash() {
    if skip_external() {
        return;
    }
    let broker = Broker::start();
    {
        let (_conn, ch) = broker.channel().await;
        declare_durable(&ch, "txq", no_args()).await;
        within(ch.tx_select()).await.unwrap();
        for b in bodies("t", 3) {
            publish_props(&ch, "", "txq", b.as_bytes(), persistent()).await;
        }
        // commit-ok comes only once the messages are on disk.
        within(ch.tx_commit()).await.unwrap();
    }
    let broker = Broker::spawn_in(broker.crash(), &[]);
    let (_conn, ch) = broker.channel().await;
    let got: Vec<String> = drain(&ch, "txq").await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, bodies("t", 3));
}

/// `warrenctl list_queues name messages_ready messages_ram` for one queue.
fn queue_ram(broker: &Broker, queue: &str) -> (u64, u64) {
    let out = Command::new(crate::common::warrenctl_bin())
        .arg("--data-dir")
        .arg(broker.data_dir().unwrap())
        .args(["list_queues", "name", "messages_ready", "messages_ram"])
        .output()
        .expect("run warrenctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[0] == queue)
        .unwrap_or_else(|| panic!("no row for {queue} in {text}"));
    (line[1].parse().unwrap(), line[2].parse().unwrap())
}

/// Distinct bodies big enough that paging matters, checkable one by one.
fn deep_bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{i:06}-{}", "p".repeat(500)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_queue_keeps_its_backlog_on_disk_and_drains_it_in_order() {
    if skip_external() {
        return;
    }
    let broker = Broker::spawn_warren(&[
        "--set",
        "store.resident_messages=40",
        "--set",
        "store.segment_size=65536",
    ]);
    let (conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    declare_durable(&ch, "deep", no_args()).await;
    let all = deep_bodies(3000);
    for chunk in all.chunks(500) {
        confirm_publish(&ch, "deep", chunk, persistent()).await;
    }
    let (ready, ram) = queue_ram(&broker, "deep");
    assert_eq!(ready, 3000);
    assert!(ram <= 40, "only the head stays in memory: {ram} of {ready}");

    // A consumer with a prefetch window drains it through page-ins, in order.
    within(ch.basic_qos(100, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut c = consume(&ch, "deep", false).await;
    for (i, want) in all.iter().enumerate().take(1500) {
        let d = next_delivery(&mut c).await;
        assert_eq!(&body_str(&d), want, "message {i}");
        within(d.ack(BasicAckOptions::default())).await.unwrap();
    }
    // Closing the channel requeues what the consumer was sent but didn't ack, in place.
    within(ch.close(200, "done".into())).await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    let got: Vec<String> = drain(&ch, "deep").await.into_iter().map(|m| m.0).collect();
    assert!(got == all[1500..], "the rest, by basic.get, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_backlog_stays_on_disk_until_consumed() {
    if skip_external() {
        return;
    }
    let args = [
        "--set",
        "store.resident_messages=40",
        "--set",
        "store.segment_size=65536",
    ];
    let broker = Broker::spawn_warren(&args);
    let all = deep_bodies(2000);
    {
        let (_conn, ch) = broker.channel().await;
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        declare_durable(
            &ch,
            "deep",
            table(vec![("x-max-priority", AMQPValue::ShortShortUInt(3))]),
        )
        .await;
        // Two priorities interleaved: paging must keep each level's order.
        for (i, chunk) in all.chunks(250).enumerate() {
            let props = persistent().with_priority((i % 2 * 3) as u8);
            confirm_publish(&ch, "deep", chunk, props).await;
        }
    }
    let dir = broker.crash();
    let broker = Broker::spawn_in(dir, &args);
    let (_conn, ch) = broker.channel().await;
    let (ready, ram) = queue_ram(&broker, "deep");
    assert_eq!(ready, 2000);
    assert!(ram <= 80, "recovery loads only the head: {ram} of {ready}");
    let high: Vec<&String> = all.chunks(250).skip(1).step_by(2).flatten().collect();
    let low: Vec<&String> = all.chunks(250).step_by(2).flatten().collect();
    let got: Vec<String> = drain(&ch, "deep").await.into_iter().map(|m| m.0).collect();
    let want: Vec<String> = high.into_iter().chain(low).cloned().collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "priority order, FIFO within a priority");
    assert_eq!(queue_ram(&broker, "deep"), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_backlogs_page_out_too_and_are_gone_after_a_restart() {
    if skip_external() {
        return;
    }
    let args = ["--set", "store.resident_messages=40"];
    let broker = Broker::spawn_warren(&args);
    let all = deep_bodies(2000);
    let (conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    // A non-durable queue, and a durable one holding transient and persistent messages.
    declare_queue(&ch, "plain").await;
    declare_durable(&ch, "mixed", no_args()).await;
    confirm_publish(&ch, "plain", &all, BasicProperties::default()).await;
    for (i, chunk) in all.chunks(100).enumerate() {
        let props = if i % 2 == 0 {
            BasicProperties::default()
        } else {
            persistent()
        };
        confirm_publish(&ch, "mixed", chunk, props).await;
    }
    assert!(queue_ram(&broker, "plain").1 <= 40);
    assert!(queue_ram(&broker, "mixed").1 <= 40);
    let got: Vec<String> = drain(&ch, "plain").await.into_iter().map(|m| m.0).collect();
    assert!(got == all, "transient backlog back in order");
    drop((ch, conn));

    let (dir, status) = broker.stop();
    assert!(status.success());
    let broker = Broker::spawn_in(dir, &args);
    let (_conn, ch) = broker.channel().await;
    let want: Vec<String> = all
        .chunks(100)
        .skip(1)
        .step_by(2)
        .flatten()
        .cloned()
        .collect();
    let got: Vec<String> = drain(&ch, "mixed").await.into_iter().map(|m| m.0).collect();
    assert!(got == want, "only the persistent ones survive, in order");
}

// ---------------------------------------------------------------------------
// A damaged data directory: nothing warren cannot account for is deleted or cut off
// without a copy in quarantine/, and damage that could lose a queue stops the start.
// ---------------------------------------------------------------------------

/// Bytes no record framing accepts (a fixed pseudo-random stream).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8 | 0x80
        })
        .collect()
}

/// A crashed broker's data dir with a durable queue "q" holding `n` persistent messages.
async fn crashed_with_messages(n: usize) -> std::path::PathBuf {
    let broker = Broker::start();
    {
        let (_conn, ch) = broker.channel().await;
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        declare_durable(&ch, "q", no_args()).await;
        confirm_publish(&ch, "q", &bodies("m", n), persistent()).await;
    }
    broker.crash()
}

/// Run warren on `dir` expecting it to refuse to start; its stderr.
fn refused_start(dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("WARREN_METRICS_LISTEN", "127.0.0.1:0")
        .env("WARREN_MANAGEMENT_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "warren started on a damaged data dir"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn quarantined(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("quarantine"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, e.metadata().unwrap().len())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_metadata_log_refuses_to_start_and_keeps_the_messages() {
    if skip_external() {
        return;
    }
    let dir = crashed_with_messages(1000).await;
    std::fs::remove_file(dir.join("meta.log")).unwrap();
    let segs: Vec<_> = segments(&dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let err = refused_start(&dir);
    assert!(err.contains("meta.log is missing"), "{err}");
    let after: Vec<_> = segments(&dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(after, segs, "the segments are untouched");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_metadata_log_refuses_to_start_and_is_left_as_it_was() {
    if skip_external() {
        return;
    }
    let dir = crashed_with_messages(10).await;
    let log = dir.join("meta.log");
    let mut data = std::fs::read(&log).unwrap();
    let n = data.len().min(64);
    data[..n].copy_from_slice(&noise(n));
    std::fs::write(&log, &data).unwrap();
    let err = refused_start(&dir);
    assert!(err.contains("meta.log is damaged"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap(), data);
    assert_eq!(segments(&dir).len(), 1, "no segment deleted");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_over_a_segment_is_set_aside_not_truncated_away() {
    if skip_external() {
        return;
    }
    let dir = crashed_with_messages(200).await;
    let seg = segments(&dir).pop().unwrap();
    let original = std::fs::read(&seg).unwrap();
    // Random bytes over the start of the file: the first records are gone, the rest
    // is recovered, and the whole file is kept as it was found.
    let mut damaged = original.clone();
    damaged[..4096].copy_from_slice(&noise(4096));
    std::fs::write(&seg, &damaged).unwrap();
    let broker = Broker::spawn_in(dir, &[]);
    let (_conn, ch) = broker.channel().await;
    let got: Vec<String> = drain(&ch, "q").await.into_iter().map(|m| m.0).collect();
    assert!(
        !got.is_empty() && got.len() < 200,
        "{} recovered",
        got.len()
    );
    assert_eq!(
        got.last().map(String::as_str),
        Some(bodies("m", 200)[199].as_str())
    );
    drop((_conn, ch));
    let dir = broker.crash();
    let q = quarantined(&dir);
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].0.ends_with(".seg-damaged"), "{q:?}");
    assert_eq!(q[0].1 as usize, damaged.len());

    // A segment that is noise from its first byte to its last: no record to keep, and
    // no torn write either; the bytes go to quarantine before the file is emptied.
    let seg = segments(&dir).pop().unwrap();
    std::fs::write(&seg, noise(10_000)).unwrap();
    let broker = Broker::spawn_in(dir, &[]);
    let dir = broker.crash();
    let q = quarantined(&dir);
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q.iter()
            .any(|(name, len)| name.ends_with(".seg-tail-at-0") && *len == 10_000),
        "{q:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_dir_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    if skip_external() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("warren-private-{}/data", std::process::id()));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    let broker = Broker::spawn_in(dir.clone(), &[]);
    {
        let (_conn, ch) = broker.channel().await;
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        declare_durable(&ch, "q", no_args()).await;
        confirm_publish(&ch, "q", &bodies("m", 3), persistent()).await;
    }
    warrenctl(&dir, &["add_user", "alice", "secret"]);
    let mut seen = 0;
    let mut stack = vec![dir.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            assert_eq!(mode, 0o600, "{}", p.display());
            seen += 1;
        }
    }
    // The password hashes are in the metadata log; meta.toml, warren.lock and a
    // segment make four files at least.
    assert!(dir.join("meta.log").exists());
    assert!(seen >= 4, "checked {seen} files");
    drop(broker);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// Copy a data-dir fixture to a fresh temporary directory.
fn fixture(name: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = std::env::temp_dir().join(format!("warren-fixture-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    let mut stack = vec![(src, dst.clone())];
    while let Some((from, to)) = stack.pop() {
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), to.join(e.file_name())));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    dst
}

/// The crash loop of a data dir written by an older warren (fixture made with
/// tests/fixtures/deep-headers-dead-letter.py): a durable queue with a 3 s TTL whose
/// dead-letter exchange is of type headers, holding one persistent message whose headers
/// nest 15,000 tables deep. The older broker recovered it, and when the TTL fired,
/// decoding the headers to route the dead letter overflowed the stack: abort, restart,
/// abort. Nothing read back from the store can crash the broker now, and the message
/// it cannot route is set aside in quarantine/, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_with_pathological_headers_cannot_crash_the_broker() {
    if skip_external() {
        return;
    }
    let dir = fixture("deep-headers-dead-letter");
    let mut broker = Broker::spawn_in(dir, &[]);
    {
        let (_conn, ch) = broker.channel().await;
        assert_eq!(
            message_count(&ch, "ttl").await,
            1,
            "the message was recovered"
        );
        // The TTL fires 3 s after start; dead-lettering meets the headers then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while message_count(&ch, "ttl").await > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the message never expired"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(broker.is_alive());
        assert_eq!(message_count(&ch, "sink").await, 0);
    }
    assert!(broker.is_alive(), "the broker survived the expiry");
    // The message it could not dead-letter is not lost: set aside, whole, in quarantine/.
    let quarantine = broker.data_dir().unwrap().join("quarantine");
    let kept: Vec<_> = std::fs::read_dir(&quarantine)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(
        kept.len(),
        1,
        "set aside in {}: {kept:?}",
        quarantine.display()
    );
    let size = std::fs::metadata(&kept[0]).unwrap().len();
    assert!(
        size > 15_000 * 5,
        "the whole message is kept ({size} bytes)"
    );
    // And a restart after it is an ordinary one.
    let dir = broker.stop().0;
    let broker = Broker::spawn_in(dir, &[]);
    let (_conn, ch) = broker.channel().await;
    assert_eq!(message_count(&ch, "ttl").await, 0);
}

/// Lines of a warrenctl listing, without its header lines.
fn rows(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.contains('\t'))
        .filter(|l| {
            !["name\t", "user\t", "vhost\t", "source_name\t"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .map(str::to_owned)
        .collect()
}

/// A data directory in format 1 (warren up to c81b744 kept exchanges, queues and
/// bindings in topology.log, users, vhosts, permissions and limits in access.json, and
/// policies in policies.json; the fixture was written by that binary with
/// tests/fixtures/make-datadir-v1.sh) starts on today's binary with all of it, its old
/// files set aside, and from then on lives in meta.log alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_data_dir_is_migrated_with_everything_in_it() {
    if skip_external() {
        return;
    }
    let dir = fixture("datadir-v1");
    let broker = Broker::spawn_in(dir.clone(), &[]);
    let ctl = |args: &[&str]| rows(&warrenctl(&dir, args));
    assert_eq!(
        ctl(&["list_users"]),
        ["admin\t[administrator]", "alice\t[management, policymaker]"],
        "the users, and no guest: it was deleted"
    );
    assert_eq!(
        ctl(&["list_vhosts", "name", "description", "tags"]),
        ["/\tDefault virtual host\t[]", "app\tthe app\t[prod, eu]"]
    );
    assert_eq!(
        ctl(&["list_permissions", "-p", "app"]),
        ["admin\t.*\t.*\t.*", "alice\t^alice-.*\t.*\t.*"]
    );
    assert_eq!(
        ctl(&["list_topic_permissions", "-p", "app"]),
        ["alice\tamq.topic\t^alice\\.\t.*"]
    );
    assert_eq!(
        ctl(&["list_vhost_limits", "-p", "app"]),
        ["app\t{\"max-queues\":50}"]
    );
    assert_eq!(
        ctl(&["list_user_limits"]),
        ["alice\t{\"max-connections\":7}"]
    );
    assert_eq!(
        ctl(&["list_policies", "-p", "app"]),
        ["app\tbounded\t^alice-\tqueues\t[{\"max-length\",500}]\t3"]
    );
    assert_eq!(
        ctl(&["list_operator_policies", "-p", "app"]),
        ["app\tcap\t.*\tqueues\t[{\"max-length-bytes\",1048576}]\t0"]
    );
    assert_eq!(
        ctl(&[
            "list_queues",
            "-p",
            "app",
            "name",
            "messages",
            "policy",
            "operator_policy"
        ]),
        ["alice-work\t1\tbounded\tcap"],
        "the queue, its message, and the policies applied to it"
    );
    assert_eq!(
        ctl(&["list_bindings", "-p", "/"]),
        [
            "\texchange\torders\tqueue\torders\t[]",
            "events\texchange\torders\tqueue\torder.*\t[]"
        ]
    );
    // The password hashes came across: both users log in with their passwords.
    {
        let conn = connect(&broker.url_with("admin", "adminpw", "%2f")).await;
        let ch = within(conn.create_channel()).await.unwrap();
        let got: Vec<String> = drain(&ch, "orders")
            .await
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(got, ["order 1", "order 2", "order 3"]);
        let conn = connect(&broker.url_with("alice", "s3cret", "app")).await;
        let ch = within(conn.create_channel()).await.unwrap();
        let got: Vec<String> = drain(&ch, "alice-work")
            .await
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(got, ["job"]);
    }
    assert!(
        try_connect(&broker.url()).await.is_err(),
        "guest stays deleted"
    );
    // Format 1's files are set aside, not deleted; meta.toml says this binary's format.
    for f in ["topology.log", "access.json", "policies.json"] {
        assert!(!dir.join(f).exists(), "{f} moved");
        assert!(dir.join("migrated-format-1").join(f).exists(), "{f} kept");
    }
    let meta = std::fs::read_to_string(dir.join("meta.toml")).unwrap();
    assert!(meta.contains("format = 3"), "{meta}");
    // A change after the migration, then restarts: all of it from meta.log alone.
    warrenctl(&dir, &["clear_policy", "-p", "app", "bounded"]);
    warrenctl(&dir, &["delete_user", "alice"]);
    let broker = Broker::spawn_in(broker.crash(), &[]);
    let broker = Broker::spawn_in(broker.stop().0, &[]);
    assert_eq!(ctl(&["list_users"]), ["admin\t[administrator]"]);
    assert_eq!(ctl(&["list_policies", "-p", "app"]), Vec::<String>::new());
    assert_eq!(ctl(&["list_operator_policies", "-p", "app"]).len(), 1);
    assert_eq!(
        ctl(&["list_permissions", "-p", "app"]),
        ["admin\t.*\t.*\t.*"],
        "alice's permissions went with her"
    );
    assert_eq!(
        ctl(&["list_topic_permissions", "-p", "app"]),
        Vec::<String>::new()
    );
    assert_eq!(
        ctl(&["list_queues", "-p", "/", "name", "messages"]),
        ["orders\t0"]
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data directory in format 2 (warren up to 6fbf614, before compaction; made with
/// tests/fixtures/make-datadir-v2.sh): persistent messages over many 4 KB segments,
/// `pinned` holding every tenth of them (also routed to `busy`, which consumed most),
/// three of `busy`'s delivered and not acked. Today's binary reads the journal as it
/// is, records format 3, and compacts the old segments as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_data_dir_is_read_and_compacted() {
    if skip_external() {
        return;
    }
    let dir = fixture("datadir-v2");
    let old_segments = segments(&dir).len();
    // Default segments (64 MiB): the fixture's 4 KB files are small ones, to be merged.
    let broker = Broker::spawn_in(dir.clone(), &[]);
    let meta = std::fs::read_to_string(dir.join("meta.toml")).unwrap();
    assert!(meta.contains("format = 3"), "{meta}");
    let (_conn, ch) = broker.channel().await;
    let numbers = |got: Vec<(String, bool)>| -> Vec<(u32, bool)> {
        got.into_iter()
            .map(|(b, r)| (b[..4].parse().unwrap(), r))
            .collect()
    };
    // Drain busy first: what is left of the journal is then pinned's share. Format 2
    // lost acks: it deleted a segment once its own messages were gone, with the acks
    // in it that named messages in older segments still on disk. The fixture shows it
    // (the binary that wrote it brings back 22..=163 too, though they were acked), and
    // what is lost is lost; what format 3 must do is read what is there.
    let busy = numbers(drain(&ch, "busy").await);
    let expected_busy: Vec<u32> = (22..=163).chain(180..200).collect();
    assert_eq!(
        busy.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        expected_busy
    );
    let redelivered: Vec<u32> = busy.iter().filter(|(_, r)| *r).map(|(n, _)| *n).collect();
    assert!(
        [180, 181, 182].iter().all(|n| redelivered.contains(n))
            && !redelivered.iter().any(|n| *n > 182),
        "the three delivered before the upgrade come back redelivered: {redelivered:?}"
    );
    // Compaction rewrites and merges the old segments: a few files hold pinned's twenty.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = segments(&dir).len();
        if now <= 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old segments compacted: {old_segments} -> {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pinned = numbers(drain(&ch, "pinned").await);
    let expected: Vec<(u32, bool)> = (0..200).step_by(10).map(|n| (n, false)).collect();
    assert_eq!(pinned, expected);
    assert!(
        old_segments > 10,
        "the fixture spans many segments: {old_segments}"
    );
}
