//! Per-queue statistics in the management API and the Prometheus endpoint: message_stats
//! counts and rates, memory and byte counts after real AMQP traffic; the runtime and
//! global parameter endpoints; and the HTTP listeners' deadline for a request head.
use crate::common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A blocking HTTP/1.1 request as guest (an administrator on loopback) or `who`:
/// (status, body as JSON or Null, raw body).
fn http(
    addr: &str,
    who: (&str, &str),
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, String) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", who.0, who.1));
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP port");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Basic {auth}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        body.to_owned(),
    )
}

async fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as(addr, ("guest", "guest"), method, path, body).await
}

async fn call_as(
    addr: &str,
    who: (&str, &str),
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (addr, method, path) = (addr.to_owned(), method.to_owned(), path.to_owned());
    let (u, p) = (who.0.to_owned(), who.1.to_owned());
    tokio::task::spawn_blocking(move || {
        let (status, json, _) = http(&addr, (&u, &p), &method, &path, body.as_ref());
        (status, json)
    })
    .await
    .unwrap()
}

async fn get_json(addr: &str, path: &str) -> Value {
    let (status, v) = call(addr, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// The Prometheus text of `path`.
async fn scrape(addr: &str, path: &str) -> String {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || http(&addr, ("guest", "guest"), "GET", &path, None).2)
        .await
        .unwrap()
}

/// The value of the series `name{labels}` in a scrape.
fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn spawn() -> Option<Broker> {
    // These are warren's own listeners: nothing to test against an external broker.
    if is_external() {
        return None;
    }
    Some(Broker::start())
}

/// Poll the queue until `ok` holds of it (counts are published once per burst and
/// rates once per sampling interval); fail with the last reading after `limit`.
async fn wait_queue(addr: &str, path: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let q = get_json(addr, path).await;
        if ok(&q) {
            return q;
        }
        assert!(Instant::now() < deadline, "{path} never matched: {q:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_message_stats_count_publishes_deliveries_gets_acks_and_redeliveries_exactly() {
    let Some(broker) = spawn() else { return };
    let addr = broker.management_addr().to_owned();
    let (_conn, ch) = broker.channel().await;
    let q = unique("stats-q");
    declare_queue(&ch, &q).await;
    let path = format!("/api/queues/%2F/{q}");

    let fresh = get_json(&addr, &path).await;
    assert!(
        fresh.get("message_stats").is_none(),
        "RabbitMQ shows no message_stats for a queue without traffic: {fresh:#}"
    );
    assert_eq!(fresh["messages_details"], json!({"rate": 0.0}));
    assert_eq!(fresh["message_bytes"], json!(0));

    // 10 published, consumed with manual acks: 7 acked, 3 nacked with requeue (they
    // come back redelivered to the same consumer) and then acked.
    for i in 0..10 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let only_publish =
        wait_queue(&addr, &path, WAIT, |v| v["message_stats"]["publish"] == 10).await;
    assert!(
        only_publish["message_stats"].get("deliver").is_none(),
        "the delivery group appears with the first delivery: {only_publish:#}"
    );
    assert_eq!(only_publish["message_bytes_ready"], json!(20));
    let mut consumer = consume(&ch, &q, false).await;
    let mut tags = Vec::new();
    for _ in 0..10 {
        tags.push(next_delivery(&mut consumer).await.delivery_tag);
    }
    let unacked = wait_queue(&addr, &path, WAIT, |v| v["messages_unacknowledged"] == 10).await;
    assert_eq!(unacked["message_bytes_unacknowledged"], json!(20));
    assert_eq!(unacked["message_bytes_ready"], json!(0));
    for &t in &tags[..7] {
        within(ch.basic_ack(t, BasicAckOptions::default()))
            .await
            .unwrap();
    }
    for &t in &tags[7..] {
        within(ch.basic_nack(
            t,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        ))
        .await
        .unwrap();
    }
    for _ in 0..3 {
        let d = next_delivery(&mut consumer).await;
        assert!(d.redelivered);
        within(ch.basic_ack(d.delivery_tag, BasicAckOptions::default()))
            .await
            .unwrap();
    }
    within(ch.basic_cancel(
        consumer.tag().as_str().into(),
        BasicCancelOptions::default(),
    ))
    .await
    .unwrap();

    // 4 more: 2 fetched without ack, 1 fetched and acked, 1 to a no-ack consumer;
    // then one basic.get on the empty queue.
    for i in 0..4 {
        publish(&ch, "", &q, format!("n{i}").as_bytes()).await;
    }
    wait_message_count(&ch, &q, 4).await;
    assert!(get(&ch, &q, true).await.is_some());
    assert!(get(&ch, &q, true).await.is_some());
    let g = get(&ch, &q, false).await.expect("a message");
    within(ch.basic_ack(g.delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    let mut auto = consume(&ch, &q, true).await;
    next_delivery(&mut auto).await;
    within(ch.basic_cancel(auto.tag().as_str().into(), BasicCancelOptions::default()))
        .await
        .unwrap();
    assert!(get(&ch, &q, false).await.is_none());

    let want = json!({
        "publish": 14,
        "deliver": 13,
        "deliver_no_ack": 1,
        "get": 1,
        "get_no_ack": 2,
        "get_empty": 1,
        "redeliver": 3,
        "ack": 11,
        "deliver_get": 17,
    });
    let matches = |v: &Value| {
        want.as_object()
            .unwrap()
            .iter()
            .all(|(k, n)| v["message_stats"][k] == *n)
    };
    let v = wait_queue(&addr, &path, WAIT, matches).await;
    let stats = v["message_stats"].as_object().unwrap();
    for k in want.as_object().unwrap().keys() {
        assert!(
            stats[&format!("{k}_details")]["rate"].is_number(),
            "{k}_details: {v:#}"
        );
    }
    assert_eq!(v["messages"], json!(0));
    assert_eq!(v["message_bytes"], json!(0));

    // The same counts, per queue, in the Prometheus per-object scrape.
    let labels = format!("vhost=\"/\",queue=\"{q}\"");
    let text = scrape(broker.metrics_addr(), "/metrics/per-object").await;
    for (name, n) in [
        ("rabbitmq_queue_messages_delivered_ack_total", 13.0),
        ("rabbitmq_queue_messages_delivered_total", 1.0),
        ("rabbitmq_queue_get_ack_total", 1.0),
        ("rabbitmq_queue_get_total", 2.0),
        ("rabbitmq_queue_get_empty_total", 1.0),
        ("rabbitmq_queue_messages_redelivered_total", 3.0),
        ("rabbitmq_queue_messages_acked_total", 11.0),
    ] {
        assert_eq!(series(&text, name, &labels), Some(n), "{name}{{{labels}}}");
    }
    assert!(text.contains("# TYPE rabbitmq_queue_messages_acked_total counter"));
    assert!(series(&text, "rabbitmq_queue_process_memory_bytes", &labels).is_some_and(|m| m > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_rates_become_positive_within_a_sampling_period_of_traffic() {
    let Some(broker) = spawn() else { return };
    let addr = broker.management_addr().to_owned();
    let (_conn, ch) = broker.channel().await;
    let q = unique("rates-q");
    declare_queue(&ch, &q).await;
    let path = format!("/api/queues/%2F/{q}");
    // A steady trickle while we watch: two sampling periods (5 s each) and a margin.
    let deadline = Instant::now() + Duration::from_secs(12);
    let v = loop {
        for _ in 0..5 {
            publish(&ch, "", &q, b"tick").await;
        }
        let v = get_json(&addr, &path).await;
        let rate = |k: &str| v["message_stats"][k]["rate"].as_f64().unwrap_or(0.0);
        if rate("publish_details") > 0.0 && v["messages_details"]["rate"].as_f64() > Some(0.0) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no positive rate after 12 s: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        v["messages_ready_details"]["rate"].as_f64() > Some(0.0),
        "{v:#}"
    );
    assert_eq!(v["messages_unacknowledged_details"], json!({"rate": 0.0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_memory_grows_with_a_backlog_and_counts_its_bytes() {
    let Some(broker) = spawn() else { return };
    let addr = broker.management_addr().to_owned();
    let (_conn, ch) = broker.channel().await;
    let q = unique("mem-q");
    declare_queue(&ch, &q).await;
    let path = format!("/api/queues/%2F/{q}");
    let empty = get_json(&addr, &path).await["memory"]
        .as_u64()
        .expect("memory");
    assert!(empty > 0, "an empty queue still costs something");
    let body = vec![7u8; 1000];
    for _ in 0..500 {
        publish(&ch, "", &q, &body).await;
    }
    let v = wait_queue(&addr, &path, WAIT, |v| v["messages_ready"] == 500).await;
    assert_eq!(v["message_bytes_ready"], json!(500_000));
    assert_eq!(v["message_bytes"], json!(500_000));
    let resident = v["message_bytes_ram"].as_u64().unwrap();
    let paged = v["message_bytes_paged_out"].as_u64().unwrap();
    assert_eq!(resident + paged, 500_000);
    let backlog = v["memory"].as_u64().unwrap();
    assert!(
        backlog >= empty + resident + 500 * 48,
        "memory {backlog} must hold the resident bodies ({resident} B) and 500 entries over the empty queue's {empty}"
    );
    // Draining gives it back.
    within(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    let drained = wait_queue(&addr, &path, WAIT, |v| v["messages_ready"] == 0).await;
    assert_eq!(drained["memory"].as_u64(), Some(empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_list_vhost_limits_and_operator_policies_and_global_parameters_are_empty() {
    let Some(broker) = spawn() else { return };
    let addr = broker.management_addr().to_owned();
    assert_eq!(get_json(&addr, "/api/parameters").await, json!([]));
    assert_eq!(get_json(&addr, "/api/global-parameters").await, json!([]));
    assert_eq!(get_json(&addr, "/api/extensions").await, json!([]));
    assert_eq!(
        call(&addr, "GET", "/api/global-parameters/cluster_name", None)
            .await
            .0,
        404
    );

    let (s, _) = call(
        &addr,
        "PUT",
        "/api/vhost-limits/%2F/max-connections",
        Some(json!({"value": 100})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, v) = call(
        &addr,
        "PUT",
        "/api/operator-policies/%2F/cap",
        Some(json!({"pattern": "^cap", "definition": {"max-length": 5}, "priority": 1, "apply-to": "queues"})),
    )
    .await;
    assert!(s == 201 || s == 204, "{s} {v}");
    let limits = json!({"vhost": "/", "component": "vhost-limits", "name": "limits", "value": {"max-connections": 100}});
    let op = json!({"vhost": "/", "component": "operator_policy", "name": "cap",
        "value": {"pattern": "^cap", "definition": {"max-length": 5}, "priority": 1, "apply-to": "queues"}});
    // Sorted by name, as RabbitMQ sorts its listings.
    assert_eq!(
        get_json(&addr, "/api/parameters").await,
        json!([op, limits])
    );
    assert_eq!(
        get_json(&addr, "/api/parameters/vhost-limits").await,
        json!([limits])
    );
    assert_eq!(
        get_json(&addr, "/api/parameters/operator_policy/%2F").await,
        json!([op])
    );
    assert_eq!(
        get_json(&addr, "/api/parameters/vhost-limits/%2F/limits").await,
        limits
    );
    assert_eq!(
        get_json(&addr, "/api/parameters/federation-upstream").await,
        json!([])
    );
    assert_eq!(
        call(&addr, "GET", "/api/parameters/vhost-limits/nope", None)
            .await
            .0,
        404
    );

    // Vhost limits are set and cleared through their parameter too.
    let (s, _) = call(
        &addr,
        "PUT",
        "/api/parameters/vhost-limits/%2F/limits",
        Some(json!({"vhost": "/", "component": "vhost-limits", "name": "limits", "value": {"max-queues": 7}})),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        get_json(&addr, "/api/vhost-limits/%2F").await,
        json!([{"vhost": "/", "value": {"max-queues": 7}}])
    );
    let (s, v) = call(
        &addr,
        "PUT",
        "/api/parameters/federation-upstream/%2F/up",
        Some(json!({"value": {"uri": "amqp://"}})),
    )
    .await;
    assert_eq!(
        (s, v),
        (
            400,
            json!({"error": "bad_request", "reason": "component federation-upstream not found"})
        )
    );
    assert_eq!(
        call(
            &addr,
            "DELETE",
            "/api/parameters/vhost-limits/%2F/limits",
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            "/api/parameters/vhost-limits/%2F/limits",
            None
        )
        .await
        .0,
        404
    );

    // Policymakers (and administrators) only; global parameters are administrators'.
    let (s, _) = call(
        &addr,
        "PUT",
        "/api/users/watcher",
        Some(json!({"password": "pw", "tags": "monitoring"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = call(
        &addr,
        "PUT",
        "/api/permissions/%2F/watcher",
        Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
    )
    .await;
    assert!(s == 201 || s == 204);
    assert_eq!(
        call_as(&addr, ("watcher", "pw"), "GET", "/api/parameters", None)
            .await
            .0,
        401
    );
    assert_eq!(
        call_as(
            &addr,
            ("watcher", "pw"),
            "GET",
            "/api/global-parameters",
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call_as(&addr, ("watcher", "pw"), "GET", "/api/extensions", None).await,
        (200, json!([]))
    );
}

/// Send half a request line, then nothing: the server must hang up on us (within its
/// 10 s head deadline, with a margin), while a normal request meanwhile is answered.
fn stalls_then_is_disconnected(addr: &str) -> Duration {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /api/overv").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "{addr}: still connected after {:?} ({e})",
            started.elapsed()
        ),
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_request_head_is_disconnected_and_others_are_served() {
    let Some(broker) = spawn() else { return };
    let (mgmt, metrics) = (
        broker.management_addr().to_owned(),
        broker.metrics_addr().to_owned(),
    );
    let stalled = {
        let (m1, m2) = (mgmt.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || {
            let t = std::thread::spawn(move || stalls_then_is_disconnected(&m2));
            (stalls_then_is_disconnected(&m1), t.join().unwrap())
        })
    };
    // Meanwhile both listeners serve everyone else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(get_json(&mgmt, "/api/overview").await["node"].is_string());
    assert!(scrape(&metrics, "/metrics")
        .await
        .contains("rabbitmq_queues"));
    let (m, p) = stalled.await.unwrap();
    for (what, t) in [("management", m), ("prometheus", p)] {
        assert!(
            t >= Duration::from_secs(5),
            "{what}: hung up after {t:?}, before its deadline"
        );
        assert!(
            t <= Duration::from_secs(15),
            "{what}: hung up only after {t:?}"
        );
    }
}
