//! warrenctl as an operator runs it: each command as a subprocess against a running
//! broker, checking its output, exit code and effect (over AMQP where it has one), and a
//! definitions round trip through a real RabbitMQ export. warren only: the commands
//! talk to warren's control socket.
use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

struct Ctl {
    data_dir: PathBuf,
}

impl Ctl {
    fn new(broker: &Broker) -> Option<Ctl> {
        broker.data_dir().map(|data_dir| Ctl { data_dir })
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(crate::common::warrenctl_bin())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .expect("run warrenctl")
    }

    /// Run, expect success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "warrenctl {args:?} exited {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run, expect exit `code`, return stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "warrenctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn warren() -> Option<(Broker, Ctl)> {
    if is_external() {
        return None;
    }
    let broker = Broker::spawn_warren(&[]);
    let ctl = Ctl::new(&broker)?;
    Some((broker, ctl))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_can_be_managed_and_log_in() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    assert_eq!(
        ctl.ok(&["add_user", "alice", "s3cret"]),
        "Adding user \"alice\" ...\n"
    );
    assert!(ctl
        .fails(&["add_user", "alice", "x"], 70)
        .contains("User \"alice\" already exists"));
    ctl.ok(&["set_user_tags", "alice", "monitoring", "management"]);
    assert_eq!(
        ctl.ok(&["-q", "list_users"]),
        "user\ttags\nalice\t[monitoring, management]\nguest\t[administrator]\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-q", "list_users", "--formatter", "json"])).unwrap();
    assert_eq!(json[0]["user"], "alice");
    assert!(ctl
        .ok(&["authenticate_user", "alice", "s3cret"])
        .contains("Success"));
    ctl.fails(&["authenticate_user", "alice", "wrong"], 65);

    ctl.ok(&["set_permissions", "-p", "/", "alice", ".*", ".*", ".*"]);
    connect(&broker.url_with("alice", "s3cret", "%2f")).await;
    ctl.ok(&["change_password", "alice", "n3w"]);
    assert!(try_connect(&broker.url_with("alice", "s3cret", "%2f"))
        .await
        .is_err());
    connect(&broker.url_with("alice", "n3w", "%2f")).await;
    ctl.ok(&["clear_password", "alice"]);
    assert!(try_connect(&broker.url_with("alice", "n3w", "%2f"))
        .await
        .is_err());

    ctl.ok(&["delete_user", "alice"]);
    assert!(ctl
        .fails(&["delete_user", "alice"], 67)
        .contains("User \"alice\" does not exist"));
    ctl.fails(&["change_password", "alice", "x"], 67);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_and_permissions() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    ctl.ok(&["add_vhost", "v1"]);
    assert_eq!(ctl.ok(&["-q", "list_vhosts"]), "name\n/\nv1\n");
    ctl.ok(&["add_user", "bob", "pw"]);
    ctl.ok(&["set_permissions", "-p", "v1", "bob", "^bob-", ".*", ".*"]);
    assert_eq!(
        ctl.ok(&["-q", "list_permissions", "-p", "v1"]),
        "user\tconfigure\twrite\tread\nbob\t^bob-\t.*\t.*\n"
    );
    assert_eq!(
        ctl.ok(&["-q", "list_user_permissions", "bob"]),
        "vhost\tconfigure\twrite\tread\nv1\t^bob-\t.*\t.*\n"
    );
    let e = ctl.fails(&["set_permissions", "-p", "v1", "bob", "(", ".*", ".*"], 65);
    assert!(e.contains("invalid regular expression '('"), "{e}");
    ctl.fails(
        &["set_permissions", "-p", "nope", "bob", ".*", ".*", ".*"],
        69,
    );
    ctl.fails(
        &["set_permissions", "-p", "v1", "nobody", ".*", ".*", ".*"],
        67,
    );

    let conn = connect(&broker.url_with("bob", "pw", "v1")).await;
    let ch = within(conn.create_channel()).await.unwrap();
    declare_queue(&ch, "bob-q").await;
    ctl.ok(&[
        "set_topic_permissions",
        "-p",
        "v1",
        "bob",
        "amq.topic",
        "^a",
        ".*",
    ]);
    assert_eq!(
        ctl.ok(&["-q", "list_topic_permissions", "-p", "v1"]),
        "user\texchange\twrite\tread\nbob\tamq.topic\t^a\t.*\n"
    );
    ctl.ok(&["clear_permissions", "-p", "v1", "bob"]);
    assert!(try_connect(&broker.url_with("bob", "pw", "v1"))
        .await
        .is_err());

    // Deleting a vhost closes its connections and forgets its queues.
    ctl.ok(&["delete_vhost", "v1"]);
    assert_connection_dead(&conn).await;
    assert_eq!(ctl.ok(&["-q", "list_vhosts"]), "name\n/\n");
    ctl.fails(&["delete_vhost", "v1"], 65);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_with_columns_and_queue_operations() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let (conn, ch) = broker.channel().await;
    declare_queue(&ch, "q1").await;
    declare_exchange(&ch, "x1", ExchangeKind::Topic).await;
    bind(&ch, "q1", "x1", "a.#").await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for _ in 0..3 {
        publish(&ch, "", "q1", b"m").await;
    }
    within(ch.wait_for_confirms()).await.unwrap();

    assert_eq!(
        ctl.ok(&["-q", "list_queues", "messages", "name"]),
        "messages\tname\n3\tq1\n"
    );
    assert_eq!(
        ctl.ok(&["list_queues"]),
        "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\nname\tmessages\nq1\t3\n"
    );
    assert!(ctl
        .ok(&["-q", "list_exchanges", "name", "type"])
        .contains("x1\ttopic\n"));
    assert!(ctl
        .ok(&["-q", "list_bindings"])
        .contains("\texchange\tq1\tqueue\tq1\t[]\nx1\texchange\tq1\tqueue\ta.#\t[]\n"));
    let conns = ctl.ok(&["-q", "list_connections", "user", "channels", "vhost"]);
    assert_eq!(conns, "user\tchannels\tvhost\nguest\t1\t/\n");
    ctl.fails(&["list_queues", "bogus"], 64);

    assert!(ctl
        .ok(&["purge_queue", "q1"])
        .starts_with("Purging queue 'q1' in vhost '/' ..."));
    wait_message_count(&ch, "q1", 0).await;
    ctl.ok(&["delete_queue", "q1"]);
    assert!(!queue_exists(&conn, "q1").await);
    ctl.fails(&["delete_queue", "q1"], 69);

    let pid = ctl.ok(&["-q", "list_connections", "pid"]);
    let pid = pid.lines().nth(1).unwrap().to_owned();
    ctl.ok(&["close_connection", &pid, "maintenance"]);
    assert_connection_dead(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_status_usage_and_unavailable_broker() {
    let Some((_broker, ctl)) = warren() else {
        return;
    };
    ctl.ok(&["set_vhost_limits", "-p", "/", r#"{"max-queues": 5}"#]);
    assert_eq!(
        ctl.ok(&["-q", "list_vhost_limits", "-p", "/"]),
        "vhost\tlimits\n/\t{\"max-queues\":5}\n"
    );
    ctl.fails(&["set_vhost_limits", "-p", "/", "{bad"], 65);
    ctl.ok(&["clear_vhost_limits", "-p", "/"]);
    assert!(ctl.ok(&["status"]).contains("product_name: warren"));
    ctl.ok(&["await_startup"]);
    ctl.fails(&["set_permissions", "guest"], 64);
    ctl.fails(&["no_such_command"], 64);
    assert!(ctl.ok(&["help"]).contains("list_queues"));

    let gone = Ctl {
        data_dir: std::env::temp_dir().join(unique("no-broker")),
    };
    let e = gone.fails(&["list_users"], 69);
    assert!(e.contains("warren is not running"), "{e}");
}

/// A single node (no [cluster] section) is a cluster of one to cluster_status, as a
/// lone RabbitMQ node is; join_cluster says it is for cluster nodes and reset that the
/// app must be stopped first (exit 69); those with nothing to do succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_on_a_single_node() {
    let Some((_broker, ctl)) = warren() else {
        return;
    };
    let text = ctl.ok(&["cluster_status"]);
    for section in [
        "Disk Nodes",
        "Running Nodes",
        "Listeners",
        "Network Partitions",
    ] {
        assert!(text.contains(section), "{text}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-q", "--formatter", "json", "cluster_status"])).unwrap();
    let me = doc["running_nodes"][0].as_str().unwrap().to_owned();
    assert!(me.starts_with("warren@"), "{doc}");
    assert_eq!(doc["disk_nodes"], serde_json::json!([me]));
    assert!(
        doc["listeners"][&me][0]["port"].as_u64().unwrap() > 0,
        "{doc}"
    );
    let e = ctl.fails(&["join_cluster", "warren@other"], 69);
    assert!(e.contains("single node"), "{e}");
    let e = ctl.fails(&["reset"], 69);
    assert!(e.contains("stop_app"), "{e}");
    ctl.ok(&["change_cluster_node_type", "disc"]);
    ctl.ok(&["update_cluster_nodes", "warren@other"]);
}

/// Proves rabbitmqctl's `stop_app; reset; start_app` on a single node: stop_app closes
/// the AMQP listener but keeps the process (same pid) and its control socket, which
/// says the app is stopped and refuses what needs it running (69); reset empties the
/// store; start_app serves again on the same port, without the queue declared before
/// the reset and with the default user back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_app_reset_start_app_on_a_single_node() {
    if is_external() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("amqp.listen=127.0.0.1:{port}");
    let broker = Broker::spawn_warren(&["--set", &listen]);
    let ctl = Ctl::new(&broker).unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let conn = connect(&url).await;
    let ch = within(conn.create_channel()).await.unwrap();
    crate::durability::declare_durable(&ch, "gone-after-reset", no_args()).await;
    let _ = conn.close(200, "done".into()).await;
    let pid = broker.pid();

    ctl.ok(&["stop_app"]);
    let status = ctl.ok(&["-q", "--formatter", "json", "status"]);
    assert!(status.contains("\"app_running\": false"), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "AMQP still served after stop_app"
    );
    let e = ctl.fails(&["list_queues"], 69);
    assert!(e.contains("start_app"), "{e}");
    ctl.ok(&["reset"]);
    ctl.ok(&["start_app"]);
    assert_eq!(
        broker.pid(),
        pid,
        "the process was replaced, not re-executed"
    );
    let conn = within(async {
        loop {
            if let Ok(c) = try_connect(&url).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        !queue_exists(&conn, "gone-after-reset").await,
        "the queue survived reset"
    );
    let _ = conn.close(200, "done".into()).await;
    assert!(ctl.ok(&["list_users"]).contains("guest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_exported_by_rabbitmq_import_and_round_trip() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rabbitmq-3.10-definitions.json");
    ctl.ok(&["import_definitions", fixture.to_str().unwrap()]);

    // The password hash RabbitMQ made works here.
    let conn = connect(&broker.url_with("fixture-alice", "alice-secret", "fixture-vh")).await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish(&ch, "alice.events", "orders.new", b"o").await;
    within(ch.wait_for_confirms()).await.unwrap();
    wait_message_count(&ch, "alice.q1", 1).await;
    // fixture-bob has no password: no login.
    assert!(
        try_connect(&broker.url_with("fixture-bob", "", "fixture-vh"))
            .await
            .is_err()
    );

    let out = broker.data_dir().unwrap().join("export.json");
    ctl.ok(&["export_definitions", out.to_str().unwrap()]);
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    for key in [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "parameters",
        "exchanges",
        "queues",
        "bindings",
    ] {
        assert_eq!(
            sorted(&ours[key]),
            sorted(&theirs[key]),
            "definitions key {key} differs after the round trip"
        );
    }
}

/// A definitions list in a canonical order (RabbitMQ's is unordered).
fn sorted(v: &serde_json::Value) -> Vec<String> {
    let mut items: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    items.sort();
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_load_at_boot() {
    if is_external() {
        return;
    }
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rabbitmq-3.10-definitions.json");
    let set = format!("definitions.load_file={}", fixture.display());
    let broker = Broker::spawn_warren(&["--set", &set]);
    connect(&broker.url_with("fixture-alice", "alice-secret", "fixture-vh")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_channels_are_listed_like_rabbitmqctl() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let conn = connect(&broker.url()).await;
    // Channel 1: prefetch 10, an acking consumer holding two deliveries.
    let ch1 = within(conn.create_channel()).await.unwrap();
    within(ch1.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    declare_queue(&ch1, "q1").await;
    let mut c1 = within(ch1.basic_consume(
        "q1".into(),
        "c1".into(),
        BasicConsumeOptions::default(),
        table(vec![("x-priority", AMQPValue::LongInt(5))]),
    ))
    .await
    .unwrap();
    // Channel 2: publisher confirms, an auto-ack consumer.
    let ch2 = within(conn.create_channel()).await.unwrap();
    within(ch2.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    declare_queue(&ch2, "q2").await;
    // Kept: lapin cancels a consumer that is dropped.
    let _c2 = within(ch2.basic_consume(
        "q2".into(),
        "c2".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    // Channel 3: transactional, global prefetch, nothing else.
    let ch3 = within(conn.create_channel()).await.unwrap();
    within(ch3.tx_select()).await.unwrap();
    within(ch3.basic_qos(7, BasicQosOptions { global: true }))
        .await
        .unwrap();
    publish(&ch2, "", "q1", b"a").await;
    publish(&ch2, "", "q1", b"b").await;
    within(ch2.wait_for_confirms()).await.unwrap();
    next_delivery(&mut c1).await;
    next_delivery(&mut c1).await;

    let conn_pid = ctl.ok(&["-q", "list_connections", "pid"]);
    let conn_pid = conn_pid.lines().nth(1).unwrap();
    // Channels are named after their connection: <warren.ID.0> has <warren.ID.N>.
    let ch_pid = |n: u16| conn_pid.replace(".0>", &format!(".{n}>"));

    assert_eq!(
        ctl.ok(&["list_consumers"]),
        format!(
            "Listing consumers in vhost / ...\n\
             queue_name\tchannel_pid\tconsumer_tag\tack_required\tprefetch_count\tactive\targuments\n\
             q1\t{}\tc1\ttrue\t10\ttrue\t[{{\"x-priority\",5}}]\n\
             q2\t{}\tc2\tfalse\t0\ttrue\t[]\n",
            ch_pid(1),
            ch_pid(2)
        )
    );
    assert_eq!(
        ctl.ok(&[
            "-q",
            "list_consumers",
            "consumer_tag",
            "activity_status",
            "exclusive"
        ]),
        "consumer_tag\tactivity_status\texclusive\nc1\tup\tfalse\nc2\tup\tfalse\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-q", "list_consumers", "--formatter", "json"])).unwrap();
    assert_eq!(json[0]["queue_name"], "q1");
    assert_eq!(json[0]["channel_pid"], ch_pid(1));
    assert_eq!(json[0]["ack_required"], true);
    assert_eq!(json[0]["prefetch_count"], 10);
    assert_eq!(json[0]["arguments"]["x-priority"], 5);
    assert_eq!(json[1]["consumer_tag"], "c2");
    assert_eq!(json[1]["ack_required"], false);
    ctl.ok(&["add_vhost", "v2"]);
    assert_eq!(
        ctl.ok(&["list_consumers", "-p", "v2", "queue_name"]),
        "Listing consumers in vhost v2 ...\nqueue_name\n"
    );
    ctl.fails(&["list_consumers", "bogus"], 64);

    assert_eq!(
        ctl.ok(&["list_channels"]),
        format!(
            "Listing channels ...\n\
             pid\tuser\tconsumer_count\tmessages_unacknowledged\n\
             {}\tguest\t1\t2\n{}\tguest\t1\t0\n{}\tguest\t0\t0\n",
            ch_pid(1),
            ch_pid(2),
            ch_pid(3)
        )
    );
    assert_eq!(
        ctl.ok(&[
            "-q",
            "list_channels",
            "number",
            "connection",
            "vhost",
            "confirm",
            "transactional",
            "prefetch_count",
            "global_prefetch_count",
        ]),
        format!(
            "number\tconnection\tvhost\tconfirm\ttransactional\tprefetch_count\tglobal_prefetch_count\n\
             1\t{conn_pid}\t/\tfalse\tfalse\t10\t0\n\
             2\t{conn_pid}\t/\ttrue\tfalse\t0\t0\n\
             3\t{conn_pid}\t/\tfalse\ttrue\t0\t7\n"
        )
    );
    let json: serde_json::Value = serde_json::from_str(&ctl.ok(&[
        "-q",
        "list_channels",
        "--formatter",
        "json",
        "name",
        "messages_unacknowledged",
    ]))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert!(
        json[0]["name"].as_str().unwrap().ends_with(" (1)"),
        "{json}"
    );
    assert_eq!(json[0]["messages_unacknowledged"], 2);
    ctl.fails(&["list_channels", "bogus"], 64);

    // Closing a channel removes it and its consumer from both listings.
    within(ch1.close(200, "bye".into())).await.unwrap();
    assert_eq!(
        ctl.ok(&["-q", "list_consumers", "consumer_tag"]),
        "consumer_tag\nc2\n"
    );
    assert_eq!(
        ctl.ok(&["-q", "list_channels", "number", "consumer_count"]),
        "number\tconsumer_count\n2\t1\n3\t0\n"
    );
    drop(ch3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_finds_zombie_queues_and_channel_leaks() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let healthy = ctl.ok(&["diagnostics", "--interval", "0"]);
    assert!(healthy.contains("summary\tok"), "{healthy}");
    assert!(
        healthy.contains(&format!("listener\tok\tamqp on {}", broker.addr())),
        "{healthy}"
    );
    assert!(healthy.contains("listener\tok\tprometheus on"), "{healthy}");

    // A queue with messages and nobody consuming, and a client that leaks channels.
    let (conn, ch) = broker.channel().await;
    let zombie = unique("zombie");
    declare_queue(&ch, &zombie).await;
    publish(&ch, "", &zombie, b"forgotten").await;
    wait_message_count(&ch, &zombie, 1).await;
    let mut leaked = Vec::new();
    for _ in 0..120 {
        leaked.push(within(conn.create_channel()).await.unwrap());
    }
    // Findings of warning level: exit status 1, the findings on stdout.
    let out = ctl.run(&["doctor", "--interval", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let found = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        found.contains(&format!(
            "queue\twarning\tqueue '{zombie}' in vhost '/' has 1 ready messages and no consumer"
        )),
        "{found}"
    );
    assert!(
        found.contains("channels open") && found.contains("(user 'guest') has 121 channels open"),
        "{found}"
    );
    assert!(!found.contains("summary\tok"), "{found}");
    // Without a trend interval nothing is called growing.
    assert!(!found.contains("backlog"), "{found}");
    drop(leaked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_reports_growing_backlogs_with_their_rate_and_documents_its_exit_codes() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    let growing = unique("growing");
    let steady = unique("steady");
    declare_queue(&ch, &growing).await;
    declare_queue(&ch, &steady).await;
    publish(&ch, "", &steady, b"one").await;
    wait_message_count(&ch, &steady, 1).await;

    // Diagnostics samples for 2 s while the growing queue gets 20 messages.
    let run = {
        let data_dir = broker.data_dir().unwrap();
        std::thread::spawn(move || {
            Command::new(crate::common::warrenctl_bin())
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["diagnostics", "--interval", "2"])
                .output()
                .expect("run warrenctl")
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        publish(&ch, "", &growing, b"more").await;
    }
    wait_message_count(&ch, &growing, 20).await;
    let out = tokio::task::spawn_blocking(move || run.join().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "backlog\twarning\tqueue '{growing}' in vhost '/' is growing: 0 -> 20 ready messages in 2s (10.0/s)"
        )),
        "{text}"
    );
    // A queue that holds messages but does not grow is no growing backlog.
    assert!(
        !text.contains(&format!("queue '{steady}' in vhost '/' is growing")),
        "{text}"
    );

    ctl.fails(&["diagnostics", "--interval", "soon"], 64);
    let help = ctl.ok(&["diagnostics", "--help"]);
    assert!(help.contains("--interval <seconds>"), "{help}");
    assert!(help.contains("1    at least one finding"), "{help}");
}

/// `/api/queues/%2F/NAME` as guest: the queue's JSON.
fn api_queue(broker: &Broker, name: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(broker.management_addr()).unwrap();
    write!(
        s,
        "GET /api/queues/%2F/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// warrenctl list_queues and the management API describe a queue from the same
/// figures (admin/queues.rs): the same counts once the queue has settled. And listing
/// a queue is not using it: a queue with x-expires expires while it is listed again and
/// again (warrenctl's question used to count as use, as queue.declare does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_and_the_api_agree_and_listing_is_not_use() {
    use futures_lite::StreamExt;
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    declare_queue(&ch, "shared").await;
    for _ in 0..5 {
        publish(&ch, "", "shared", b"12345").await;
    }
    within(ch.basic_qos(2, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(ch.basic_consume(
        "shared".into(),
        "c".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(consumer.next()).await.unwrap().unwrap();
    let columns = [
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "messages_ram",
        "consumers",
    ];
    let cli = ctl.ok(&[&["-q", "list_queues"][..], &columns[..]].concat());
    let cli: Vec<u64> = cli
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(cli, [5, 3, 2, 5, 1]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let api = api_queue(&broker, "shared");
        let api: Vec<u64> = columns.iter().map(|c| api[c].as_u64().unwrap()).collect();
        if api == cli {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "api {api:?}, cli {cli:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(1000));
    within(ch.queue_declare("expiring".into(), QueueDeclareOptions::default(), args))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while ctl.ok(&["-q", "list_queues", "name"]).contains("expiring") {
        assert!(
            std::time::Instant::now() < deadline,
            "listed every 100 ms, the unused queue never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection has one name in every listing, RabbitMQ's `peer -> local` with the port
/// the client really reached (not the configured `127.0.0.1:0`): warrenctl
/// list_connections, list_channels and /api/connections agree, and the name the client
/// gave is `user_provided_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_has_one_name_everywhere() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let conn = within(lapin::Connection::connect(
        &broker.url(),
        lapin::ConnectionProperties::default().with_connection_name("billing".into()),
    ))
    .await
    .unwrap();
    let _ch = within(conn.create_channel()).await.unwrap();
    let row = ctl.ok(&[
        "-q",
        "list_connections",
        "name",
        "user_provided_name",
        "port",
    ]);
    let row: Vec<&str> = row.lines().nth(1).unwrap().split('\t').collect();
    let (name, given, port) = (row[0].to_owned(), row[1], row[2]);
    assert_eq!(given, "billing");
    assert!(
        name.ends_with(&format!(" -> {}", broker.addr())),
        "{name} names the listener's real address {}",
        broker.addr()
    );
    assert_eq!(broker.addr().rsplit(':').next().unwrap(), port);
    let channels = ctl.ok(&["-q", "list_channels", "name"]);
    assert_eq!(channels.lines().nth(1).unwrap(), format!("{name} (1)"));

    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(broker.management_addr()).unwrap();
    write!(
        s,
        "GET /api/connections HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let api: serde_json::Value =
        serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(api[0]["name"], name.as_str());
    assert_eq!(api[0]["user_provided_name"], "billing");
}

/// On a single-active-consumer queue only the first consumer gets deliveries: listings
/// say so as RabbitMQ's do (active, activity_status single_active / waiting), the same
/// in warrenctl list_consumers and /api/consumers (both gather admin/consumers.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumers_are_listed_active_and_waiting() {
    let Some((broker, ctl)) = warren() else {
        return;
    };
    let (_conn, ch) = broker.channel().await;
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    within(ch.queue_declare("sac".into(), QueueDeclareOptions::default(), args))
        .await
        .unwrap();
    // Held: lapin cancels a consumer whose handle is dropped.
    let mut consumers = Vec::new();
    for tag in ["first", "second"] {
        consumers.push(
            within(ch.basic_consume(
                "sac".into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .await
            .unwrap(),
        );
    }
    let out = ctl.ok(&[
        "-q",
        "list_consumers",
        "consumer_tag",
        "active",
        "activity_status",
    ]);
    assert_eq!(
        out,
        "consumer_tag\tactive\tactivity_status\nfirst\ttrue\tsingle_active\nsecond\tfalse\twaiting\n"
    );
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(broker.management_addr()).unwrap();
    write!(
        s,
        "GET /api/consumers HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let api: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    let listed: Vec<(String, bool, String)> = api
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["consumer_tag"].as_str().unwrap().to_owned(),
                c["active"].as_bool().unwrap(),
                c["activity_status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("first".to_owned(), true, "single_active".to_owned()),
            ("second".to_owned(), false, "waiting".to_owned())
        ]
    );
}
