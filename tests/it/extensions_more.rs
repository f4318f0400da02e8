//! More RabbitMQ extensions: sender-selected distribution (CC/BCC), single active
//! consumer, consumer priorities. Checked against RabbitMQ too.
use crate::common::*;

fn keys(ks: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        ks.iter().map(|k| lstr(k)).collect::<Vec<_>>(),
    ))
}

fn with_headers(entries: Vec<(&str, AMQPValue)>) -> BasicProperties {
    BasicProperties::default().with_headers(table(entries))
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

// ---- sender-selected distribution ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_and_bcc_add_routing_keys_and_each_queue_gets_the_message_once() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("x");
    let (main, cc, bcc, both) = (unique("main"), unique("cc"), unique("bcc"), unique("both"));
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    for (q, k) in [(&main, "k.main"), (&cc, "k.cc"), (&bcc, "k.bcc")] {
        declare_queue(&ch, q).await;
        bind(&ch, q, &x, k).await;
    }
    // Bound under two of the keys: still one copy.
    declare_queue(&ch, &both).await;
    bind(&ch, &both, &x, "k.main").await;
    bind(&ch, &both, &x, "k.cc").await;
    let props = with_headers(vec![
        ("CC", keys(&["k.cc", "k.none"])),
        ("BCC", keys(&["k.bcc"])),
        ("other", lstr("kept")),
    ]);
    publish_props(&ch, &x, "k.main", b"hello", props).await;
    for q in [&main, &cc, &bcc, &both] {
        wait_message_count(&ch, q, 1).await;
        let m = get(&ch, q, true).await.unwrap();
        assert_eq!(body_str(&m.delivery), "hello");
        // Delivered with the publish's own routing key, CC visible, BCC gone.
        assert_eq!(m.delivery.routing_key.as_str(), "k.main");
        assert_eq!(header(&m, "CC"), Some(keys(&["k.cc", "k.none"])));
        assert_eq!(header(&m, "BCC"), None);
        assert_eq!(header(&m, "other"), Some(lstr("kept")));
        assert!(get(&ch, q, true).await.is_none(), "{q} got a second copy");
    }
    delete_queues(&conn, &[&main, &cc, &bcc, &both]).await;
    delete_exchanges(&conn, &[&x]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_route_by_their_cc_keys_unless_a_dead_letter_routing_key_is_set() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let dlx = unique("dlx");
    let (by_key, by_cc) = (unique("by-key"), unique("by-cc"));
    declare_exchange(&ch, &dlx, ExchangeKind::Direct).await;
    declare_queue(&ch, &by_key).await;
    declare_queue(&ch, &by_cc).await;
    bind(&ch, &by_key, &dlx, "k.main").await;
    bind(&ch, &by_cc, &dlx, "k.cc").await;
    let (plain, fixed) = (unique("dl-plain"), unique("dl-fixed"));
    for (q, rk) in [(&plain, None), (&fixed, Some("k.main"))] {
        let mut args = vec![("x-dead-letter-exchange", lstr(&dlx))];
        if let Some(rk) = rk {
            args.push(("x-dead-letter-routing-key", lstr(rk)));
        }
        within(ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            table(args),
        ))
        .await
        .unwrap();
    }
    let props = with_headers(vec![("CC", keys(&["k.cc"]))]);
    for q in [&plain, &fixed] {
        // Published to the queue by name (the default exchange), CC naming a key the
        // DLX routes.
        publish_props(&ch, "", q, b"dead", props.clone()).await;
        wait_message_count(&ch, q, 1).await;
        let m = get(&ch, q, false).await.unwrap();
        within(ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ))
        .await
        .unwrap();
    }
    // Without x-dead-letter-routing-key, the message's routing key is the queue name
    // (bound nowhere on the DLX) and its CC key reaches by-cc; with one, only that key
    // routes (and CC is dropped), as RabbitMQ does.
    wait_message_count(&ch, &by_cc, 1).await;
    wait_message_count(&ch, &by_key, 1).await;
    let m = get(&ch, &by_key, true).await.unwrap();
    assert_eq!(header(&m, "CC"), None);
    delete_queues(&conn, &[&plain, &fixed, &by_key, &by_cc]).await;
    delete_exchanges(&conn, &[&dlx]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_routes_on_the_default_exchange_and_is_not_cached_for_the_next_publish() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let (a, b) = (unique("a"), unique("b"));
    declare_queue(&ch, &a).await;
    declare_queue(&ch, &b).await;
    // Same exchange and routing key three times: with CC, without, with BCC.
    publish_props(&ch, "", &a, b"1", with_headers(vec![("CC", keys(&[&b]))])).await;
    publish(&ch, "", &a, b"2").await;
    publish_props(&ch, "", &a, b"3", with_headers(vec![("BCC", keys(&[&b]))])).await;
    wait_message_count(&ch, &a, 3).await;
    wait_message_count(&ch, &b, 2).await;
    let got: Vec<String> = [
        get(&ch, &b, true).await.unwrap(),
        get(&ch, &b, true).await.unwrap(),
    ]
    .iter()
    .map(|m| body_str(&m.delivery))
    .collect();
    assert_eq!(got, ["1", "3"]);
    delete_queues(&conn, &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_that_is_not_an_array_closes_the_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("q");
    declare_queue(&ch, &q).await;
    let watch = ChannelWatch::new(&ch).await;
    publish_props(&ch, "", &q, b"x", with_headers(vec![("CC", lstr("k"))])).await;
    watch
        .assert_closed(
            406,
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}",
        )
        .await;
    delete_queues(&conn, &[&q]).await;
}

// ---- single active consumer ----

async fn declare_sac(ch: &Channel, q: &str) -> Queue {
    within(ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        table(vec![("x-single-active-consumer", AMQPValue::Boolean(true))]),
    ))
    .await
    .expect("queue.declare")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_only_the_first_receives_until_it_goes_away() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("sac");
    declare_sac(&ch, &q).await;
    let ch1 = within(conn.create_channel()).await.unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    let mut first = consume(&ch1, &q, true).await;
    // The second consume is accepted (consume-ok) and waits.
    let mut second = consume(&ch2, &q, true).await;
    let ok = declare_sac(&ch, &q).await;
    assert_eq!(
        ok.consumer_count(),
        2,
        "declare-ok counts waiting consumers too"
    );
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    for i in 0..4 {
        assert_eq!(body_str(&next_delivery(&mut first).await), format!("m{i}"));
    }
    assert_no_delivery(&mut second).await;
    // The active consumer goes: the next one takes over.
    within(ch1.basic_cancel(first.tag().as_str().into(), BasicCancelOptions::default()))
        .await
        .unwrap();
    publish(&ch, "", &q, b"after").await;
    assert_eq!(body_str(&next_delivery(&mut second).await), "after");
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_refuses_an_exclusive_consume_403() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("sac-x");
    declare_sac(&ch, &q).await;
    let ch2 = within(conn.create_channel()).await.unwrap();
    let r = within(ch2.basic_consume(
        q.as_str().into(),
        "".into(),
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        403,
        &format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"),
    );
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_argument_must_be_a_boolean() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    let q = unique("sac-bad");
    let r = within(ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        table(vec![("x-single-active-consumer", lstr("yes"))]),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue '{q}' in \
             vhost '/': {{unacceptable_type,longstr}}"
        ),
    );
}

// ---- consumer priorities ----

async fn consume_prio(ch: &Channel, q: &str, priority: i32) -> Consumer {
    within(ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions::default(),
        table(vec![("x-priority", AMQPValue::LongInt(priority))]),
    ))
    .await
    .expect("basic.consume")
}

async fn prefetch_channel(conn: &Connection, n: u16) -> Channel {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.basic_qos(n, BasicQosOptions::default()))
        .await
        .unwrap();
    ch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_consumers_receive_first_lower_ones_only_when_they_are_full() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("prio");
    declare_queue(&ch, &q).await;
    let (ch_low, ch_hi1, ch_hi2) = (
        prefetch_channel(&conn, 10).await,
        prefetch_channel(&conn, 2).await,
        prefetch_channel(&conn, 2).await,
    );
    let mut low = consume_prio(&ch_low, &q, 1).await;
    let mut hi1 = consume_prio(&ch_hi1, &q, 10).await;
    let mut hi2 = consume_prio(&ch_hi2, &q, 10).await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    // Round-robin among the two high ones; none for the low one while they have room.
    let mut hi = Vec::new();
    for _ in 0..2 {
        hi.push(body_str(&next_delivery(&mut hi1).await));
        hi.push(body_str(&next_delivery(&mut hi2).await));
    }
    hi.sort();
    assert_eq!(hi, ["m0", "m1", "m2", "m3"]);
    assert_no_delivery(&mut low).await;
    // Both high consumers are at their prefetch: the low one gets the overflow.
    publish(&ch, "", &q, b"overflow").await;
    let d = next_delivery(&mut low).await;
    assert_eq!(body_str(&d), "overflow");
    within(d.ack(BasicAckOptions::default())).await.unwrap();
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priority_must_be_an_integer() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("prio-bad");
    declare_queue(&ch, &q).await;
    let ch2 = within(conn.create_channel()).await.unwrap();
    let r = within(ch2.basic_consume(
        q.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        table(vec![("x-priority", lstr("high"))]),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': \
             \"expected integer, got longstr\""
        ),
    );
    delete_queues(&conn, &[&q]).await;
}

// ---- direct reply-to ----

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_rewrites_reply_to_and_delivers_the_reply_to_the_requester() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let requests = unique("rpc");
    declare_queue(&ch, &requests).await;
    let client = within(conn.create_channel()).await.unwrap();
    let mut replies = consume(&client, REPLY_TO, true).await;
    publish_props(
        &client,
        "",
        &requests,
        b"ping",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    wait_message_count(&ch, &requests, 1).await;
    let req = get(&ch, &requests, true).await.unwrap();
    let reply_key = req
        .delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to kept")
        .as_str()
        .to_owned();
    assert!(
        reply_key.starts_with("amq.rabbitmq.reply-to."),
        "rewritten to a reply key: {reply_key}"
    );
    // The server answers on another connection, through the default exchange.
    let (_server_conn, server) = broker.channel().await;
    publish(&server, "", &reply_key, b"pong").await;
    let d = next_delivery(&mut replies).await;
    assert_eq!(body_str(&d), "pong");
    assert_eq!(d.routing_key.as_str(), reply_key);
    assert_eq!(d.exchange.as_str(), "");
    // The pseudo-queue can be declared passively.
    let ok = within(client.queue_declare(
        REPLY_TO.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .expect("passive declare of amq.rabbitmq.reply-to");
    assert_eq!((ok.message_count(), ok.consumer_count()), (0, 1));
    delete_queues(&conn, &[&requests]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_consumer_must_be_no_ack_406() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    let r = within(ch.basic_consume(
        REPLY_TO.into(),
        "".into(),
        BasicConsumeOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(
        r,
        406,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_with_direct_reply_to_before_consuming_it_closes_the_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("rpc-early");
    declare_queue(&ch, &q).await;
    let ch2 = within(conn.create_channel()).await.unwrap();
    let watch = ChannelWatch::new(&ch2).await;
    publish_props(
        &ch2,
        "",
        &q,
        b"x",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    watch
        .assert_closed(
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist",
        )
        .await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandatory_reply_is_delivered_and_also_returned_as_unroutable() {
    let broker = Broker::start();
    let (conn, client) = broker.channel().await;
    let mut replies = consume(&client, REPLY_TO, true).await;
    let reply_key = {
        let q = unique("rpc-m");
        declare_queue(&client, &q).await;
        publish_props(
            &client,
            "",
            &q,
            b"req",
            BasicProperties::default().with_reply_to(REPLY_TO.into()),
        )
        .await;
        wait_message_count(&client, &q, 1).await;
        let m = get(&client, &q, true).await.unwrap();
        delete_queues(&conn, &[&q]).await;
        m.delivery
            .properties
            .reply_to()
            .clone()
            .unwrap()
            .to_string()
    };
    let (_c2, server) = broker.channel().await;
    within(server.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let confirm = within(server.basic_publish(
        "".into(),
        reply_key.as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"pong",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let c = within(confirm).await.unwrap();
    assert!(c.is_ack());
    // rabbit_exchange:route: reply keys are delivered aside and route to no queue.
    let returned = c.take_message().expect("basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(body_str(&next_delivery(&mut replies).await), "pong");
}

/// The rules of consumer priorities, with consumers coming and going while messages
/// flow, all on one channel with a per-consumer prefetch of 2 (RabbitMQ 3.10 gives the
/// same deliveries): the highest priority with credit gets the next message, equal
/// priorities take turns, a lower one only while all higher ones are at their prefetch;
/// credit freed by an ack or a requeue goes by the same rules; a consumer added with a
/// higher priority takes over at once; a cancelled one gets nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priorities_hold_as_credit_frees_and_consumers_come_and_go() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("prio-rules");
    declare_queue(&ch, &q).await;
    let cch = prefetch_channel(&conn, 2).await;
    let mut low = consume_prio(&cch, &q, 0).await;
    let mut hi1 = consume_prio(&cch, &q, 10).await;
    let mut hi2 = consume_prio(&cch, &q, 10).await;
    let mut mid = consume_prio(&cch, &q, 5).await;
    for i in 0..20 {
        publish(&ch, "", &q, format!("m{i:02}").as_bytes()).await;
    }
    async fn take(c: &mut Consumer, n: usize) -> Vec<Delivery> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(next_delivery(c).await);
        }
        assert_no_delivery(c).await;
        v
    }
    let bodies = |ds: &[Delivery]| ds.iter().map(body_str).collect::<Vec<_>>();
    // Turns between the two highest, then the middle, then the lowest: two each.
    let h1 = take(&mut hi1, 2).await;
    let h2 = take(&mut hi2, 2).await;
    assert_eq!(bodies(&h1), ["m00", "m02"]);
    assert_eq!(bodies(&h2), ["m01", "m03"]);
    let m = take(&mut mid, 2).await;
    assert_eq!(bodies(&m), ["m04", "m05"]);
    let l = take(&mut low, 2).await;
    assert_eq!(bodies(&l), ["m06", "m07"]);

    // Credit freed on the lowest goes to it: everything above is at its prefetch.
    within(l[0].ack(BasicAckOptions::default())).await.unwrap();
    assert_eq!(bodies(&take(&mut low, 1).await), ["m08"]);
    // Freed on a high one: that one, not the middle or low one.
    within(h2[0].ack(BasicAckOptions::default())).await.unwrap();
    assert_eq!(bodies(&take(&mut hi2, 1).await), ["m09"]);
    assert_no_delivery(&mut mid).await;
    // A requeue frees the credit and puts the message back at the head: it goes to the
    // highest consumer with credit, here the one that gave it back.
    within(h1[0].nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    let again = take(&mut hi1, 1).await;
    assert_eq!(bodies(&again), ["m00"]);
    assert!(again[0].redelivered);

    // A higher consumer joins: it takes the next two at once.
    let mut top = consume_prio(&cch, &q, 20).await;
    assert_eq!(bodies(&take(&mut top, 2).await), ["m10", "m11"]);
    // The top one cancelled: freeing credit below goes by the rules again.
    within(cch.basic_cancel(top.tag().as_str().into(), BasicCancelOptions::default()))
        .await
        .unwrap();
    within(m[0].ack(BasicAckOptions::default())).await.unwrap();
    assert_eq!(bodies(&take(&mut mid, 1).await), ["m12"]);
    assert_no_delivery(&mut low).await;
    delete_queues(&conn, &[&q]).await;
}
