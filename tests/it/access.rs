//! The access model with a real client: every operation class against configure/write/
//! read permissions, topic permissions, vhost access, limits, and guest's loopback-only
//! rule. Runs against RabbitMQ too (WARREN_TEST_AMQP_URL): users, vhosts and
//! permissions are then made with `rabbitmqctl -n ref@localhost` (WARREN_TEST_RABBITMQCTL
//! overrides the command) instead of warrenctl.
use crate::common::*;

use std::process::Command;

/// Run an admin command on the broker under test: warrenctl on warren, rabbitmqctl on
/// RabbitMQ. Panics if it fails.
fn admin(broker: &Broker, args: &[&str]) {
    let out = match broker.data_dir() {
        Some(dir) => Command::new(crate::common::warrenctl_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .output(),
        None => {
            let ctl = std::env::var("WARREN_TEST_RABBITMQCTL")
                .unwrap_or_else(|_| "rabbitmqctl -n ref@localhost".into());
            let mut parts = ctl.split_whitespace();
            Command::new(parts.next().unwrap_or("rabbitmqctl"))
                .args(parts)
                .args(args)
                .output()
        }
    }
    .expect("run the admin command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh vhost and user; guest gets full permissions there to set things up.
/// Deleted (with everything in it) on drop.
struct Tenant<'a> {
    broker: &'a Broker,
    vhost: String,
    user: String,
}

impl<'a> Tenant<'a> {
    fn new(broker: &'a Broker) -> Tenant<'a> {
        let t = Tenant {
            broker,
            vhost: unique("acc-vh"),
            user: unique("acc-user"),
        };
        admin(broker, &["add_vhost", &t.vhost]);
        admin(broker, &["add_user", &t.user, "pw"]);
        admin(
            broker,
            &["set_permissions", "-p", &t.vhost, "guest", ".*", ".*", ".*"],
        );
        t
    }

    fn grant(&self, configure: &str, write: &str, read: &str) {
        admin(
            self.broker,
            &[
                "set_permissions",
                "-p",
                &self.vhost,
                &self.user,
                configure,
                write,
                read,
            ],
        );
    }

    fn encoded_vhost(&self) -> String {
        self.vhost.clone() // unique() names need no percent-encoding
    }

    async fn as_user(&self) -> (Connection, Channel) {
        let conn = connect(
            &self
                .broker
                .url_with(&self.user, "pw", &self.encoded_vhost()),
        )
        .await;
        let ch = within(conn.create_channel()).await.expect("channel");
        (conn, ch)
    }

    async fn as_guest(&self) -> (Connection, Channel) {
        let conn = connect(
            &self
                .broker
                .url_with("guest", "guest", &self.encoded_vhost()),
        )
        .await;
        let ch = within(conn.create_channel()).await.expect("channel");
        (conn, ch)
    }

    /// RabbitMQ's refusal names the resource, not the permission (`_perm` documents
    /// which one the case exercises).
    fn refused(&self, _perm: &str, kind: &str, name: &str) -> String {
        format!(
            "ACCESS_REFUSED - access to {kind} '{name}' in vhost '{}' refused for user '{}'",
            self.vhost, self.user
        )
    }
}

impl Drop for Tenant<'_> {
    fn drop(&mut self) {
        if self.broker.is_warren() {
            return; // the broker goes away with the test
        }
        admin(self.broker, &["delete_vhost", &self.vhost]);
        admin(self.broker, &["delete_user", &self.user]);
    }
}

async fn fresh_channel(conn: &Connection) -> Channel {
    within(conn.create_channel()).await.expect("channel")
}

fn passive_opts() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// Resources named c-* may be configured, w-* written, r-* read; amq.gen-* (the
/// ChannelWatch queue) and amq.topic are usable too.
const CONFIGURE: &str = "^(c-|amq\\.gen)";
const WRITE: &str = "^(w-|amq\\.topic)";
const READ: &str = "^(r-|amq\\.gen|amq\\.topic)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_permission_governs_declare_and_delete() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(CONFIGURE, WRITE, READ);
    let (_g, gch) = t.as_guest().await;
    declare_queue(&gch, "x-q").await;
    declare_exchange(&gch, "x-x", ExchangeKind::Direct).await;

    let (conn, ch) = t.as_user().await;
    declare_queue(&ch, "c-q").await;
    declare_exchange(&ch, "c-x", ExchangeKind::Fanout).await;
    within(ch.exchange_delete("c-x".into(), ExchangeDeleteOptions::default()))
        .await
        .expect("delete own exchange");
    within(ch.queue_delete("c-q".into(), QueueDeleteOptions::default()))
        .await
        .expect("delete own queue");

    let r = within(ch.queue_declare("x-q".into(), QueueDeclareOptions::default(), no_args())).await;
    assert_channel_closed(r, 403, &t.refused("configure", "queue", "x-q"));
    let ch = fresh_channel(&conn).await;
    let r = within(ch.exchange_declare(
        "x-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(r, 403, &t.refused("configure", "exchange", "x-x"));
    let ch = fresh_channel(&conn).await;
    let r = within(ch.exchange_delete("x-x".into(), ExchangeDeleteOptions::default())).await;
    assert_channel_closed(r, 403, &t.refused("configure", "exchange", "x-x"));
    let ch = fresh_channel(&conn).await;
    let r = within(ch.queue_delete("x-q".into(), QueueDeleteOptions::default())).await;
    assert_channel_closed(r, 403, &t.refused("configure", "queue", "x-q"));

    // Passive declares need no permission (rabbit_channel checks none).
    let ch = fresh_channel(&conn).await;
    within(ch.queue_declare("x-q".into(), passive_opts(), no_args()))
        .await
        .expect("passive declare needs no permission");
    assert_connection_alive(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_need_write_on_destination_and_read_on_source() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(CONFIGURE, WRITE, READ);
    let (_g, gch) = t.as_guest().await;
    for q in ["w-q", "x-q"] {
        declare_queue(&gch, q).await;
    }
    for x in ["r-x", "x-x", "w-x"] {
        declare_exchange(&gch, x, ExchangeKind::Direct).await;
    }

    let (conn, ch) = t.as_user().await;
    bind(&ch, "w-q", "r-x", "k").await;
    within(ch.queue_unbind("w-q".into(), "r-x".into(), "k".into(), no_args()))
        .await
        .expect("unbind");
    within(ch.exchange_bind(
        "w-x".into(),
        "r-x".into(),
        "k".into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await
    .expect("exchange.bind w-x <- r-x");

    let r = within(ch.queue_bind(
        "x-q".into(),
        "r-x".into(),
        "k".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(r, 403, &t.refused("write", "queue", "x-q"));
    let ch = fresh_channel(&conn).await;
    let r = within(ch.queue_bind(
        "w-q".into(),
        "x-x".into(),
        "k".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(r, 403, &t.refused("read", "exchange", "x-x"));
    let ch = fresh_channel(&conn).await;
    let r = within(ch.exchange_bind(
        "x-x".into(),
        "r-x".into(),
        "k".into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(r, 403, &t.refused("write", "exchange", "x-x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_needs_write_on_the_exchange() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(CONFIGURE, WRITE, READ);
    let (_g, gch) = t.as_guest().await;
    declare_exchange(&gch, "w-x", ExchangeKind::Fanout).await;
    declare_exchange(&gch, "x-x", ExchangeKind::Fanout).await;
    declare_queue(&gch, "r-q").await;
    bind(&gch, "r-q", "w-x", "").await;

    let (conn, ch) = t.as_user().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for _ in 0..3 {
        publish(&ch, "w-x", "", b"ok").await; // the verdict is cached after the first
    }
    within(ch.wait_for_confirms()).await.unwrap();
    wait_message_count(&gch, "r-q", 3).await;

    let watch = ChannelWatch::new(&ch).await;
    publish(&ch, "x-x", "", b"no").await;
    watch
        .assert_closed(403, &t.refused("write", "exchange", "x-x"))
        .await;
    let ch = fresh_channel(&conn).await;
    let watch = ChannelWatch::new(&ch).await;
    publish(&ch, "", "r-q", b"no").await;
    watch
        .assert_closed(403, &t.refused("write", "exchange", "amq.default"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_get_and_purge_need_read_on_the_queue() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(CONFIGURE, WRITE, READ);
    let (_g, gch) = t.as_guest().await;
    declare_queue(&gch, "r-q").await;
    declare_queue(&gch, "x-q").await;
    publish(&gch, "", "r-q", b"m").await;
    wait_message_count(&gch, "r-q", 1).await;

    let (conn, ch) = t.as_user().await;
    let got = within(ch.basic_get("r-q".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get");
    assert!(got.is_some());
    within(ch.queue_purge("r-q".into(), QueuePurgeOptions::default()))
        .await
        .expect("purge is a read");
    let _c = consume(&ch, "r-q", true).await;

    let r = within(ch.basic_get("x-q".into(), BasicGetOptions { no_ack: true })).await;
    assert_channel_closed(r, 403, &t.refused("read", "queue", "x-q"));
    let ch = fresh_channel(&conn).await;
    let r = within(ch.basic_consume(
        "x-q".into(),
        "".into(),
        BasicConsumeOptions::default(),
        no_args(),
    ))
    .await;
    assert_channel_closed(r, 403, &t.refused("read", "queue", "x-q"));
    let ch = fresh_channel(&conn).await;
    let r = within(ch.queue_purge("x-q".into(), QueuePurgeOptions::default())).await;
    assert_channel_closed(r, 403, &t.refused("read", "queue", "x-q"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_changes_apply_to_open_channels() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(CONFIGURE, WRITE, READ);
    let (_g, gch) = t.as_guest().await;
    declare_exchange(&gch, "w-x", ExchangeKind::Fanout).await;
    let (_conn, ch) = t.as_user().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish(&ch, "w-x", "", b"ok").await;
    within(ch.wait_for_confirms()).await.unwrap();
    // Revoke write: the cached verdict must not outlive the change.
    t.grant(CONFIGURE, "^$", READ);
    let watch = ChannelWatch::new(&ch).await;
    publish(&ch, "w-x", "", b"no").await;
    watch
        .assert_closed(403, &t.refused("write", "exchange", "w-x"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_check_routing_keys() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(CONFIGURE, WRITE, READ);
    admin(
        &broker,
        &[
            "set_topic_permissions",
            "-p",
            &t.vhost,
            &t.user,
            "amq.topic",
            "^allowed\\.",
            "^mine\\.",
        ],
    );
    let (_g, gch) = t.as_guest().await;
    declare_queue(&gch, "w-q").await;

    let (conn, ch) = t.as_user().await;
    bind(&ch, "w-q", "amq.topic", "mine.#").await;
    let r = within(ch.queue_bind(
        "w-q".into(),
        "amq.topic".into(),
        "other.#".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await;
    let text = |_perm: &str, key: &str| {
        format!(
            "ACCESS_REFUSED - access to topic '{key}' in exchange 'amq.topic' in vhost '{}' refused for user '{}'",
            t.vhost, t.user
        )
    };
    assert_channel_closed(r, 403, &text("read", "other.#"));

    let ch = fresh_channel(&conn).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish(&ch, "amq.topic", "allowed.x", b"ok").await;
    within(ch.wait_for_confirms()).await.unwrap();
    let watch = ChannelWatch::new(&ch).await;
    publish(&ch, "amq.topic", "denied.x", b"no").await;
    watch.assert_closed(403, &text("write", "denied.x")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_open_needs_permissions_in_the_vhost() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    let r = try_connect(&broker.url_with(&t.user, "pw", &t.encoded_vhost())).await;
    assert_connection_closed(
        r,
        530,
        &format!(
            "NOT_ALLOWED - access to vhost '{}' refused for user '{}'",
            t.vhost, t.user
        ),
    );
    // A wrong password is a login failure, not a vhost refusal.
    t.grant(".*", ".*", ".*");
    assert!(
        try_connect(&broker.url_with(&t.user, "nope", &t.encoded_vhost()))
            .await
            .is_err()
    );
    let _ok = t.as_user().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_connection_limit_refuses_one_more_with_530() {
    if is_external() {
        eprintln!("skipped: warren's connection_max is set at start");
        return;
    }
    let broker = Broker::spawn_warren(&["--set", "amqp.connection_max=2"]);
    let _a = broker.connect().await;
    let b = broker.connect().await;
    let r = try_connect(&broker.url()).await;
    assert_connection_closed(
        r,
        530,
        "NOT_ALLOWED - connection refused: node connection limit (2) is reached",
    );
    // Room again once one closes.
    within(b.close(200, "bye".into())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let _c = broker.connect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_and_user_limits_are_enforced_with_rabbitmqs_texts() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(".*", ".*", ".*");
    admin(
        &broker,
        &[
            "set_vhost_limits",
            "-p",
            &t.vhost,
            r#"{"max-connections": 1, "max-queues": 1}"#,
        ],
    );
    let (conn, ch) = t.as_user().await;
    let r = try_connect(&broker.url_with(&t.user, "pw", &t.encoded_vhost())).await;
    assert_connection_closed(
        r,
        530,
        &format!(
            "NOT_ALLOWED - access to vhost '{}' refused for user '{}': connection limit (1) is reached",
            t.vhost, t.user
        ),
    );
    declare_queue(&ch, "q1").await;
    declare_queue(&ch, "q1").await; // re-declaring is not a new queue
    let r = within(ch.queue_declare("q2".into(), QueueDeclareOptions::default(), no_args())).await;
    assert_channel_closed(
        r,
        406,
        &format!(
            "PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost '{}' (1) is reached",
            t.vhost
        ),
    );
    within(conn.close(200, "bye".into())).await.ok();

    admin(&broker, &["clear_vhost_limits", "-p", &t.vhost]);
    admin(
        &broker,
        &[
            "set_user_limits",
            &t.user,
            r#"{"max-connections": 1, "max-channels": 1}"#,
        ],
    );
    let (conn, _ch) = t.as_user().await;
    let r = try_connect(&broker.url_with(&t.user, "pw", &t.encoded_vhost())).await;
    assert_connection_closed(
        r,
        530,
        &format!(
            "NOT_ALLOWED - connection refused for user '{}': user connection limit (1) is reached",
            t.user
        ),
    );
    let r = within(conn.create_channel()).await;
    assert_connection_closed(
        r,
        530,
        &format!(
            "NOT_ALLOWED - number of channels opened for user '{}' has reached the maximum allowed user limit of (1)",
            t.user
        ),
    );
}

/// guest may connect only from loopback. Checked over a real non-loopback interface
/// address when the machine has one (the address the kernel would use to reach the
/// outside); without one the test says so and relies on the unit test in src/access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_is_refused_from_a_non_loopback_address() {
    if is_external() {
        return; // the reference broker listens on loopback only
    }
    let Some(ip) = non_loopback_address() else {
        eprintln!(
            "no non-loopback interface address: covered by access::tests::guest_only_from_loopback"
        );
        return;
    };
    let broker = Broker::spawn_warren(&["--set", "amqp.listen=0.0.0.0:0"]);
    let port = broker
        .addr()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let remote = format!("amqp://guest:guest@{ip}:{port}/%2f");
    assert!(
        try_connect(&remote).await.is_err(),
        "guest must be refused from {ip}"
    );
    let t = Tenant::new(&broker);
    admin(&broker, &["set_permissions", &t.user, ".*", ".*", ".*"]);
    connect(&format!("amqp://{}:pw@{ip}:{port}/%2f", t.user)).await;
    connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await;
}

fn non_loopback_address() -> Option<std::net::IpAddr> {
    // connect() on UDP sends nothing; it only picks the source address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.254:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_cover_cc_and_bcc_routing_keys() {
    let broker = Broker::start();
    let t = Tenant::new(&broker);
    t.grant(CONFIGURE, WRITE, READ);
    admin(
        &broker,
        &[
            "set_topic_permissions",
            "-p",
            &t.vhost,
            &t.user,
            "amq.topic",
            "^allowed\\.",
            ".*",
        ],
    );
    let text = |key: &str| {
        format!(
            "ACCESS_REFUSED - access to topic '{key}' in exchange 'amq.topic' in vhost '{}' refused for user '{}'",
            t.vhost, t.user
        )
    };
    let cc = |header: &str, key: &str| {
        BasicProperties::default().with_headers(table(vec![(
            header,
            AMQPValue::FieldArray(FieldArray::from(vec![lstr(key)])),
        )]))
    };
    let (conn, ch) = t.as_user().await;
    for header in ["CC", "BCC"] {
        let ch = if header == "CC" {
            ch.clone()
        } else {
            fresh_channel(&conn).await
        };
        within(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .unwrap();
        publish_props(
            &ch,
            "amq.topic",
            "allowed.x",
            b"ok",
            cc(header, "allowed.y"),
        )
        .await;
        within(ch.wait_for_confirms()).await.unwrap();
        let watch = ChannelWatch::new(&ch).await;
        publish_props(&ch, "amq.topic", "allowed.x", b"no", cc(header, "denied.y")).await;
        watch.assert_closed(403, &text("denied.y")).await;
    }
}
