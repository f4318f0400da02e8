//! Shared harness for warren's integration tests.
//!
//! Every test starts its own warren broker (`Broker::start()`), unless the
//! environment variable `WARREN_TEST_AMQP_URL` is set, in which case all tests
//! run against that (shared, external) broker -- this is how the suite is
//! validated against RabbitMQ, the reference implementation.
//!
//! Because an external broker is shared by all tests, every test uses unique
//! names (see [`unique`]) and deletes what it declares.
#![allow(dead_code, unused_imports)]

pub mod raw;

use std::fmt::Debug;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use futures_lite::StreamExt;
pub use lapin::{
    message::{BasicGetMessage, Delivery},
    options::*,
    protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError},
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
    BasicProperties, Channel, ChannelState, Connection, ConnectionProperties, Consumer,
    ExchangeKind, Queue,
};

/// Default upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long we watch for something that must NOT happen (e.g. a delivery
/// beyond the prefetch limit).  Kept short; it only bounds negative checks.
pub const QUIET: Duration = Duration::from_millis(400);

/// The env var that points the suite at an external broker.
pub const EXTERNAL_URL_ENV: &str = "WARREN_TEST_AMQP_URL";

/// True when the suite runs against an external broker (e.g. RabbitMQ).
pub fn is_external() -> bool {
    std::env::var(EXTERNAL_URL_ENV)
        .map(|v| !v.is_empty())
        .unwrap_or(false)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique across tests, processes and runs: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// A broker under test: either a freshly spawned warren, or the external
/// broker named by `WARREN_TEST_AMQP_URL`.
pub struct Broker {
    url: String,
    addr: String,
    tls_addr: Option<String>,
    metrics_tls_addr: Option<String>,
    /// Every `warren listening KEY=ADDR` line before the ready line.
    listening: Vec<(String, String)>,
    child: Option<Child>,
    data_dir: Option<PathBuf>,
    /// The Prometheus endpoint's address, when it is on.
    metrics_addr: Option<String>,
    /// The management HTTP API's address, when it is on.
    management_addr: Option<String>,
}

impl Broker {
    /// Start a warren broker on an ephemeral port (or use the external one).
    pub fn start() -> Broker {
        if let Ok(url) = std::env::var(EXTERNAL_URL_ENV) {
            if !url.is_empty() {
                let addr = addr_from_url(&url);
                return Broker {
                    url,
                    addr,
                    tls_addr: None,
                    metrics_tls_addr: None,
                    listening: Vec::new(),
                    child: None,
                    data_dir: None,
                    metrics_addr: None,
                    management_addr: None,
                };
            }
        }
        Self::spawn_warren(&[])
    }

    /// Spawn warren with extra command-line arguments.
    pub fn spawn_warren(extra_args: &[&str]) -> Broker {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let data_dir =
            std::env::temp_dir().join(format!("warren-test-{}-{}", std::process::id(), n));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        Self::spawn_in(data_dir, extra_args)
    }

    /// Spawn warren on an existing data directory (restart tests).
    pub fn spawn_in(data_dir: PathBuf, extra_args: &[&str]) -> Broker {
        Self::spawn_in_env(data_dir, extra_args, &[])
    }

    /// Spawn warren on a data directory with extra environment variables.
    pub fn spawn_in_env(data_dir: PathBuf, extra_args: &[&str], envs: &[(&str, &str)]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            // Many brokers run at once: the Prometheus port is picked too, not 15692.
            .env("WARREN_METRICS_LISTEN", "127.0.0.1:0")
            .env("WARREN_MANAGEMENT_LISTEN", "127.0.0.1:0")
            .envs(envs.iter().copied())
            .arg("--amqp-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn warren binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining stdout for the child's whole life so it never
            // blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        let _ = tx.send(line);
                    }
                    Err(_) => break,
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut metrics_addr = None;
        let mut management_addr = None;
        let mut metrics_tls_addr = None;
        let mut listening = Vec::new();
        let (addr, tls_addr) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                panic!("warren did not print its ready line within 10 s");
            }
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    // "warren ready[ amqp=HOST:PORT][ amqps=HOST:PORT]" (amqp= is
                    // missing only when the plain listener is off)
                    if let Some(rest) = line.trim().strip_prefix("warren ready") {
                        let value = |key: &str| {
                            rest.split_whitespace()
                                .find_map(|w| w.strip_prefix(key))
                                .map(str::to_string)
                        };
                        break (value("amqp=").unwrap_or_default(), value("amqps="));
                    }
                    if let Some(rest) = line.trim().strip_prefix("warren listening prometheus=") {
                        metrics_addr = Some(rest.trim().to_string());
                    }
                    if let Some((key, at)) = line
                        .trim()
                        .strip_prefix("warren listening ")
                        .and_then(|kv| kv.split_once('='))
                    {
                        listening.push((key.to_owned(), at.to_owned()));
                    }
                    if let Some(rest) = line.trim().strip_prefix("warren listening management=") {
                        management_addr = Some(rest.trim().to_string());
                    }
                    if let Some(rest) = line.trim().strip_prefix("warren listening prometheus_tls=")
                    {
                        metrics_tls_addr = Some(rest.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("warren exited before becoming ready: {status}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!("warren closed stdout before becoming ready: {status:?}");
                }
            }
        };
        Broker {
            url: format!("amqp://guest:guest@{addr}/%2f"),
            addr,
            tls_addr,
            metrics_tls_addr,
            listening,
            child: Some(child),
            data_dir: Some(data_dir),
            metrics_addr,
            management_addr,
        }
    }

    /// The amqps listener's address, when the broker was started with `[tls]`.
    pub fn tls_addr(&self) -> Option<&str> {
        self.tls_addr.as_deref()
    }

    /// The HTTPS Prometheus endpoint, when started with `metrics.tls_listen`.
    /// The address a `warren listening KEY=ADDR` line gave for `key`.
    pub fn listening(&self, key: &str) -> Option<&str> {
        self.listening
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| a.as_str())
    }

    pub fn metrics_tls_addr(&self) -> Option<&str> {
        self.metrics_tls_addr.as_deref()
    }

    /// The Prometheus endpoint (host:port) of a spawned warren.
    pub fn metrics_addr(&self) -> &str {
        self.metrics_addr
            .as_deref()
            .expect("a spawned warren with metrics.listen set")
    }

    /// The management HTTP API (host:port) of a spawned warren.
    pub fn management_addr(&self) -> &str {
        self.management_addr
            .as_deref()
            .expect("a spawned warren with management.listen set")
    }

    /// Did the spawned warren announce a management API?
    pub fn has_management(&self) -> bool {
        self.management_addr.is_some()
    }

    /// The process id of a spawned warren.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a spawned warren").id()
    }

    /// Send a signal (`kill -<name>`) to a spawned warren.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Stop with SIGTERM and wait at most `limit`; panics if warren is still running then.
    pub fn stop_within(self, limit: Duration) -> (PathBuf, std::process::ExitStatus) {
        self.signal("TERM");
        self.wait_within(limit)
    }

    /// Wait for a spawned warren to exit (after a signal), at most `limit`.
    pub fn wait_within(mut self, limit: Duration) -> (PathBuf, std::process::ExitStatus) {
        let mut child = self.child.take().expect("a spawned warren");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for warren") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("warren did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (self.data_dir.take().expect("a spawned warren"), status)
    }

    /// AMQP URL of the default vhost with guest/guest.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `host:port` of the AMQP listener.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// URL with explicit credentials and (already percent-encoded) vhost.
    pub fn url_with(&self, user: &str, pass: &str, vhost_encoded: &str) -> String {
        format!("amqp://{user}:{pass}@{}/{vhost_encoded}", self.addr)
    }

    /// The data directory of a spawned warren (where its control socket is).
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.clone()
    }

    /// Kill the broker with SIGKILL (a crash); keeps the data directory.
    pub fn crash(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.data_dir.take().expect("a spawned warren")
    }

    /// Stop the broker with SIGTERM and wait for it; keeps the data directory.
    pub fn stop(mut self) -> (PathBuf, std::process::ExitStatus) {
        let mut child = self.child.take().expect("a spawned warren");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = child.wait().expect("wait for warren");
        (self.data_dir.take().expect("a spawned warren"), status)
    }

    /// True when this is a warren process started by the test.
    pub fn is_warren(&self) -> bool {
        self.child.is_some()
    }

    /// Is the broker process still alive (always true for external brokers)?
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Open a lapin connection to the default vhost.
    pub async fn connect(&self) -> Connection {
        connect(&self.url).await
    }

    /// Open a connection and one channel on it.
    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = within(conn.create_channel()).await.expect("create channel");
        (conn, ch)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn addr_from_url(url: &str) -> String {
    let rest = url.split("://").nth(1).expect("url has a scheme");
    let authority = rest.split('/').next().unwrap();
    let hostport = authority.rsplit('@').next().unwrap();
    if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    }
}

/// Connect with lapin (panics on failure).
pub async fn connect(url: &str) -> Connection {
    within(try_connect(url)).await.expect("connect")
}

pub async fn try_connect(url: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// Await `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("operation timed out after {WAIT:?}"),
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// (reply code, reply text) of a server-sent channel.close / connection.close.
pub fn amqp_error(e: &lapin::Error) -> Option<(u16, String, bool)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => Some((
            err.get_id(),
            err.get_message().to_string(),
            matches!(err.kind(), AMQPErrorKind::Hard(_)),
        )),
        _ => None,
    }
}

fn expect_amqp_error<T: Debug>(r: lapin::Result<T>, code: u16, text: &str) {
    match r {
        Ok(v) => panic!("expected AMQP error {code} {text:?}, got Ok({v:?})"),
        Err(e) => match amqp_error(&e) {
            Some((c, t, _)) => {
                assert_eq!(
                    (c, t.as_str()),
                    (code, text),
                    "wrong reply code/text (full error: {e:?})"
                );
            }
            None => panic!("expected AMQP error {code} {text:?}, got non-protocol error {e:?}"),
        },
    }
}

/// The operation must fail because the server closed the channel with
/// exactly `code` and `text`.
///
/// Note: lapin classifies errors as soft/hard by reply code (from the AMQP
/// spec), not by whether they came in a channel.close or a
/// connection.close, so this only checks code and text. Use
/// [`assert_connection_alive`] / [`assert_connection_dead`] to check which
/// kind of close it was.
pub fn assert_channel_closed<T: Debug>(r: lapin::Result<T>, code: u16, text: &str) {
    expect_amqp_error(r, code, text)
}

/// The operation must fail because the server closed the connection with
/// exactly `code` and `text` (see the note on [`assert_channel_closed`]).
pub fn assert_connection_closed<T: Debug>(r: lapin::Result<T>, code: u16, text: &str) {
    expect_amqp_error(r, code, text)
}

/// The connection must still work (a channel can be opened and closed).
pub async fn assert_connection_alive(conn: &Connection) {
    let ch = within(conn.create_channel())
        .await
        .expect("connection should still be open");
    within(ch.close(200, "bye".into()))
        .await
        .expect("close probe channel");
}

/// The connection must have been closed by the server.
pub async fn assert_connection_dead(conn: &Connection) {
    let deadline = Instant::now() + WAIT;
    while conn.status().connected() {
        assert!(
            Instant::now() < deadline,
            "connection should have been closed by the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Observes asynchronous channel errors (e.g. after basic.publish or
/// basic.ack, which have no reply): a consumer on a private server-named
/// queue on the same channel receives the channel's close error.
pub struct ChannelWatch {
    consumer: Consumer,
}

impl ChannelWatch {
    pub async fn new(ch: &Channel) -> ChannelWatch {
        let q = within(ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .expect("declare watch queue");
        let consumer = within(ch.basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("consume watch queue");
        ChannelWatch { consumer }
    }

    /// Wait for the channel to be closed by the server; returns the error.
    pub async fn closed(mut self) -> lapin::Error {
        match tokio::time::timeout(WAIT, self.consumer.next()).await {
            Err(_) => panic!("channel was not closed by the server within {WAIT:?}"),
            Ok(None) => panic!("watch consumer ended without an error"),
            Ok(Some(Ok(d))) => panic!("unexpected delivery on the watch queue: {d:?}"),
            Ok(Some(Err(e))) => e,
        }
    }

    /// Wait for the server to close the channel with `code` and `text`.
    pub async fn assert_closed(self, code: u16, text: &str) {
        let e = self.closed().await;
        expect_amqp_error::<()>(Err(e), code, text)
    }

    /// Wait for the server to close the whole connection with `code` and `text`.
    pub async fn assert_connection_closed(self, code: u16, text: &str) {
        let e = self.closed().await;
        expect_amqp_error::<()>(Err(e), code, text)
    }
}

// ---------------------------------------------------------------------------
// Small wrappers
// ---------------------------------------------------------------------------

pub fn no_args() -> FieldTable {
    FieldTable::default()
}

pub fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

pub fn lstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Declare a non-durable, non-exclusive, non-auto-delete queue.
pub async fn declare_queue(ch: &Channel, name: &str) -> Queue {
    within(ch.queue_declare(name.into(), QueueDeclareOptions::default(), no_args()))
        .await
        .expect("queue.declare")
}

pub async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await
    .expect("exchange.declare")
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await
    .expect("queue.bind")
}

/// Publish (no confirm wait).
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await
}

pub async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    ))
    .await
    .expect("basic.publish");
}

pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack }))
        .await
        .expect("basic.get")
}

/// Current message count of a queue (passive declare).
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// Poll until the queue holds exactly `n` ready messages.
pub async fn wait_message_count(ch: &Channel, queue: &str, n: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = message_count(ch, queue).await;
        if c == n {
            return;
        }
        if Instant::now() > deadline {
            panic!("queue {queue} has {c} messages, expected {n}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Does a queue exist? (uses a throw-away channel for the passive declare)
pub async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = within(conn.create_channel()).await.expect("channel");
    let r = within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await;
    match r {
        Ok(_) => {
            let _ = ch.close(200, "bye".into()).await;
            true
        }
        Err(e) => {
            assert_eq!(amqp_error(&e).map(|x| x.0), Some(404), "{e:?}");
            false
        }
    }
}

pub async fn exchange_exists(conn: &Connection, exchange: &str) -> bool {
    let ch = within(conn.create_channel()).await.expect("channel");
    let r = within(ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await;
    match r {
        Ok(_) => {
            let _ = ch.close(200, "bye".into()).await;
            true
        }
        Err(e) => {
            assert_eq!(amqp_error(&e).map(|x| x.0), Some(404), "{e:?}");
            false
        }
    }
}

/// Delete queues on a fresh channel (cleanup; ignores errors).
pub async fn delete_queues(conn: &Connection, queues: &[&str]) {
    if let Ok(Ok(ch)) = tokio::time::timeout(WAIT, conn.create_channel()).await {
        for q in queues {
            let _ = tokio::time::timeout(
                WAIT,
                ch.queue_delete((*q).into(), QueueDeleteOptions::default()),
            )
            .await;
        }
        let _ = tokio::time::timeout(WAIT, ch.close(200, "bye".into())).await;
    }
}

/// Delete exchanges on a fresh channel (cleanup; ignores errors).
pub async fn delete_exchanges(conn: &Connection, exchanges: &[&str]) {
    if let Ok(Ok(ch)) = tokio::time::timeout(WAIT, conn.create_channel()).await {
        for x in exchanges {
            let _ = tokio::time::timeout(
                WAIT,
                ch.exchange_delete((*x).into(), ExchangeDeleteOptions::default()),
            )
            .await;
        }
        let _ = tokio::time::timeout(WAIT, ch.close(200, "bye".into())).await;
    }
}

/// Start a consumer with default options and a server-generated tag.
pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    within(ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .expect("basic.consume")
}

/// Next delivery of a consumer; panics on timeout, error or cancellation.
pub async fn next_delivery(c: &mut Consumer) -> Delivery {
    match tokio::time::timeout(WAIT, c.next()).await {
        Err(_) => panic!("no delivery within {WAIT:?}"),
        Ok(None) => panic!("consumer ended (cancelled) instead of delivering"),
        Ok(Some(Err(e))) => panic!("consumer error instead of delivery: {e:?}"),
        Ok(Some(Ok(d))) => d,
    }
}

/// Assert that a consumer gets nothing during [`QUIET`].
pub async fn assert_no_delivery(c: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET, c.next()).await {
        panic!("expected no delivery, got {item:?}");
    }
}

pub fn body_str(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

/// The warrenctl binary. It is another package of the workspace (crates/ctl), so cargo
/// gives these tests no `CARGO_BIN_EXE_warrenctl`: `cargo test` at the workspace root
/// builds it into the same directory as the broker (that package has tests of its own).
pub fn warrenctl_bin() -> PathBuf {
    let beside = PathBuf::from(env!("CARGO_BIN_EXE_warren")).with_file_name("warrenctl");
    assert!(
        beside.exists(),
        "{} is missing: run `cargo test` at the workspace root, or `cargo build` first",
        beside.display()
    );
    beside
}
