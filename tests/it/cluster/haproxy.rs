//! HAProxy in front of the cluster, configured by `examples/haproxy.cfg` itself (the
//! nodes' names replaced by their addresses, the ports by free ones): clients that
//! know only HAProxy's address publish and consume while the leader is killed.
use super::checker::{wait_confirms_work, Workload};
use super::harness::{http_status, Cluster, Opts};
use super::scenarios::{secs, time_to_serve, wait_full_isr};

use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// HAProxy running `examples/haproxy.cfg` for `cluster`; killed when dropped.
struct Haproxy {
    child: Child,
    amqp: String,
    management: String,
}

impl Haproxy {
    fn start(cluster: &Cluster) -> Haproxy {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/haproxy.cfg");
        let mut cfg = std::fs::read_to_string(example).expect("examples/haproxy.cfg");
        for i in 1..=3 {
            cfg = cfg.replace(&format!("node{i}:"), &format!("{}:", cluster.ip(i)));
        }
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (amqp, management) = (free(), free());
        assert!(cfg.contains("bind :5672\n") && cfg.contains("bind :15672\n"));
        cfg = cfg
            .replace("bind :5672\n", &format!("bind {amqp}\n"))
            .replace("bind :15672\n", &format!("bind {management}\n"));
        let path = cluster.dir().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(cluster.dir().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("haproxy (tests/cluster/install.sh installs it)");
        Haproxy {
            child,
            amqp: amqp.to_string(),
            management: management.to_string(),
        }
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Proves that clients that know only HAProxy's address (the example configuration,
/// which routes to the node whose is-leader check passes) publish with confirms and
/// consume with acks, that after `kill -9` of the leader they reconnect through HAProxy
/// and go on (the time is printed), and that nothing confirmed is lost (the checker
/// drains through HAProxy too). The management API answers through HAProxy as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_haproxy_survive_a_leader_kill() {
    let mut cluster = Cluster::start(3, Opts::default());
    let leader = cluster.wait_leader(secs(30)).await;
    wait_full_isr(&cluster, leader).await;
    let haproxy = Haproxy::start(&cluster);
    let uris = vec![haproxy.uri()];
    wait_confirms_work(&uris, "through-haproxy", secs(30)).await;
    let (status, _) = http_status(&haproxy.management, "/api/overview", secs(3)).unwrap();
    assert_eq!(status, 401, "the management API through HAProxy");

    let work = Workload::start(uris.clone(), "through-haproxy", 2, 1);
    work.wait_progress(50, secs(10)).await;
    tokio::time::sleep(secs(2)).await;
    cluster.kill(leader);
    let fault = Instant::now();
    let what = "kill -9 of the leader, clients through HAProxy";
    time_to_serve(&work, fault, secs(30), what).await;
    let new = cluster.wait_new_leader(leader, secs(30)).await;
    eprintln!("haproxy: n{new} leads now");
    cluster.restart(leader);
    work.wait_progress(50, secs(20)).await;
    let history = work.stop().await;
    history.drain(&uris, secs(60)).await;
    history.check().assert_ok();
    drop(haproxy);
    let _ = std::fs::read_to_string(cluster.dir().join("haproxy.log"))
        .map(|l| eprintln!("haproxy log:\n{l}"));
}
