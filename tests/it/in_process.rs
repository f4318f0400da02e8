//! A node inside the test process (`warren::node::Node` on port 0): the queue, channel
//! and vhost logic seen from both sides at once, what a client does over AMQP and what
//! the broker's own structures hold afterwards, without spawning a broker process.
//! warren-only (they look inside the broker), so they run even when the rest of the
//! suite points at an external broker.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use warren::node::Node;
use warren::queue::QueueHandle;
use warren::vhost::Vhost;

use crate::common::{connect, unique, within};

struct InProcess {
    node: Node,
    dir: PathBuf,
    url: String,
}

impl InProcess {
    /// A node on a new data directory, AMQP on a free port, no HTTP listeners.
    async fn start() -> InProcess {
        let dir = std::env::temp_dir().join(unique("warren-inproc"));
        Self::start_in(dir).await
    }

    async fn start_in(dir: PathBuf) -> InProcess {
        let mut config = warren::config::Config {
            data_dir: dir.clone(),
            ..Default::default()
        };
        config.amqp.listen = "127.0.0.1:0".into();
        config.management.listen = String::new();
        config.metrics.listen = String::new();
        let node = Node::start(config).await.expect("the node starts");
        let url = format!(
            "amqp://guest:guest@{}/%2f",
            node.amqp.as_deref().expect("AMQP listens")
        );
        InProcess { node, dir, url }
    }

    async fn channel(&self) -> (Connection, Channel) {
        let conn = connect(&self.url).await;
        let ch = within(conn.create_channel()).await.expect("channel.open");
        (conn, ch)
    }

    fn vhost(&self) -> Arc<Vhost> {
        self.node.broker.vhost("/").expect("the default vhost")
    }

    fn queue(&self, name: &str) -> Option<Arc<QueueHandle>> {
        self.vhost().queues().into_iter().find(|q| &*q.name == name)
    }

    /// Stop gracefully; the data directory stays for a restart.
    async fn stop(self) -> PathBuf {
        self.node.stop().await;
        self.dir
    }
}

/// Wait (up to 5 s) until the queue's gauges, which its actor keeps, read `(ready,
/// unacked)`.
async fn gauges_settle(q: &QueueHandle, want: (u32, u32)) {
    let read = || {
        (
            q.gauges.ready.load(Ordering::Acquire),
            q.gauges.unacked.load(Ordering::Acquire),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while read() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges of {} are {:?}, not {want:?}",
            q.name,
            read()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        within(ch.basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .expect("publish");
    }
}

/// Each way of declaring a queue, and what the vhost then holds: the handle's durable,
/// exclusive and auto-delete properties as declared; deleting takes it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_queues_are_in_the_vhost_as_declared() {
    let node = InProcess::start().await;
    let (_conn, ch) = node.channel().await;
    // (durable, exclusive, auto_delete)
    let cases = [
        (false, false, false),
        (true, false, false),
        (false, true, false),
        (false, false, true),
        (true, false, true),
    ];
    for (durable, exclusive, auto_delete) in cases {
        let name = unique("inproc-q");
        let options = QueueDeclareOptions {
            durable,
            exclusive,
            auto_delete,
            ..Default::default()
        };
        within(ch.queue_declare(name.as_str().into(), options, FieldTable::default()))
            .await
            .expect("queue.declare");
        let q = node.queue(&name).expect("the vhost holds the queue");
        let case = (durable, exclusive, auto_delete);
        assert_eq!(q.durable, durable, "{case:?}");
        assert_eq!(q.exclusive_owner.is_some(), exclusive, "{case:?}");
        assert_eq!(q.auto_delete, auto_delete, "{case:?}");
        assert_eq!(
            q.store_qid.is_some(),
            durable,
            "durable queues have a store id"
        );
        within(ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()))
            .await
            .expect("queue.delete");
        assert!(node.queue(&name).is_none(), "deleted: {case:?}");
    }
    drop((_conn, ch));
    let dir = node.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// basic.qos bounds what the queue hands a consumer: with prefetch 3 and no acks, 3
/// are out and the rest wait; each ack lets one more go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_what_the_queue_hands_out() {
    use futures_lite::StreamExt;
    let node = InProcess::start().await;
    let (_conn, ch) = node.channel().await;
    let name = unique("inproc-prefetch");
    within(ch.queue_declare(
        name.as_str().into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, &name, 10).await;
    let q = node.queue(&name).unwrap();
    gauges_settle(&q, (10, 0)).await;
    within(ch.basic_qos(3, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(ch.basic_consume(
        name.as_str().into(),
        "c".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    gauges_settle(&q, (7, 3)).await;
    let first = within(consumer.next()).await.unwrap().unwrap();
    within(first.ack(BasicAckOptions::default())).await.unwrap();
    gauges_settle(&q, (6, 3)).await;
    assert_eq!(q.gauges.consumers.load(Ordering::Acquire), 1);
    drop((_conn, ch));
    let dir = node.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A policy set on the broker reaches a queue that already exists: max-length 2 drops
/// from the head of what is there and of what comes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reaches_existing_queues() {
    let node = InProcess::start().await;
    let (_conn, ch) = node.channel().await;
    let name = unique("inproc-policy");
    within(ch.queue_declare(
        name.as_str().into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, &name, 5).await;
    let q = node.queue(&name).unwrap();
    gauges_settle(&q, (5, 0)).await;
    node.node
        .broker
        .set_policy(
            warren::policy::Kind::Policy,
            "/",
            "two",
            &format!("^{name}$"),
            &serde_json::json!({"max-length": 2}),
            0,
            "queues",
        )
        .expect("set_policy");
    gauges_settle(&q, (2, 0)).await;
    publish(&ch, &name, 3).await;
    gauges_settle(&q, (2, 0)).await;
    drop((_conn, ch));
    let dir = node.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// What a graceful stop and a start on the same data directory keep, in process: the
/// durable queue with its persistent messages and its policy, not the transient queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_process_keeps_what_is_durable() {
    let node = InProcess::start().await;
    let (durable, transient) = (unique("inproc-durable"), unique("inproc-transient"));
    {
        let (_conn, ch) = node.channel().await;
        for (name, durable) in [(&durable, true), (&transient, false)] {
            let options = QueueDeclareOptions {
                durable,
                ..Default::default()
            };
            within(ch.queue_declare(name.as_str().into(), options, FieldTable::default()))
                .await
                .unwrap();
        }
        within(ch.confirm_select(Default::default())).await.unwrap();
        for i in 0..4 {
            let confirm = within(ch.basic_publish(
                "".into(),
                durable.as_str().into(),
                Default::default(),
                format!("p{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            ))
            .await
            .unwrap();
            assert!(within(confirm).await.unwrap().is_ack());
        }
    }
    node.node
        .broker
        .set_policy(
            warren::policy::Kind::Policy,
            "/",
            "ttl",
            "^inproc-durable",
            &serde_json::json!({"message-ttl": 3_600_000}),
            1,
            "queues",
        )
        .unwrap();
    let node = InProcess::start_in(node.stop().await).await;
    let q = node.queue(&durable).expect("the durable queue is back");
    gauges_settle(&q, (4, 0)).await;
    assert!(
        node.queue(&transient).is_none(),
        "the transient queue is not"
    );
    let policies = node
        .node
        .broker
        .list_policies(warren::policy::Kind::Policy, Some("/"));
    assert_eq!(
        policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["ttl"]
    );
    let dir = node.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
