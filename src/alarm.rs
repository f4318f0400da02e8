//! Resource alarms, as RabbitMQ's: when the broker uses more memory than its high
//! watermark, or the data directory's disk has less free space than the limit, the
//! connections that publish are blocked (they get connection.blocked if they asked for it,
//! and the broker stops reading from them) while consumers keep draining. The alarm
//! clears by itself when usage drops back.
//!
//! A monitor task samples usage once per interval and publishes the state on a watch
//! channel; connections look at it only when it changes, never per message.
//!
//! What the memory alarm compares is resident memory, made to mean the broker's own
//! memory: mimalloc keeps blocks freed by another thread on the owning thread's pages
//! until that thread allocates again, so after a burst (1 MB messages published on one
//! worker, freed on another) and a purge, an idle broker could stay hundreds of
//! megabytes over the mark, the alarm set for good. While memory is high the monitor
//! asks every thread to hand back what it has freed ([`release_freed_memory`], run by
//! tokio's workers as they park, see `main.rs`) before it measures. Near the mark it
//! samples more often, so a flood overshoots it by little.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::AlarmsConfig;

/// Which alarms are in effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    pub memory: bool,
    pub disk: bool,
    /// A cluster's leader has fewer in-sync replicas than `cluster.min_insync_replicas`:
    /// a persistent message could not be confirmed, so publishers wait blocked.
    pub replicas: bool,
}

impl AlarmState {
    pub fn any(&self) -> bool {
        self.memory || self.disk || self.replicas
    }

    /// The reason sent in connection.blocked (RabbitMQ's words for its own alarms).
    pub fn reason(&self) -> &'static str {
        if self.memory {
            "low on memory"
        } else if self.disk {
            "low on disk"
        } else {
            "too few in-sync replicas"
        }
    }
}

/// The memory limit in bytes: the absolute value if set, else the fraction of the
/// machine's (or the cgroup's, if lower) memory.
pub fn memory_limit(cfg: &AlarmsConfig) -> Option<u64> {
    if cfg.memory_high_watermark_absolute > 0 {
        return Some(cfg.memory_high_watermark_absolute);
    }
    let total = [total_memory(), cgroup_memory_limit()]
        .into_iter()
        .flatten()
        .min()?;
    Some((total as f64 * cfg.memory_high_watermark) as u64)
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn total_memory() -> Option<u64> {
    kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

/// The cgroup's memory limit: cgroup v2's `memory.max`, else cgroup v1's
/// `memory.limit_in_bytes` (Docker on a cgroup v1 host mounts the container's own memory
/// cgroup there). "max" (v2) does not parse and v1's "no limit" is a huge number the
/// machine's total undercuts, so neither limits anything.
fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| parse_cgroup_limit(&std::fs::read_to_string(path).ok()?))
}

fn parse_cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// This process's resident memory.
pub fn resident_memory() -> Option<u64> {
    kb_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// Free space available to the broker on the filesystem holding `path`.
pub fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we own, and reads the
    // NUL-terminated path we keep alive for the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Growth of resident memory after which the monitor returns freed memory to the OS.
const TRIM_STEP: u64 = 16 << 20;

/// Memory is sampled at least this often (more often if `check_interval_ms` says so):
/// a flood of large messages can add hundreds of megabytes in a second.
const USUAL_CHECK: Duration = Duration::from_millis(100);
/// ...and this often when, at the pace it grew since the last sample, it would reach
/// the limit within a few samples.
const CLOSE_CHECK: Duration = Duration::from_millis(20);
/// Releases are at least this far apart: each makes every thread walk its pages.
const RELEASE_GAP: Duration = Duration::from_millis(250);

/// Bumped when threads should hand freed memory back; each does once per bump.
static RELEASE_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RELEASED_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Hand this thread's freed memory back to the OS if a release was asked for since it
/// last did (one atomic load otherwise). Tokio's workers call it as they park.
pub fn release_freed_memory() {
    let epoch = RELEASE_EPOCH.load(Ordering::Acquire);
    if RELEASED_AT.with(|r| r.replace(epoch)) != epoch {
        collect();
    }
}

/// Ask every thread to release freed memory, and wait until they likely have: idle
/// workers are woken (they release as they park again), busy ones do at their next park.
async fn release_everywhere() {
    RELEASE_EPOCH.fetch_add(1, Ordering::AcqRel);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    for _ in 0..workers * 2 {
        tokio::spawn(async {});
    }
    // This (blocking) thread's own share, then time for the workers to park.
    let _ = tokio::task::spawn_blocking(collect).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// mimalloc: collect this thread's pages (blocks freed by other threads included) and
/// return emptied memory to the OS now rather than after the purge delay.
fn collect() {
    // SAFETY: mi_collect only frees memory this thread's heap no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Sample usage every interval and publish alarm changes on `tx`. The disk alarm is also
/// raised while the message store's writes fail (a full disk whose free space the
/// limit did not catch, an I/O error), and clears when they succeed again.
pub async fn monitor(
    cfg: AlarmsConfig,
    data_dir: PathBuf,
    store: Option<Arc<crate::store::MessageStore>>,
    tx: Arc<watch::Sender<AlarmState>>,
) {
    let limit = memory_limit(&cfg);
    if let Some(l) = limit {
        tracing::info!(limit_bytes = l, "memory high watermark");
    }
    let usual = Duration::from_millis(cfg.check_interval_ms.max(10)).min(USUAL_CHECK);
    // Resident memory right after the last release.
    let mut trimmed_at = resident_memory().unwrap_or(0);
    let mut used = Some(trimmed_at);
    let mut growth = 0u64;
    let mut released = tokio::time::Instant::now();
    loop {
        let headroom = match (used, limit) {
            (Some(u), Some(l)) => l.saturating_sub(u),
            _ => u64::MAX,
        };
        let near = growth.saturating_mul(4) >= headroom;
        tokio::time::sleep(if near { CLOSE_CHECK } else { usual }).await;
        let before = used;
        // Freed memory stays resident until the allocator returns it: a queue that pages
        // a backlog out, or consumers draining one, free blocks that mimalloc keeps on
        // their threads' pages. Have it given back while over the limit or alarmed (so
        // the alarm sees the drop) and whenever resident memory has grown by TRIM_STEP.
        used = resident_memory();
        growth = match (before, used) {
            (Some(b), Some(u)) => u.saturating_sub(b),
            _ => 0,
        };
        // Measured from the lowest point since the last release, so growth after a
        // drain counts.
        trimmed_at = trimmed_at.min(used.unwrap_or(trimmed_at));
        let over = matches!((used, limit), (Some(u), Some(l)) if u > l);
        let wanted = tx.borrow().memory || over || used.is_some_and(|u| u > trimmed_at + TRIM_STEP);
        if wanted && released.elapsed() >= RELEASE_GAP {
            release_everywhere().await;
            released = tokio::time::Instant::now();
            used = resident_memory();
            trimmed_at = used.unwrap_or(0);
        }
        let free = free_disk(&data_dir);
        let state = AlarmState {
            memory: matches!((used, limit), (Some(u), Some(l)) if u > l),
            disk: matches!(free, Some(f) if f < cfg.disk_free_limit)
                || store.as_ref().is_some_and(|s| s.is_failing()),
            replicas: store.as_ref().is_some_and(|s| s.below_min_insync()),
        };
        let before = *tx.borrow();
        if state != before {
            if state.memory != before.memory {
                if state.memory {
                    tracing::warn!(
                        used = used.unwrap_or(0),
                        limit = limit.unwrap_or(0),
                        "memory resource limit alarm set: publishers are blocked"
                    );
                } else {
                    tracing::info!("memory resource limit alarm cleared");
                }
            }
            if state.disk != before.disk {
                if state.disk {
                    tracing::warn!(
                        store_failing = store.as_ref().is_some_and(|s| s.is_failing()),
                        free = free.unwrap_or(0),
                        limit = cfg.disk_free_limit,
                        "disk resource limit alarm set: publishers are blocked"
                    );
                } else {
                    tracing::info!("disk resource limit alarm cleared");
                }
            }
            if state.replicas != before.replicas {
                if state.replicas {
                    tracing::warn!("in-sync replicas below cluster.min_insync_replicas: publishers are blocked");
                } else {
                    tracing::info!("in-sync replicas back at cluster.min_insync_replicas");
                }
            }
            tx.send_replace(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machines_figures() {
        assert!(resident_memory().unwrap() > 0);
        assert!(total_memory().unwrap() > resident_memory().unwrap());
        assert!(free_disk(Path::new("/")).is_some());
        let cfg = AlarmsConfig {
            memory_high_watermark_absolute: 123,
            ..Default::default()
        };
        assert_eq!(memory_limit(&cfg), Some(123));
    }

    #[test]
    fn cgroup_limit_files() {
        // v2 `docker run --memory 256m`, v2 unlimited, v1 limited and unlimited.
        assert_eq!(parse_cgroup_limit("268435456\n"), Some(256 << 20));
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(
            parse_cgroup_limit("9223372036854771712\n"),
            Some(9_223_372_036_854_771_712)
        );
    }
}
