//! Clients may connect to any node: a follower passes each connection on to the leader
//! with a PROXY line naming the client (`src/cluster/front.rs`), and the leader trusts
//! that line only from cluster members. Health checks for load balancers: is-leader
//! answers 200 on the leader alone, is-in-service on every member that can serve.
use super::harness::{http_status, http_status_as_guest, Cluster, Opts};
use super::scenarios::{secs, wait_full_isr};
use crate::common::*;
use crate::durability::warrenctl;

use std::io::{Read, Write};
use std::time::Duration;

/// Publish one confirmed persistent message to `queue` through `uri` and get it back.
async fn round_trip(uri: &str, queue: &str, body: &[u8]) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |e: lapin::Error| format!("{uri}: {what}: {e}")
    };
    let conn = try_connect(uri).await.map_err(e("connect"))?;
    let ch = conn.create_channel().await.map_err(e("channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(e("confirm.select"))?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, no_args())
        .await
        .map_err(e("declare"))?;
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .map_err(e("publish"))?;
    if !confirm.await.map_err(e("confirm"))?.is_ack() {
        return Err(format!("{uri}: nacked"));
    }
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .map_err(e("get"))?
        .ok_or_else(|| format!("{uri}: queue {queue} empty"))?;
    if got.delivery.data != body {
        return Err(format!("{uri}: another body came back"));
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// Proves that a client connected to a follower is served by the leader as if it had
/// connected there (a confirmed publish and a get work through each follower), that
/// the leader sees the real client's address (list_connections' peer_host is the
/// test's address, not the follower's), that a PROXY line from a host that is not a
/// member is refused rather than believed, that the health checks tell the leader
/// from the followers, and that after the leader is killed a client connecting to the
/// same follower again is served by the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_connect_to_any_node() {
    let mut cluster = Cluster::start(3, Opts::default());
    let leader = cluster.wait_leader(secs(30)).await;
    wait_full_isr(&cluster, leader).await;
    let followers: Vec<usize> = (1..=3).filter(|&i| i != leader).collect();

    for &f in &followers {
        let q = format!("via-n{f}");
        within(round_trip(&cluster.uri(f), &q, b"through a follower"))
            .await
            .unwrap();
    }

    // The leader sees the test's own address on a connection made through a follower.
    let f = followers[0];
    let name = format!("through-n{f}");
    let props = ConnectionProperties::default().with_connection_name(name.clone().into());
    let conn = within(Connection::connect(&cluster.uri(f), props))
        .await
        .expect("connect");
    let listed = warrenctl(
        &cluster.data_dir(leader),
        &["list_connections", "user_provided_name", "peer_host"],
    );
    eprintln!("any-node: the leader n{leader} lists:\n{listed}");
    let row = listed
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("the leader does not list the connection {name}"));
    assert_eq!(
        row.split('\t').nth(1),
        Some(cluster.client_ip().as_str()),
        "the leader lists {row:?} for a client at {} that came through n{f}",
        cluster.client_ip()
    );
    let _ = conn.close(200, "done".into()).await;

    // A PROXY line from the test's host (not a member) is not believed: the broker
    // answers it as a bad protocol header.
    let mut s = std::net::TcpStream::connect(cluster.amqp_addr(leader)).expect("connect");
    s.set_read_timeout(Some(secs(5))).unwrap();
    s.write_all(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 5672\r\nAMQP\x00\x00\x09\x01")
        .unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).expect("the broker answers");
    assert_eq!(
        &reply, b"AMQP\x00\x00\x09\x01",
        "a PROXY line from a non-member was not refused as a bad header"
    );

    // Health checks: is-leader on the leader alone, is-in-service everywhere.
    let addrs: Vec<String> = (1..=3).map(|i| cluster.http_addr(i)).collect();
    let check = |i: usize, what: &str| {
        let path = format!("/api/health/checks/{what}");
        http_status(&addrs[i - 1], &path, secs(3))
            .expect("health check")
            .0
    };
    for i in 1..=3 {
        let want = if i == leader { 200 } else { 503 };
        assert_eq!(check(i, "is-leader"), want, "is-leader on n{i}");
        assert_eq!(check(i, "is-in-service"), 200, "is-in-service on n{i}");
    }
    // Other management requests to a follower are the leader's to answer.
    let (status, body) = http_status(&cluster.http_addr(f), "/api/overview", secs(3)).unwrap();
    assert_eq!(
        status, 401,
        "/api/overview via n{f} without credentials: {body}"
    );

    // The cluster as the management API and Prometheus show it, from every node.
    for i in 1..=3 {
        let (status, body) =
            http_status_as_guest(&cluster.http_addr(i), "/api/nodes", secs(5)).unwrap();
        assert_eq!(status, 200, "/api/nodes via n{i}: {body}");
        let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
        let nodes = nodes.as_array().unwrap();
        assert_eq!(nodes.len(), 3, "{body}");
        for n in nodes {
            let leads = n["name"] == format!("warren@n{leader}");
            let role = if leads { "leader" } else { "follower" };
            assert_eq!(n["warren_role"], role, "{n}");
            assert_eq!(n["running"], true, "{n}");
            assert_eq!(n["type"], "disc", "{n}");
            assert_eq!(n["warren_in_sync"], true, "{n}");
        }
        let (_, overview) =
            http_status_as_guest(&cluster.http_addr(i), "/api/overview", secs(5)).unwrap();
        let overview: serde_json::Value = serde_json::from_str(&overview).unwrap();
        assert_eq!(overview["cluster_name"], format!("wt{}", cluster.k()));
        assert_eq!(overview["node"], format!("warren@n{leader}"));

        let (status, metrics) = http_status(&cluster.metrics_addr(i), "/metrics", secs(5)).unwrap();
        assert_eq!(status, 200, "metrics of n{i}");
        let role = if i == leader { "leader" } else { "follower" };
        assert!(
            metrics.contains(&format!("warren_cluster_role{{role=\"{role}\"}} 1")),
            "n{i}'s metrics:\n{metrics}"
        );
        assert!(
            metrics.contains(&format!("rabbitmq_node=\"warren@n{i}\"")),
            "{metrics}"
        );
        assert!(metrics.contains("warren_cluster_etcd_up 1"), "{metrics}");
        if i == leader {
            assert!(
                metrics.contains("warren_cluster_in_sync_replicas 3"),
                "{metrics}"
            );
            for f in &followers {
                let lag = format!("warren_cluster_follower_in_sync{{follower=\"warren@n{f}\"}} 1");
                assert!(metrics.contains(&lag), "{metrics}");
            }
        } else {
            let received = metrics
                .lines()
                .find_map(|l| l.strip_prefix("warren_cluster_replication_received_bytes_total "))
                .and_then(|v| v.parse::<u64>().ok());
            assert!(received.is_some_and(|b| b > 0), "{metrics}");
        }
    }

    // The leader dies; a client connecting to a follower again is served by the new one.
    cluster.kill(leader);
    let new = cluster.wait_new_leader(leader, secs(30)).await;
    let other = followers.iter().copied().find(|&i| i != new).unwrap();
    let deadline = std::time::Instant::now() + secs(30);
    loop {
        let (queue, uri) = (format!("via-n{other}-after"), cluster.uri(other));
        let attempt =
            tokio::time::timeout(secs(10), round_trip(&uri, &queue, b"after the failover"));
        let failed = match attempt.await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_owned(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "no round trip through n{other} to the new leader n{new}: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(check(new, "is-leader"), 200);
    assert_eq!(check(other, "is-leader"), 503);
}

/// Proves that AMQPS goes through a follower too: the follower passes the TLS bytes on
/// untouched (the leader terminates TLS with its certificate, valid for every node's
/// address), a confirmed publish and a get work, and the leader lists the connection
/// as TLS from the test's own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_through_a_follower() {
    let ca = crate::tls::Ca::new("warren cluster test CA");
    let dir = std::env::temp_dir().join(unique("warren-cluster-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (certfile, keyfile) = (dir.join("server.pem"), dir.join("server.key"));
    let mut cluster = Cluster::start_with(3, |k| {
        // One certificate for every node: a client that came through a follower talks
        // TLS with the leader, for the follower's address.
        let sans = (1..=3).map(|i| format!("10.77.{k}.{i}")).collect();
        let (cert, key) = ca.issue_server(sans);
        std::fs::write(&certfile, cert).unwrap();
        std::fs::write(&keyfile, key).unwrap();
        Opts {
            extra_config: format!(
                "[tls]\nlisten = \"{{me}}:5671\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
                certfile.display(),
                keyfile.display()
            ),
            ..Opts::default()
        }
    });
    let leader = cluster.wait_leader(secs(30)).await;
    wait_full_isr(&cluster, leader).await;
    let f = (1..=3).find(|&i| i != leader).unwrap();
    let url = format!("amqps://guest:guest@{}:5671/%2f", cluster.ip(f));
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(ca.pem()),
    };
    let props = ConnectionProperties::default().with_connection_name("tls-through-follower".into());
    let conn = within(Connection::connect_with_config(
        &url,
        props,
        tls,
        lapin::runtime::default_runtime().unwrap(),
    ))
    .await
    .expect("amqps through a follower");
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let q = "tls-through-follower";
    within(ch.queue_declare(q.into(), QueueDeclareOptions::default(), no_args()))
        .await
        .unwrap();
    let confirm = within(ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        b"over tls",
        lapin::BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    let got = within(ch.basic_get(q.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the message");
    assert_eq!(got.delivery.data, b"over tls");
    let listed = warrenctl(
        &cluster.data_dir(leader),
        &["list_connections", "user_provided_name", "peer_host", "ssl"],
    );
    let row = listed
        .lines()
        .find(|l| l.contains("tls-through-follower"))
        .unwrap_or_else(|| panic!("the leader does not list the connection: {listed}"));
    let cols: Vec<&str> = row.split('\t').collect();
    assert_eq!(cols[1], cluster.client_ip(), "{row}");
    assert_eq!(cols[2], "true", "{row}");
    let _ = conn.close(200, "done".into()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
