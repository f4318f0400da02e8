//! queue.* methods: declare (incl. equivalence checks, exclusivity,
//! auto-delete), bind/unbind, purge, delete.
use crate::common::*;

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn declare_with(
    ch: &Channel,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<Queue> {
    within(ch.queue_declare(name.into(), opts, args)).await
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    ch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_reports_message_and_consumer_counts() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("counts");
    let ok = declare_queue(&ch, &q).await;
    assert_eq!(ok.name().as_str(), q);
    assert_eq!((ok.message_count(), ok.consumer_count()), (0, 0));
    for i in 0..3 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    within(ch.wait_for_confirms()).await.unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    let _c = consume(&ch2, &q, false).await; // takes all 3 (unacked)
    let ch3 = within(conn.create_channel()).await.unwrap();
    let _c2 = consume(&ch3, &q, false).await;
    // the 3 messages are now unacked: message_count only counts ready ones
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ok = declare_queue(&ch, &q).await;
        if ok.message_count() == 0 {
            assert_eq!(ok.consumer_count(), 2);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages not delivered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    within(ch2.close(200, "bye".into())).await.unwrap();
    within(ch3.close(200, "bye".into())).await.unwrap();
    // unacked messages are back: redeclare (non-passive) reports them
    let ok = declare_queue(&ch, &q).await;
    assert_eq!((ok.message_count(), ok.consumer_count()), (3, 0));
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_with_empty_name_generates_amq_gen_name() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let a = declare_with(&ch, "", QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    let b = declare_with(&ch, "", QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    for q in [&a, &b] {
        assert!(q.name().as_str().starts_with("amq.gen-"), "{:?}", q.name());
        // RabbitMQ: "amq.gen-" + 22 chars of url-safe base64
        assert_eq!(
            q.name().as_str().len(),
            "amq.gen-".len() + 22,
            "{:?}",
            q.name()
        );
    }
    assert_ne!(a.name(), b.name());
    assert!(queue_exists(&conn, a.name().as_str()).await);
    delete_queues(&conn, &[a.name().as_str(), b.name().as_str()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("missing-q");
    let r = declare_with(&ch, &q, passive(), no_args()).await;
    assert_channel_closed(r, 404, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_ignores_flags_and_returns_counts() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("passive-flags");
    declare_queue(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    wait_message_count(&ch, &q, 1).await;
    let ok = declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            passive: true,
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
        table(vec![("x-message-ttl", AMQPValue::LongInt(5))]),
    )
    .await
    .expect("passive declare ignores flags/args");
    assert_eq!(ok.message_count(), 1);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_durable_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("redecl-durable");
    declare_queue(&ch, &q).await;
    let r = declare_with(&ch, &q, QueueDeclareOptions::durable(), no_args()).await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_auto_delete_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("redecl-ad");
    declare_queue(&ch, &q).await;
    let r = declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': received 'true' but current is 'false'"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_x_message_ttl_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("redecl-ttl");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        table(vec![("x-message-ttl", AMQPValue::LongInt(1000))]),
    )
    .await
    .unwrap();
    let r = declare_with(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        table(vec![("x-message-ttl", AMQPValue::LongInt(2000))]),
    )
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received '2000' but current is '1000'"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_adding_x_message_ttl_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("redecl-ttl-none");
    declare_queue(&ch, &q).await;
    let r = declare_with(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        table(vec![("x-message-ttl", AMQPValue::LongInt(2000))]),
    )
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received the value '2000' of type 'signedint' but current is none"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_identical_arguments_is_ok() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("redecl-same");
    for _ in 0..2 {
        declare_with(
            &ch,
            &q,
            QueueDeclareOptions::default(),
            table(vec![
                ("x-message-ttl", AMQPValue::LongInt(60000)),
                ("x-max-length", AMQPValue::LongInt(10)),
            ]),
        )
        .await
        .unwrap();
    }
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_amq_prefixed_queue_closes_channel_403() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = format!("amq.{}", unique("reserved"));
    let r = declare_with(&ch, &q, QueueDeclareOptions::default(), no_args()).await;
    assert_channel_closed(
        r,
        403,
        &format!("ACCESS_REFUSED - queue name '{q}' contains reserved prefix 'amq.*'"),
    );
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_declared_from_another_connection_closes_channel_405() {
    let broker = Broker::start();
    let (_owner, ch1) = broker.channel().await;
    let q = unique("excl-decl");
    declare_with(&ch1, &q, QueueDeclareOptions::exclusive(), no_args())
        .await
        .unwrap();
    let (_other, ch2) = broker.channel().await;
    let r = declare_with(&ch2, &q, QueueDeclareOptions::exclusive(), no_args()).await;
    assert_channel_closed(
        r,
        405,
        &format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_passive_declare_from_another_connection_closes_channel_405() {
    let broker = Broker::start();
    let (_owner, ch1) = broker.channel().await;
    let q = unique("excl-passive");
    declare_with(&ch1, &q, QueueDeclareOptions::exclusive(), no_args())
        .await
        .unwrap();
    let (_other, ch2) = broker.channel().await;
    let r = declare_with(&ch2, &q, passive(), no_args()).await;
    assert_channel_closed(
        r,
        405,
        &format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_consumed_from_another_connection_closes_channel_405() {
    let broker = Broker::start();
    let (_owner, ch1) = broker.channel().await;
    let q = unique("excl-consume");
    declare_with(&ch1, &q, QueueDeclareOptions::exclusive(), no_args())
        .await
        .unwrap();
    let (_other, ch2) = broker.channel().await;
    let r = within(ch2.basic_consume(
        q.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        405,
        &format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_usable_from_other_channel_of_same_connection() {
    let broker = Broker::start();
    let (conn, ch1) = broker.channel().await;
    let q = unique("excl-same-conn");
    declare_with(&ch1, &q, QueueDeclareOptions::exclusive(), no_args())
        .await
        .unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    declare_with(&ch2, &q, QueueDeclareOptions::exclusive(), no_args())
        .await
        .expect("same connection may redeclare");
    publish(&ch2, "", &q, b"hi").await;
    wait_message_count(&ch2, &q, 1).await;
    let m = get(&ch2, &q, true).await.expect("message");
    assert_eq!(m.delivery.data, b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = Broker::start();
    let (owner, ch1) = broker.channel().await;
    let q = unique("excl-gone");
    declare_with(&ch1, &q, QueueDeclareOptions::exclusive(), no_args())
        .await
        .unwrap();
    let observer = broker.connect().await;
    within(owner.close(200, "bye".into())).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while queue_exists(&observer, &q).await {
        assert!(
            std::time::Instant::now() < deadline,
            "exclusive queue survived its connection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_is_deleted_when_last_consumer_cancels() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("autodel");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let c1 = consume(&ch, &q, false).await;
    let c2 = consume(&ch, &q, false).await;
    within(ch.basic_cancel(c1.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    // one consumer left: the queue still exists
    assert!(queue_exists(&conn, &q).await);
    within(ch.basic_cancel(c2.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while queue_exists(&conn, &q).await {
        assert!(
            std::time::Instant::now() < deadline,
            "auto-delete queue survived its last consumer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_without_any_consumer_is_kept() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("autodel-never-consumed");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    assert!(queue_exists(&conn, &q).await);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_is_deleted_when_consumer_channel_closes() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("autodel-chclose");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let _c = consume(&ch, &q, false).await;
    within(ch.close(200, "bye".into())).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while queue_exists(&conn, &q).await {
        assert!(std::time::Instant::now() < deadline, "queue survived");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_unbind_control_routing() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique("bind-x");
    let q = unique("bind-q");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &x, "k").await;
    publish(&ch, &x, "k", b"1").await;
    within(ch.wait_for_confirms()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 1);
    within(ch.queue_unbind(q.as_str().into(), x.as_str().into(), "k".into(), no_args()))
        .await
        .unwrap();
    publish(&ch, &x, "k", b"2").await;
    within(ch.wait_for_confirms()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 1);
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_of_nonexistent_binding_is_ok() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("unbind-none-x");
    let q = unique("unbind-none-q");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    declare_queue(&ch, &q).await;
    within(ch.queue_unbind(
        q.as_str().into(),
        x.as_str().into(),
        "nope".into(),
        no_args(),
    ))
    .await
    .expect("unbind of a missing binding");
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
}

/// Unbinding is idempotent: with the queue, the exchange(s) or both missing, queue.unbind
/// and exchange.unbind answer ok (RabbitMQ 3.10), on the same channel, one after another;
/// cleanup code after an auto-delete exchange went away relies on it. The default
/// exchange is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_with_missing_ends_is_ok() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("unbind-ends-q");
    let x = unique("unbind-ends-x");
    let gone_q = unique("unbind-gone-q");
    let gone_x = unique("unbind-gone-x");
    declare_queue(&ch, &q).await;
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    for (queue, exchange) in [(&q, &gone_x), (&gone_q, &x), (&gone_q, &gone_x)] {
        within(ch.queue_unbind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "k".into(),
            no_args(),
        ))
        .await
        .unwrap_or_else(|e| panic!("queue.unbind {queue} from {exchange}: {e}"));
    }
    for (dest, source) in [(&x, &gone_x), (&gone_x, &x), (&gone_q, &gone_x)] {
        within(ch.exchange_unbind(
            dest.as_str().into(),
            source.as_str().into(),
            "k".into(),
            ExchangeUnbindOptions::default(),
            no_args(),
        ))
        .await
        .unwrap_or_else(|e| panic!("exchange.unbind {dest} from {source}: {e}"));
    }
    let watch = ChannelWatch::new(&ch).await;
    let _ = ch
        .queue_unbind(q.as_str().into(), "".into(), q.as_str().into(), no_args())
        .await;
    watch
        .assert_closed(
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
        )
        .await;
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_to_missing_exchange_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("bind-missing-x-q");
    let x = unique("bind-missing-x");
    declare_queue(&ch, &q).await;
    let r = within(ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "k".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        404,
        &format!("NOT_FOUND - no exchange '{x}' in vhost '/'"),
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_missing_queue_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("bind-missing-q");
    let r = within(ch.queue_bind(
        q.as_str().into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(r, 404, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_returns_number_of_messages_purged() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("purge");
    declare_queue(&ch, &q).await;
    for _ in 0..5 {
        publish(&ch, "", &q, b"x").await;
    }
    wait_message_count(&ch, &q, 5).await;
    let n = within(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(message_count(&ch, &q).await, 0);
    let n = within(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_does_not_remove_unacked_messages() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("purge-unacked");
    declare_queue(&ch, &q).await;
    for _ in 0..3 {
        publish(&ch, "", &q, b"x").await;
    }
    wait_message_count(&ch, &q, 3).await;
    let _held = get(&ch, &q, false).await.expect("one unacked");
    let n = within(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 2);
    // closing the channel returns the unacked one
    within(ch.close(200, "bye".into())).await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    wait_message_count(&ch, &q, 1).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_missing_queue_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("purge-missing");
    let r = within(ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())).await;
    assert_channel_closed(r, 404, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_returns_number_of_messages_deleted() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("delete-count");
    declare_queue(&ch, &q).await;
    for _ in 0..4 {
        publish(&ch, "", &q, b"x").await;
    }
    wait_message_count(&ch, &q, 4).await;
    let n = within(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert!(!queue_exists(&conn, &q).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_missing_queue_is_ok_and_returns_zero() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    let q = unique("delete-missing");
    let n = within(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("deleting a missing queue is not an error");
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_with_consumer_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("delete-if-unused");
    declare_queue(&ch, &q).await;
    let ch2 = within(conn.create_channel()).await.unwrap();
    let _c = consume(&ch2, &q, false).await;
    let r = within(ch.queue_delete(
        q.as_str().into(),
        QueueDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"),
    );
    assert_connection_alive(&conn).await;
    assert!(queue_exists(&conn, &q).await);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_empty_with_messages_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("delete-if-empty");
    declare_queue(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    wait_message_count(&ch, &q, 1).await;
    let r = within(ch.queue_delete(
        q.as_str().into(),
        QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        },
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"),
    );
    assert_connection_alive(&conn).await;
    assert!(queue_exists(&conn, &q).await);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_and_if_empty_on_idle_empty_queue_succeeds() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("delete-conditional-ok");
    declare_queue(&ch, &q).await;
    let n = within(ch.queue_delete(
        q.as_str().into(),
        QueueDeleteOptions {
            if_unused: true,
            if_empty: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(n, 0);
    assert!(!queue_exists(&conn, &q).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queue_name_refers_to_last_declared_queue_on_channel() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("last-q-x");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    let q = declare_with(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let name = q.name().to_string();
    // queue.bind with an empty queue name binds the last declared queue
    within(ch.queue_bind(
        "".into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    publish(&ch, &x, "", b"a").await;
    publish(&ch, &x, "", b"b").await;
    wait_message_count(&ch, &name, 2).await;
    // basic.get with an empty queue name
    let m = get(&ch, "", true)
        .await
        .expect("get from last declared queue");
    assert_eq!(m.delivery.data, b"a");
    // queue.purge with an empty queue name
    let n = within(ch.queue_purge("".into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    // queue.delete with an empty queue name
    within(ch.queue_delete("".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(!queue_exists(&conn, &name).await);
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queue_name_without_previous_declare_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let r = within(ch.queue_purge("".into(), QueuePurgeOptions::default())).await;
    assert_channel_closed(r, 404, "NOT_FOUND - no previously declared queue");
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_with_max_length_drops_oldest() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("maxlen");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        table(vec![("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await
    .unwrap();
    for b in ["1", "2", "3"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    wait_message_count(&ch, &q, 2).await;
    assert_eq!(get(&ch, &q, true).await.unwrap().delivery.data, b"2");
    assert_eq!(get(&ch, &q, true).await.unwrap().delivery.data, b"3");
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_expires_messages() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        table(vec![("x-message-ttl", AMQPValue::LongInt(50))]),
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"short-lived").await;
    within(ch.wait_for_confirms()).await.unwrap();
    // confirmed => enqueued; then it disappears (expired) within a few seconds
    wait_message_count(&ch, &q, 0).await;
    assert!(get(&ch, &q, true).await.is_none());
    delete_queues(&conn, &[&q]).await;
}

/// Tens of thousands of queues on one connection (declared with nowait, as fast as a
/// client can send them) leave other clients served, and go when their connection does.
#[test]
fn twenty_thousand_exclusive_queues_come_and_go_without_stalling_others() {
    use crate::common::raw::{self, Enc, RawConn};
    if is_external() {
        return;
    }
    const N: usize = 20_000;
    let broker = Broker::start();
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(1);
    let prefix = unique("many-q");
    let mut frames = Vec::new();
    for i in 0..N {
        // exclusive (bit 2) | nowait (bit 4)
        let declare = Enc::new()
            .u16(0)
            .shortstr(&format!("{prefix}-{i}"))
            .u8(4 | 16);
        frames.extend(raw::method_frame(1, 50, 10, &declare.table(&[]).done()));
    }
    let writer = {
        let mut c2 = c.try_clone();
        std::thread::spawn(move || c2.send(&frames).unwrap())
    };
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let (mut other, _) = RawConn::open(&broker.addr());
        other.open_channel(1);
        other.close();
        assert!(t.elapsed() < WAIT, "a connection took {:?}", t.elapsed());
    }
    writer.join().unwrap();
    let last = format!("{prefix}-{}", N - 1);
    c.send_method(
        1,
        50,
        10,
        &Enc::new()
            .u16(0)
            .shortstr(&last)
            .u8(1 | 4)
            .table(&[])
            .done(),
    );
    c.expect_method(1, 50, 11);
    c.close();
    // Closing the connection deletes them all.
    let deadline = std::time::Instant::now() + WAIT * 4;
    loop {
        let (mut probe, _) = RawConn::open(&broker.addr());
        probe.open_channel(1);
        probe.send_method(
            1,
            50,
            10,
            &Enc::new().u16(0).shortstr(&last).u8(1).table(&[]).done(),
        );
        let f = probe.read_non_heartbeat();
        if f.method() == Some((20, 40)) {
            break; // 404: gone
        }
        probe.close();
        assert!(
            std::time::Instant::now() < deadline,
            "the queues outlived their connection"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// RabbitMQ drops CR and LF from the queue and exchange names given to declare, delete,
/// bind and unbind (declare-ok names the stripped queue), and takes the names given to
/// basic.get, basic.consume, queue.purge and basic.publish, and routing keys, as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_bind_and_delete_strip_line_breaks_from_names() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("crlf-q");
    let x = unique("crlf-x");
    let (q_nl, x_nl) = (format!("{q}\r\n"), format!("\n{x}\r"));
    let declared = declare_queue(&ch, &q_nl).await;
    assert_eq!(declared.name().as_str(), q);
    assert_eq!(message_count(&ch, &format!("\r{q}")).await, 0);
    declare_exchange(&ch, &x_nl, ExchangeKind::Direct).await;
    // Bound with both names broken; the key keeps its line break.
    bind(&ch, &format!("{q}\n"), &format!("{x}\n"), "k\n").await;
    publish(&ch, &x, "k", b"no").await;
    publish(&ch, &x, "k\n", b"yes").await;
    wait_message_count(&ch, &q, 1).await;
    assert_eq!(get(&ch, &q, true).await.expect("routed").data, b"yes");
    within(ch.queue_unbind(
        format!("{q}\r").as_str().into(),
        format!("{x}\r\n").as_str().into(),
        "k\n".into(),
        no_args(),
    ))
    .await
    .expect("queue.unbind");
    publish(&ch, &x, "k\n", b"unbound").await;
    // basic.get takes the name as it is: no queue has the line break.
    let watch = ChannelWatch::new(&ch).await;
    let _ = ch
        .basic_get(q_nl.as_str().into(), BasicGetOptions { no_ack: true })
        .await;
    watch
        .assert_closed(404, &format!("NOT_FOUND - no queue '{q_nl}' in vhost '/'"))
        .await;
    let ch = within(conn.create_channel()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0, "the unbind held");
    within(ch.queue_delete(q_nl.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    within(ch.exchange_delete(x_nl.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .expect("exchange.delete");
    let watch = ChannelWatch::new(&ch).await;
    let _ = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    watch
        .assert_closed(404, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"))
        .await;
}
