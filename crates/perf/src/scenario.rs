//! One run: declare the topology, open the connections, drive the roles, sample
//! /proc once a second, and turn the counters into a [`Report`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{Conn, Uri};
use super::config::{Args, Cleanup, ExchangeType};
use super::consumer::{self, ConsumerResult, ConsumerSpec};
use super::producer::{self, ProducerResult, ProducerSpec};
use super::report::{Report, Val};
use super::stats::{cpu_use, rss_kb, CpuMark, Histogram, Shared, Snapshot};

/// Names of everything the run declares.
struct Topology {
    queues: Vec<String>,
    exchange: String,
    generated_queues: bool,
    generated_exchange: bool,
}

impl Topology {
    fn new(args: &Args) -> Topology {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let run_id = format!("{}-{nanos}", std::process::id());
        let base = args
            .queue
            .clone()
            .unwrap_or_else(|| format!("warren-perf-{run_id}"));
        let n = args.queue_count();
        let queues = if n == 1 {
            vec![base]
        } else {
            (0..n).map(|i| format!("{base}-{i}")).collect()
        };
        let (exchange, generated_exchange) = match (&args.exchange, args.exchange_type) {
            (Some(e), _) => (e.clone(), false),
            (None, ExchangeType::Direct) => (String::new(), false),
            (None, t) => (format!("warren-perf-{run_id}-{}", t.name()), true),
        };
        Topology {
            queues,
            exchange,
            generated_queues: args.queue.is_none(),
            generated_exchange,
        }
    }

    /// The default exchange and `amq.*` exist already and cannot be declared.
    fn declares_exchange(&self) -> bool {
        !self.exchange.is_empty() && !self.exchange.starts_with("amq.")
    }

    fn declare(&self, c: &mut Conn, args: &Args) -> super::client::Result<()> {
        let durable = args.persistent() || args.durable;
        if self.declares_exchange() {
            c.exchange_declare(&self.exchange, args.exchange_type.name(), durable)?;
        }
        for q in &self.queues {
            c.queue_declare(q, durable)?;
            if !self.exchange.is_empty() {
                let key = if args.exchange_type.broadcasts() {
                    ""
                } else {
                    q
                };
                c.queue_bind(q, &self.exchange, key)?;
            }
        }
        Ok(())
    }

    /// Delete what `--cleanup` says; returns the messages deleted with the queues.
    fn cleanup(&self, c: &mut Conn, how: Cleanup) -> super::client::Result<u64> {
        let mut left = 0;
        if how == Cleanup::Yes || (how == Cleanup::Auto && self.generated_queues) {
            for q in &self.queues {
                left += c.queue_delete(q)? as u64;
            }
        }
        if self.declares_exchange()
            && (how == Cleanup::Yes || (how == Cleanup::Auto && self.generated_exchange))
        {
            c.exchange_delete(&self.exchange)?;
        }
        Ok(left)
    }

    fn routing_key(&self, args: &Args, producer: usize) -> String {
        if args.exchange_type.broadcasts() {
            String::new()
        } else {
            self.queues[producer % self.queues.len()].clone()
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Run the load described by `args` against `args.uri`.
pub fn run(args: &Args) -> Report {
    let mut rep = Report::default();
    let uri = match Uri::parse(&args.uri) {
        Ok(u) => u,
        Err(e) => {
            rep.errors.push(e);
            return rep;
        }
    };
    rep.set("broker", Val::Text(uri.endpoint()));
    let timeout = Duration::from_secs_f64(args.timeout);
    let shared = Arc::new(Shared::new());
    let pid = args.broker_pid;
    let rss = || pid.and_then(rss_kb);
    let rss_start = rss();

    let topo = Topology::new(args);
    let mut setup = match Conn::open(&uri, "warren-perf setup", timeout) {
        Ok(c) => c,
        Err(e) => {
            rep.errors.push(format!("setup connection: {e}"));
            return rep;
        }
    };
    rep.set("server", Val::Text(setup.server.clone()));
    describe(&mut rep, args, &topo);
    if !args.no_declare {
        if let Err(e) = topo.declare(&mut setup, args) {
            rep.errors.push(format!("declaring the queues: {e}"));
            return rep;
        }
    }
    let rss_declared = rss();
    if args.queue_count() > 1 {
        if let (Some(a), Some(b)) = (rss_start, rss_declared) {
            rep.set("broker_rss_declared_kb", Val::Int(b));
            rep.set(
                "broker_rss_per_queue_kb",
                Val::Num((b as f64 - a as f64) / args.queue_count() as f64),
            );
        }
    }

    // Idle connections (scenario H).
    let mut idle = Vec::new();
    if args.idle > 0 {
        let before = rss();
        for i in 0..args.idle {
            match Conn::open(&uri, &format!("warren-perf idle {i}"), timeout) {
                Ok(c) => idle.push(c),
                Err(e) => {
                    shared.fail(&format!("idle connection {i}"), e);
                    break;
                }
            }
        }
        // Let the broker settle its per-connection state before sampling.
        thread::sleep(Duration::from_millis(500));
        rep.set("idle_connections", Val::Int(idle.len() as u64));
        if let (Some(a), Some(b)) = (before, rss()) {
            rep.set("broker_rss_before_idle_kb", Val::Int(a));
            rep.set("broker_rss_idle_kb", Val::Int(b));
            if !idle.is_empty() {
                rep.set(
                    "broker_rss_per_connection_kb",
                    Val::Num((b as f64 - a as f64) / idle.len() as f64),
                );
            }
        }
    }

    let mut consumers: Vec<JoinHandle<ConsumerResult>> = Vec::new();
    let mut producers: Vec<JoinHandle<ProducerResult>> = Vec::new();
    if !shared.stopped() && !args.drain {
        start_consumers(args, &uri, &topo, &shared, &mut consumers);
    }
    if !shared.stopped() {
        start_producers(args, &uri, &topo, &shared, &mut producers);
    }

    // The measurement loop.
    let t0 = Instant::now();
    let run_time = args.run_time().map(Duration::from_secs_f64);
    let warmup = if args.drain {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(args.warmup)
    };
    let mut window: Option<(CpuMark, Snapshot)> = None;
    let mut last = (
        Instant::now(),
        shared.counters.snapshot(),
        CpuMark::take(pid),
    );
    let mut next_tick = t0 + Duration::from_secs(1);
    let mut drain: Option<(Instant, Option<u64>)> = None;
    loop {
        let now = Instant::now();
        if window.is_none() && now >= t0 + warmup {
            window = Some((CpuMark::take(pid), shared.counters.snapshot()));
            shared.measuring.store(true, Relaxed);
        }
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let (snap, mark) = (shared.counters.snapshot(), CpuMark::take(pid));
            if !args.quiet {
                progress(
                    now - t0,
                    &last.1,
                    &snap,
                    ms(now - last.0),
                    &last.2,
                    &mark,
                    pid,
                );
            }
            last = (now, snap, mark);
        }
        if shared.stopped() || run_time.is_some_and(|z| now >= t0 + z) {
            break;
        }
        let producers_done = producers.iter().all(|h| h.is_finished());
        if args.drain && drain.is_none() && producers_done {
            // The backlog is complete (and confirmed with -c): sample, then drain.
            thread::sleep(Duration::from_millis(300));
            drain = Some((Instant::now(), rss()));
            start_consumers(args, &uri, &topo, &shared, &mut consumers);
            continue;
        }
        let roles = producers.len() + consumers.len();
        if roles > 0
            && producers_done
            && consumers.iter().all(|h| h.is_finished())
            && (!args.drain || drain.is_some())
        {
            break;
        }
        if roles == 0 && run_time.is_none() {
            break;
        }
        thread::sleep(Duration::from_millis(50).min(next_tick.saturating_duration_since(now)));
    }
    let end_mark = CpuMark::take(pid);
    let (start_mark, start_snap) = window.unwrap_or((end_mark, Snapshot::default()));
    let rss_end = rss();
    shared.stop.store(true, Relaxed);

    let presults: Vec<ProducerResult> = producers
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    let cresults: Vec<ConsumerResult> = consumers
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    let end_snap = shared.counters.snapshot();
    let end = end_mark.at.unwrap_or_else(Instant::now);
    let start = start_mark.at.unwrap_or(end);
    let last_finish = |fin: Vec<Option<Instant>>| {
        fin.into_iter()
            .map(|f| f.unwrap_or(end).min(end))
            .max()
            .unwrap_or(end)
            .max(start)
    };
    let p_end = last_finish(presults.iter().map(|r| r.finished).collect());
    let c_end = last_finish(cresults.iter().map(|r| r.finished).collect());
    let secs = |a: Instant, b: Instant| ms(b.saturating_duration_since(a)).max(1e-3);
    let window_s = secs(start, end);
    rep.set("window_s", Val::Num(window_s));

    let sent: u64 = presults.iter().map(|r| r.sent).sum();
    let confirmed: u64 = presults.iter().map(|r| r.confirmed).sum();
    let received: u64 = cresults.iter().map(|r| r.received).sum();
    let rate = |n: u64, a: u64, s: f64| Val::Num(n.saturating_sub(a) as f64 / s);
    rep.set("sent_msgs", Val::Int(sent));
    rep.set(
        "sent_msgs_per_s",
        rate(sent, start_snap.sent, secs(start, p_end)),
    );
    if args.confirm > 0 {
        rep.set("confirmed_msgs", Val::Int(confirmed));
        rep.set(
            "confirmed_msgs_per_s",
            rate(confirmed, start_snap.confirmed, secs(start, p_end)),
        );
        rep.set(
            "nacked_msgs",
            Val::Int(shared.counters.nacked.load(Relaxed)),
        );
    }
    rep.set("recv_msgs", Val::Int(received));
    rep.set(
        "recv_msgs_per_s",
        rate(received, start_snap.received, secs(start, c_end)),
    );
    debug_assert!(end_snap.received >= received || !cresults.is_empty());

    let mut hist = Histogram::default();
    for r in &cresults {
        hist.merge(&r.latency);
    }
    rep.set("latency_samples", Val::Int(hist.count()));
    for (k, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9)] {
        rep.set(
            &format!("latency_us_{k}"),
            Val::Num(hist.percentile(p) as f64 / 1e3),
        );
    }
    rep.set("latency_us_max", Val::Num(hist.max() as f64 / 1e3));
    let check_seq = args.consumers as usize <= topo.queues.len();
    let sum = |f: fn(&ConsumerResult) -> u64| cresults.iter().map(f).sum::<u64>();
    if check_seq {
        rep.set("seq_gaps", Val::Int(sum(|r| r.seq_gaps)));
        rep.set("seq_backwards", Val::Int(sum(|r| r.seq_backwards)));
    } else {
        // Competing consumers split each producer's sequence between them.
        rep.set("seq_gaps", Val::Null);
        rep.set("seq_backwards", Val::Null);
    }
    rep.set("redelivered", Val::Int(sum(|r| r.redelivered)));
    let returned = shared.counters.returned.load(Relaxed);
    if returned > 0 {
        rep.set("returned", Val::Int(returned));
    }
    let blocked = shared.counters.blocked.load(Relaxed);
    if blocked > 0 {
        // connection.blocked: the broker throttled publishers (memory or disk alarm).
        rep.set("blocked_events", Val::Int(blocked));
    }
    let reads = sum(|r| r.reads);
    if reads > 0 {
        rep.set("msgs_per_read", Val::Num(received as f64 / reads as f64));
    }

    let cpu = cpu_use(&start_mark, &end_mark);
    rep.set("tool_cpu_pct", Val::opt(cpu.tool));
    rep.set("broker_cpu_pct", Val::opt(cpu.broker));
    rep.set("other_cpu_pct", Val::opt(cpu.other));
    if let Some(r) = rss_end {
        rep.set("broker_rss_kb", Val::Int(r));
    }
    if let Some((at, rss_backlog)) = drain {
        let backlog: u64 = sent;
        rep.set("backlog_msgs", Val::Int(backlog));
        if let (Some(a), Some(b)) = (rss_declared, rss_backlog) {
            rep.set("broker_rss_backlog_kb", Val::Int(b));
            if backlog > 0 {
                rep.set(
                    "broker_rss_per_msg_bytes",
                    Val::Num((b as f64 - a as f64) * 1024.0 / backlog as f64),
                );
            }
        }
        rep.set("publish_msgs_per_s", Val::Num(sent as f64 / secs(t0, at)));
        rep.set(
            "drain_msgs_per_s",
            Val::Num(received as f64 / secs(at, c_end)),
        );
    }

    drop(idle);
    let mut cleanup_conn = Some(setup);
    let deleted = (|| {
        let mut c = match cleanup_conn.take() {
            Some(c) => c,
            None => Conn::open(&uri, "warren-perf cleanup", timeout)?,
        };
        let n = topo.cleanup(&mut c, args.cleanup)?;
        let _ = c.close();
        Ok::<u64, super::client::Error>(n)
    })();
    match deleted {
        Ok(n) => rep.set("deleted_queue_msgs", Val::Int(n)),
        Err(e) => shared.fail("cleanup", e),
    }
    rep.errors
        .extend(shared.errors.lock().map(|e| e.clone()).unwrap_or_default());
    rep.set("errors", Val::Int(rep.errors.len() as u64));
    rep
}

fn describe(rep: &mut Report, args: &Args, topo: &Topology) {
    if let Some(s) = args.scenario {
        rep.set("scenario", Val::Text(format!("{s:?}")));
    }
    rep.set("producers", Val::Int(args.producers as u64));
    rep.set("consumers", Val::Int(args.consumers as u64));
    rep.set("size", Val::Int(args.size as u64));
    rep.set("queues", Val::Int(topo.queues.len() as u64));
    rep.set(
        "exchange",
        Val::Text(format!("{} {:?}", args.exchange_type.name(), topo.exchange)),
    );
    let ack = if args.autoack {
        "autoack".to_string()
    } else {
        format!(
            "manual prefetch={} multi-ack={}",
            args.prefetch,
            args.effective_multi_ack()
        )
    };
    rep.set("ack", Val::Text(ack));
    rep.set("confirm", Val::Int(args.confirm));
    rep.set("persistent", Val::Text(args.persistent().to_string()));
    rep.set("rate_per_producer", Val::Num(args.rate));
}

fn start_consumers(
    args: &Args,
    uri: &Uri,
    topo: &Topology,
    shared: &Arc<Shared>,
    out: &mut Vec<JoinHandle<ConsumerResult>>,
) {
    let timeout = Duration::from_secs_f64(args.timeout);
    let check_seq = args.consumers as usize <= topo.queues.len();
    for j in 0..args.consumers as usize {
        let who = format!("consumer {j}");
        let queue = &topo.queues[j % topo.queues.len()];
        let opened = (|| {
            let mut c = Conn::open(uri, &format!("warren-perf {who}"), timeout)?;
            if !args.autoack && args.prefetch > 0 {
                c.qos(args.prefetch)?;
            }
            c.consume(queue, &format!("warren-perf-{j}"), args.autoack)?;
            Ok::<Conn, super::client::Error>(c)
        })();
        let conn = match opened {
            Ok(c) => c,
            Err(e) => return shared.fail(&who, e),
        };
        let spec = ConsumerSpec {
            id: j as u32,
            no_ack: args.autoack,
            multi_ack: args.effective_multi_ack(),
            count: args.cmessages,
            check_seq,
            stall: timeout,
            read_bytes: args.read_bytes,
        };
        let sh = shared.clone();
        match thread::Builder::new()
            .name(who.clone())
            .spawn(move || consumer::run(conn, spec, sh))
        {
            Ok(h) => out.push(h),
            Err(e) => return shared.fail(&who, e),
        }
    }
}

fn start_producers(
    args: &Args,
    uri: &Uri,
    topo: &Topology,
    shared: &Arc<Shared>,
    out: &mut Vec<JoinHandle<ProducerResult>>,
) {
    let timeout = Duration::from_secs_f64(args.timeout);
    let n = args.producers as usize;
    for i in 0..n {
        let who = format!("producer {i}");
        let opened = (|| {
            let mut c = Conn::open(uri, &format!("warren-perf {who}"), timeout)?;
            if args.confirm > 0 {
                c.confirm_select()?;
            }
            Ok::<Conn, super::client::Error>(c)
        })();
        let conn = match opened {
            Ok(c) => c,
            Err(e) => return shared.fail(&who, e),
        };
        let stagger_ns = if args.rate > 0.0 {
            (1e9 / args.rate * i as f64 / n as f64) as u64
        } else {
            0
        };
        let spec = ProducerSpec {
            id: i as u16,
            exchange: topo.exchange.clone(),
            routing_key: topo.routing_key(args, i),
            size: args.size,
            persistent: args.persistent(),
            confirm: args.confirm,
            rate: args.rate,
            stagger_ns,
            count: args.pmessages,
            batch_bytes: args.batch_bytes,
            stall: timeout,
        };
        let sh = shared.clone();
        match thread::Builder::new()
            .name(who.clone())
            .spawn(move || producer::run(conn, spec, sh))
        {
            Ok(h) => out.push(h),
            Err(e) => return shared.fail(&who, e),
        }
    }
}

/// One human line per second on stderr.
fn progress(
    t: Duration,
    a: &Snapshot,
    b: &Snapshot,
    secs: f64,
    ma: &CpuMark,
    mb: &CpuMark,
    pid: Option<u32>,
) {
    let r = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / secs.max(1e-3);
    let mut line = format!(
        "{:>5.1}s  sent {:>10.0}/s  confirmed {:>10.0}/s  recv {:>10.0}/s",
        ms(t),
        r(a.sent, b.sent),
        r(a.confirmed, b.confirmed),
        r(a.received, b.received)
    );
    let cpu = cpu_use(ma, mb);
    if let Some(c) = cpu.tool {
        line += &format!("  tool {c:.0}%");
    }
    if let Some(c) = cpu.broker {
        line += &format!("  broker {c:.0}%");
    }
    if let Some(r) = pid.and_then(rss_kb) {
        line += &format!("  rss {:.1} MB", r as f64 / 1024.0);
    }
    eprintln!("{line}");
}
