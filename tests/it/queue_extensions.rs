//! RabbitMQ's queue extensions: message TTL, max-length and overflow, dead-lettering,
//! priority queues, x-expires, and queue-argument validation. Every test passes against
//! RabbitMQ 3.10 (WARREN_TEST_AMQP_URL) and warren alike.

use std::time::Duration;

use crate::common::*;
use lapin::Confirmation;

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    ch
}

async fn declare_args(ch: &Channel, q: &str, args: Vec<(&str, AMQPValue)>) {
    within(ch.queue_declare(q.into(), QueueDeclareOptions::default(), table(args)))
        .await
        .expect("queue.declare");
}

/// Publish and wait for the broker's verdict.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Confirmation {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    ))
    .await
    .expect("basic.publish");
    within(confirm).await.expect("confirm")
}

async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

/// Wait for one message on `queue` (dead letters arrive asynchronously).
async fn wait_get(ch: &Channel, queue: &str) -> BasicGetMessage {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(m) = get(ch, queue, true).await {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing arrived on {queue}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

fn header(m: &BasicGetMessage, key: &str) -> Option<AMQPValue> {
    m.delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(key)
        .cloned()
}

fn longstr_of(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("not a longstr: {other:?}"),
    }
}

/// The x-death entries as (key -> value) tables, newest first.
fn x_death(m: &BasicGetMessage) -> Vec<FieldTable> {
    match header(m, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death item is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("no x-death array: {other:?}"),
    }
}

fn field<'a>(t: &'a FieldTable, key: &str) -> &'a AMQPValue {
    t.inner()
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {t:?}"))
}

// ---- x-message-ttl and expiration ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_drops_messages_so_declare_ok_count_falls_to_zero() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl-count");
    declare_args(&ch, &q, vec![("x-message-ttl", AMQPValue::LongInt(200))]).await;
    publish_confirmed(&ch, "", &q, b"a", BasicProperties::default()).await;
    publish_confirmed(&ch, "", &q, b"b", BasicProperties::default()).await;
    assert_eq!(message_count(&ch, &q).await, 2);
    // No consumer, no get: the queue's own timer drops them.
    wait_message_count(&ch, &q, 0).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_expiration_and_queue_ttl_the_shorter_wins() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl-min");
    declare_args(&ch, &q, vec![("x-message-ttl", AMQPValue::LongInt(60_000))]).await;
    publish_confirmed(&ch, "", &q, b"short", expiring("100")).await;
    wait_message_count(&ch, &q, 0).await;
    publish_confirmed(&ch, "", &q, b"long", expiring("600000")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(drain(&ch, &q).await, vec!["long"]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_never_returned_by_basic_get() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl-get");
    declare_queue(&ch, &q).await;
    publish_confirmed(&ch, "", &q, b"old", expiring("30")).await;
    publish_confirmed(&ch, "", &q, b"new", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(drain(&ch, &q).await, vec!["new"]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_reaches_a_waiting_consumer_but_expires_in_an_idle_queue() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl0");
    declare_args(&ch, &q, vec![("x-message-ttl", AMQPValue::LongInt(0))]).await;
    publish_confirmed(&ch, "", &q, b"nobody", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(get(&ch, &q, true).await.is_none());
    let cch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&cch, &q, true).await;
    publish_confirmed(&ch, "", &q, b"taken", BasicProperties::default()).await;
    assert_eq!(body_str(&next_delivery(&mut c).await), "taken");
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_expiration_closes_channel_406_with_rabbitmq_text() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = unique("bad-exp");
    let ch0 = within(conn.create_channel()).await.unwrap();
    declare_queue(&ch0, &q).await;
    for (exp, text) in [
        (
            "-1",
            "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}",
        ),
        (
            "abc",
            "PRECONDITION_FAILED - invalid expiration 'abc': no_integer",
        ),
        (
            "10x",
            "PRECONDITION_FAILED - invalid expiration '10x': {leftover_string,\"x\"}",
        ),
    ] {
        let ch = within(conn.create_channel()).await.unwrap();
        let watch = ChannelWatch::new(&ch).await;
        publish_props(&ch, "", &q, b"x", expiring(exp)).await;
        watch.assert_closed(406, text).await;
    }
    assert_connection_alive(&conn).await;
    assert_eq!(message_count(&ch0, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_message_keeps_its_original_expiry() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl-requeue");
    declare_args(&ch, &q, vec![("x-message-ttl", AMQPValue::LongInt(300))]).await;
    publish_confirmed(&ch, "", &q, b"m", BasicProperties::default()).await;
    let m = get(&ch, &q, false).await.expect("message");
    tokio::time::sleep(Duration::from_millis(500)).await;
    within(ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    // Back in the queue past its expiry: dropped, not served again.
    wait_message_count(&ch, &q, 0).await;
    assert!(get(&ch, &q, true).await.is_none());
    delete_queues(&conn, &[&q]).await;
}

// ---- x-max-length, x-max-length-bytes, x-overflow ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drop_head_dead_letters_the_oldest_with_reason_maxlen() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("maxlen-src"), unique("maxlen-dlq"));
    declare_queue(&ch, &dlq).await;
    declare_args(
        &ch,
        &q,
        vec![
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr(&dlq)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"first", BasicProperties::default()).await;
    publish_confirmed(&ch, "", &q, b"second", BasicProperties::default()).await;
    let dead = wait_get(&ch, &dlq).await;
    assert_eq!(dead.delivery.data, b"first");
    assert_eq!(longstr_of(field(&x_death(&dead)[0], "reason")), "maxlen");
    assert_eq!(drain(&ch, &q).await, vec!["second"]);
    delete_queues(&conn, &[&q, &dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_bytes_counts_body_bytes_and_drops_head() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("maxbytes");
    declare_args(&ch, &q, vec![("x-max-length-bytes", AMQPValue::LongInt(6))]).await;
    for b in ["aaa", "bbb", "ccc"] {
        publish_confirmed(&ch, "", &q, b.as_bytes(), BasicProperties::default()).await;
    }
    assert_eq!(drain(&ch, &q).await, vec!["bbb", "ccc"]);
    delete_queues(&conn, &[&q]).await;
}

/// Requeues into a queue at its length limit (RabbitMQ 3.10's requeue_and_run): a
/// drop-head queue that the requeue takes over its limit drops from the head at once,
/// dead-lettering with reason maxlen, so the requeued messages themselves go; the two
/// reject-publish modes refuse publishes only, so a requeue overshoots the limit and
/// keeps the messages, in their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_into_a_full_queue_follows_the_overflow_mode() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    for overflow in ["drop-head", "reject-publish", "reject-publish-dlx"] {
        let (q, dlq) = (unique("requeue-full"), unique("requeue-full-dlq"));
        declare_queue(&ch, &dlq).await;
        declare_args(
            &ch,
            &q,
            vec![
                ("x-max-length", AMQPValue::LongInt(3)),
                ("x-overflow", lstr(overflow)),
                ("x-dead-letter-exchange", lstr("")),
                ("x-dead-letter-routing-key", lstr(&dlq)),
            ],
        )
        .await;
        for m in ["m0", "m1", "m2"] {
            publish_confirmed(&ch, "", &q, m.as_bytes(), BasicProperties::default()).await;
        }
        let m0 = wait_get_unacked(&ch, &q).await;
        let m1 = wait_get_unacked(&ch, &q).await;
        // Two taken out: room for two more ready ones (unacked do not count).
        for m in ["m3", "m4"] {
            publish_confirmed(&ch, "", &q, m.as_bytes(), BasicProperties::default()).await;
        }
        within(m1.delivery.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        }))
        .await
        .unwrap();
        within(m0.delivery.reject(BasicRejectOptions { requeue: true }))
            .await
            .unwrap();
        if overflow == "drop-head" {
            // Each requeue puts its message back at the head, over the limit: it goes.
            let first = wait_get(&ch, &dlq).await;
            let second = wait_get(&ch, &dlq).await;
            assert_eq!(
                (&first.delivery.data[..], &second.delivery.data[..]),
                (&b"m1"[..], &b"m0"[..])
            );
            assert_eq!(longstr_of(field(&x_death(&first)[0], "reason")), "maxlen");
            assert_eq!(drain(&ch, &q).await, ["m2", "m3", "m4"]);
        } else {
            assert_eq!(
                drain(&ch, &q).await,
                ["m0", "m1", "m2", "m3", "m4"],
                "{overflow}"
            );
            assert_eq!(drain(&ch, &dlq).await, Vec::<String>::new(), "{overflow}");
        }
        delete_queues(&conn, &[&q, &dlq]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_nacks_a_confirming_publisher_when_full() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("reject-pub");
    declare_args(
        &ch,
        &q,
        vec![
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", lstr("reject-publish")),
        ],
    )
    .await;
    let r1 = publish_confirmed(&ch, "", &q, b"1", BasicProperties::default()).await;
    let r2 = publish_confirmed(&ch, "", &q, b"2", BasicProperties::default()).await;
    assert!(matches!(r1, Confirmation::Ack(_)), "{r1:?}");
    assert!(matches!(r2, Confirmation::Nack(_)), "{r2:?}");
    assert_eq!(drain(&ch, &q).await, vec!["1"]);
    // Room again once the queue drained.
    let r3 = publish_confirmed(&ch, "", &q, b"3", BasicProperties::default()).await;
    assert!(matches!(r3, Confirmation::Ack(_)), "{r3:?}");
    assert_eq!(drain(&ch, &q).await, vec!["3"]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_without_confirms_drops_silently() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("reject-pub-quiet");
    declare_args(
        &ch,
        &q,
        vec![
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", lstr("reject-publish")),
        ],
    )
    .await;
    for b in ["1", "2", "3"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    wait_message_count(&ch, &q, 1).await;
    assert_eq!(drain(&ch, &q).await, vec!["1"]);
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_dlx_nacks_and_dead_letters_the_refused_message() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("reject-dlx"), unique("reject-dlx-dlq"));
    declare_queue(&ch, &dlq).await;
    declare_args(
        &ch,
        &q,
        vec![
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", lstr("reject-publish-dlx")),
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr(&dlq)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"kept", BasicProperties::default()).await;
    let r = publish_confirmed(&ch, "", &q, b"refused", BasicProperties::default()).await;
    assert!(matches!(r, Confirmation::Nack(_)), "{r:?}");
    let dead = wait_get(&ch, &dlq).await;
    assert_eq!(dead.delivery.data, b"refused");
    assert_eq!(longstr_of(field(&x_death(&dead)[0], "reason")), "maxlen");
    assert_eq!(drain(&ch, &q).await, vec!["kept"]);
    delete_queues(&conn, &[&q, &dlq]).await;
}

// ---- dead-lettering ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_is_dead_lettered_with_x_death_and_first_death_headers() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq, dlx) = (unique("dl-src"), unique("dl-dst"), unique("dl-x"));
    within(ch.exchange_declare(
        dlx.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    declare_queue(&ch, &dlq).await;
    bind(&ch, &dlq, &dlx, "").await;
    declare_args(&ch, &q, vec![("x-dead-letter-exchange", lstr(&dlx))]).await;
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(table(vec![("app", lstr("kept"))]));
    publish_confirmed(&ch, "", &q, b"body", props).await;
    let m = get(&ch, &q, false).await.expect("message");
    within(ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    ))
    .await
    .unwrap();
    let dead = wait_get(&ch, &dlq).await;
    assert_eq!(dead.delivery.data, b"body");
    assert_eq!(dead.delivery.exchange.as_str(), dlx);
    assert_eq!(
        dead.delivery.routing_key.as_str(),
        q,
        "routing key kept without x-dead-letter-routing-key"
    );
    assert_eq!(
        dead.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(longstr_of(&header(&dead, "app").unwrap()), "kept");
    let deaths = x_death(&dead);
    assert_eq!(deaths.len(), 1);
    let d = &deaths[0];
    assert_eq!(field(d, "count"), &AMQPValue::LongLongInt(1));
    assert_eq!(longstr_of(field(d, "reason")), "rejected");
    assert_eq!(longstr_of(field(d, "queue")), q);
    assert_eq!(longstr_of(field(d, "exchange")), "");
    assert!(matches!(field(d, "time"), AMQPValue::Timestamp(_)));
    match field(d, "routing-keys") {
        AMQPValue::FieldArray(a) => assert_eq!(a.as_slice(), &[lstr(&q)]),
        other => panic!("{other:?}"),
    }
    assert!(d.inner().get("original-expiration").is_none());
    assert_eq!(
        longstr_of(&header(&dead, "x-first-death-reason").unwrap()),
        "rejected"
    );
    assert_eq!(
        longstr_of(&header(&dead, "x-first-death-queue").unwrap()),
        q
    );
    assert_eq!(
        longstr_of(&header(&dead, "x-first-death-exchange").unwrap()),
        ""
    );
    // RabbitMQ 3.10 does not write x-last-death-* (that came with 3.13).
    assert!(header(&dead, "x-last-death-reason").is_none());
    delete_queues(&conn, &[&q, &dlq]).await;
    delete_exchanges(&conn, &[&dlx]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_dead_lettered_with_original_expiration_and_no_expiration() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (q, dlq) = (unique("dl-exp-src"), unique("dl-exp-dst"));
    declare_queue(&ch, &dlq).await;
    declare_args(
        &ch,
        &q,
        vec![
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr(&dlq)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"late", expiring("50")).await;
    let dead = wait_get(&ch, &dlq).await;
    assert_eq!(dead.delivery.routing_key.as_str(), dlq);
    assert!(dead.delivery.properties.expiration().is_none());
    let d = &x_death(&dead)[0];
    assert_eq!(longstr_of(field(d, "reason")), "expired");
    assert_eq!(longstr_of(field(d, "original-expiration")), "50");
    wait_message_count(&ch, &q, 0).await;
    delete_queues(&conn, &[&q, &dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_again_through_same_queue_and_reason_increments_count() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (a, b) = (unique("dl-ping"), unique("dl-pong"));
    // a -> b -> a -> b, each hop a rejection: a cycle with rejections is allowed.
    declare_args(
        &ch,
        &a,
        vec![
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr(&b)),
        ],
    )
    .await;
    declare_args(
        &ch,
        &b,
        vec![
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr(&a)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &a, b"ball", BasicProperties::default()).await;
    for q in [&a, &b, &a] {
        let m = wait_get_unacked(&ch, q).await;
        within(ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ))
        .await
        .unwrap();
    }
    let m = wait_get(&ch, &b).await;
    let deaths = x_death(&m);
    assert_eq!(deaths.len(), 2);
    assert_eq!(
        longstr_of(field(&deaths[0], "queue")),
        a,
        "the repeated death moves to the front"
    );
    assert_eq!(field(&deaths[0], "count"), &AMQPValue::LongLongInt(2));
    assert_eq!(longstr_of(field(&deaths[1], "queue")), b);
    assert_eq!(field(&deaths[1], "count"), &AMQPValue::LongLongInt(1));
    assert_eq!(longstr_of(&header(&m, "x-first-death-queue").unwrap()), a);
    delete_queues(&conn, &[&a, &b]).await;
}

async fn wait_get_unacked(ch: &Channel, queue: &str) -> BasicGetMessage {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(m) = get(ch, queue, false).await {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing arrived on {queue}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_dead_letter_cycle_drops_the_message() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("dl-cycle");
    // Expired messages dead-letter back into the same queue: a fully automatic cycle.
    declare_args(
        &ch,
        &q,
        vec![
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr(&q)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"loop", BasicProperties::default()).await;
    wait_message_count(&ch, &q, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dead_letter_exchange_drops_silently() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("dl-missing");
    declare_args(
        &ch,
        &q,
        vec![("x-dead-letter-exchange", lstr(&unique("no-such-x")))],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"x", BasicProperties::default()).await;
    let m = get(&ch, &q, false).await.expect("message");
    within(ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: false,
        },
    ))
    .await
    .unwrap();
    wait_message_count(&ch, &q, 0).await;
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

// ---- x-max-priority ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_delivers_highest_first_and_fifo_within_a_priority() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("prio");
    declare_args(&ch, &q, vec![("x-max-priority", AMQPValue::LongInt(5))]).await;
    for (body, p) in [
        ("low-1", None),
        ("mid-1", Some(3)),
        ("high", Some(5)),
        ("mid-2", Some(3)),
        ("over", Some(9)),
        ("low-2", Some(0)),
    ] {
        let mut props = BasicProperties::default();
        if let Some(p) = p {
            props = props.with_priority(p);
        }
        publish_confirmed(&ch, "", &q, body.as_bytes(), props).await;
    }
    // Above the maximum counts as the maximum; no priority is priority 0.
    assert_eq!(
        drain(&ch, &q).await,
        vec!["high", "over", "mid-1", "mid-2", "low-1", "low-2"]
    );
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_requeue_restores_position_within_its_priority() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("prio-requeue");
    declare_args(&ch, &q, vec![("x-max-priority", AMQPValue::LongInt(2))]).await;
    for (body, p) in [("a1", 1), ("a2", 1), ("b1", 2), ("a3", 1)] {
        publish_confirmed(
            &ch,
            "",
            &q,
            body.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    let b1 = get(&ch, &q, false).await.unwrap();
    let a1 = get(&ch, &q, false).await.unwrap();
    assert_eq!(
        (b1.delivery.data.as_slice(), a1.delivery.data.as_slice()),
        (&b"b1"[..], &b"a1"[..])
    );
    within(ch.basic_nack(
        0,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    assert_eq!(drain(&ch, &q).await, vec!["b1", "a1", "a2", "a3"]);
    delete_queues(&conn, &[&q]).await;
}

// ---- x-expires ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_queue_is_deleted_after_x_expires() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("expires");
    declare_args(&ch, &q, vec![("x-expires", AMQPValue::LongInt(300))]).await;
    assert!(queue_exists(&conn, &q).await);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!queue_exists(&conn, &q).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_and_consumers_keep_an_expiring_queue_alive() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("expires-used");
    let args = || vec![("x-expires", AMQPValue::LongInt(600))];
    declare_args(&ch, &q, args()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    declare_args(&ch, &q, args()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // 800 ms since creation, 400 since the redeclare: still there.
    let cch = within(conn.create_channel()).await.unwrap();
    let c = consume(&cch, &q, true).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    declare_args(&ch, &q, args()).await;
    drop(c);
    within(cch.close(200, "bye".into())).await.unwrap();
    // Unused again: gone after x-expires.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!queue_exists(&conn, &q).await);
}

// ---- argument validation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_arguments_close_channel_406_with_rabbitmq_texts() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = unique("badargs");
    let what = format!("queue '{q}' in vhost '/'");
    let cases: Vec<(Vec<(&str, AMQPValue)>, String)> = vec![
        (vec![("x-message-ttl", AMQPValue::LongInt(-1))], format!("invalid arg 'x-message-ttl' for {what}: {{value_negative,-1}}")),
        (
            vec![("x-message-ttl", lstr("10"))],
            format!("invalid arg 'x-message-ttl' for {what}: \"expected integer, got longstr\""),
        ),
        (vec![("x-expires", AMQPValue::LongInt(0))], format!("invalid arg 'x-expires' for {what}: {{value_zero,0}}")),
        (vec![("x-max-length", AMQPValue::LongInt(-2))], format!("invalid arg 'x-max-length' for {what}: {{value_negative,-2}}")),
        (
            vec![("x-max-priority", AMQPValue::LongInt(256))],
            format!("invalid arg 'x-max-priority' for {what}: {{max_value_exceeded,256}}"),
        ),
        (vec![("x-overflow", lstr("drop-tail"))], format!("invalid arg 'x-overflow' for {what}: invalid_overflow")),
        (
            vec![("x-overflow", AMQPValue::LongInt(1))],
            format!("invalid arg 'x-overflow' for {what}: {{unacceptable_type,signedint}}"),
        ),
        (
            vec![("x-dead-letter-routing-key", lstr("k"))],
            format!("invalid arg 'x-dead-letter-routing-key' for {what}: routing_key_but_no_dlx_defined"),
        ),
        (
            vec![("x-dead-letter-exchange", AMQPValue::LongInt(1))],
            format!("invalid type 'signedint' for arg 'x-dead-letter-exchange' in {what}"),
        ),
        (
            vec![("x-queue-type", lstr("fifo"))],
            format!("invalid arg 'x-queue-type' for {what}: \"unsupported queue type 'fifo'\""),
        ),
        (vec![("x-queue-type", lstr("quorum"))], format!("invalid property 'non-durable' for {what}")),
    ];
    for (args, text) in cases {
        let ch = within(conn.create_channel()).await.unwrap();
        let r = within(ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            table(args),
        ))
        .await;
        assert_channel_closed(r, 406, &format!("PRECONDITION_FAILED - {text}"));
    }
    // Streams are refused (by RabbitMQ too, when not durable).
    let ch = within(conn.create_channel()).await.unwrap();
    let r = within(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        table(vec![("x-queue-type", lstr("stream"))]),
    ))
    .await;
    assert_eq!(
        r.err().as_ref().and_then(amqp_error).map(|e| e.0),
        Some(406)
    );
    // Accepted: classic type, zero limits, the highest priority.
    let ch = within(conn.create_channel()).await.unwrap();
    declare_args(
        &ch,
        &q,
        vec![
            ("x-queue-type", lstr("classic")),
            ("x-max-length", AMQPValue::LongInt(0)),
            ("x-max-priority", AMQPValue::LongInt(255)),
        ],
    )
    .await;
    delete_queues(&conn, &[&q]).await;
}
