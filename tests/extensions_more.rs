//! More RabbitMQ extensions: sender-selected distribution (CC/BCC), single active
//! consumer, consumer priorities. Checked against RabbitMQ too.
mod common;
use common::*;

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
