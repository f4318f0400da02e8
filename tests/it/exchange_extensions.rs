//! RabbitMQ's exchange extensions: alternate exchanges. Checked against RabbitMQ too.
use crate::common::*;

async fn declare_x(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    within(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
        args,
    ))
    .await
    .expect("exchange.declare");
}

fn ae(name: &str) -> FieldTable {
    table(vec![("alternate-exchange", lstr(name))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_go_to_the_alternate_exchange_routable_ones_dont() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let (x, alt, routed, caught) = (
        unique("x"),
        unique("alt"),
        unique("routed"),
        unique("caught"),
    );
    declare_x(&ch, &alt, ExchangeKind::Fanout, no_args()).await;
    declare_x(&ch, &x, ExchangeKind::Direct, ae(&alt)).await;
    declare_queue(&ch, &routed).await;
    declare_queue(&ch, &caught).await;
    bind(&ch, &routed, &x, "known").await;
    bind(&ch, &caught, &alt, "").await;
    publish(&ch, &x, "known", b"to-routed").await;
    publish(&ch, &x, "unknown", b"to-alternate").await;
    wait_message_count(&ch, &caught, 1).await;
    assert_eq!(
        body_str(&get(&ch, &caught, true).await.unwrap().delivery),
        "to-alternate"
    );
    assert_eq!(
        body_str(&get(&ch, &routed, true).await.unwrap().delivery),
        "to-routed"
    );
    assert!(get(&ch, &caught, true).await.is_none());
    delete_queues(&conn, &[&routed, &caught]).await;
    delete_exchanges(&conn, &[&x, &alt]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchanges_chain_and_keep_the_routing_key() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let (x, a1, a2, q) = (unique("x"), unique("a1"), unique("a2"), unique("q"));
    declare_x(&ch, &a2, ExchangeKind::Topic, no_args()).await;
    declare_x(&ch, &a1, ExchangeKind::Direct, ae(&a2)).await;
    declare_x(&ch, &x, ExchangeKind::Direct, ae(&a1)).await;
    declare_queue(&ch, &q).await;
    bind(&ch, &q, &a2, "orders.#").await;
    publish(&ch, &x, "orders.eu", b"chained").await;
    wait_message_count(&ch, &q, 1).await;
    let m = get(&ch, &q, true).await.unwrap();
    assert_eq!(body_str(&m.delivery), "chained");
    assert_eq!(m.delivery.routing_key.as_str(), "orders.eu");
    assert_eq!(
        m.delivery.exchange.as_str(),
        x.as_str(),
        "delivered as published to x"
    );
    delete_queues(&conn, &[&q]).await;
    delete_exchanges(&conn, &[&x, &a1, &a2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_alternate_exchange_leaves_the_message_unroutable() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let x = unique("x");
    declare_x(&ch, &x, ExchangeKind::Direct, ae(&unique("nowhere"))).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let confirm = within(ch.basic_publish(
        x.as_str().into(),
        "k".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"lost",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let c = within(confirm).await.unwrap();
    let returned = c
        .take_message()
        .expect("basic.return for the unroutable message");
    assert_eq!(returned.reply_code, 312);
    delete_exchanges(&conn, &[&x]).await;
}
