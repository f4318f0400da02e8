//! exchange.* methods and routing semantics (direct, fanout, topic,
//! headers, exchange-to-exchange bindings).
use crate::common::*;

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    ch
}

/// Drain a queue with basic.get (auto-ack) and return the bodies in order.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

/// Publish each routing key (body = routing key) to `exchange` on a
/// confirm channel and wait until all are confirmed (so routing is done).
async fn publish_keys(ch: &Channel, exchange: &str, keys: &[&str]) {
    for k in keys {
        publish(ch, exchange, k, k.as_bytes()).await;
    }
    within(ch.wait_for_confirms()).await.unwrap();
}

/// Bind a fresh queue to a fresh topic exchange with `pattern`, publish
/// every key, return the keys that reached the queue.
async fn topic_routed(pattern: &str, keys: &[&str]) -> Vec<String> {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique("topic-x");
    let q = unique("topic-q");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &x, pattern).await;
    publish_keys(&ch, &x, keys).await;
    let got = drain(&ch, &q).await;
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_each_builtin_type_then_passive_declare_succeeds() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let mut names = Vec::new();
    for kind in [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ] {
        let x = unique("decl-type");
        within(ch.exchange_declare(
            x.as_str().into(),
            kind.clone(),
            ExchangeDeclareOptions::default(),
            no_args(),
        ))
        .await
        .expect("declare");
        // passive declare with the same kind succeeds
        within(ch.exchange_declare(x.as_str().into(), kind, passive(), no_args()))
            .await
            .expect("passive declare");
        names.push(x);
    }
    for x in &names {
        within(ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()))
            .await
            .expect("delete");
        assert!(!exchange_exists(&conn, x).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_identical_properties_is_ok() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("redecl-same");
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for _ in 0..2 {
        within(ch.exchange_declare(x.as_str().into(), ExchangeKind::Topic, opts, no_args()))
            .await
            .expect("declare");
    }
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_exchange_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("missing-x");
    let r = within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        passive(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        404,
        &format!("NOT_FOUND - no exchange '{x}' in vhost '/'"),
    );
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_ignores_type_and_flags() {
    // RabbitMQ only checks existence on a passive declare.
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("passive-any");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            passive: true,
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .expect("passive declare with other type/flags");
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_type_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("redecl-type");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let r = within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but current is 'direct'"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_durable_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("redecl-durable");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let r = within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'true' but current is 'false'"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_auto_delete_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("redecl-ad");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let r = within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange '{x}' in vhost '/': received 'true' but current is 'false'"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclare_with_different_internal_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("redecl-internal");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let r = within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'internal' for exchange '{x}' in vhost '/': received 'true' but current is 'false'"
        ),
    );
    assert_connection_alive(&conn).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_amq_prefixed_exchange_closes_channel_403() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = format!("amq.{}", unique("reserved"));
    let r = within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        403,
        &format!("ACCESS_REFUSED - exchange name '{x}' contains reserved prefix 'amq.*'"),
    );
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_with_unknown_type_closes_connection_503() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("badtype");
    let r = within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Custom("no-such-type".into()),
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await;
    assert_connection_closed(
        r,
        503,
        "COMMAND_INVALID - unknown exchange type 'no-such-type'",
    );
    assert_connection_dead(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_on_bound_exchange_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("del-unused-x");
    let q = unique("del-unused-q");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &x, "k").await;
    let r = within(ch.exchange_delete(
        x.as_str().into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!("PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use"),
    );
    assert_connection_alive(&conn).await;
    assert!(exchange_exists(&conn, &x).await);
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_on_unbound_exchange_succeeds() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("del-unused-ok");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    within(ch.exchange_delete(
        x.as_str().into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await
    .expect("delete if-unused");
    assert!(!exchange_exists(&conn, &x).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_missing_exchange_is_ok() {
    // RabbitMQ 3.x: exchange.delete of a non-existent exchange succeeds.
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    let x = unique("del-missing");
    within(ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .expect("delete missing exchange");
    // channel still usable
    within(ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_exchange_removes_its_bindings() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("del-bindings-x");
    let q = unique("del-bindings-q");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &x, "").await;
    within(ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    // re-create: the old binding must be gone
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish(&ch, &x, "", b"m").await;
    within(ch.wait_for_confirms()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_exchanges_exist() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        within(ch.exchange_declare(name.into(), kind, passive(), no_args()))
            .await
            .unwrap_or_else(|e| panic!("{name} should exist: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_default_exchange_closes_channel_403() {
    // Surprising but true in RabbitMQ 3.10: even a passive declare of the
    // default exchange is refused.
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let r =
        within(ch.exchange_declare("".into(), ExchangeKind::Direct, passive(), no_args())).await;
    assert_channel_closed(
        r,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_builtin_amq_exchange_with_same_type_is_ok() {
    // The reserved-prefix check is only applied when the exchange would be
    // created; an equivalent redeclare of amq.direct succeeds.
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    within(ch.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .expect("equivalent redeclare of amq.direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_queue_to_default_exchange_closes_channel_403() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("bind-default");
    declare_queue(&ch, &q).await;
    let r = within(ch.queue_bind(
        q.as_str().into(),
        "".into(),
        "foo".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_default_exchange_closes_channel_403() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let r = within(ch.exchange_delete("".into(), ExchangeDeleteOptions::default())).await;
    assert_channel_closed(
        r,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_internal_exchange_closes_channel_403() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("internal-x");
    within(ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    let watch = ChannelWatch::new(&ch).await;
    publish(&ch, &x, "", b"nope").await;
    watch
        .assert_closed(
            403,
            &format!("ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'"),
        )
        .await;
    assert_connection_alive(&conn).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_exchange_receives_via_exchange_binding() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let src = unique("e2e-src");
    let internal = unique("e2e-internal");
    let q = unique("e2e-internal-q");
    declare_exchange(&ch, &src, ExchangeKind::Fanout).await;
    within(ch.exchange_declare(
        internal.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &internal, "").await;
    within(ch.exchange_bind(
        internal.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish_keys(&ch, &src, &["via-internal"]).await;
    assert_eq!(drain(&ch, &q).await, vec!["via-internal"]);
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&src, &internal]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bind_routes_and_unbind_stops() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let src = unique("e2e-a");
    let dst = unique("e2e-b");
    let q = unique("e2e-q");
    declare_exchange(&ch, &src, ExchangeKind::Topic).await;
    declare_exchange(&ch, &dst, ExchangeKind::Direct).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &dst, "k.1").await;
    within(ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "k.*".into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    // "k.1" matches k.* (src) and k.1 (dst); "k.2" matches src but not dst;
    // "x" matches nothing.
    publish_keys(&ch, &src, &["k.1", "k.2", "x"]).await;
    assert_eq!(drain(&ch, &q).await, vec!["k.1"]);

    within(ch.exchange_unbind(
        dst.as_str().into(),
        src.as_str().into(),
        "k.*".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    publish_keys(&ch, &src, &["k.1"]).await;
    assert!(drain(&ch, &q).await.is_empty());
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&src, &dst]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_binding_cycle_delivers_once() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let a = unique("cycle-a");
    let b = unique("cycle-b");
    let q = unique("cycle-q");
    declare_exchange(&ch, &a, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &b, ExchangeKind::Fanout).await;
    declare_queue(&ch, &q).await;
    for (d, s) in [(&a, &b), (&b, &a)] {
        within(ch.exchange_bind(
            d.as_str().into(),
            s.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            no_args(),
        ))
        .await
        .unwrap();
    }
    bind(&ch, &q, &a, "").await;
    bind(&ch, &q, &b, "").await;
    publish_keys(&ch, &a, &["once"]).await;
    assert_eq!(drain(&ch, &q).await, vec!["once"]);
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_bind_to_missing_source_closes_channel_404() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let dst = unique("e2e-dst");
    let missing = unique("e2e-missing");
    declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
    let r = within(ch.exchange_bind(
        dst.as_str().into(),
        missing.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        404,
        &format!("NOT_FOUND - no exchange '{missing}' in vhost '/'"),
    );
    assert_connection_alive(&conn).await;
    delete_exchanges(&conn, &[&dst]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exchange_routes_on_exact_key() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique("direct-x");
    let q1 = unique("direct-q1");
    let q2 = unique("direct-q2");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    declare_queue(&ch, &q1).await;
    declare_queue(&ch, &q2).await;
    bind(&ch, &q1, &x, "red").await;
    bind(&ch, &q2, &x, "green").await;
    bind(&ch, &q2, &x, "red").await;
    publish_keys(&ch, &x, &["red", "green", "blue", "Red"]).await;
    assert_eq!(drain(&ch, &q1).await, vec!["red"]);
    assert_eq!(drain(&ch, &q2).await, vec!["red", "green"]);
    delete_queues(&conn, &[&q1, &q2]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_ignores_routing_key() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique("fanout-x");
    let q1 = unique("fanout-q1");
    let q2 = unique("fanout-q2");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    declare_queue(&ch, &q1).await;
    declare_queue(&ch, &q2).await;
    bind(&ch, &q1, &x, "whatever").await;
    bind(&ch, &q2, &x, "").await;
    publish_keys(&ch, &x, &["a", "b.c"]).await;
    assert_eq!(drain(&ch, &q1).await, vec!["a", "b.c"]);
    assert_eq!(drain(&ch, &q2).await, vec!["a", "b.c"]);
    delete_queues(&conn, &[&q1, &q2]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_bindings_deliver_once() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique("dupbind-x");
    let q = unique("dupbind-q");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &x, "a.*").await;
    bind(&ch, &q, &x, "a.*").await;
    bind(&ch, &q, &x, "#").await;
    publish_keys(&ch, &x, &["a.b"]).await;
    assert_eq!(drain(&ch, &q).await, vec!["a.b"]);
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_routes_to_queue_by_name() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("default-x-q");
    declare_queue(&ch, &q).await;
    publish_keys(&ch, "", &[q.as_str(), "no-such-queue-name"]).await;
    assert_eq!(drain(&ch, &q).await, vec![q.clone()]);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_star_matches_exactly_one_word() {
    let got = topic_routed(
        "a.*.c",
        &["a.b.c", "a.c", "a.b.b.c", "a..c", "a.b.c.d", "x.b.c"],
    )
    .await;
    assert_eq!(got, vec!["a.b.c", "a..c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_hash_matches_zero_or_more_words() {
    let got = topic_routed("a.#", &["a", "a.b", "a.b.c", "b.a", "ab", ""]).await;
    assert_eq!(got, vec!["a", "a.b", "a.b.c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_hash_in_the_middle_matches_zero_or_more_words() {
    let got = topic_routed("a.#.b", &["a.b", "a.x.b", "a.x.y.b", "a.b.c", "a", "b"]).await;
    assert_eq!(got, vec!["a.b", "a.x.b", "a.x.y.b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lone_hash_matches_everything_including_empty_key() {
    let got = topic_routed("#", &["", "a", "a.b.c", "..."]).await;
    assert_eq!(got, vec!["", "a", "a.b.c", "..."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lone_star_matches_single_word_but_not_empty_key() {
    // RabbitMQ treats the empty routing key as zero words, so "*" does not
    // match it (while "a..c" has an empty middle word that "*" does match).
    let got = topic_routed("*", &["", "a", "a.b", "."]).await;
    assert_eq!(got, vec!["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_empty_binding_key_matches_only_empty_routing_key() {
    let got = topic_routed("", &["", "a", "."]).await;
    assert_eq!(got, vec![""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_hash_star_combination_requires_at_least_one_word() {
    let got = topic_routed("#.*", &["", "a", "a.b"]).await;
    assert_eq!(got, vec!["a", "a.b"]);
    let got = topic_routed("*.#.*", &["a", "a.b", "a.b.c"]).await;
    assert_eq!(got, vec!["a.b", "a.b.c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_literal_key_matches_exactly() {
    let got = topic_routed(
        "stock.usd.nyse",
        &["stock.usd.nyse", "stock.usd", "stock.usd.nyse.x"],
    )
    .await;
    assert_eq!(got, vec!["stock.usd.nyse"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_hash_prefix_matches_suffix() {
    let got = topic_routed(
        "#.error",
        &["error", "app.error", "a.b.error", "error.x", "xerror"],
    )
    .await;
    assert_eq!(got, vec!["error", "app.error", "a.b.error"]);
}

/// Bind a fresh queue to a fresh headers exchange with `binding`, publish
/// one message per header table (body = index), return the indexes routed.
async fn headers_routed(binding: FieldTable, messages: Vec<FieldTable>) -> Vec<String> {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let x = unique("headers-x");
    let q = unique("headers-q");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;
    declare_queue(&ch, &q).await;
    within(ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        binding,
    ))
    .await
    .unwrap();
    for (i, h) in messages.into_iter().enumerate() {
        publish_props(
            &ch,
            &x,
            "ignored",
            i.to_string().as_bytes(),
            BasicProperties::default().with_headers(h),
        )
        .await;
    }
    within(ch.wait_for_confirms()).await.unwrap();
    let got = drain(&ch, &q).await;
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
    got
}

fn msgs() -> Vec<FieldTable> {
    vec![
        // 0: both match
        table(vec![("a", lstr("1")), ("b", lstr("2"))]),
        // 1: only a
        table(vec![("a", lstr("1"))]),
        // 2: a matches, b differs
        table(vec![("a", lstr("1")), ("b", lstr("3"))]),
        // 3: none
        table(vec![("c", lstr("1"))]),
        // 4: both plus extra header
        table(vec![("a", lstr("1")), ("b", lstr("2")), ("z", lstr("9"))]),
        // 5: no headers at all
        FieldTable::default(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_x_match_all_requires_every_header() {
    let got = headers_routed(
        table(vec![
            ("x-match", lstr("all")),
            ("a", lstr("1")),
            ("b", lstr("2")),
        ]),
        msgs(),
    )
    .await;
    assert_eq!(got, vec!["0", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_default_x_match_is_all() {
    let got = headers_routed(table(vec![("a", lstr("1")), ("b", lstr("2"))]), msgs()).await;
    assert_eq!(got, vec!["0", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_x_match_any_requires_one_header() {
    let got = headers_routed(
        table(vec![
            ("x-match", lstr("any")),
            ("a", lstr("1")),
            ("b", lstr("2")),
        ]),
        msgs(),
    )
    .await;
    assert_eq!(got, vec!["0", "1", "2", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_void_binding_value_matches_presence_only() {
    let got = headers_routed(
        table(vec![("x-match", lstr("all")), ("b", AMQPValue::Void)]),
        msgs(),
    )
    .await;
    assert_eq!(got, vec!["0", "2", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_x_match_all_ignores_x_prefixed_binding_args() {
    let binding = table(vec![
        ("x-match", lstr("all")),
        ("a", lstr("1")),
        ("x-tenant", lstr("t1")),
    ]);
    let messages = vec![
        table(vec![("a", lstr("1"))]),
        table(vec![("a", lstr("1")), ("x-tenant", lstr("t1"))]),
        table(vec![("a", lstr("1")), ("x-tenant", lstr("other"))]),
    ];
    let got = headers_routed(binding, messages).await;
    assert_eq!(got, vec!["0", "1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_x_match_all_with_x_considers_x_prefixed_args() {
    let binding = table(vec![
        ("x-match", lstr("all-with-x")),
        ("a", lstr("1")),
        ("x-tenant", lstr("t1")),
    ]);
    let messages = vec![
        table(vec![("a", lstr("1"))]),
        table(vec![("a", lstr("1")), ("x-tenant", lstr("t1"))]),
        table(vec![("a", lstr("1")), ("x-tenant", lstr("other"))]),
    ];
    let got = headers_routed(binding, messages).await;
    assert_eq!(got, vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_x_match_any_ignores_x_prefixed_binding_args() {
    let binding = table(vec![
        ("x-match", lstr("any")),
        ("a", lstr("1")),
        ("x-tenant", lstr("t1")),
    ]);
    let messages = vec![
        table(vec![("x-tenant", lstr("t1"))]),
        table(vec![("a", lstr("1"))]),
        table(vec![("b", lstr("1"))]),
    ];
    let got = headers_routed(binding, messages).await;
    assert_eq!(got, vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_x_match_any_with_x_considers_x_prefixed_args() {
    let binding = table(vec![
        ("x-match", lstr("any-with-x")),
        ("a", lstr("1")),
        ("x-tenant", lstr("t1")),
    ]);
    let messages = vec![
        table(vec![("x-tenant", lstr("t1"))]),
        table(vec![("a", lstr("1"))]),
        table(vec![("b", lstr("1"))]),
    ];
    let got = headers_routed(binding, messages).await;
    assert_eq!(got, vec!["0", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_match_compares_values_and_types() {
    // A long-string "1" does not match an integer 1.
    let binding = table(vec![("x-match", lstr("all")), ("n", AMQPValue::LongInt(1))]);
    let messages = vec![
        table(vec![("n", AMQPValue::LongInt(1))]),
        table(vec![("n", lstr("1"))]),
        table(vec![("n", AMQPValue::LongInt(2))]),
    ];
    let got = headers_routed(binding, messages).await;
    assert_eq!(got, vec!["0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_binding_with_invalid_x_match_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("headers-bad");
    let q = unique("headers-bad-q");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;
    declare_queue(&ch, &q).await;
    let r = within(ch.queue_bind(
        q.as_str().into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        table(vec![("x-match", lstr("some"))]),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x",
    );
    assert_connection_alive(&conn).await;
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x]).await;
}

/// Tens of thousands of bindings cost each bind, unbind and deletion a constant amount:
/// 60,000 `queue.bind` with nowait (to one fanout exchange and one direct key), then
/// deleting the queue, all finish while other clients keep connecting. Binding used to
/// scan the exchange's bindings under the vhost's lock (40,000 took 9 s, 80,000 38 s)
/// and new connections timed out meanwhile.
#[test]
fn sixty_thousand_bindings_leave_the_broker_responsive() {
    use crate::common::raw::{self, Enc, RawConn};
    if is_external() {
        return;
    }
    let broker = Broker::start();
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(1);
    let q = unique("many-bindings");
    c.send_method(
        1,
        50,
        10,
        &Enc::new().u16(0).shortstr(&q).u8(0).table(&[]).done(),
    );
    c.expect_method(1, 50, 11);
    let x = unique("many-bindings-x");
    let declare_x = Enc::new()
        .u16(0)
        .shortstr(&x)
        .shortstr("fanout")
        .u8(0)
        .table(&[]);
    c.send_method(1, 40, 10, &declare_x.done());
    c.expect_method(1, 40, 11);
    let mut frames = Vec::new();
    for i in 0..30_000 {
        for exchange in [x.as_str(), "amq.direct"] {
            let key = format!("k{i}");
            let bind = Enc::new()
                .u16(0)
                .shortstr(&q)
                .shortstr(exchange)
                .shortstr(&key);
            frames.extend(raw::method_frame(1, 50, 20, &bind.u8(1).table(&[]).done()));
        }
    }
    let addr = broker.addr();
    let writer = {
        let mut c2 = c.try_clone();
        std::thread::spawn(move || c2.send(&frames).unwrap())
    };
    // While the binds stream in, others connect and declare as usual.
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let (mut other, _) = RawConn::open(&addr);
        other.open_channel(1);
        other.send_method(
            1,
            50,
            10,
            &Enc::new().u16(0).shortstr("").u8(8).table(&[]).done(),
        );
        other.expect_method(1, 50, 11);
        other.close();
        assert!(t.elapsed() < WAIT, "a connection took {:?}", t.elapsed());
    }
    writer.join().unwrap();
    // A synchronous method after the binds answers once they are all applied.
    c.send_method(
        1,
        50,
        10,
        &Enc::new().u16(0).shortstr(&q).u8(1).table(&[]).done(),
    );
    c.expect_method(1, 50, 11);
    // The exchange has every binding: if-unused deletion is refused (and closes the channel).
    c.send_method(1, 40, 20, &Enc::new().u16(0).shortstr(&x).u8(1).done());
    let close = c.expect_method(1, 20, 40);
    assert_eq!(&close[..2], &406u16.to_be_bytes());
    c.send_method(1, 20, 41, &[]);
    c.open_channel(2);
    // Deleting the queue removes its 60,000 bindings; the exchange is then unused.
    c.send_method(2, 50, 40, &Enc::new().u16(0).shortstr(&q).u8(0).done());
    c.expect_method(2, 50, 41);
    c.send_method(2, 40, 20, &Enc::new().u16(0).shortstr(&x).u8(1).done());
    c.expect_method(2, 40, 21);
    c.close();
}

/// Declare an auto-delete exchange (`auto_delete`) or a plain one.
async fn declare_x(ch: &Channel, name: &str, kind: ExchangeKind, auto_delete: bool) {
    within(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            auto_delete,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .expect("exchange.declare");
}

async fn bind_x(ch: &Channel, dest: &str, source: &str, key: &str) {
    within(ch.exchange_bind(
        dest.into(),
        source.into(),
        key.into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await
    .expect("exchange.bind");
}

async fn delete_x(ch: &Channel, name: &str) {
    within(ch.exchange_delete(name.into(), ExchangeDeleteOptions::default()))
        .await
        .expect("exchange.delete");
}

async fn delete_q(ch: &Channel, name: &str) {
    within(ch.queue_delete(name.into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
}

/// rabbit_exchange:maybe_auto_delete, as RabbitMQ 3.10 applies it: an auto-delete exchange
/// goes when the last binding with it as the *source* goes (by unbind, by deleting the
/// queue or exchange at the other end, one at a time or several at once when a
/// connection's exclusive queues go), cascading through exchange-to-exchange bindings;
/// never bound, or only a destination, it stays; afterwards a publish to it is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchanges_go_with_their_last_source_binding() {
    use ExchangeKind::{Direct, Fanout};
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let name = |p: &str| unique(&format!("adx-{p}"));

    // Never bound: stays. Unbinding one of two keys: stays; the last: goes.
    let (x, q) = (name("keys"), name("keys-q"));
    declare_x(&ch, &x, Direct, true).await;
    assert!(exchange_exists(&conn, &x).await, "never bound");
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &x, "a").await;
    bind(&ch, &q, &x, "b").await;
    within(ch.queue_unbind(q.as_str().into(), x.as_str().into(), "a".into(), no_args()))
        .await
        .unwrap();
    assert!(exchange_exists(&conn, &x).await, "one binding left");
    within(ch.queue_unbind(q.as_str().into(), x.as_str().into(), "b".into(), no_args()))
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, &x).await, "last binding unbound");
    delete_q(&ch, &q).await;

    // Two queues: the first deletion leaves it, the second takes it.
    let (x, q1, q2) = (name("queues"), name("q1"), name("q2"));
    declare_x(&ch, &x, Fanout, true).await;
    for q in [&q1, &q2] {
        declare_queue(&ch, q).await;
        bind(&ch, q, &x, "").await;
    }
    delete_q(&ch, &q1).await;
    assert!(exchange_exists(&conn, &x).await, "one queue left");
    delete_q(&ch, &q2).await;
    assert!(!exchange_exists(&conn, &x).await, "both queues gone");

    // Cascade: top (auto-delete) -> mid (auto-delete) -> queue. Deleting the queue takes
    // mid, whose deletion removes top's last binding and takes top.
    let (top, mid, q) = (name("top"), name("mid"), name("casc-q"));
    declare_x(&ch, &top, Fanout, true).await;
    declare_x(&ch, &mid, Fanout, true).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &mid, "").await;
    bind_x(&ch, &mid, &top, "").await;
    delete_q(&ch, &q).await;
    assert!(!exchange_exists(&conn, &mid).await, "mid");
    assert!(!exchange_exists(&conn, &top).await, "top, through mid");

    // Deleting the destination exchange removes the source's last binding. Several
    // sources at once: one still bound to a queue stays until that queue goes.
    let (a, b, dest, q) = (name("a"), name("b"), name("dest"), name("ab-q"));
    declare_x(&ch, &a, Fanout, true).await;
    declare_x(&ch, &b, Fanout, true).await;
    declare_x(&ch, &dest, Fanout, false).await;
    declare_queue(&ch, &q).await;
    bind_x(&ch, &dest, &a, "").await;
    bind_x(&ch, &dest, &b, "").await;
    bind(&ch, &q, &b, "").await;
    delete_x(&ch, &dest).await;
    assert!(!exchange_exists(&conn, &a).await, "a lost its only binding");
    assert!(
        exchange_exists(&conn, &b).await,
        "b is still bound to a queue"
    );
    delete_q(&ch, &q).await;
    assert!(!exchange_exists(&conn, &b).await, "b lost its last binding");

    // Only a destination: unbinding it from its source leaves both.
    let (src, ad) = (name("src"), name("dest-only"));
    declare_x(&ch, &src, Fanout, false).await;
    declare_x(&ch, &ad, Fanout, true).await;
    bind_x(&ch, &ad, &src, "").await;
    within(ch.exchange_unbind(
        ad.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    assert!(exchange_exists(&conn, &ad).await, "a destination only");
    delete_x(&ch, &src).await;
    delete_x(&ch, &ad).await;

    // Several at once: a connection's three exclusive queues bound to it go with the
    // connection; a channel that published to it before gets 404 after.
    let x = name("excl");
    declare_x(&ch, &x, Direct, true).await;
    let other = broker.connect().await;
    let och = within(other.create_channel()).await.unwrap();
    for i in 0..3 {
        let q = name("excl-q");
        within(och.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        ))
        .await
        .unwrap();
        bind(&och, &q, &x, &format!("k{i}")).await;
    }
    let pch = confirm_channel(&conn).await;
    within(
        within(pch.basic_publish(
            x.as_str().into(),
            "k1".into(),
            BasicPublishOptions::default(),
            b"routed",
            BasicProperties::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    within(other.close(200, "bye".into())).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while exchange_exists(&conn, &x).await {
        assert!(
            std::time::Instant::now() < deadline,
            "exclusive queues gone, exchange stays"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let watch = ChannelWatch::new(&pch).await;
    let _ = pch
        .basic_publish(
            x.as_str().into(),
            "k1".into(),
            BasicPublishOptions::default(),
            b"after",
            BasicProperties::default(),
        )
        .await;
    watch
        .assert_closed(404, &format!("NOT_FOUND - no exchange '{x}' in vhost '/'"))
        .await;
}
