//! The Prometheus endpoint: rabbitmq_prometheus's names and values after real traffic.
use crate::common::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

/// GET `path` from the metrics endpoint: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Samples by series (name with labels, as written), checking the format on the way:
/// every sample's family has TYPE and HELP lines before it.
fn samples(body: &str) -> HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut out = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let name = series.split('{').next().unwrap();
        assert!(typed.contains(name), "{name} has no TYPE line");
        out.insert(series.to_owned(), value.parse().expect("a number"));
    }
    out
}

pub(crate) async fn scrape(broker: &Broker, path: &str) -> HashMap<String, f64> {
    let addr = broker.metrics_addr().to_owned();
    let path = path.to_owned();
    let (status, body) = tokio::task::spawn_blocking(move || http_get(&addr, &path))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    samples(&body)
}

/// Gauges trail the queues by one burst of their work: wait until `series` reads `want`.
async fn wait_for(broker: &Broker, path: &str, series: &str, want: f64) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = scrape(broker, path).await;
        if got.get(series) == Some(&want) || std::time::Instant::now() > deadline {
            assert_eq!(got.get(series), Some(&want), "{series}");
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_follow_traffic() {
    if is_external() {
        return;
    }
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    let (q, idle) = (unique("m-busy"), unique("m-idle"));
    declare_queue(&ch, &q).await;
    declare_queue(&ch, &idle).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for i in 0..10 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    publish(&ch, "", &idle, b"one").await;
    // Unroutable: one dropped, one returned.
    publish(&ch, "amq.direct", "nowhere", b"x").await;
    within(
        within(ch.basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"y",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    within(ch.wait_for_confirms()).await.unwrap();

    // Two by basic.get (one acked), four by a consumer with manual acks (three acked).
    let g = get(&ch, &q, false).await.expect("a message");
    within(ch.basic_ack(g.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    get(&ch, &q, true).await.expect("a message");
    // Refused (no such queue): the channel closes.
    let missing = unique("m-none");
    let r = within(ch.basic_get(missing.as_str().into(), BasicGetOptions::default())).await;
    assert_channel_closed(
        r,
        404,
        &format!("NOT_FOUND - no queue '{missing}' in vhost '/'"),
    );
    let (_conn2, ch2) = broker.channel().await;
    within(ch2.basic_qos(4, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut c = consume(&ch2, &q, false).await;
    let mut last = 0;
    for _ in 0..4 {
        last = next_delivery(&mut c).await.delivery_tag;
    }
    within(ch2.basic_ack(last - 1, BasicAckOptions { multiple: true }))
        .await
        .unwrap();

    // The ack frees three slots of the prefetch: three more go out, leaving one ready.
    let key = "rabbitmq_global_messages_delivered_consume_manual_ack_total{protocol=\"amqp091\"}";
    wait_for(&broker, "/metrics", key, 7.0).await;
    let m = wait_for(&broker, "/metrics", "rabbitmq_queue_messages_unacked", 4.0).await;
    let total =
        |name: &str| m[&format!("rabbitmq_global_messages_{name}_total{{protocol=\"amqp091\"}}")];
    assert_eq!(total("received"), 13.0);
    assert_eq!(total("received_confirm"), 13.0);
    assert_eq!(total("routed"), 11.0);
    assert_eq!(total("unroutable_dropped"), 1.0);
    assert_eq!(total("unroutable_returned"), 1.0);
    assert_eq!(total("confirmed"), 13.0);
    assert_eq!(total("delivered_get_manual_ack"), 1.0);
    assert_eq!(total("delivered_get_auto_ack"), 1.0);
    assert_eq!(total("delivered_consume_manual_ack"), 7.0);
    assert_eq!(total("delivered"), 9.0);
    assert_eq!(total("acknowledged"), 4.0);
    assert_eq!(total("redelivered"), 0.0);
    // 10 + 1 published; of the busy queue's 10, 2 got, 7 consumed (3 acked): 1 ready.
    assert_eq!(m["rabbitmq_queue_messages_ready"], 2.0);
    assert_eq!(m["rabbitmq_queue_messages"], 6.0);
    assert_eq!(m["rabbitmq_queues"], 2.0);
    assert_eq!(m["rabbitmq_consumers"], 1.0);
    assert_eq!(m["rabbitmq_connections"], 2.0);
    assert_eq!(
        m["rabbitmq_channels"], 1.0,
        "the get on a missing queue closed one"
    );
    assert_eq!(m["rabbitmq_alarms_memory_used_watermark"], 0.0);
    assert!(m["rabbitmq_process_resident_memory_bytes"] > 1e6);
    assert!(m
        .keys()
        .any(|k| k.starts_with("rabbitmq_identity_info{rabbitmq_node=\"warren@")));

    let per = scrape(&broker, "/metrics/per-object").await;
    let series = |name: &str, queue: &str| per[&format!("{name}{{vhost=\"/\",queue=\"{queue}\"}}")];
    assert_eq!(series("rabbitmq_queue_messages_ready", &q), 1.0);
    assert_eq!(series("rabbitmq_queue_messages_unacked", &q), 4.0);
    assert_eq!(series("rabbitmq_queue_consumers", &q), 1.0);
    assert_eq!(series("rabbitmq_queue_messages_ready", &idle), 1.0);
    assert_eq!(series("rabbitmq_queue_messages_ready_bytes", &idle), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_are_refused() {
    if is_external() {
        return;
    }
    let broker = Broker::start();
    let addr = broker.metrics_addr().to_owned();
    let (status, _) = tokio::task::spawn_blocking(move || http_get(&addr, "/nope"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let addr = broker.metrics_addr().to_owned();
    let status = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines().next().unwrap_or("").to_owned()
    })
    .await
    .unwrap();
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    // The broker is unaffected.
    let (_conn, ch) = broker.channel().await;
    declare_queue(&ch, &unique("m-after")).await;
}

#[test]
fn a_metrics_port_in_use_is_a_clear_start_up_failure() {
    if is_external() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("warren-metrics-port-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("WARREN_METRICS_LISTEN", &port)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {port} (metrics.listen)"))
            && err.contains("set metrics.listen to a free port"),
        "{err}"
    );
}
