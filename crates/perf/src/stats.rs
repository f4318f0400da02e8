//! Measurement: a log-linear latency histogram, the shared run counters, and the
//! /proc readers for CPU and RSS.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Values below this are counted exactly; above, each power of two is split into
/// `SUB` buckets, so a reported value is within 1/128 (0.8 %) of the true one.
const EXACT: u64 = 256;
const SUB: u64 = 128;
const SUB_BITS: u32 = 7;
const BUCKETS: usize = (EXACT + (64 - 8) * SUB) as usize;

/// A latency histogram (nanoseconds), HDR-style but fixed-size and allocation-free
/// on the record path. Percentiles are the upper bound of the bucket holding the
/// rank, so they never understate a latency.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 8
    let m = v >> (e - SUB_BITS); // in [128, 256)
    (EXACT + (e as u64 - 8) * SUB + (m - SUB)) as usize
}

/// The largest value that falls into bucket `i`.
fn bucket_top(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let e = (i - EXACT) / SUB + 8;
    let m = (i - EXACT) % SUB + SUB;
    let shift = e as u32 - SUB_BITS;
    ((m + 1) << shift).wrapping_sub(1).max(m << shift)
}

impl Histogram {
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at percentile `p` (0..=100): the smallest bucket whose cumulative
    /// count reaches `ceil(p/100 * n)`, capped at the exact maximum. 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_top(i).min(self.max);
            }
        }
        self.max
    }
}

/// Counters every role updates (once per batch or read, not per message) and the
/// main thread samples once a second.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub received: AtomicU64,
    pub returned: AtomicU64,
    pub blocked: AtomicU64,
}

#[derive(Clone, Copy, Default, Debug)]
pub struct Snapshot {
    pub sent: u64,
    pub confirmed: u64,
    pub received: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Relaxed),
            confirmed: self.confirmed.load(Relaxed),
            received: self.received.load(Relaxed),
        }
    }
}

/// State shared by every role of one run.
pub struct Shared {
    /// Time zero: message stamps are nanoseconds since this instant (one process,
    /// so producers and consumers share the clock).
    pub epoch: Instant,
    /// Set when the run must end: time is up, or some role failed.
    pub stop: AtomicBool,
    /// Latency samples are kept only once the warm-up is over.
    pub measuring: AtomicBool,
    pub counters: Counters,
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            counters: Counters::default(),
            errors: Mutex::new(Vec::new()),
        }
    }

    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Record a failure and end the run: a failing role makes every figure suspect.
    pub fn fail(&self, who: &str, e: impl std::fmt::Display) {
        let msg = format!("{who}: {e}");
        eprintln!("error: {msg}");
        if let Ok(mut errs) = self.errors.lock() {
            errs.push(msg);
        }
        self.stop.store(true, Relaxed);
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// Clock ticks per second for /proc/*/stat times. Linux has reported 100 (USER_HZ)
/// on every mainstream architecture for decades; we avoid a libc dependency for it.
pub const CLK_TCK: f64 = 100.0;

/// utime + stime of a process, in clock ticks (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident set size in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// (busy, total) jiffies of the whole host, from the first line of /proc/stat.
pub fn host_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

pub fn ncpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CPU readings taken at the start and the end of the measurement window.
#[derive(Clone, Copy, Default)]
pub struct CpuMark {
    pub at: Option<Instant>,
    pub tool: Option<u64>,
    pub broker: Option<u64>,
    pub host: Option<(u64, u64)>,
}

impl CpuMark {
    pub fn take(broker_pid: Option<u32>) -> CpuMark {
        CpuMark {
            at: Some(Instant::now()),
            tool: cpu_ticks("self"),
            broker: broker_pid.and_then(|p| cpu_ticks(&p.to_string())),
            host: host_ticks(),
        }
    }
}

/// CPU use between two marks, in percent of one core.
pub struct CpuUse {
    pub tool: Option<f64>,
    pub broker: Option<f64>,
    /// Everything else on the host (other sessions, builds): the noise indicator.
    pub other: Option<f64>,
}

pub fn cpu_use(a: &CpuMark, b: &CpuMark) -> CpuUse {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) => y.duration_since(x).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    let pct = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => Some(100.0 * y.saturating_sub(x) as f64 / CLK_TCK / secs),
        _ => None,
    };
    let tool = pct(a.tool, b.tool);
    let broker = pct(a.broker, b.broker);
    let host = match (a.host, b.host) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some(100.0 * ncpu() as f64 * (b1 - b0) as f64 / (t1 - t0) as f64)
        }
        _ => None,
    };
    let other = host.map(|h| (h - tool.unwrap_or(0.0) - broker.unwrap_or(0.0)).max(0.0));
    CpuUse {
        tool,
        broker,
        other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..2_000_000u64)
            .step_by(37)
            .chain([u64::MAX / 3, u64::MAX])
        {
            let b = bucket(v);
            assert!(b >= last, "bucket order at {v}");
            assert!(b < BUCKETS);
            last = b;
            let top = bucket_top(b);
            assert!(top >= v, "top {top} below {v}");
            assert!(top - v <= v / 128, "bucket of {v} too wide: top {top}");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000); // 1 µs .. 10 ms
        }
        let within = |got: u64, want: u64| {
            let err = got.abs_diff(want) as f64 / want as f64;
            assert!(err <= 0.008, "got {got}, want {want}");
        };
        within(h.percentile(50.0), 5_000_000);
        within(h.percentile(95.0), 9_500_000);
        within(h.percentile(99.0), 9_900_000);
        within(h.percentile(99.9), 9_990_000);
        assert_eq!(h.percentile(100.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn small_values_are_exact_and_empty_is_zero() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(99.0), 0);
        for v in [3, 3, 3, 200] {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 3);
        assert_eq!(h.percentile(75.0), 3);
        assert_eq!(h.percentile(76.0), 200);
        assert_eq!(h.percentile(0.0), 3);
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_max() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!((a.count(), a.max()), (3, 1_000_000));
        assert_eq!(a.percentile(50.0), 20);
    }

    #[test]
    fn proc_readers_see_this_process() {
        assert!(cpu_ticks("self").is_some());
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(host_ticks().is_some());
    }
}
