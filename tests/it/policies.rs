//! Policies and operator policies (set with warrenctl, as an operator would with
//! rabbitmqctl), quorum-queue delivery limits and consumer timeouts, each observed over
//! AMQP with lapin. warren only: policies are set through warren's control socket.
use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn ctl(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(crate::common::warrenctl_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run warrenctl")
}

/// Run warrenctl, expect success, return stdout.
fn ctl_ok(data_dir: &Path, args: &[&str]) -> String {
    let out = ctl(data_dir, args);
    assert!(
        out.status.success(),
        "warrenctl {args:?} exited {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn warren(extra: &[&str]) -> Option<(Broker, PathBuf)> {
    if is_external() {
        return None;
    }
    let broker = Broker::spawn_warren(extra);
    let dir = broker.data_dir().unwrap();
    Some((broker, dir))
}

async fn declare_args(ch: &Channel, q: &str, durable: bool, args: Vec<(&str, AMQPValue)>) {
    within(ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        table(args),
    ))
    .await
    .expect("queue.declare");
}

async fn publish_n(ch: &Channel, q: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", q, format!("m{i}").as_bytes()).await;
    }
}

fn header(props: &BasicProperties, key: &str) -> Option<AMQPValue> {
    props.headers().as_ref()?.inner().get(key).cloned()
}

fn longstr(v: Option<AMQPValue>) -> String {
    match v {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("not a longstr: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_limits_take_the_lower_of_argument_and_policy_other_keys_the_argument() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    ctl_ok(
        &dir,
        &[
            "set_policy",
            "lim",
            "^lim\\.",
            r#"{"max-length": 2, "dead-letter-exchange": "from-policy"}"#,
            "--apply-to",
            "queues",
        ],
    );
    let (conn, ch) = broker.channel().await;
    // Argument 5, policy 2: 2 wins. Argument 1, policy 2: 1 wins.
    declare_args(
        &ch,
        "lim.a",
        false,
        vec![("x-max-length", AMQPValue::LongInt(5))],
    )
    .await;
    declare_args(
        &ch,
        "lim.b",
        false,
        vec![("x-max-length", AMQPValue::LongInt(1))],
    )
    .await;
    // Not matched by the pattern: no limit.
    declare_args(&ch, "other.c", false, vec![]).await;
    for q in ["lim.a", "lim.b", "other.c"] {
        publish_n(&ch, q, 4).await;
    }
    wait_message_count(&ch, "lim.a", 2).await;
    wait_message_count(&ch, "lim.b", 1).await;
    wait_message_count(&ch, "other.c", 4).await;

    // dead-letter-exchange: the queue's own argument wins over the policy's.
    declare_exchange(&ch, "own-dlx", ExchangeKind::Fanout).await;
    declare_exchange(&ch, "from-policy", ExchangeKind::Fanout).await;
    declare_args(&ch, "own-dl", false, vec![]).await;
    declare_args(&ch, "policy-dl", false, vec![]).await;
    bind(&ch, "own-dl", "own-dlx", "").await;
    bind(&ch, "policy-dl", "from-policy", "").await;
    declare_args(
        &ch,
        "lim.d",
        false,
        vec![("x-dead-letter-exchange", lstr("own-dlx"))],
    )
    .await;
    publish_n(&ch, "lim.d", 3).await;
    // Two kept, the oldest dead-lettered (maxlen) to the queue's own DLX.
    wait_message_count(&ch, "own-dl", 1).await;
    assert_eq!(message_count(&ch, "policy-dl").await, 0);
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_policy_caps_the_policy_limit_at_its_lower_value() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    ctl_ok(&dir, &["set_policy", "p", "^op", r#"{"max-length": 5}"#]);
    ctl_ok(
        &dir,
        &[
            "set_operator_policy",
            "o",
            "^op\\.low",
            r#"{"max-length": 2}"#,
        ],
    );
    ctl_ok(
        &dir,
        &[
            "set_operator_policy",
            "o2",
            "^op\\.high",
            r#"{"max-length": 10}"#,
        ],
    );
    let (_conn, ch) = broker.channel().await;
    declare_args(&ch, "op.low", false, vec![]).await;
    declare_args(&ch, "op.high", false, vec![]).await;
    publish_n(&ch, "op.low", 8).await;
    publish_n(&ch, "op.high", 8).await;
    wait_message_count(&ch, "op.low", 2).await;
    wait_message_count(&ch, "op.high", 5).await;
    // Operator policies accept only the numeric limits.
    let out = ctl(
        &dir,
        &[
            "set_operator_policy",
            "bad",
            ".*",
            r#"{"dead-letter-exchange": "x"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("are not recognised policy settings"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_set_and_cleared_applies_to_an_existing_queue_including_paged_messages() {
    // A small resident window so most of the backlog is paged out to disk.
    let Some((broker, dir)) = warren(&["--set", "store.resident_messages=10"]) else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    declare_args(&ch, "deep", true, vec![]).await;
    publish_n(&ch, "deep", 200).await;
    wait_message_count(&ch, "deep", 200).await;
    ctl_ok(
        &dir,
        &["set_policy", "cap", "^deep$", r#"{"max-length": 5}"#],
    );
    // drop-head: the newest five remain.
    wait_message_count(&ch, "deep", 5).await;
    let first = get(&ch, "deep", true).await.expect("a message");
    assert_eq!(String::from_utf8_lossy(&first.delivery.data), "m195");
    ctl_ok(&dir, &["clear_policy", "cap"]);
    publish_n(&ch, "deep", 10).await;
    wait_message_count(&ch, "deep", 14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ttl_and_alternate_exchange_policies_take_effect() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    declare_args(&ch, "ttl.q", false, vec![]).await;
    declare_exchange(&ch, "ae", ExchangeKind::Fanout).await;
    declare_exchange(&ch, "main-x", ExchangeKind::Direct).await;
    declare_args(&ch, "unrouted", false, vec![]).await;
    bind(&ch, "unrouted", "ae", "").await;
    ctl_ok(
        &dir,
        &["set_policy", "ttl", "^ttl\\.", r#"{"message-ttl": 100}"#],
    );
    ctl_ok(
        &dir,
        &[
            "set_policy",
            "ae",
            "^main-x$",
            r#"{"alternate-exchange": "ae"}"#,
            "--apply-to",
            "exchanges",
        ],
    );
    publish(&ch, "", "ttl.q", b"short-lived").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(message_count(&ch, "ttl.q").await, 0);
    publish(&ch, "main-x", "nowhere", b"to-ae").await;
    wait_message_count(&ch, "unrouted", 1).await;
    ctl_ok(&dir, &["clear_policy", "ae"]);
    publish(&ch, "main-x", "nowhere", b"dropped").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(message_count(&ch, "unrouted").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_survive_a_restart_and_apply_to_recovered_queues() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    {
        let (_conn, ch) = broker.channel().await;
        declare_args(&ch, "kept", true, vec![]).await;
    }
    ctl_ok(
        &dir,
        &[
            "set_policy",
            "keep",
            "^kept$",
            r#"{"max-length": 3}"#,
            "--priority",
            "7",
        ],
    );
    ctl_ok(
        &dir,
        &[
            "set_operator_policy",
            "opkeep",
            "^kept$",
            r#"{"max-length": 2}"#,
        ],
    );
    let (dir, status) = broker.stop_within(Duration::from_secs(15));
    assert!(status.success());
    let broker = Broker::spawn_in(dir.clone(), &[]);
    let listed = ctl_ok(&dir, &["list_policies", "--formatter", "json", "-q"]);
    let v: serde_json::Value = serde_json::from_str(&listed).expect("json listing");
    assert_eq!(v[0]["name"], "keep");
    assert_eq!(v[0]["priority"], 7);
    assert_eq!(v[0]["definition"]["max-length"], 3);
    let listed = ctl_ok(
        &dir,
        &["list_operator_policies", "--formatter", "json", "-q"],
    );
    assert!(listed.contains("opkeep"), "{listed}");
    let (_conn, ch) = broker.channel().await;
    publish_n(&ch, "kept", 6).await;
    wait_message_count(&ch, "kept", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warrenctl_policy_commands_speak_rabbitmqctl() {
    let Some((_broker, dir)) = warren(&[]) else {
        return;
    };
    let out = ctl_ok(
        &dir,
        &[
            "set_policy",
            "p1",
            "^a",
            r#"{"max-length":1}"#,
            "--priority",
            "3",
        ],
    );
    assert_eq!(
        out.trim(),
        r#"Setting policy "p1" for pattern "^a" to "{"max-length":1}" with priority "3" for vhost "/" ..."#
    );
    let out = ctl_ok(
        &dir,
        &[
            "set_policy",
            "ha",
            ".*",
            r#"{"ha-mode":"all","queue-mode":"lazy"}"#,
        ],
    );
    // RabbitMQ's mirroring policy is accepted, and the answer says why it changes nothing.
    assert!(
        out.contains("ha-* keys have no effect") && out.contains("replicated"),
        "{out}"
    );
    let table = ctl_ok(&dir, &["list_policies"]);
    let mut lines = table.lines();
    assert_eq!(lines.next(), Some(r#"Listing policies for vhost "/" ..."#));
    assert_eq!(
        lines.next().map(|l| l.split('\t').collect::<Vec<_>>()),
        Some(vec![
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority"
        ])
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    // Highest priority first.
    assert!(rows[0].starts_with("/\tp1\t^a\tall\t"), "{table}");

    // Bad definitions: rabbitmqctl's validation texts, exit code 65.
    let bad = ctl(&dir, &["set_policy", "bad", ".*", r#"{"message-ttl": -5}"#]);
    assert_eq!(bad.status.code(), Some(65));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("Validation failed"), "{err}");
    assert!(err.contains("-5 is not a valid message TTL"), "{err}");
    let bad = ctl(&dir, &["set_policy", "bad", ".*", "{not json"]);
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Could not parse JSON document"));
    let bad = ctl(
        &dir,
        &[
            "set_policy",
            "bad",
            ".*",
            r#"{"expires":1}"#,
            "--apply-to",
            "things",
        ],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("apply-to 'things' unrecognised"));

    let out = ctl_ok(&dir, &["clear_policy", "p1"]);
    assert_eq!(out.trim(), r#"Clearing policy "p1" on vhost "/" ..."#);
    let missing = ctl(&dir, &["clear_policy", "p1"]);
    assert_ne!(missing.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Parameter does not exist"));

    let out = ctl_ok(
        &dir,
        &["set_operator_policy", "o", ".*", r#"{"expires":60000}"#],
    );
    assert!(out.starts_with(r#"Setting operator policy override "o" for pattern ".*""#));
    ctl_ok(&dir, &["clear_operator_policy", "o"]);
    let listed = ctl_ok(&dir, &["list_operator_policies", "-q"]);
    assert!(!listed.contains("expires"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_export_and_import_carry_policies() {
    let Some((_broker, dir)) = warren(&[]) else {
        return;
    };
    ctl_ok(
        &dir,
        &[
            "set_policy",
            "dl",
            "^work",
            r#"{"dead-letter-exchange":"dlx","max-length":10}"#,
            "--apply-to",
            "queues",
            "--priority",
            "2",
        ],
    );
    let export = ctl_ok(&dir, &["export_definitions", "-"]);
    let v: serde_json::Value = serde_json::from_str(&export).unwrap();
    let p = &v["policies"][0];
    assert_eq!(p["vhost"], "/");
    assert_eq!(p["name"], "dl");
    assert_eq!(p["pattern"], "^work");
    assert_eq!(p["apply-to"], "queues");
    assert_eq!(p["priority"], 2);
    assert_eq!(p["definition"]["dead-letter-exchange"], "dlx");
    ctl_ok(&dir, &["clear_policy", "dl"]);
    let file = dir.join("export-test.json");
    std::fs::write(&file, &export).unwrap();
    ctl_ok(&dir, &["import_definitions", file.to_str().unwrap()]);
    let listed = ctl_ok(&dir, &["list_policies", "--formatter", "json", "-q"]);
    let l: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(l[0]["name"], "dl");
    assert_eq!(l[0]["definition"]["max-length"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_delivery_limit_counts_returns_and_dead_letters_with_reason_delivery_limit() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    declare_exchange(&ch, "poison-dlx", ExchangeKind::Fanout).await;
    declare_args(&ch, "poison-dl", false, vec![]).await;
    bind(&ch, "poison-dl", "poison-dlx", "").await;
    declare_args(
        &ch,
        "qq",
        true,
        vec![
            ("x-queue-type", lstr("quorum")),
            ("x-delivery-limit", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", lstr("poison-dlx")),
        ],
    )
    .await;
    publish(&ch, "", "qq", b"poison").await;
    let nack = |tag| {
        ch.basic_nack(
            tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
    };
    let m = wait_get(&ch, "qq").await;
    assert_eq!(header(&m.delivery.properties, "x-delivery-count"), None);
    within(nack(m.delivery.delivery_tag)).await.unwrap();
    let m = wait_get(&ch, "qq").await;
    assert!(m.delivery.redelivered);
    assert_eq!(
        header(&m.delivery.properties, "x-delivery-count"),
        Some(AMQPValue::LongLongInt(1))
    );
    within(nack(m.delivery.delivery_tag)).await.unwrap();
    // Returned twice with a limit of 1: dead-lettered.
    let dead = wait_get(&ch, "poison-dl").await;
    assert_eq!(&dead.delivery.data[..], b"poison");
    assert_eq!(
        longstr(header(&dead.delivery.properties, "x-first-death-reason")),
        "delivery_limit"
    );
    assert_eq!(message_count(&ch, "qq").await, 0);

    // The same limit from a policy (delivery-limit 0: the first return is too many).
    ctl_ok(
        &dir,
        &[
            "set_policy",
            "dl",
            "^qq2$",
            r#"{"delivery-limit":0,"dead-letter-exchange":"poison-dlx"}"#,
            "--apply-to",
            "quorum_queues",
        ],
    );
    declare_args(&ch, "qq2", true, vec![("x-queue-type", lstr("quorum"))]).await;
    publish(&ch, "", "qq2", b"poison2").await;
    let m = wait_get(&ch, "qq2").await;
    within(nack(m.delivery.delivery_tag)).await.unwrap();
    let dead = wait_get(&ch, "poison-dl").await;
    assert_eq!(&dead.delivery.data[..], b"poison2");
}

/// basic.get (no auto-ack) until a message arrives.
async fn wait_get(ch: &Channel, q: &str) -> BasicGetMessage {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(m) = get(ch, q, false).await {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing arrived on {q}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_requeues_the_stuck_delivery_by_default() {
    let Some((broker, _dir)) = warren(&[]) else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    // x-consumer-timeout overrides the 30-minute default for this queue.
    declare_args(
        &ch,
        "slow",
        false,
        vec![("x-consumer-timeout", AMQPValue::LongInt(300))],
    )
    .await;
    publish(&ch, "", "slow", b"job").await;
    // A channel-wide prefetch of 1: the redelivery needs the timed-out delivery's
    // credit back.
    within(ch.basic_qos(1, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut c = consume(&ch, "slow", false).await;
    let first = next_delivery(&mut c).await;
    assert!(!first.redelivered);
    // Not acknowledged: after the timeout it comes back, to the same (still open) channel.
    let again = next_delivery(&mut c).await;
    assert!(again.redelivered);
    assert_eq!(&again.data[..], b"job");
    // The late ack of the first delivery is accepted and does nothing (no 406 unknown
    // delivery tag); acking the redelivery settles it.
    within(ch.basic_ack(first.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.basic_ack(again.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ch.status().connected());
    let (_c2, ch2) = broker.channel().await;
    assert_eq!(message_count(&ch2, "slow").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_close_channel_action_is_rabbitmqs_behaviour() {
    let Some((broker, _dir)) = warren(&[
        "--set",
        "amqp.consumer_timeout=300",
        "--set",
        "amqp.consumer_timeout_action=close_channel",
    ]) else {
        return;
    };
    let (conn, ch) = broker.channel().await;
    declare_args(&ch, "stuck", false, vec![]).await;
    publish(&ch, "", "stuck", b"job").await;
    let watch = ChannelWatch::new(&ch).await;
    let mut c = consume(&ch, "stuck", false).await;
    let _d = next_delivery(&mut c).await;
    watch
        .assert_closed(
            406,
            &format!(
                "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout value used: 300 ms. This timeout value can be configured, see consumers doc guide to learn more",
                ch.id()
            ),
        )
        .await;
    // The channel's unacked delivery went back to the queue.
    let ch2 = within(conn.create_channel()).await.unwrap();
    wait_message_count(&ch2, "stuck", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_from_a_policy_nacks_publishers_of_a_live_queue_until_cleared() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    declare_args(&ch, "bounded", false, vec![]).await;
    publish_n(&ch, "bounded", 2).await;
    wait_message_count(&ch, "bounded", 2).await;
    ctl_ok(
        &dir,
        &[
            "set_policy",
            "rp",
            "^bounded$",
            r#"{"max-length": 2, "overflow": "reject-publish"}"#,
        ],
    );
    // The queue names its policy in list_queues.
    let listed = ctl_ok(
        &dir,
        &["-q", "list_queues", "name", "policy", "--formatter", "json"],
    );
    let l: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(l[0]["policy"], "rp", "{listed}");
    let confirm = |body: &'static [u8]| {
        let ch = ch.clone();
        async move {
            within(ch.basic_publish(
                "".into(),
                "bounded".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            ))
            .await
            .unwrap()
            .await
            .unwrap()
        }
    };
    // Full: refused (nack), the queue keeps its two.
    assert!(confirm(b"refused").await.is_nack());
    assert_eq!(message_count(&ch, "bounded").await, 2);
    // Room again after a get.
    get(&ch, "bounded", true).await.expect("a message");
    assert!(confirm(b"fits").await.is_ack());
    assert!(confirm(b"refused again").await.is_nack());
    ctl_ok(&dir, &["clear_policy", "rp"]);
    assert!(confirm(b"no limit now").await.is_ack());
    wait_message_count(&ch, "bounded", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_policy_deletes_an_unused_existing_queue() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    let (conn, ch) = broker.channel().await;
    declare_args(&ch, "idle.q", false, vec![]).await;
    declare_args(&ch, "busy.q", false, vec![]).await;
    let _c = consume(&ch, "busy.q", false).await;
    ctl_ok(&dir, &["set_policy", "exp", "\\.q$", r#"{"expires": 200}"#]);
    // A passive declare counts as use (it renews the lease), so look less often than
    // the expiry period.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    while queue_exists(&conn, "idle.q").await {
        assert!(
            std::time::Instant::now() < deadline,
            "idle.q was not deleted by the expires policy"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // In use by a consumer: kept.
    assert!(queue_exists(&conn, "busy.q").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_policy_applies_to_a_live_queue() {
    let Some((broker, dir)) = warren(&[]) else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    declare_args(&ch, "timed.q", false, vec![]).await;
    ctl_ok(
        &dir,
        &[
            "set_policy",
            "ct",
            "^timed\\.",
            r#"{"consumer-timeout": 300}"#,
        ],
    );
    publish(&ch, "", "timed.q", b"job").await;
    let mut c = consume(&ch, "timed.q", false).await;
    assert!(!next_delivery(&mut c).await.redelivered);
    // Requeued after 300 ms, not after the 30-minute default.
    assert!(next_delivery(&mut c).await.redelivered);
}
