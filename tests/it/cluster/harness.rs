//! A three-host warren cluster on one machine, for fault tests: one network namespace
//! per host, one etcd member and one warren node in each, and the faults a test injects
//! (kill -9, SIGSTOP, partitions with iptables inside a host's namespace, etcd crashes).
//!
//! The network of `Cluster` number `k` (unique among the running clusters, see
//! [`NetLock`]):
//!
//! ```text
//!  root namespace (the test and its AMQP clients)
//!    wbr<k> 10.77.<k>.254/24 ──veth── uplink ┐
//!                                            br0   (namespace wn<k>-sw, a switch)
//!    wn<k>-1: eth0 10.77.<k>.1/24 ──veth── h1 ┤
//!    wn<k>-2: eth0 10.77.<k>.2/24 ──veth── h2 ┤
//!    wn<k>-3: eth0 10.77.<k>.3/24 ──veth── h3 ┘
//! ```
//!
//! The bridge lives in a namespace of its own rather than in the root namespace: with
//! `br_netfilter` loaded and `bridge-nf-call-iptables = 1` (Docker does both), frames
//! bridged in the root namespace traverse the root's iptables FORWARD chain, whose
//! policy Docker sets to DROP, so the hosts could not reach each other without a rule
//! in the host's firewall. In the switch namespace FORWARD is empty (ACCEPT) and the
//! root namespace only sees its own interface `wbr<k>` (no routes but its /24, no
//! iptables change, no sysctl change).
//!
//! Partitions are iptables rules in the INPUT and OUTPUT chains of a host's namespace,
//! so they cut both directions of that host's links and leave the test's clients
//! (10.77.<k>.254) connected unless [`Cluster::isolate_all`] is asked for.
//!
//! Hosts are numbered 1..=n everywhere in this API, as in their addresses.
//!
//! Every process (etcd, warren) is spawned by one thread per cluster with
//! `PR_SET_PDEATHSIG = SIGKILL`, so a test binary killed by CI leaves no broker
//! behind; what it does leave (namespaces, the root veth) is deleted by the next
//! cluster that starts ([`NetLock::sweep`]). The nodes run the cluster's own hard link
//! to the warren binary, so that a rebuild during a run cannot break a node's
//! re-execution. At most four clusters of one test process run at once ([`Turn`];
//! `WARREN_CLUSTER_MAX` changes that).
//! Logs, configs and data dirs are in one tmp dir per cluster, kept when a test fails
//! (its path and the logs' last lines are printed then).
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What [`Cluster::start`] may change from the defaults of the spec.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `cluster.lease_ttl`, seconds.
    pub lease_ttl: u64,
    /// `cluster.ack_timeout_ms`.
    pub ack_timeout_ms: u64,
    /// `cluster.min_insync_replicas`.
    pub min_insync_replicas: u32,
    /// `store.segment_size`, when set.
    pub segment_size: Option<u64>,
    /// Start the warren nodes (false: network and etcd only, for harness tests).
    pub start_warren: bool,
    /// Run etcd with `--pre-vote` (etcd 3.4 defaults to off, 3.5 to on). Without it, a
    /// member that was cut off campaigns on its own, raising its term, and on rejoining
    /// forces the whole etcd cluster into an election: a second of etcd unavailability
    /// that costs the warren leader its lease, so every heal would also be a failover.
    pub etcd_pre_vote: bool,
    /// More configuration for every node, appended to its file; `{me}` is the node's
    /// address (a `[tls]` section, say).
    pub extra_config: String,
    /// Run each node as systemd would with `Type=notify` and `WatchdogSec=` (a
    /// notification socket of its own, [`Cluster::notifications`]).
    pub systemd: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            lease_ttl: 3,
            ack_timeout_ms: 2000,
            min_insync_replicas: 2,
            segment_size: None,
            start_warren: true,
            etcd_pre_vote: true,
            extra_config: String::new(),
            systemd: false,
        }
    }
}

/// One process the harness started (an etcd member or a warren node).
struct Proc {
    child: Option<Child>,
    /// stdout and stderr of every incarnation, appended.
    log: PathBuf,
    /// Sent SIGSTOP and not yet SIGCONT.
    stopped: bool,
}

impl Proc {
    fn new(log: PathBuf) -> Proc {
        Proc {
            child: None,
            log,
            stopped: false,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Still running (or stopped)? Reaps it when it has exited.
    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    append_line(&self.log, &format!("=== harness: exited: {status}"));
                    self.child = None;
                    false
                }
                Err(_) => false,
            },
            None => false,
        }
    }

    fn kill(&mut self) {
        if self.alive() {
            let mut c = self.child.take().unwrap();
            let _ = c.kill();
            let _ = c.wait();
            append_line(&self.log, "=== harness: killed (SIGKILL)");
        }
        self.stopped = false;
    }

    fn signal(&mut self, sig: libc::c_int) {
        let pid = self.pid().expect("signal to a process that is not running");
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A cluster of `n` hosts (etcd + warren each) on a private network; see the module doc.
pub struct Cluster {
    k: u8,
    n: usize,
    dir: PathBuf,
    opts: Opts,
    etcd: Vec<Proc>,
    warren: Vec<Proc>,
    /// Hosts whose namespace has iptables rules in place (what `heal_all` flushes).
    cut: Vec<bool>,
    /// With `opts.systemd`: each node's notification socket (bound here, before the
    /// node starts, as systemd does).
    notify: Vec<Option<std::os::unix::net::UnixDatagram>>,
    spawner: Option<Spawner>,
    /// Held for the cluster's life; released last (after the network is gone).
    lock: Option<NetLock>,
    _turn: Option<Turn>,
}

impl Cluster {
    /// Build the network, start and wait for etcd (all members healthy), then start
    /// the warren nodes (unless `opts.start_warren` is false). Does not wait for a
    /// leader: see [`Cluster::wait_leader`].
    pub fn start(n: usize, opts: Opts) -> Cluster {
        Self::start_with(n, |_| opts)
    }

    /// [`Cluster::start`] with options made once the network number `k` is known (for
    /// settings that name the nodes' addresses, such as certificates).
    pub fn start_with(n: usize, make: impl FnOnce(u8) -> Opts) -> Cluster {
        require_root();
        assert!((1..=9).contains(&n), "1..=9 hosts, not {n}");
        let turn = Turn::take();
        let lock = NetLock::acquire();
        let k = lock.k;
        let opts = make(k);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("warren-cluster-{}-{k}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the cluster's tmp dir");
        let mut c = Cluster {
            k,
            n,
            dir: dir.clone(),
            opts,
            etcd: (1..=n)
                .map(|i| Proc::new(dir.join(format!("etcd{i}.log"))))
                .collect(),
            warren: (1..=n)
                .map(|i| Proc::new(dir.join(format!("node{i}.log"))))
                .collect(),
            cut: vec![false; n],
            notify: (1..=n).map(|_| None).collect(),
            spawner: Some(Spawner::new()),
            lock: Some(lock),
            _turn: Some(turn),
        };
        eprintln!("cluster wt{k}: {n} hosts, logs in {}", dir.display());
        if c.opts.systemd {
            for i in 1..=n {
                let socket = std::os::unix::net::UnixDatagram::bind(c.notify_path(i))
                    .expect("bind a notification socket");
                socket.set_nonblocking(true).unwrap();
                c.notify[i - 1] = Some(socket);
            }
        }
        if c.opts.start_warren {
            c.pin_binary();
        }
        c.net_up();
        for i in 1..=n {
            c.spawn_etcd(i, "new");
        }
        c.wait_etcd_healthy(Duration::from_secs(30));
        if c.opts.start_warren {
            for i in 1..=n {
                c.write_config(i);
                c.spawn_warren(i);
            }
        }
        c
    }

    /// The network number `k` (the third byte of every address).
    pub fn k(&self) -> u8 {
        self.k
    }

    /// The number of hosts.
    pub fn size(&self) -> usize {
        self.n
    }

    /// The cluster's tmp dir (configs, data dirs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        self.check_host(i);
        format!("10.77.{}.{i}", self.k)
    }

    /// The root namespace's address on the cluster network (the test's clients).
    pub fn client_ip(&self) -> String {
        format!("10.77.{}.254", self.k)
    }

    /// Host `i`'s namespace.
    pub fn netns(&self, i: usize) -> String {
        self.check_host(i);
        format!("wn{}-{i}", self.k)
    }

    pub fn amqp_addr(&self, i: usize) -> String {
        format!("{}:5672", self.ip(i))
    }

    /// Node `i`'s Prometheus endpoint (host:port).
    pub fn metrics_addr(&self, i: usize) -> String {
        format!("{}:15692", self.ip(i))
    }

    /// Node `i`'s management API (host:port).
    pub fn http_addr(&self, i: usize) -> String {
        format!("{}:15672", self.ip(i))
    }

    pub fn uri(&self, i: usize) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp_addr(i))
    }

    /// Every node's AMQP URI (any node accepts connections: a follower passes them on to
    /// the leader).
    pub fn uris(&self) -> Vec<String> {
        (1..=self.n).map(|i| self.uri(i)).collect()
    }

    pub fn etcd_client_addr(&self, i: usize) -> String {
        format!("{}:2379", self.ip(i))
    }

    fn etcd_endpoints(&self) -> Vec<String> {
        (1..=self.n)
            .map(|i| format!("http://{}", self.etcd_client_addr(i)))
            .collect()
    }

    fn check_host(&self, i: usize) {
        assert!(
            (1..=self.n).contains(&i),
            "no host {i} (hosts are 1..={})",
            self.n
        );
    }

    // ------------------------------------------------------------------------------
    // Network
    // ------------------------------------------------------------------------------

    fn switch_ns(&self) -> String {
        format!("wn{}-sw", self.k)
    }

    fn root_link(&self) -> String {
        format!("wbr{}", self.k)
    }

    fn net_up(&mut self) {
        let (k, sw, root) = (self.k, self.switch_ns(), self.root_link());
        delete_net(k);
        run(&ip(), &["netns", "add", &sw]);
        run(&ip(), &["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&ip(), &["-n", &sw, "link", "set", "br0", "up"]);
        // The root namespace's leg: a veth whose peer is a port of the switch.
        retry_run(&[
            "link", "add", &root, "type", "veth", "peer", "name", "uplink", "netns", &sw,
        ]);
        run(
            &ip(),
            &["-n", &sw, "link", "set", "uplink", "master", "br0"],
        );
        run(&ip(), &["-n", &sw, "link", "set", "uplink", "up"]);
        run(
            &ip(),
            &[
                "addr",
                "add",
                &format!("{}/24", self.client_ip()),
                "dev",
                &root,
            ],
        );
        run(&ip(), &["link", "set", &root, "up"]);
        for i in 1..=self.n {
            let ns = self.netns(i);
            let port = format!("h{i}");
            run(&ip(), &["netns", "add", &ns]);
            run(
                &ip(),
                &[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            run(&ip(), &["-n", &sw, "link", "set", &port, "master", "br0"]);
            run(&ip(), &["-n", &sw, "link", "set", &port, "up"]);
            let addr = format!("{}/24", self.ip(i));
            run(&ip(), &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            run(&ip(), &["-n", &ns, "link", "set", "eth0", "up"]);
            run(&ip(), &["-n", &ns, "link", "set", "lo", "up"]);
        }
        // Wait until the root namespace reaches every host (the bridge forwards at once
        // without STP; this only covers links still coming up).
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 1..=self.n {
            let target: SocketAddr = format!("{}:9", self.ip(i)).parse().unwrap();
            // A refused connection proves the path works (nothing listens on port 9).
            while let Err(e) = TcpStream::connect_timeout(&target, Duration::from_millis(300)) {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "host {i} ({target}) unreachable from the root namespace: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Run `iptables -w ARGS` inside host `i`'s namespace.
    fn iptables(&self, i: usize, args: &[&str]) {
        let ns = self.netns(i);
        let mut all = vec!["netns", "exec", &ns, IPTABLES, "-w"];
        all.extend_from_slice(args);
        run(&ip(), &all);
    }

    /// Cut host `i` from hosts `peers` (both directions; only inside `i`'s namespace,
    /// which is enough: every packet between them passes there).
    pub fn partition(&mut self, i: usize, peers: &[usize]) {
        for &j in peers {
            assert_ne!(i, j, "partition({i}, ..) from itself");
            let peer = self.ip(j);
            self.iptables(i, &["-A", "INPUT", "-s", &peer, "-j", "DROP"]);
            self.iptables(i, &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"]);
        }
        self.cut[i - 1] = true;
        eprintln!("cluster wt{}: host {i} cut from {peers:?}", self.k);
    }

    /// Cut host `i` from every other host (etcd peers included); the test's clients
    /// still reach it.
    pub fn isolate(&mut self, i: usize) {
        let others: Vec<usize> = (1..=self.n).filter(|&j| j != i).collect();
        self.partition(i, &others);
    }

    /// Cut host `i` from everything, the test's clients included.
    pub fn isolate_all(&mut self, i: usize) {
        self.iptables(i, &["-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
        self.iptables(i, &["-A", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
        self.cut[i - 1] = true;
        eprintln!("cluster wt{}: host {i} cut from everything", self.k);
    }

    /// Remove every rule of host `i` (undoes partition / isolate / isolate_all).
    pub fn heal(&mut self, i: usize) {
        self.iptables(i, &["-F", "INPUT"]);
        self.iptables(i, &["-F", "OUTPUT"]);
        self.cut[i - 1] = false;
        eprintln!("cluster wt{}: host {i} healed", self.k);
    }

    pub fn heal_all(&mut self) {
        for i in 1..=self.n {
            if self.cut[i - 1] {
                self.heal(i);
            }
        }
    }

    /// Can a TCP connection to `to` (host:port) be opened from host `from`'s namespace
    /// (`None`: from the root namespace)? A refused connection counts as reachable.
    pub fn can_connect(&self, from: Option<usize>, to: &str, timeout: Duration) -> bool {
        let target: SocketAddr = to.parse().expect("an ip:port");
        let probe = move || match TcpStream::connect_timeout(&target, timeout) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        };
        match from {
            None => probe(),
            Some(i) => in_netns(&self.netns(i), probe),
        }
    }

    // ------------------------------------------------------------------------------
    // etcd
    // ------------------------------------------------------------------------------

    fn spawn_etcd(&mut self, i: usize, state: &str) {
        let k = self.k;
        let initial: Vec<String> = (1..=self.n)
            .map(|j| format!("e{j}=http://10.77.{k}.{j}:2380"))
            .collect();
        let me = self.ip(i);
        let data = self.dir.join(format!("etcd{i}"));
        let mut cmd = Command::new(ip());
        cmd.args(["netns", "exec", &self.netns(i), "etcd"])
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://{me}:2379")])
            .args(["--advertise-client-urls", &format!("http://{me}:2379")])
            .args(["--listen-peer-urls", &format!("http://{me}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{me}:2380"),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &format!("wt{k}")])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if self.opts.etcd_pre_vote {
            cmd.arg("--pre-vote");
        }
        let log = self.etcd[i - 1].log.clone();
        let child = self.spawn(cmd, &log, &format!("etcd e{i} ({state})"));
        self.etcd[i - 1].child = Some(child);
    }

    /// Is etcd member `i` healthy (`GET /health` says `"health":"true"`)?
    pub fn etcd_healthy(&self, i: usize) -> bool {
        http_get(&self.etcd_client_addr(i), "/health", Duration::from_secs(1))
            .map(|b| b.replace(' ', "").contains("\"health\":\"true\""))
            .unwrap_or(false)
    }

    /// Wait until every running etcd member is healthy; panics after `timeout`.
    pub fn wait_etcd_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut sick = Vec::new();
            for i in 1..=self.n {
                if !self.etcd[i - 1].alive() {
                    continue;
                }
                if !self.etcd_healthy(i) {
                    sick.push(i);
                }
            }
            if sick.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                for i in &sick {
                    eprintln!("--- {}", self.etcd[i - 1].log.display());
                    eprintln!("{}", tail(&self.etcd[i - 1].log, 30));
                }
                panic!("etcd members {sick:?} not healthy within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the given etcd members are healthy; panics after `timeout`.
    pub fn wait_etcd_healthy_members(&self, members: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !members.iter().all(|&i| self.etcd_healthy(i)) {
            assert!(
                Instant::now() < deadline,
                "etcd members {members:?} not all healthy within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL etcd member `i` and reap it.
    pub fn kill_etcd(&mut self, i: usize) {
        self.check_host(i);
        self.etcd[i - 1].kill();
        eprintln!("cluster wt{}: etcd e{i} killed", self.k);
    }

    /// Start etcd member `i` again on its data dir (`--initial-cluster-state existing`).
    /// Does not wait for it to be healthy.
    pub fn restart_etcd(&mut self, i: usize) {
        self.check_host(i);
        self.etcd[i - 1].kill();
        self.spawn_etcd(i, "existing");
    }

    pub fn etcd_log(&self, i: usize) -> String {
        self.check_host(i);
        std::fs::read_to_string(&self.etcd[i - 1].log).unwrap_or_default()
    }

    // ------------------------------------------------------------------------------
    // warren
    // ------------------------------------------------------------------------------

    fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}.toml"))
    }

    fn write_config(&self, i: usize) {
        let (k, me) = (self.k, self.ip(i));
        let endpoints: Vec<String> = self
            .etcd_endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let mut toml = format!(
            r#"data_dir = "{data}"
[amqp]
listen = "{me}:5672"
heartbeat = 5
[defaults]
loopback_users = []
[management]
listen = "{me}:15672"
[metrics]
listen = "{me}:15692"
[log]
level = "info"
[cluster]
node_name = "warren@n{i}"
name = "wt{k}"
etcd_endpoints = [{endpoints}]
replication_listen = "{me}:25672"
min_insync_replicas = {misr}
lease_ttl = {ttl}
ack_timeout_ms = {ack}
secret = "wt{k}-secret"
"#,
            data = self.dir.join(format!("data{i}")).display(),
            endpoints = endpoints.join(", "),
            misr = self.opts.min_insync_replicas,
            ttl = self.opts.lease_ttl,
            ack = self.opts.ack_timeout_ms,
        );
        if let Some(size) = self.opts.segment_size {
            toml.push_str(&format!("[store]\nsegment_size = {size}\n"));
        }
        toml.push_str(&self.opts.extra_config.replace("{me}", &me));
        std::fs::write(self.config_path(i), toml).expect("write node config");
    }

    /// The warren binary the nodes run: the cluster's own link to (or copy of) the one
    /// cargo built, so that a rebuild during the test (which replaces that file) cannot
    /// break a node that re-executes itself.
    fn binary(&self) -> PathBuf {
        self.dir.join("warren")
    }

    /// `WARREN_CLUSTER_BIN` picks another build (the release one, for measurements).
    fn pin_binary(&self) {
        let built = std::env::var_os("WARREN_CLUSTER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_warren")));
        if std::fs::hard_link(&built, self.binary()).is_err() {
            std::fs::copy(&built, self.binary()).expect("copy the warren binary");
        }
    }

    fn spawn_warren(&mut self, i: usize) {
        let mut cmd = Command::new(ip());
        cmd.args(["netns", "exec", &self.netns(i)])
            .arg(self.binary())
            .arg("--config")
            .arg(self.config_path(i));
        if self.opts.systemd {
            // As systemd with Type=notify and WatchdogSec=1s passes them.
            cmd.env("NOTIFY_SOCKET", self.notify_path(i))
                .env("WATCHDOG_USEC", "1000000");
        }
        // The node's configuration is its file only: no WARREN_* / RABBITMQ_* variable
        // of the test's environment may override it.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("WARREN_") || name.starts_with("RABBITMQ_") {
                cmd.env_remove(&key);
            }
        }
        let log = self.warren[i - 1].log.clone();
        let child = self.spawn(cmd, &log, &format!("warren n{i}"));
        self.warren[i - 1].child = Some(child);
    }

    fn notify_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("notify{i}.sock"))
    }

    /// With `opts.systemd`: the notifications node `i` sent since the last call.
    pub fn notifications(&self, i: usize) -> Vec<String> {
        self.check_host(i);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        if let Some(socket) = &self.notify[i - 1] {
            while let Ok(n) = socket.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        out
    }

    /// The pid of warren node `i` (`ip netns exec` execs it, and a node that re-executes
    /// itself keeps it), if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.check_host(i);
        self.warren[i - 1].pid()
    }

    /// Is warren node `i` running (or stopped)?
    pub fn is_running(&mut self, i: usize) -> bool {
        self.check_host(i);
        self.warren[i - 1].alive()
    }

    /// SIGKILL warren node `i` and reap it (`kill -9`).
    pub fn kill(&mut self, i: usize) {
        self.check_host(i);
        assert!(
            self.warren[i - 1].child.is_some(),
            "kill({i}): node {i} is not running"
        );
        self.warren[i - 1].kill();
        eprintln!("cluster wt{}: warren n{i} killed", self.k);
    }

    /// Start warren node `i` again on its data dir (kills it first if it still runs).
    pub fn restart(&mut self, i: usize) {
        self.check_host(i);
        self.warren[i - 1].kill();
        self.spawn_warren(i);
        eprintln!("cluster wt{}: warren n{i} restarted", self.k);
    }

    /// SIGSTOP warren node `i`.
    pub fn stop(&mut self, i: usize) {
        self.check_host(i);
        self.warren[i - 1].signal(libc::SIGSTOP);
        self.warren[i - 1].stopped = true;
        eprintln!("cluster wt{}: warren n{i} stopped (SIGSTOP)", self.k);
    }

    /// SIGCONT warren node `i`.
    pub fn cont(&mut self, i: usize) {
        self.check_host(i);
        self.warren[i - 1].signal(libc::SIGCONT);
        self.warren[i - 1].stopped = false;
        eprintln!("cluster wt{}: warren n{i} continued (SIGCONT)", self.k);
    }

    /// Undo every fault: heal all partitions, continue stopped nodes, restart dead etcd
    /// members and dead nodes.
    pub fn repair_all(&mut self) {
        self.heal_all();
        for i in 1..=self.n {
            if self.warren[i - 1].stopped {
                self.cont(i);
            }
            if !self.etcd[i - 1].alive() {
                self.restart_etcd(i);
            }
            if self.opts.start_warren && !self.warren[i - 1].alive() {
                self.restart(i);
            }
        }
    }

    /// Everything warren node `i` wrote to stdout and stderr, all incarnations.
    pub fn log(&self, i: usize) -> String {
        self.check_host(i);
        std::fs::read_to_string(&self.warren[i - 1].log).unwrap_or_default()
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.check_host(i);
        self.warren[i - 1].log.clone()
    }

    /// Which nodes serve right now (probed at once): complete an AMQP handshake on port
    /// 5672 and say they lead (`/api/health/checks/is-leader` answers 200). Followers
    /// pass connections on to the leader, so a handshake alone says only that some
    /// node serves.
    pub async fn serving(&self) -> Vec<usize> {
        let probes: Vec<_> = (1..=self.n)
            .map(|i| {
                let uri = self.uri(i);
                let http = self.http_addr(i);
                tokio::spawn(async move {
                    let leads = tokio::task::spawn_blocking(move || {
                        let path = "/api/health/checks/is-leader";
                        http_status(&http, path, Duration::from_secs(2)).map(|(s, _)| s)
                    });
                    let (shook, leads) = tokio::join!(handshake(&uri), leads);
                    (i, shook && matches!(leads, Ok(Ok(200))))
                })
            })
            .collect();
        let mut out = Vec::new();
        for p in probes {
            if let Ok((i, true)) = p.await {
                out.push(i);
            }
        }
        out
    }

    /// The one node serving AMQP, if exactly one does (says which when not).
    pub async fn leader(&self) -> Option<usize> {
        let serving = self.serving().await;
        match serving.as_slice() {
            [one] => Some(*one),
            [] => {
                eprintln!("cluster wt{}: no node serves AMQP", self.k);
                None
            }
            many => {
                eprintln!("cluster wt{}: several nodes serve AMQP: {many:?}", self.k);
                None
            }
        }
    }

    /// Wait until exactly one node serves; panics after `timeout` (with who served).
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        self.wait_leader_but(None, timeout).await
    }

    /// Wait until exactly one node serves and it is not `old` (the leader a fault
    /// removed, which may serve on until it notices); panics after `timeout`.
    pub async fn wait_new_leader(&mut self, old: usize, timeout: Duration) -> usize {
        self.wait_leader_but(Some(old), timeout).await
    }

    async fn wait_leader_but(&mut self, old: Option<usize>, timeout: Duration) -> usize {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            seen = match self.serving().await.as_slice() {
                [one] if Some(*one) != old => {
                    eprintln!(
                        "cluster wt{}: leader n{one} (after {:?})",
                        self.k,
                        start.elapsed()
                    );
                    return *one;
                }
                other => {
                    if other != seen.as_slice() {
                        eprintln!("cluster wt{}: serving: {other:?}", self.k);
                    }
                    other.to_vec()
                }
            };
            if start.elapsed() > timeout {
                let states: Vec<String> = (1..=self.n)
                    .map(|i| {
                        let alive = self.warren[i - 1].alive();
                        format!(
                            "n{i}: {}",
                            if !alive {
                                "not running"
                            } else if self.warren[i - 1].stopped {
                                "stopped"
                            } else {
                                "running"
                            }
                        )
                    })
                    .collect();
                let but = old.map_or(String::new(), |o| format!(" other than n{o}"));
                panic!(
                    "no single leader{but} within {timeout:?}: serving {seen:?}; {}",
                    states.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Watch for `period`: exactly one node must serve all along, and always the same
    /// one, which is returned. Panics otherwise.
    pub async fn expect_one_leader(&self, period: Duration) -> usize {
        let end = Instant::now() + period;
        let mut leader = None;
        loop {
            let serving = self.serving().await;
            match (serving.as_slice(), leader) {
                ([one], None) => leader = Some(*one),
                ([one], Some(l)) if *one == l => {}
                _ => panic!(
                    "expected exactly one leader ({leader:?}) for {period:?}, but {serving:?} serve"
                ),
            }
            if Instant::now() >= end {
                return leader.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // ------------------------------------------------------------------------------
    // Processes, logs, teardown
    // ------------------------------------------------------------------------------

    fn spawn(&self, cmd: Command, log: &Path, what: &str) -> Child {
        append_line(log, &format!("=== harness: starting {what}"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        self.spawner
            .as_ref()
            .unwrap()
            .spawn(cmd, out)
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
    }

    /// Print every log's path, and the last lines of each warren log.
    pub fn dump_logs(&self) {
        eprintln!("===== cluster wt{} logs ({})", self.k, self.dir.display());
        for p in &self.etcd {
            eprintln!("--- {} (last 10 lines)", p.log.display());
            eprintln!("{}", tail(&p.log, 10));
        }
        for p in &self.warren {
            eprintln!("--- {} (last 40 lines)", p.log.display());
            eprintln!("{}", tail(&p.log, 40));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for p in self.warren.iter_mut().chain(self.etcd.iter_mut()) {
            if p.stopped {
                if let Some(pid) = p.pid() {
                    // SAFETY: kill(2) on our own, not yet reaped, child.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                }
            }
            p.kill();
        }
        if panicking {
            self.dump_logs();
        }
        self.spawner.take();
        delete_net(self.k);
        if panicking {
            // Keep logs, configs and the nodes' data; not the binary's link nor etcd's
            // data (over 100 MB a member, preallocated WAL).
            let _ = std::fs::remove_file(self.binary());
            for i in 1..=self.n {
                let _ = std::fs::remove_dir_all(self.dir.join(format!("etcd{i}")));
            }
            eprintln!("cluster wt{}: kept {}", self.k, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        self.lock.take();
    }
}

/// Does `uri` complete an AMQP handshake within 2 s? (closes the connection again)
pub async fn handshake(uri: &str) -> bool {
    let connect = lapin::Connection::connect(uri, lapin::ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(conn)) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                conn.close(200, "leader probe".into()),
            )
            .await;
            true
        }
        _ => false,
    }
}

// ----------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------

const IPTABLES: &str = "iptables";

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the cluster tests need root (network namespaces, veths, iptables): run them as \
         root, e.g. `sudo -E cargo test --test it cluster::`"
    );
}

/// The `ip` binary (iproute2); /usr/sbin is not on every PATH.
fn ip() -> String {
    which("ip")
}

fn which(name: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("{name} not found (tests/cluster/install.sh installs what the cluster tests need)");
}

/// Run a command, panicking with its stderr when it fails.
fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .env("PATH", path_with_sbin())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Run a command and ignore its outcome (cleanup).
fn run_quiet(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .env("PATH", path_with_sbin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `ip ARGS`, retried for a few seconds: a device of a namespace deleted a moment ago
/// is destroyed asynchronously and may still hold its name.
fn retry_run(args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !run_quiet(&ip(), args) {
        if Instant::now() > deadline {
            run(&ip(), args); // once more, panicking with the error
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PATH for children: `ip netns exec` looks `iptables` and `etcd` up on it.
fn path_with_sbin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")
}

/// Delete what cluster `k` may have left: processes inside its
/// namespaces (a crashed earlier run's; we hold `k`'s lock, so none is a live test's),
/// the namespaces and the root veth.
fn delete_net(k: u8) {
    let prefix = format!("wn{k}-");
    let names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    for ns in &names {
        if let Ok(out) = Command::new(ip()).args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: kill(2); these pids were just listed inside our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        run_quiet(&ip(), &["netns", "del", ns]);
    }
    run_quiet(&ip(), &["link", "del", &format!("wbr{k}")]);
}

/// Run `f` on a thread that has entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a valid namespace fd; it changes only this thread, which
        // ends with `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("thread in a namespace")
}

/// A minimal HTTP/1.0 GET; the response body.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<String> {
    http_status(addr, path, timeout).map(|(_, body)| body)
}

/// A minimal HTTP/1.0 GET; the status code and the body.
pub fn http_status(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    http_request(addr, path, "", timeout)
}

/// [`http_status`] as guest (basic authentication).
pub fn http_status_as_guest(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    http_request(
        addr,
        path,
        "Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n",
        timeout,
    )
}

fn http_request(
    addr: &str,
    path: &str,
    headers: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

fn append_line(path: &Path, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Spawns the cluster's processes from one thread that lives as long as the cluster,
/// with `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills them when that thread ends
/// (normally after the cluster killed them itself; or when the test binary dies).
/// The death signal follows the thread that forked, hence a thread of our own rather
/// than whichever tokio worker happens to call `restart`.
struct Spawner {
    tx: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type SpawnRequest = (Command, File, mpsc::Sender<std::io::Result<Child>>);

impl Spawner {
    fn new() -> Spawner {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("cluster-spawner".into())
            .spawn(move || {
                for (mut cmd, out, reply) in rx {
                    let err = match out.try_clone() {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    };
                    cmd.stdin(Stdio::null())
                        .stdout(out)
                        .stderr(err)
                        .env("PATH", path_with_sbin());
                    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between
                    // fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the cluster's spawner thread");
        Spawner {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn spawn(&self, cmd: Command, out: File) -> std::io::Result<Child> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send((cmd, out, reply))
            .expect("spawner thread gone");
        rx.recv().expect("spawner thread gone")
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The network number `k` of a cluster, held with an exclusive `flock` on
/// `<tmp>/warren-cluster-net/<k>.lock` for the cluster's life: another cluster of this
/// process or of a concurrent test process holds a different one; one of a crashed run
/// lost its lock with its process, so its leftovers may be deleted.
struct NetLock {
    k: u8,
    _file: File,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl NetLock {
    fn dir() -> PathBuf {
        std::env::temp_dir().join("warren-cluster-net")
    }

    fn try_lock(k: u8) -> Option<NetLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::dir().join(format!("{k}.lock")))
            .expect("open a lock file");
        file.try_lock().ok().map(|()| NetLock { k, _file: file })
    }

    fn acquire() -> NetLock {
        std::fs::create_dir_all(Self::dir()).expect("create the lock dir");
        Self::sweep();
        let first = std::process::id() as usize * 7 + NEXT.fetch_add(1, Ordering::SeqCst);
        for step in 0..250 {
            let k = ((first + step) % 250 + 1) as u8;
            if let Some(lock) = Self::try_lock(k) {
                return lock;
            }
        }
        panic!("all 250 cluster network numbers are in use");
    }

    /// Delete the networks that crashed runs left (namespaces `wn<k>-*` whose `k` no
    /// live process holds).
    fn sweep() {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        let mut stale = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(k) = name
                .strip_prefix("wn")
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(k, _)| k.parse::<u8>().ok())
            {
                stale.insert(k);
            }
        }
        for k in stale {
            if let Some(_lock) = Self::try_lock(k) {
                eprintln!("cluster: deleting network wt{k} left by an earlier run");
                delete_net(k);
            }
        }
    }
}

/// The right to run a cluster: at most `WARREN_CLUSTER_MAX` (default 4) clusters run
/// at once in one test process, so that a large `--test-threads` cannot load the
/// machine until leases and elections time out; `WARREN_CLUSTER_MAX=1` runs them one
/// after the other (to measure failover times on a quiet machine).
struct Turn;

/// Clusters running now.
static RUNNING: Mutex<usize> = Mutex::new(0);
static TURN_FREED: Condvar = Condvar::new();

impl Turn {
    fn take() -> Turn {
        let max = std::env::var("WARREN_CLUSTER_MAX")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(4)
            .max(1);
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= max {
            running = TURN_FREED.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        TURN_FREED.notify_one();
    }
}

/// The harness itself, without warren: the network, etcd, and a cut link.
#[test]
fn harness_brings_up_etcd_and_cuts_links() {
    let mut c = Cluster::start(
        3,
        Opts {
            start_warren: false,
            ..Opts::default()
        },
    );
    for i in 1..=3 {
        assert!(c.etcd_healthy(i), "etcd e{i} healthy after start");
    }
    let e1 = c.etcd_client_addr(1);
    let short = Duration::from_millis(500);
    assert!(c.can_connect(Some(2), &e1, short), "host 2 reaches e1");
    assert!(
        c.can_connect(None, &e1, short),
        "the root namespace reaches e1"
    );

    c.isolate(1);
    assert!(!c.can_connect(Some(2), &e1, short), "host 2 cut from e1");
    assert!(!c.can_connect(Some(3), &e1, short), "host 3 cut from e1");
    assert!(
        c.can_connect(Some(2), &c.etcd_client_addr(3), short),
        "hosts 2 and 3 still linked"
    );
    assert!(
        c.can_connect(None, &e1, short),
        "the root namespace still reaches e1"
    );
    // e1 alone is a minority: it reports itself unhealthy once it misses its leader,
    // while e2 and e3 keep (or elect) one.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.etcd_healthy(1) {
        assert!(
            Instant::now() < deadline,
            "isolated e1 still healthy after 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait_etcd_healthy_members(&[2, 3], Duration::from_secs(15));

    c.heal(1);
    assert!(
        c.can_connect(Some(2), &e1, short),
        "host 2 reaches e1 again"
    );
    c.wait_etcd_healthy(Duration::from_secs(15));

    // Everything but the test's clients, then an etcd crash and restart.
    c.isolate_all(1);
    assert!(
        !c.can_connect(None, &e1, short),
        "isolate_all cuts the root namespace"
    );
    c.heal(1);
    assert!(c.can_connect(None, &e1, short), "healed");
    c.kill_etcd(2);
    assert!(!c.etcd_healthy(2));
    c.restart_etcd(2);
    c.wait_etcd_healthy(Duration::from_secs(15));
}

// ----------------------------------------------------------------------------------
// Additions for scenarios2: a graceful stop and the data directories
// ----------------------------------------------------------------------------------

impl Cluster {
    /// Host `i`'s warren data directory (meta.log, messages/).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.check_host(i);
        self.dir.join(format!("data{i}"))
    }

    /// SIGTERM warren node `i` (a graceful stop: a leader fences itself and hands its
    /// lease over) and wait for it to exit (reaped); how long it took to exit. Panics if
    /// it still runs after 30 s.
    pub async fn terminate(&mut self, i: usize) -> Duration {
        self.check_host(i);
        assert!(
            self.warren[i - 1].alive(),
            "terminate({i}): node {i} is not running"
        );
        append_line(&self.warren[i - 1].log, "=== harness: SIGTERM");
        let start = Instant::now();
        self.warren[i - 1].signal(libc::SIGTERM);
        while self.warren[i - 1].alive() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "warren n{i} still runs 30 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = start.elapsed();
        eprintln!(
            "cluster wt{}: warren n{i} terminated (SIGTERM), exited after {took:?}",
            self.k
        );
        took
    }
}
