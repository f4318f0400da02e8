//! Running as a service: systemd's notify protocol, the shipped unit file, signals.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Datagrams received on `socket` until one contains `want` (or the wait runs out).
fn recv_until(socket: &UnixDatagram, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == want);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no {want} within 10 s; got {seen:?}");
}

#[test]
fn notifies_systemd_ready_then_stopping_on_sigterm() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let broker = Broker::spawn_in_env(
        dir.join("data"),
        &[],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let ready = recv_until(&socket, "READY=1");
    let last = ready.last().unwrap();
    assert!(
        last.contains(&format!("STATUS=AMQP listening on {}", broker.addr())),
        "READY carries a status: {last}"
    );
    assert!(
        last.contains(&format!("MAINPID={}", broker.pid())),
        "{last}"
    );
    let (_, status) = broker.stop_within(Duration::from_secs(10));
    recv_until(&socket, "STOPPING=1");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
#[test]
fn pings_the_watchdog_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    if is_external() {
        return;
    }
    let name = unique("warren-notify-abstract");
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let dir = scratch("warren-watchdog");
    let notify = format!("@{name}");
    let broker = Broker::spawn_in_env(
        dir.join("data"),
        &[],
        // 200 ms: a ping every 100 ms.
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "200000")],
    );
    recv_until(&socket, "READY=1");
    let started = Instant::now();
    recv_until(&socket, "WATCHDOG=1");
    recv_until(&socket, "WATCHDOG=1");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Proves that a single node stopped with `warrenctl stop_app` (the same process, only
/// its control socket up) still pings systemd's watchdog, which would otherwise kill it
/// after `WatchdogSec`, and does not tell systemd it is stopping.
#[test]
fn a_stopped_app_still_pings_the_watchdog() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-watchdog-stopped");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let data = dir.join("data");
    let broker = Broker::spawn_in_env(
        data.clone(),
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    recv_until(&socket, "READY=1");
    let out = std::process::Command::new(warrenctl_bin())
        .arg("--data-dir")
        .arg(&data)
        .arg("stop_app")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The stopped image says it is up, then pings.
    let seen = recv_until(&socket, "READY=1");
    assert!(
        !seen.iter().any(|m| m.contains("STOPPING=1")),
        "stop_app told systemd the service stops: {seen:?}"
    );
    recv_until(&socket, "WATCHDOG=1");
    recv_until(&socket, "WATCHDOG=1");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_notify_socket_nothing_changes() {
    if is_external() {
        return;
    }
    // The harness itself runs warren without NOTIFY_SOCKET; a stop is still clean.
    let broker = Broker::start();
    let (_, status) = broker.stop_within(Duration::from_secs(10));
    assert!(status.success());
}

/// `systemd-analyze verify` on the shipped unit, with ExecStart pointed at the binary
/// under test (the unit names /usr/bin/warren, which is not installed here).
#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed (apt package systemd)");
        return;
    };
    if !out.status.success() {
        eprintln!("skipped: systemd-analyze does not run here");
        return;
    }
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/warren.service"),
    )
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/warren --config /etc/warren/warren.toml"));
    assert!(unit.contains("Type=notify"));
    let dir = scratch("warren-unit");
    let path = dir.join("warren.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/warren", env!("CARGO_BIN_EXE_warren")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the unit itself; the container's own unit files (and a missing
    // running systemd) are not ours to judge.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("warren.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {stderr}");
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
}

// ---- graceful shutdown ----

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Messages in a durable queue, by a passive declare.
async fn depth(ch: &Channel, queue: &str) -> u32 {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("passive declare")
    .message_count()
}

/// RabbitMQ closes every client with this on `rabbitmqctl stop` / SIGTERM
/// (rabbit_reader, on its supervisor's shutdown): the text clients show users.
const SHUTDOWN_TEXT: &str =
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_320_exits_0_and_keeps_every_confirmed_message() {
    if is_external() {
        return;
    }
    let broker = Broker::start();
    let queue = unique("shutdown");
    let (conn, ch) = broker.channel().await;
    within(ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    // A publisher that keeps going through the shutdown, counting what was confirmed.
    let confirmed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let publisher = {
        let (ch, queue, confirmed) = (ch.clone(), queue.clone(), confirmed.clone());
        tokio::spawn(async move {
            for i in 0u32.. {
                let Ok(Ok(p)) = tokio::time::timeout(
                    WAIT,
                    ch.basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        format!("m{i}").as_bytes(),
                        persistent(),
                    ),
                )
                .await
                else {
                    return;
                };
                match tokio::time::timeout(WAIT, p).await {
                    Ok(Ok(c)) if c.is_ack() => {
                        confirmed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        })
    };
    while confirmed.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second client that only watches for the close.
    let addr = broker.addr();
    let watcher = tokio::task::spawn_blocking(move || {
        let (mut raw, _) = raw::RawConn::open(&addr);
        raw.set_read_timeout(Duration::from_secs(10));
        raw.expect_connection_close()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    broker.signal("TERM");
    let close = watcher.await.unwrap();
    assert_eq!(close.code, 320);
    assert_eq!(close.text, SHUTDOWN_TEXT);
    let (dir, status) =
        tokio::task::spawn_blocking(move || broker.wait_within(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.success(), "exit status: {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "took {:?}",
        asked.elapsed()
    );
    let _ = within(publisher).await;
    assert!(!conn.status().connected(), "the publisher was disconnected");
    let confirmed = confirmed.load(std::sync::atomic::Ordering::SeqCst);

    let broker = Broker::spawn_in(dir, &[]);
    let (_conn, ch) = broker.channel().await;
    let kept = depth(&ch, &queue).await;
    assert!(
        kept >= confirmed,
        "{confirmed} messages were confirmed, {kept} survived the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_log_file_and_never_stops_the_broker() {
    if is_external() {
        return;
    }
    let dir = scratch("warren-sighup");
    let log = dir.join("warren.log");
    let set = format!("log.file={}", log.display());
    let broker = Broker::spawn_in_env(dir.join("data"), &["--set", &set], &[]);
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("warren started"));
    std::fs::rename(&log, dir.join("warren.log.1")).unwrap();
    broker.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .map(|t| t.contains("reopened log file"))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "no new log file after SIGHUP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.signal("HUP");
    let (conn, _ch) = broker.channel().await;
    drop(conn);
    let (_, status) =
        tokio::task::spawn_blocking(move || broker.stop_within(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("shutting down"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_log_file_is_only_logged() {
    if is_external() {
        return;
    }
    let mut broker = Broker::start();
    broker.signal("HUP");
    broker.signal("HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(broker.is_alive());
    let (_conn, ch) = broker.channel().await;
    let q = unique("after-hup");
    within(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("still serving after SIGHUP");
}
