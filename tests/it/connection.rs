//! Connection and channel lifecycle: handshake, authentication, vhosts,
//! tuning, heartbeats, timeouts, channel open/close/flow.
use crate::common::raw::{self, lookup, Dec, Enc, RawConn, Value};
use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn connection_start_advertises_server_properties_and_capabilities() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    let start = c.read_start();
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let props = &start.server_properties;
    for key in [
        "product",
        "version",
        "platform",
        "cluster_name",
        "copyright",
        "information",
    ] {
        match lookup(props, key) {
            Some(Value::LongStr(s)) => assert!(!s.is_empty(), "{key} is empty"),
            other => panic!("server property {key}: expected a long string, got {other:?}"),
        }
    }
    let caps = lookup(props, "capabilities")
        .expect("capabilities table")
        .as_table();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(
            lookup(caps, cap),
            Some(&Value::Bool(true)),
            "capability {cap}"
        );
    }
    let mechs: Vec<&str> = start.mechanisms.split(' ').collect();
    assert!(mechs.contains(&"PLAIN"), "{:?}", start.mechanisms);
    assert!(mechs.contains(&"AMQPLAIN"), "{:?}", start.mechanisms);
    assert_eq!(start.locales, "en_US");
}

#[test]
fn connection_tune_proposes_default_limits() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok_plain("guest", "guest");
    let tune = c.read_tune();
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, 131072, 60)
    );
}

#[test]
fn full_handshake_with_plain_succeeds() {
    let broker = Broker::start();
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(1);
    c.close();
}

#[test]
fn amqplain_login_succeeds() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    // AMQPLAIN response: field-table entries without the length prefix
    let resp = raw::table_entries(&[
        ("LOGIN", Value::LongStr(b"guest".to_vec())),
        ("PASSWORD", Value::LongStr(b"guest".to_vec())),
    ]);
    c.send_start_ok("AMQPLAIN", &resp);
    let tune = c.read_tune();
    c.send_tune_ok(raw::Tune {
        heartbeat: 0,
        ..tune
    });
    c.send_open("/");
    c.expect_method(0, 10, 41);
    c.close();
}

#[test]
fn wrong_password_closes_connection_403() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok_plain("guest", "wrong-password");
    let close = c.expect_connection_close();
    assert_eq!(
        (close.code, close.text.as_str()),
        (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
        )
    );
    c.expect_eof(WAIT);
}

#[test]
fn unknown_user_closes_connection_403() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok_plain("no-such-user", "x");
    let close = c.expect_connection_close();
    assert_eq!(
        (close.code, close.text.as_str()),
        (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
        )
    );
}

#[test]
fn wrong_password_with_amqplain_closes_connection_403() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    let resp = raw::table_entries(&[
        ("LOGIN", Value::LongStr(b"guest".to_vec())),
        ("PASSWORD", Value::LongStr(b"nope".to_vec())),
    ]);
    c.send_start_ok("AMQPLAIN", &resp);
    let close = c.expect_connection_close();
    assert_eq!(
        (close.code, close.text.as_str()),
        (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. For details see the broker logfile."
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_sees_wrong_password_as_access_refused() {
    let broker = Broker::start();
    let r = within(try_connect(&broker.url_with("guest", "bad", "%2f"))).await;
    assert_connection_closed(
        r.map(|_| ()),
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
    );
}

#[test]
fn unknown_auth_mechanism_closes_socket() {
    // RabbitMQ 3.10 sends no connection.close here: it logs the error and
    // closes the socket after a ~3 s "silent close" delay.
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok("FOO", b"whatever");
    c.expect_eof(Duration::from_secs(10));
}

#[test]
fn opening_missing_vhost_closes_connection_530() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok_plain("guest", "guest");
    let tune = c.read_tune();
    c.send_tune_ok(raw::Tune {
        heartbeat: 0,
        ..tune
    });
    c.send_open("no-such-vhost");
    let close = c.expect_connection_close();
    assert_eq!(
        (
            close.code,
            close.text.as_str(),
            close.class_id,
            close.method_id
        ),
        (530, "NOT_ALLOWED - vhost no-such-vhost not found", 10, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_sees_missing_vhost_as_not_allowed() {
    let broker = Broker::start();
    let r = within(try_connect(&broker.url_with("guest", "guest", "nope"))).await;
    assert_connection_closed(r.map(|_| ()), 530, "NOT_ALLOWED - vhost nope not found");
}

#[test]
fn wrong_protocol_header_gets_supported_header_and_socket_closed() {
    let broker = Broker::start();
    for bad in [
        &b"AMQP\x01\x01\x00\x0a"[..], // AMQP 0-10
        &b"AMQP\x00\x00\x08\x00"[..], // AMQP 0-8
        &b"GET / HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut c = RawConn::connect(&broker.addr());
        c.send(bad).unwrap();
        let got = c.expect_eof(WAIT);
        assert_eq!(got, b"AMQP\x00\x00\x09\x01", "reply to {bad:?}");
    }
}

#[test]
fn client_sending_only_protocol_header_is_disconnected_after_handshake_timeout() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    let t0 = Instant::now();
    c.send_protocol_header();
    c.read_start();
    // never answer connection.start: the 10 s handshake timeout applies
    c.expect_eof(Duration::from_secs(20));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(8),
        "closed too early: {waited:?}"
    );
}

#[test]
fn server_sends_heartbeats_and_closes_silent_client() {
    let broker = Broker::start();
    let (mut c, _) = RawConn::open_with_heartbeat(&broker.addr(), 1);
    let t0 = Instant::now();
    let mut heartbeats = 0;
    c.set_read_timeout(Duration::from_secs(15));
    loop {
        match c.read_frame() {
            Ok(f) if f.typ == raw::FRAME_HEARTBEAT => {
                assert_eq!((f.channel, f.payload.len()), (0, 0));
                heartbeats += 1;
            }
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("server did not close a silent connection within 15 s")
            }
            Err(_) => break, // EOF / reset
        }
    }
    let waited = t0.elapsed();
    assert!(heartbeats >= 1, "no heartbeat received");
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(10),
        "closed after {waited:?}"
    );
}

#[test]
fn client_heartbeats_keep_connection_alive() {
    let broker = Broker::start();
    let (mut c, _) = RawConn::open_with_heartbeat(&broker.addr(), 1);
    let until = Instant::now() + Duration::from_secs(4);
    c.set_read_timeout(Duration::from_millis(300));
    while Instant::now() < until {
        c.send(&raw::heartbeat_frame())
            .expect("connection still open");
        match c.read_frame() {
            Ok(f) => assert_eq!(f.typ, raw::FRAME_HEARTBEAT, "{f:?}"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("connection dropped despite heartbeats: {e}"),
        }
    }
    c.set_read_timeout(WAIT);
    c.open_channel(1);
    c.close();
}

#[test]
fn channel_open_and_close_and_reopen_same_number() {
    let broker = Broker::start();
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(5);
    let args = Enc::new().u16(200).shortstr("bye").u16(0).u16(0).done();
    c.send_method(5, 20, 40, &args);
    c.expect_method(5, 20, 41);
    c.open_channel(5);
    c.close();
}

#[test]
fn opening_an_already_open_channel_closes_connection_504() {
    let broker = Broker::start();
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(1);
    c.send_method(1, 20, 10, &Enc::new().shortstr("").done());
    let close = c.expect_connection_close();
    assert_eq!(
        (
            close.code,
            close.text.as_str(),
            close.class_id,
            close.method_id
        ),
        (504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
    );
}

#[test]
fn opening_more_channels_than_channel_max_closes_connection_530() {
    // RabbitMQ 3.10 limits the NUMBER of open channels to the negotiated
    // channel_max (it does not check channel numbers: channel.open on
    // channel 2048 or 65535 succeeds with channel_max 2047).
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok_plain("guest", "guest");
    let tune = c.read_tune();
    c.send_tune_ok(raw::Tune {
        channel_max: 2,
        frame_max: tune.frame_max,
        heartbeat: 0,
    });
    c.send_open("/");
    c.expect_method(0, 10, 41);
    // Numbers are not limited: 65535 is a valid channel under channel_max 2.
    c.open_channel(1);
    c.open_channel(65535);
    c.send_method(3, 20, 10, &Enc::new().shortstr("").done());
    let close = c.expect_connection_close();
    assert_eq!(
        (close.code, close.text.as_str(), close.class_id, close.method_id),
        (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
            0,
            0
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_false_pauses_deliveries_until_resumed() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    if is_external() {
        // RabbitMQ 3.x does not implement client-initiated flow control: it closes
        // the connection with 540. warren implements it, as AMQP 0-9-1 specifies
        // (a deliberate, documented difference).
        let r = within(ch.channel_flow(ChannelFlowOptions { active: false })).await;
        assert_connection_closed(r, 540, "NOT_IMPLEMENTED - active=false");
        assert_connection_dead(&conn).await;
        return;
    }
    let q = unique("flow");
    declare_queue(&ch, &q).await;
    let mut consumer = consume(&ch, &q, true).await;
    let active = within(ch.channel_flow(ChannelFlowOptions { active: false }))
        .await
        .unwrap();
    assert!(!active);
    let publisher = conn.create_channel().await.unwrap();
    for body in ["a", "b"] {
        publish(&publisher, "", &q, body.as_bytes()).await;
    }
    assert_no_delivery(&mut consumer).await;
    assert_eq!(message_count(&publisher, &q).await, 2);
    within(ch.channel_flow(ChannelFlowOptions { active: true }))
        .await
        .unwrap();
    assert_eq!(body_str(&next_delivery(&mut consumer).await), "a");
    assert_eq!(body_str(&next_delivery(&mut consumer).await), "b");
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_true_from_client_is_acknowledged() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let active = within(ch.channel_flow(ChannelFlowOptions { active: true }))
        .await
        .unwrap();
    assert!(active);
    assert_connection_alive(&conn).await;
}

#[test]
fn client_connection_close_gets_close_ok() {
    let broker = Broker::start();
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(1);
    let args = Enc::new().u16(200).shortstr("bye").u16(0).u16(0).done();
    c.send_method(0, 10, 50, &args);
    c.expect_method(0, 10, 51);
    // (RabbitMQ then waits for the client to close the TCP connection.)
}

#[test]
fn tune_ok_with_frame_max_below_minimum_closes_socket() {
    // RabbitMQ 3.10 refuses frame_max < 4096 but sends no connection.close
    // during tuning: the socket is closed after a ~3 s silent-close delay.
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok_plain("guest", "guest");
    let tune = c.read_tune();
    c.send_tune_ok(raw::Tune {
        frame_max: 1024,
        ..tune
    });
    c.expect_eof(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_connects_and_closes_cleanly() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    assert_eq!(conn.configuration().frame_max(), 131072);
    assert_eq!(conn.configuration().channel_max(), 2047);
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    within(conn.close(200, "bye".into())).await.unwrap();
    let _ = Dec::new(&[]);
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn warrenctl(broker: &Broker, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::common::warrenctl_bin())
        .arg("--data-dir")
        .arg(broker.data_dir().unwrap())
        .args(args)
        .output()
        .unwrap()
}

/// Out of file descriptors: new clients are refused at once (not left hanging), the
/// accept loops do not spin, connections already open carry on, and warrenctl still
/// works, so an operator can close connections; once some close, clients get in again.
#[test]
fn running_out_of_descriptors_refuses_new_clients_and_keeps_the_rest() {
    if is_external() {
        return;
    }
    let broker = Broker::start();
    let pid = broker.pid();
    // A descriptor limit a few dozen above what the broker holds now.
    let limit = (open_descriptors(pid) + 24) as u64;
    let l = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit on our own child with a valid struct.
    assert_eq!(
        unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &l, std::ptr::null_mut()) },
        0
    );

    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() < 64, "the limit never bit");
        let mut c = RawConn::connect(&broker.addr());
        c.set_read_timeout(WAIT);
        c.send_protocol_header();
        match c.read_frame() {
            Ok(_) => {
                // Logged in, so that warrenctl lists it.
                c.send_start_ok_plain("guest", "guest");
                let tune = c.read_tune();
                c.send_tune_ok(tune);
                c.send_open("/");
                c.expect_method(0, 10, 41);
                held.push(c);
            }
            Err(e) => break e,
        }
    };
    // Refused, not timed out.
    assert_ne!(refused.kind(), std::io::ErrorKind::WouldBlock, "{refused}");
    assert_ne!(refused.kind(), std::io::ErrorKind::TimedOut, "{refused}");

    // More clients knock, on every port; the broker does not spin meanwhile.
    let before = cpu_ticks(pid);
    for _ in 0..20 {
        for addr in [broker.addr(), broker.management_addr().to_owned()] {
            let _ = std::net::TcpStream::connect(&addr);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 50,
        "{spent} ticks of CPU in a second while out of descriptors"
    );

    // warrenctl gets through on the reserve descriptor.
    let out = warrenctl(&broker, &["-q", "list_connections", "pid"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(pids.lines().count() >= held.len() - 1, "{pids}");

    // An open connection is unaffected.
    let mut first = held.remove(0);
    first.open_channel(1);
    first.close();
    drop(held.drain(..4));
    // Descriptors are back: clients connect again.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = RawConn::connect(&broker.addr());
        c.set_read_timeout(WAIT);
        c.send_protocol_header();
        if c.read_frame().is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after connections closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A start-ok whose payload (class and method ids, then arguments) is `size` bytes:
/// PLAIN guest/guest, with client properties padded to fit.
fn start_ok_of_size(size: usize) -> Vec<u8> {
    let tail = Enc::new()
        .shortstr("PLAIN")
        .longstr(b"\0guest\0guest")
        .shortstr("en_US")
        .done();
    // ids (4) + table length (4) + key "pad" (1 + 3) + tag and length (5) + pad + tail
    let pad = size - (4 + 4 + 4 + 5 + tail.len());
    let mut args = Enc::new()
        .table(&[("pad", Value::LongStr(vec![b'x'; pad]))])
        .done();
    args.extend_from_slice(&tail);
    let mut payload = Enc::new().u16(10).u16(11).done();
    payload.extend_from_slice(&args);
    assert_eq!(payload.len(), size);
    payload
}

/// Before tune-ok no frame_max is agreed: frames are held to the minimum frame size,
/// 4096 bytes of payload (RabbitMQ 3.10: `frame_too_large`; it closes the socket without
/// a close frame, warren sends 501 first). A start-ok of 4096 bytes is taken.
#[test]
fn frames_before_tuning_are_at_most_4096_bytes() {
    let broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send(&raw::frame(raw::FRAME_METHOD, 0, &start_ok_of_size(4096)))
        .unwrap();
    c.read_tune();
    drop(c);

    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    let _ = c.send(&raw::frame(raw::FRAME_METHOD, 0, &start_ok_of_size(4097)));
    // Until the connection ends: no tune, and a close (if any) is a frame error.
    while let Ok(f) = c.read_frame() {
        match f.method() {
            Some((10, 30)) => panic!("a 4097-byte start-ok was taken"),
            Some((10, 50)) => {
                let close = raw::parse_close(f.args());
                assert_eq!(close.code, 501, "{close:?}");
                assert!(close.text.contains("frame_too_large"), "{close:?}");
                break;
            }
            _ => {}
        }
    }
}
