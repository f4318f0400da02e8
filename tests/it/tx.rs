//! Transactions (tx.select / tx.commit / tx.rollback).
use crate::common::*;

async fn tx_channel(conn: &Connection) -> Channel {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.tx_select()).await.unwrap();
    ch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_become_visible_only_at_commit() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = tx_channel(&conn).await;
    let observer = within(conn.create_channel()).await.unwrap();
    let q = unique("tx-commit");
    declare_queue(&observer, &q).await;
    publish(&ch, "", &q, b"1").await;
    publish(&ch, "", &q, b"2").await;
    // a synchronous round trip on the tx channel guarantees the publishes
    // were processed (but not committed)
    within(ch.basic_qos(0, BasicQosOptions::default()))
        .await
        .unwrap();
    assert_eq!(message_count(&observer, &q).await, 0);
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(message_count(&observer, &q).await, 2);
    assert_eq!(get(&observer, &q, true).await.unwrap().delivery.data, b"1");
    assert_eq!(get(&observer, &q, true).await.unwrap().delivery.data, b"2");
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_discards_uncommitted_publishes() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = tx_channel(&conn).await;
    let q = unique("tx-rollback");
    declare_queue(&ch, &q).await;
    publish(&ch, "", &q, b"gone").await;
    within(ch.tx_rollback()).await.unwrap();
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0);
    // the channel stays transactional after rollback
    publish(&ch, "", &q, b"kept").await;
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 1);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_stays_transactional_after_commit() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = tx_channel(&conn).await;
    let q = unique("tx-multi");
    declare_queue(&ch, &q).await;
    publish(&ch, "", &q, b"a").await;
    within(ch.tx_commit()).await.unwrap();
    publish(&ch, "", &q, b"b").await;
    within(ch.basic_qos(0, BasicQosOptions::default()))
        .await
        .unwrap();
    assert_eq!(message_count(&ch, &q).await, 1);
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 2);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_in_a_transaction_take_effect_at_commit() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let setup = within(conn.create_channel()).await.unwrap();
    let q = unique("tx-ack");
    declare_queue(&setup, &q).await;
    publish(&setup, "", &q, b"m").await;
    wait_message_count(&setup, &q, 1).await;

    // ack + rollback: message stays unacked, comes back when channel closes
    let ch = tx_channel(&conn).await;
    let m = get(&ch, &q, false).await.unwrap();
    within(ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.tx_rollback()).await.unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    wait_message_count(&setup, &q, 1).await;

    // ack + commit: message is gone for good
    let ch = tx_channel(&conn).await;
    let m = get(&ch, &q, false).await.unwrap();
    assert!(m.delivery.redelivered);
    within(ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.tx_commit()).await.unwrap();
    within(ch.close(200, "bye".into())).await.unwrap();
    assert_eq!(message_count(&setup, &q).await, 0);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_select_on_transactional_channel_closes_channel_406() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = tx_channel(&conn).await;
    let r = within(ch.confirm_select(ConfirmSelectOptions::default())).await;
    assert_channel_closed(
        r,
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
    );
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_select_on_confirm_channel_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let r = within(ch.tx_select()).await;
    assert_channel_closed(
        r,
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
    );
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_without_select_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let r = within(ch.tx_commit()).await;
    assert_channel_closed(r, 406, "PRECONDITION_FAILED - channel is not transactional");
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_without_select_closes_channel_406() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let r = within(ch.tx_rollback()).await;
    assert_channel_closed(r, 406, "PRECONDITION_FAILED - channel is not transactional");
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_select_twice_is_ok() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = tx_channel(&conn).await;
    within(ch.tx_select()).await.unwrap();
    within(ch.tx_commit()).await.unwrap();
}
