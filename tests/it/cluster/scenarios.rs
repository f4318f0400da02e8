//! Fault scenarios of a three-node cluster: each starts the cluster, waits for a leader
//! and for confirms to work, runs two publishers (confirms) and one consumer (acks),
//! injects one fault, repairs it, drains the queue and checks that no confirmed message
//! was lost ([`checker`]). Each prints how long clients went without a confirm after the
//! fault (`fault -> serving`). Linux, root, etcd 3.4: see tests/cluster/install.sh.
use super::checker::{wait_confirms_work, Summary, Workload};
use super::harness::{Cluster, Opts};

use std::time::{Duration, Instant};

/// Run time before a fault, so that the queue and the consumer are busy.
pub(super) const WARM: Duration = Duration::from_secs(4);

/// A running cluster with clients on it.
pub(super) struct Run {
    pub cluster: Cluster,
    pub work: Workload,
    pub leader: usize,
    pub opts: Opts,
}

/// Start the cluster, wait for a leader and for a confirm, start the clients and let
/// them run for [`WARM`].
pub(super) async fn begin(opts: Opts) -> Run {
    let mut cluster = Cluster::start(3, opts.clone());
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    wait_full_isr(&cluster, leader).await;
    let queue = "jepsen";
    wait_confirms_work(&cluster.uris(), queue, Duration::from_secs(30)).await;
    let work = Workload::start(cluster.uris(), queue, 2, 1);
    work.wait_progress(50, Duration::from_secs(10)).await;
    tokio::time::sleep(WARM).await;
    Run {
        cluster,
        work,
        leader,
        opts,
    }
}

/// Repair every fault, check that exactly one node serves, stop the clients, drain
/// the queue and check the history.
pub(super) async fn finish(mut run: Run) -> (Cluster, Summary) {
    run.cluster.repair_all();
    run.cluster.wait_leader(Duration::from_secs(30)).await;
    run.cluster.expect_one_leader(Duration::from_secs(3)).await;
    // Some traffic after the repair: the cluster works again, not only the drain.
    run.work.wait_progress(50, Duration::from_secs(20)).await;
    let history = run.work.stop().await;
    history
        .drain(&run.cluster.uris(), Duration::from_secs(60))
        .await;
    let summary = history.check();
    summary.assert_ok();
    (run.cluster, summary)
}

/// Wait for the first confirm of a message published after `fault`; print and return
/// the delay. Panics after `limit`.
pub(super) async fn time_to_serve(
    work: &Workload,
    fault: Instant,
    limit: Duration,
    what: &str,
) -> Duration {
    match work.wait_confirm_after(fault, limit).await {
        Some(d) => {
            eprintln!("scenario: {what}: fault -> serving (first confirm) {d:?}");
            d
        }
        None => panic!("{what}: no confirm within {limit:?} of the fault"),
    }
}

/// Wait for a node other than `old` to serve alone; print the time since `fault` and
/// return the node.
pub(super) async fn time_to_new_leader(
    cluster: &mut Cluster,
    old: usize,
    fault: Instant,
    limit: Duration,
    what: &str,
) -> usize {
    let new = cluster.wait_new_leader(old, limit).await;
    eprintln!(
        "scenario: {what}: fault -> n{new} accepts AMQP connections {:?}",
        fault.elapsed()
    );
    new
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// What the leader logs when a follower enters / leaves its in-sync replicas.
pub(super) const JOINED: &str = "follower joined the in-sync replicas";
pub(super) const DROPPED: &str = "follower dropped from the in-sync replicas";

/// Node `node`'s in-sync replica events in host `leader`'s log (every incarnation), in
/// order: true = joined, false = dropped.
pub(super) fn isr_events(cluster: &Cluster, leader: usize, node: usize) -> Vec<bool> {
    let quoted = format!("node=\"warren@n{node}\"");
    let bare = format!("node=warren@n{node} ");
    cluster
        .log(leader)
        .lines()
        .filter(|l| l.contains(&quoted) || l.contains(&bare))
        .filter_map(|l| {
            if l.contains(JOINED) {
                Some(true)
            } else if l.contains(DROPPED) {
                Some(false)
            } else {
                None
            }
        })
        .collect()
}

/// Wait until leader `leader`'s log says that `node` is in its in-sync replicas (`want`
/// true: its last ISR event is a join) or not (false: none, or a drop). Panics after
/// `limit`.
pub(super) async fn wait_isr_state(
    cluster: &Cluster,
    leader: usize,
    node: usize,
    want: bool,
    limit: Duration,
) {
    let start = Instant::now();
    while isr_events(cluster, leader, node)
        .last()
        .copied()
        .unwrap_or(false)
        != want
    {
        assert!(
            start.elapsed() < limit,
            "n{node} {} n{leader}'s in-sync replicas after {limit:?}",
            if want { "not in" } else { "still in" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until both followers are in the leader's in-sync replicas (as its log says), so
/// that a scenario's fault hits a healthy cluster, not one still forming.
pub(super) async fn wait_full_isr(cluster: &Cluster, leader: usize) {
    for node in (1..=3).filter(|&i| i != leader) {
        wait_isr_state(cluster, leader, node, true, secs(15)).await;
    }
}

/// Proves that a crashed leader (`kill -9`) is replaced within about the lease TTL
/// without losing a confirmed message, and that the crashed node, restarted on its data
/// dir, rejoins as a follower: it does not serve, the new leader keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_leader_fails_over_and_returns_as_follower() {
    let mut run = begin(Opts::default()).await;
    let old = run.leader;
    run.cluster.kill(old);
    let fault = Instant::now();
    let ttl = secs(run.opts.lease_ttl);
    let what = "kill -9 of the leader";
    let new = time_to_new_leader(&mut run.cluster, old, fault, ttl + secs(15), what).await;
    time_to_serve(&run.work, fault, ttl + secs(15), what).await;
    tokio::time::sleep(secs(3)).await;

    run.cluster.restart(old);
    tokio::time::sleep(ttl + secs(3)).await;
    assert!(run.cluster.is_running(old), "the restarted node exited");
    let after = run.cluster.expect_one_leader(secs(3)).await;
    assert_eq!(
        after, new,
        "the restarted node must come back as a follower"
    );
    finish(run).await;
}

/// Proves that a leader cut from both other hosts (its etcd member too: a minority),
/// while the test's clients still reach it, stops confirming -- no message sent to it
/// after the cut is confirmed, and lost = 0 -- and that a node of the majority serves
/// within lease_ttl plus a margin; once healed, the old leader does not serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_stops_confirming_and_the_majority_takes_over() {
    let mut run = begin(Opts::default()).await;
    let old = run.leader;
    run.cluster.isolate(old);
    // From here on, nothing the old leader receives can reach another host.
    let cut = Instant::now();
    let ttl = secs(run.opts.lease_ttl);
    // The old leader serves on until its lease runs out (at most the TTL), then a
    // follower wins; clients still attached to the old leader notice when it restarts
    // as a follower (or when a confirm times out, 5 s) and reconnect.
    let margin = secs(7);
    let what = "leader isolated";
    time_to_new_leader(&mut run.cluster, old, cut, ttl + secs(20), what).await;
    let took = time_to_serve(&run.work, cut, ttl + secs(20), what).await;
    assert!(
        took <= ttl + margin,
        "a majority node served only after {took:?} (lease_ttl {ttl:?} + {margin:?})"
    );
    // Messages published after the cut can only be in the old leader's log, never on a
    // majority: confirming one would be a lie (and lost below).
    assert_eq!(
        run.work.confirms_from(old, cut),
        0,
        "the isolated leader confirmed messages sent after the cut"
    );
    tokio::time::sleep(secs(3)).await;
    let new = run.cluster.expect_one_leader(secs(2)).await;
    assert_ne!(new, old);

    run.cluster.heal(old);
    tokio::time::sleep(ttl + secs(2)).await;
    let after = run.cluster.expect_one_leader(secs(3)).await;
    assert_eq!(after, new, "the healed old leader must not serve");
    assert_eq!(run.work.confirms_from(old, cut), 0);
    finish(run).await;
}

/// Proves that losing one follower pauses confirms at most ack_timeout (the leader
/// drops it from the in-sync replicas and goes on with the other, min_insync = 2), that
/// the leader does not change, and that the healed follower catches up without loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_follower_pauses_confirms_at_most_ack_timeout() {
    let mut run = begin(Opts::default()).await;
    let leader = run.leader;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    run.cluster.isolate(follower);
    let fault = Instant::now();
    let ack_timeout = Duration::from_millis(run.opts.ack_timeout_ms);
    let margin = secs(3);
    let what = "follower cut off";
    let took = time_to_serve(&run.work, fault, ack_timeout + secs(15), what).await;
    assert!(
        took <= ack_timeout + margin,
        "confirms paused {took:?} (ack_timeout {ack_timeout:?} + {margin:?})"
    );
    run.work.wait_progress(200, secs(10)).await;
    tokio::time::sleep(secs(3)).await;

    run.cluster.heal(follower);
    tokio::time::sleep(secs(4)).await;
    let after = run.cluster.expect_one_leader(secs(3)).await;
    assert_eq!(after, leader, "losing a follower must not move the leader");
    finish(run).await;
}

/// Proves that a follower that fell out of the in-sync replicas never becomes leader:
/// it is cut from the leader's host only (so it still reaches etcd's majority through
/// the third host, and could win an election if nothing stopped it; cut from both it
/// could not), publishing goes on for more than ack_timeout (the leader drops it from
/// the in-sync set), then the leader is killed. The third node, in sync, must take over
/// and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_follower_never_becomes_leader() {
    let mut run = begin(Opts::default()).await;
    let leader = run.leader;
    let stale = (1..=3).find(|&i| i != leader).unwrap();
    let in_sync = (1..=3).find(|&i| i != leader && i != stale).unwrap();
    run.cluster.partition(stale, &[leader]);
    let ack_timeout = Duration::from_millis(run.opts.ack_timeout_ms);
    tokio::time::sleep(ack_timeout + Duration::from_millis(1500)).await;
    run.work.wait_progress(50, secs(10)).await;

    run.cluster.kill(leader);
    let fault = Instant::now();
    let ttl = secs(run.opts.lease_ttl);
    let what = "leader killed, one follower stale";
    let new = time_to_new_leader(&mut run.cluster, leader, fault, ttl + secs(15), what).await;
    assert_eq!(
        new, in_sync,
        "the in-sync follower n{in_sync} must take over, not n{new} (stale: n{stale})"
    );
    time_to_serve(&run.work, fault, ttl + secs(15), what).await;
    let still = run.cluster.expect_one_leader(secs(3)).await;
    assert_eq!(
        still, in_sync,
        "the stale follower must not take over later"
    );

    run.cluster.heal(stale);
    run.cluster.restart(leader);
    tokio::time::sleep(ttl + secs(2)).await;
    let after = run.cluster.expect_one_leader(secs(3)).await;
    assert_eq!(after, in_sync);
    finish(run).await;
}

/// Proves that a leader paused (SIGSTOP) for longer than its lease is replaced while it
/// sleeps, and that on waking (SIGCONT) it finds its lease gone, re-executes itself as a
/// follower and serves nothing -- in particular confirms nothing sent to it during the
/// pause -- so that exactly one node serves and lost = 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_replaced_and_steps_down_on_resume() {
    let mut run = begin(Opts::default()).await;
    let old = run.leader;
    run.cluster.stop(old);
    // Taken after the signal: whatever is published from now on reaches a stopped node.
    let fault = Instant::now();
    let ttl = secs(run.opts.lease_ttl);
    let what = "leader paused (SIGSTOP)";
    let new = time_to_new_leader(&mut run.cluster, old, fault, secs(10), what).await;
    time_to_serve(&run.work, fault, secs(10), what).await;
    let pause = secs(10);
    tokio::time::sleep(pause.saturating_sub(fault.elapsed())).await;

    run.cluster.cont(old);
    tokio::time::sleep(ttl + secs(2)).await;
    assert!(
        run.cluster.is_running(old),
        "the old leader must re-execute, not exit"
    );
    let after = run.cluster.expect_one_leader(secs(3)).await;
    assert_eq!(after, new, "the woken old leader must not serve");
    assert_eq!(
        run.work.confirms_from(old, fault),
        0,
        "the paused leader confirmed messages sent to it during or after the pause"
    );
    finish(run).await;
}

/// A small xorshift generator: reproducible fault sequences without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Proves that no sequence of the faults above, one every ~8 s for
/// `WARREN_FAULT_LOOP_SECS` (default 60) seconds with clients running throughout,
/// loses a confirmed message: kill -9 + restart of the leader, isolation + heal of a
/// random node, SIGSTOP / SIGCONT of the leader for 5 s. `WARREN_FAULT_SEED` replays a
/// sequence (the seed is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_loop_short() {
    let total = secs(
        std::env::var("WARREN_FAULT_LOOP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let seed = std::env::var("WARREN_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fault_loop_short: {total:?}, WARREN_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let mut run = begin(Opts::default()).await;
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < total {
        round += 1;
        let leader = run.cluster.wait_leader(secs(30)).await;
        let (fault, what) = match rng.below(3) {
            0 => {
                run.cluster.kill(leader);
                let fault = Instant::now();
                tokio::time::sleep(secs(4)).await;
                run.cluster.restart(leader);
                (fault, format!("kill -9 + restart of leader n{leader}"))
            }
            1 => {
                let node = rng.below(3) as usize + 1;
                run.cluster.isolate(node);
                let fault = Instant::now();
                tokio::time::sleep(secs(4)).await;
                run.cluster.heal(node);
                let what = format!("isolation of n{node} (leader n{leader}) for 4 s");
                (fault, what)
            }
            _ => {
                run.cluster.stop(leader);
                let fault = Instant::now();
                tokio::time::sleep(secs(5)).await;
                run.cluster.cont(leader);
                (fault, format!("SIGSTOP of leader n{leader} for 5 s"))
            }
        };
        match run.work.wait_confirm_after(fault, secs(30)).await {
            Some(d) => eprintln!("fault_loop_short round {round}: {what}: fault -> serving {d:?}"),
            None => panic!("round {round}: {what}: no confirm within 30 s of the fault"),
        }
        let rest = secs(8).saturating_sub(fault.elapsed());
        tokio::time::sleep(rest.max(secs(2))).await;
    }
    let (cluster, summary) = finish(run).await;
    eprintln!(
        "fault_loop_short: {round} faults, {} confirmed, {} delivered, {} duplicates",
        summary.confirmed,
        summary.delivered_unique,
        summary.duplicates()
    );
    drop(cluster);
}
