//! basic.* methods: publish, consume, get, ack/nack/reject, recover,
//! qos, cancel, returns.
use crate::common::*;
use std::collections::HashSet;

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    ch
}

/// Declare a queue and publish `n` messages "0".."n-1" to it (confirmed).
async fn queue_with_messages(conn: &Connection, prefix: &str, n: usize) -> String {
    let ch = confirm_channel(conn).await;
    let q = unique(prefix);
    declare_queue(&ch, &q).await;
    for i in 0..n {
        publish(&ch, "", &q, i.to_string().as_bytes()).await;
    }
    within(ch.wait_for_confirms()).await.unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    q
}

/// Consume with explicit options/tag.
async fn consume_with(
    ch: &Channel,
    queue: &str,
    tag: &str,
    opts: BasicConsumeOptions,
) -> lapin::Result<Consumer> {
    within(ch.basic_consume(queue.into(), tag.into(), opts, no_args())).await
}

/// Get all remaining messages (auto-ack) and return bodies.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_empty_tag_gets_server_generated_ctag() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("ctag");
    declare_queue(&ch, &q).await;
    let c = consume(&ch, &q, false).await;
    assert!(c.tag().as_str().starts_with("amq.ctag-"), "{:?}", c.tag());
    // RabbitMQ: "amq.ctag-" + 22 chars
    assert_eq!(
        c.tag().as_str().len(),
        "amq.ctag-".len() + 22,
        "{:?}",
        c.tag()
    );
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_consumer_tag_on_channel_closes_connection_530() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("dup-ctag");
    declare_queue(&ch, &q).await;
    let tag = unique("tag");
    consume_with(&ch, &q, &tag, BasicConsumeOptions::default())
        .await
        .unwrap();
    let r = consume_with(&ch, &q, &tag, BasicConsumeOptions::default()).await;
    assert_connection_closed(
        r,
        530,
        &format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
    );
    assert_connection_dead(&conn).await;
    let conn2 = broker.connect().await;
    delete_queues(&conn2, &[&q]).await;
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_consumer_tag_on_different_channels_is_ok() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = unique("ctag-2ch");
    let ch1 = within(conn.create_channel()).await.unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    declare_queue(&ch1, &q).await;
    consume_with(&ch1, &q, "same", BasicConsumeOptions::default())
        .await
        .unwrap();
    consume_with(&ch2, &q, "same", BasicConsumeOptions::default())
        .await
        .unwrap();
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consume_on_queue_with_consumers_closes_channel_403() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch1 = within(conn.create_channel()).await.unwrap();
    let q = unique("excl-consumer");
    declare_queue(&ch1, &q).await;
    let _c = consume(&ch1, &q, false).await;
    let ch2 = within(conn.create_channel()).await.unwrap();
    let r = consume_with(
        &ch2,
        &q,
        "",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    assert_channel_closed(
        r,
        403,
        &format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"),
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_on_queue_with_exclusive_consumer_closes_channel_403() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch1 = within(conn.create_channel()).await.unwrap();
    let q = unique("excl-consumer-2");
    declare_queue(&ch1, &q).await;
    let _c = consume_with(
        &ch1,
        &q,
        "",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    let r = consume_with(&ch2, &q, "", BasicConsumeOptions::default()).await;
    assert_channel_closed(
        r,
        403,
        &format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"),
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_from_missing_queue_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("consume-missing");
    let r = consume_with(&ch, &q, "", BasicConsumeOptions::default()).await;
    assert_channel_closed(r, 404, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consumer_removes_messages_without_ack() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "noack", 2).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, true).await;
    assert_eq!(body_str(&next_delivery(&mut c).await), "0");
    assert_eq!(body_str(&next_delivery(&mut c).await), "1");
    within(ch.close(200, "bye".into())).await.unwrap();
    // nothing comes back after the channel closes
    let ch = within(conn.create_channel()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_deliver_round_trip_preserves_all_properties() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("props");
    declare_queue(&ch, &q).await;
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongInt(-7));
    let headers = table(vec![
        ("str", lstr("hello")),
        ("int", AMQPValue::LongInt(42)),
        ("long", AMQPValue::LongLongInt(-1_234_567_890_123)),
        ("bool", AMQPValue::Boolean(true)),
        ("double", AMQPValue::Double(2.5)),
        ("ts", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        (
            "array",
            AMQPValue::FieldArray(vec![lstr("a"), AMQPValue::LongInt(1)].into()),
        ),
        ("void", AMQPValue::Void),
    ]);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(headers.clone())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr-1".into())
        .with_reply_to("reply-queue".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("warren-tests".into());
    publish_props(&ch, "", &q, br#"{"k":1}"#, props.clone()).await;
    let mut c = consume(&ch, &q, true).await;
    let d = next_delivery(&mut c).await;
    assert_eq!(d.data, br#"{"k":1}"#);
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), q);
    assert!(!d.redelivered);
    assert_eq!(d.properties.headers(), &Some(headers));
    assert_eq!(d.properties, props);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_mismatched_user_id_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("userid");
    declare_queue(&ch, &q).await;
    let watch = ChannelWatch::new(&ch).await;
    publish_props(
        &ch,
        "",
        &q,
        b"x",
        BasicProperties::default().with_user_id("bob".into()),
    )
    .await;
    watch
        .assert_closed(
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
        )
        .await;
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_larger_than_frame_max_round_trips_intact() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("bigbody");
    declare_queue(&ch, &q).await;
    let body: Vec<u8> = (0..(1024 * 1024 + 17))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    publish(&ch, "", &q, &body).await;
    let mut c = consume(&ch, &q, true).await;
    let d = next_delivery(&mut c).await;
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body, "body corrupted");
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_body_round_trips() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("emptybody");
    declare_queue(&ch, &q).await;
    publish_props(
        &ch,
        "",
        &q,
        b"",
        BasicProperties::default().with_message_id("empty".into()),
    )
    .await;
    let mut c = consume(&ch, &q, true).await;
    let d = next_delivery(&mut c).await;
    assert!(d.data.is_empty());
    assert_eq!(
        d.properties.message_id().as_ref().unwrap().as_str(),
        "empty"
    );
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_message_is_returned_with_312_no_route() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    let key = unique("nobody-home");
    within(ch.basic_publish(
        "".into(),
        key.as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"lost",
        BasicProperties::default().with_message_id("m1".into()),
    ))
    .await
    .unwrap();
    // no confirm mode: wait_for_confirms just drains returned messages
    let deadline = std::time::Instant::now() + WAIT;
    let returned = loop {
        let r = within(ch.wait_for_confirms()).await.unwrap();
        if !r.is_empty() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no basic.return");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(returned.len(), 1);
    let m = &returned[0];
    assert_eq!(m.reply_code, 312);
    assert_eq!(m.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), key);
    assert_eq!(m.delivery.data, b"lost");
    assert_eq!(
        m.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "m1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_missing_exchange_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("no-such-exchange");
    let watch = ChannelWatch::new(&ch).await;
    publish(&ch, &x, "k", b"x").await;
    watch
        .assert_closed(404, &format!("NOT_FOUND - no exchange '{x}' in vhost '/'"))
        .await;
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ok_reports_remaining_message_count_then_get_empty() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "get", 3).await;
    let ch = within(conn.create_channel()).await.unwrap();
    for (i, remaining) in [(0, 2), (1, 1), (2, 0)] {
        let m = get(&ch, &q, false).await.expect("get-ok");
        assert_eq!(m.delivery.data, i.to_string().as_bytes());
        assert_eq!(m.message_count, remaining);
        assert_eq!(m.delivery.delivery_tag, i as u64 + 1);
        assert!(!m.delivery.redelivered);
    }
    assert!(get(&ch, &q, false).await.is_none(), "expected get-empty");
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_from_missing_queue_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("get-missing");
    let r = within(ch.basic_get(q.as_str().into(), BasicGetOptions::default())).await;
    assert_channel_closed(r, 404, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_multiple_acknowledges_all_up_to_tag() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "ackmulti", 4).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    let mut ds = Vec::new();
    for _ in 0..4 {
        ds.push(next_delivery(&mut c).await);
    }
    assert_eq!(
        ds.iter().map(|d| d.delivery_tag).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    within(ch.basic_ack(3, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    // only the 4th message was unacked and comes back
    let ch = within(conn.create_channel()).await.unwrap();
    wait_message_count(&ch, &q, 1).await;
    let m = get(&ch, &q, true).await.unwrap();
    assert_eq!(m.delivery.data, b"3");
    assert!(m.delivery.redelivered);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_with_tag_zero_and_multiple_acks_everything() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "ack0", 3).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    for _ in 0..3 {
        next_delivery(&mut c).await;
    }
    within(ch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_multiple_with_requeue_redelivers_with_redelivered_flag() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "nackmulti", 3).await;
    let ch = within(conn.create_channel()).await.unwrap();
    for _ in 0..3 {
        get(&ch, &q, false).await.unwrap();
    }
    within(ch.basic_nack(
        3,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    wait_message_count(&ch, &q, 3).await;
    for i in 0..3 {
        let m = get(&ch, &q, true).await.unwrap();
        assert_eq!(m.delivery.data, i.to_string().as_bytes(), "original order");
        assert!(m.delivery.redelivered);
    }
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_without_requeue_drops_message() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "nackdrop", 2).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let m = get(&ch, &q, false).await.unwrap();
    within(m.delivery.acker.nack(BasicNackOptions {
        multiple: false,
        requeue: false,
    }))
    .await
    .unwrap();
    assert_eq!(drain(&ch, &q).await, vec!["1"]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_with_requeue_redelivers_with_redelivered_flag() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "rejectrq", 1).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    let d = next_delivery(&mut c).await;
    assert!(!d.redelivered);
    within(d.acker.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    let d2 = next_delivery(&mut c).await;
    assert_eq!(d2.data, b"0");
    assert!(d2.redelivered);
    assert_eq!(d2.delivery_tag, 2);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_requeue_drops_message() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "rejectdrop", 1).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    let d = next_delivery(&mut c).await;
    within(d.acker.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    assert_no_delivery(&mut c).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_unknown_delivery_tag_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let watch = ChannelWatch::new(&ch).await;
    within(ch.basic_ack(42, BasicAckOptions::default()))
        .await
        .unwrap();
    watch
        .assert_closed(406, "PRECONDITION_FAILED - unknown delivery tag 42")
        .await;
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_ack_closes_channel_406() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "doubleack", 1).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let watch = ChannelWatch::new(&ch).await;
    let m = get(&ch, &q, false).await.unwrap();
    let tag = m.delivery.delivery_tag;
    within(ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .unwrap();
    watch
        .assert_closed(
            406,
            &format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
        )
        .await;
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_of_unknown_delivery_tag_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let watch = ChannelWatch::new(&ch).await;
    within(ch.basic_reject(7, BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    watch
        .assert_closed(406, "PRECONDITION_FAILED - unknown delivery tag 7")
        .await;
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_with_requeue_redelivers_unacked_with_redelivered_flag() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "recover", 2).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    let d1 = next_delivery(&mut c).await;
    let d2 = next_delivery(&mut c).await;
    assert!(!d1.redelivered && !d2.redelivered);
    within(ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    let r1 = next_delivery(&mut c).await;
    let r2 = next_delivery(&mut c).await;
    assert_eq!((body_str(&r1), body_str(&r2)), ("0".into(), "1".into()));
    assert!(r1.redelivered && r2.redelivered);
    // new delivery tags
    assert_eq!((r1.delivery_tag, r2.delivery_tag), (3, 4));
    within(ch.basic_ack(4, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_return_in_original_order_when_channel_closes() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "order-chclose", 5).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(next_delivery(&mut c).await.delivery_tag);
    }
    // ack the middle one, leave 0,1,3,4 unacked
    within(ch.basic_ack(tags[2], BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    wait_message_count(&ch, &q, 4).await;
    assert_eq!(drain(&ch, &q).await, vec!["0", "1", "3", "4"]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_return_in_original_order_when_connection_closes() {
    let broker = Broker::start();
    let observer = broker.connect().await;
    let q = queue_with_messages(&observer, "order-connclose", 4).await;
    let conn = broker.connect().await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    for _ in 0..4 {
        next_delivery(&mut c).await;
    }
    within(conn.close(200, "bye".into())).await.unwrap();
    let ch = within(observer.create_channel()).await.unwrap();
    wait_message_count(&ch, &q, 4).await;
    let mut got = Vec::new();
    while let Some(m) = get(&ch, &q, true).await {
        assert!(m.delivery.redelivered);
        got.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    assert_eq!(got, vec!["0", "1", "2", "3"]);
    delete_queues(&observer, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_message_goes_back_to_its_original_position() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "requeue-pos", 3).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let m0 = get(&ch, &q, false).await.unwrap();
    within(
        m0.delivery
            .acker
            .reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .unwrap();
    wait_message_count(&ch, &q, 3).await;
    assert_eq!(drain(&ch, &q).await, vec!["0", "1", "2"]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deleted_under_consumer_sends_basic_cancel() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = within(conn.create_channel()).await.unwrap();
    let q = unique("cancel-notify");
    declare_queue(&ch, &q).await;
    let mut c = consume(&ch, &q, false).await;
    let ch2 = within(conn.create_channel()).await.unwrap();
    within(ch2.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    // lapin ends the consumer stream when the server sends basic.cancel
    match tokio::time::timeout(WAIT, c.next()).await {
        Ok(None) => {}
        other => panic!("expected consumer cancellation, got {other:?}"),
    }
    // the channel stays open
    within(ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    assert!(ch.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_cancel_stops_deliveries() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("cancel");
    declare_queue(&ch, &q).await;
    let mut c = consume(&ch, &q, true).await;
    publish(&ch, "", &q, b"1").await;
    assert_eq!(body_str(&next_delivery(&mut c).await), "1");
    within(ch.basic_cancel(c.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    publish(&ch, "", &q, b"2").await;
    within(ch.wait_for_confirms()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 1);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_cancel_of_unknown_tag_is_ok() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    within(ch.basic_cancel("no-such-consumer".into(), BasicCancelOptions::default()))
        .await
        .expect("cancel of unknown consumer tag is a no-op");
    within(ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_prefetch_count_applies_per_consumer_when_not_global() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "qos-per-consumer", 10).await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.basic_qos(2, BasicQosOptions { global: false }))
        .await
        .unwrap();
    let mut c1 = consume(&ch, &q, false).await;
    let mut c2 = consume(&ch, &q, false).await;
    let mut last1 = 0;
    for _ in 0..2 {
        last1 = next_delivery(&mut c1).await.delivery_tag;
        next_delivery(&mut c2).await;
    }
    assert_no_delivery(&mut c1).await;
    assert_no_delivery(&mut c2).await;
    assert_eq!(message_count(&ch, &q).await, 6);
    // acking one of c1's frees exactly one slot for c1
    within(ch.basic_ack(last1, BasicAckOptions::default()))
        .await
        .unwrap();
    next_delivery(&mut c1).await;
    assert_no_delivery(&mut c1).await;
    assert_eq!(message_count(&ch, &q).await, 5);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_prefetch_count_is_shared_across_channel_when_global() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "qos-global", 10).await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.basic_qos(3, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut c1 = consume(&ch, &q, false).await;
    let mut c2 = consume(&ch, &q, false).await;
    let mut got = 0;
    loop {
        tokio::select! {
            r = tokio::time::timeout(QUIET, c1.next()) => match r {
                Ok(Some(Ok(_))) => got += 1,
                Err(_) => break,
                other => panic!("{other:?}"),
            },
            r = tokio::time::timeout(QUIET, c2.next()) => match r {
                Ok(Some(Ok(_))) => got += 1,
                Err(_) => break,
                other => panic!("{other:?}"),
            },
        }
    }
    assert_eq!(got, 3, "global prefetch must cap the whole channel");
    assert_eq!(message_count(&ch, &q).await, 7);
    delete_queues(&conn, &[&q]).await;
}

/// A channel's global prefetch (basic.qos global=true) holds back a no-ack consumer on
/// the same channel too while the channel's acked deliveries use it up (RabbitMQ's
/// limiter refuses every delivery then); acks free it. No-ack deliveries take no credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_prefetch_used_up_holds_back_no_ack_consumers_until_acks() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let acked = queue_with_messages(&conn, "gq-acked", 2).await;
    let free = queue_with_messages(&conn, "gq-noack", 3).await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.basic_qos(2, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut a = consume(&ch, &acked, false).await;
    let first = next_delivery(&mut a).await.delivery_tag;
    let second = next_delivery(&mut a).await.delivery_tag;
    let mut b = consume(&ch, &free, true).await;
    assert_no_delivery(&mut b).await;
    // One ack frees one unit, which no-ack deliveries do not use up: the no-ack
    // consumer gets its whole queue while the other delivery stays unacked.
    within(ch.basic_ack(first, BasicAckOptions::default()))
        .await
        .unwrap();
    for _ in 0..3 {
        next_delivery(&mut b).await;
    }
    assert_eq!(message_count(&ch, &free).await, 0);
    within(ch.basic_ack(second, BasicAckOptions::default()))
        .await
        .unwrap();
    assert_eq!(message_count(&ch, &acked).await, 0);
    delete_queues(&conn, &[&acked, &free]).await;
}

/// Fairness across queues under a shared prefetch: one consumer per queue on a channel
/// with a global prefetch of 1, each delivery acked as it comes. Every queue gets served
/// (RabbitMQ hands freed credit to the blocked queues in a varying order); none starves
/// while the others have messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_prefetch_serves_every_queue_on_the_channel() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let mut queues = Vec::new();
    for i in 0..3 {
        queues.push(queue_with_messages(&conn, &format!("fair-{i}"), 100).await);
    }
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.basic_qos(1, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, q) in queues.iter().enumerate() {
        let mut c = consume(&ch, q, false).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = c.next().await {
                if tx.send((i, d.delivery_tag)).is_err() {
                    break;
                }
            }
        });
    }
    let mut served = [0u32; 3];
    for _ in 0..60 {
        let (i, tag) = within(rx.recv()).await.expect("a delivery");
        served[i] += 1;
        within(ch.basic_ack(tag, BasicAckOptions::default()))
            .await
            .unwrap();
    }
    // A third each on average; a queue below 5 of 60 is starved (RabbitMQ's random
    // order gives that with a probability of about 1e-5).
    assert!(
        served.iter().all(|&n| n >= 5),
        "deliveries per queue: {served:?}"
    );
    let refs: Vec<&str> = queues.iter().map(String::as_str).collect();
    delete_queues(&conn, &refs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_prefetch_does_not_limit_no_ack_consumers() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "qos-noack", 5).await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut c = consume(&ch, &q, true).await;
    for i in 0..5 {
        assert_eq!(body_str(&next_delivery(&mut c).await), i.to_string());
    }
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_receive_messages_round_robin() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("roundrobin");
    declare_queue(&ch, &q).await;
    let ch1 = within(conn.create_channel()).await.unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    let mut c1 = consume(&ch1, &q, true).await;
    let mut c2 = consume(&ch2, &q, true).await;
    for i in 0..6 {
        publish(&ch, "", &q, i.to_string().as_bytes()).await;
    }
    within(ch.wait_for_confirms()).await.unwrap();
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..3 {
        a.push(body_str(&next_delivery(&mut c1).await));
        b.push(body_str(&next_delivery(&mut c2).await));
    }
    let (even, odd) = (vec!["0", "2", "4"], vec!["1", "3", "5"]);
    assert!(
        (a == even && b == odd) || (a == odd && b == even),
        "not round-robin: {a:?} / {b:?}"
    );
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_tags_are_per_channel_and_start_at_one() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "tags", 4).await;
    let ch1 = within(conn.create_channel()).await.unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    let a = get(&ch1, &q, false).await.unwrap();
    let b = get(&ch2, &q, false).await.unwrap();
    let c = get(&ch1, &q, false).await.unwrap();
    assert_eq!(
        (
            a.delivery.delivery_tag,
            b.delivery.delivery_tag,
            c.delivery.delivery_tag
        ),
        (1, 1, 2)
    );
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_with_expired_per_message_ttl_is_not_delivered() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("msg-ttl");
    declare_queue(&ch, &q).await;
    publish_props(
        &ch,
        "",
        &q,
        b"old",
        BasicProperties::default().with_expiration("0".into()),
    )
    .await;
    publish(&ch, "", &q, b"new").await;
    within(ch.wait_for_confirms()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(drain(&ch, &q).await, vec!["new"]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_with_nonzero_prefetch_size_closes_connection_540() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let _ = &conn;
    // lapin's basic_qos has no prefetch_size parameter: use the raw client.
    let (mut raw, _) = raw::RawConn::open(&broker.addr());
    raw.open_channel(1);
    let args = raw::Enc::new().u32(1000).u16(10).u8(0).done();
    raw.send_method(1, 60, 10, &args);
    let close = raw.expect_connection_close();
    assert_eq!(
        (
            close.code,
            close.text.as_str(),
            close.class_id,
            close.method_id
        ),
        (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)", 60, 10)
    );
    drop(ch);
}

/// The default max message size is RabbitMQ 3.x's, 128 MiB: a 20 MB message is taken
/// (RabbitMQ 4.x's 16 MiB would refuse it), one over 128 MiB closes the channel with 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_max_size_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("too-big");
    declare_queue(&ch, &q).await;
    let body = vec![b'x'; 20_000_000];
    publish(&ch, "", &q, &body).await;
    let got = get(&ch, &q, true).await.expect("the 20 MB message");
    assert_eq!(got.data.len(), body.len());
    drop(got);
    let watch = ChannelWatch::new(&ch).await;
    let body = vec![b'x'; 128 * 1024 * 1024 + 1];
    publish(&ch, "", &q, &body).await;
    watch
        .assert_closed(
            406,
            "PRECONDITION_FAILED - message size 134217729 is larger than configured max size 134217728",
        )
        .await;
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_flag_set_after_consumer_channel_closes() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let q = queue_with_messages(&conn, "redeliv", 1).await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    assert!(!next_delivery(&mut c).await.redelivered);
    within(ch.close(200, "bye".into())).await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    let mut c = consume(&ch, &q, false).await;
    let d = next_delivery(&mut c).await;
    assert!(d.redelivered);
    assert_eq!(d.delivery_tag, 1);
    let set: HashSet<_> = [body_str(&d)].into_iter().collect();
    assert!(set.contains("0"));
    delete_queues(&conn, &[&q]).await;
}
