//! Publisher confirms (confirm.select, basic.ack/nack from the server).
use crate::common::raw::{self, Dec, Enc, RawConn};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_acked_after_confirm_select() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let q = unique("confirm-ack");
    declare_queue(&ch, &q).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..5 {
        let pc = within(ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        confirms.push(pc);
    }
    for pc in confirms {
        let c = within(pc).await.unwrap();
        assert!(c.is_ack());
    }
    // acked => enqueued
    assert_eq!(message_count(&ch, &q).await, 5);
    delete_queues(&conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_non_mandatory_publish_is_still_acked() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let x = "amq.direct";
    let pc = within(ch.basic_publish(
        x.into(),
        unique("nobody").as_str().into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let c = within(pc).await.unwrap();
    assert!(c.is_ack());
    assert!(c.take_message().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_publish_is_returned_then_acked() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let key = unique("nobody");
    let pc = within(ch.basic_publish(
        "".into(),
        key.as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"bounced",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let c = within(pc).await.unwrap();
    assert!(c.is_ack(), "unroutable messages are acked, not nacked");
    let m = c.take_message().expect("the basic.return precedes the ack");
    assert_eq!((m.reply_code, m.reply_text.as_str()), (312, "NO_ROUTE"));
    assert_eq!(m.delivery.data, b"bounced");
    assert_eq!(m.delivery.routing_key.as_str(), key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_select_twice_is_ok() {
    let broker = Broker::start();
    let (_conn, ch) = broker.channel().await;
    for _ in 0..2 {
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
    }
}

/// Raw-socket helper: open a connection + channel 1 in confirm mode.
fn raw_confirm_channel(addr: &str) -> RawConn {
    let (mut c, _) = RawConn::open(addr);
    c.open_channel(1);
    c.send_method(1, 85, 10, &Enc::new().u8(0).done()); // confirm.select
    c.expect_method(1, 85, 11);
    c
}

fn raw_publish(c: &mut RawConn, exchange: &str, key: &str, mandatory: bool, body: &[u8]) {
    let mut bytes = raw::method_frame(
        1,
        60,
        40,
        &raw::basic_publish_args(exchange, key, mandatory),
    );
    bytes.extend(raw::content_header_frame(1, body.len() as u64));
    if !body.is_empty() {
        bytes.extend(raw::body_frame(1, body));
    }
    c.send(&bytes).unwrap();
}

fn raw_declare_queue(c: &mut RawConn, q: &str) {
    let args = Enc::new().u16(0).shortstr(q).u8(0).table(&[]).done();
    c.send_method(1, 50, 10, &args);
    c.expect_method(1, 50, 11);
}

fn raw_delete_queue(c: &mut RawConn, q: &str) {
    let args = Enc::new().u16(0).shortstr(q).u8(0).done();
    c.send_method(1, 50, 40, &args);
    c.expect_method(1, 50, 41);
}

#[test]
fn delivery_tags_of_confirms_count_up_from_one() {
    let broker = Broker::start();
    let mut c = raw_confirm_channel(&broker.addr());
    let q = unique("confirm-tags");
    raw_declare_queue(&mut c, &q);
    for i in 0..5 {
        raw_publish(&mut c, "", &q, false, format!("{i}").as_bytes());
    }
    // Acks may be coalesced (multiple=true) but must be increasing and end at 5.
    let mut last = 0u64;
    while last < 5 {
        let args = c.expect_method(1, 60, 80);
        let mut d = Dec::new(&args);
        let tag = d.u64();
        let multiple = d.u8() & 1 == 1;
        assert!(tag > last, "ack tags must increase: {tag} after {last}");
        if !multiple {
            assert_eq!(tag, last + 1, "single ack skipped a tag");
        }
        last = tag;
    }
    assert_eq!(last, 5);
    raw_delete_queue(&mut c, &q);
    c.close();
}

#[test]
fn basic_return_arrives_before_its_ack() {
    let broker = Broker::start();
    let mut c = raw_confirm_channel(&broker.addr());
    let key = unique("unroutable");
    raw_publish(&mut c, "", &key, true, b"r");
    // basic.return, content header, body, then basic.ack tag 1
    let ret = c.expect_method(1, 60, 50);
    let mut d = Dec::new(&ret);
    assert_eq!(d.u16(), 312);
    assert_eq!(d.shortstr(), "NO_ROUTE");
    assert_eq!(d.shortstr(), "");
    assert_eq!(d.shortstr(), key);
    let h = c.read_non_heartbeat();
    assert_eq!((h.typ, h.channel), (raw::FRAME_HEADER, 1));
    let b = c.read_non_heartbeat();
    assert_eq!(
        (b.typ, b.channel, b.payload.as_slice()),
        (raw::FRAME_BODY, 1, &b"r"[..])
    );
    let ack = c.expect_method(1, 60, 80);
    let mut d = Dec::new(&ack);
    assert_eq!(d.u64(), 1);
    c.close();
}

#[test]
fn publish_to_missing_exchange_in_confirm_mode_closes_channel_404() {
    let broker = Broker::start();
    let mut c = raw_confirm_channel(&broker.addr());
    let x = unique("confirm-missing-x");
    raw_publish(&mut c, &x, "k", false, b"x");
    let close = c.expect_channel_close(1);
    assert_eq!(
        (
            close.code,
            close.text.as_str(),
            close.class_id,
            close.method_id
        ),
        (
            404,
            format!("NOT_FOUND - no exchange '{x}' in vhost '/'").as_str(),
            60,
            40
        )
    );
    c.close();
}
