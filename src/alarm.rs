//! Resource alarms, as RabbitMQ's: when the broker uses more memory than its high
//! watermark, or the data directory's disk has less free space than the limit, the
//! connections that publish are blocked (they get connection.blocked if they asked for it,
//! and the broker stops reading from them) while consumers keep draining. The alarm
//! clears by itself when usage drops back.
//!
//! A monitor task samples usage once per interval and publishes the state on a watch
//! channel; connections look at it only when it changes, never per message.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::AlarmsConfig;

/// Which alarms are in effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    pub memory: bool,
    pub disk: bool,
}

impl AlarmState {
    pub fn any(&self) -> bool {
        self.memory || self.disk
    }

    /// The reason sent in connection.blocked (RabbitMQ's words).
    pub fn reason(&self) -> &'static str {
        if self.memory {
            "low on memory"
        } else {
            "low on disk"
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

fn cgroup_memory_limit() -> Option<u64> {
    let v = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    v.trim().parse().ok()
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

/// Sample usage every interval and publish alarm changes on `tx`.
pub async fn monitor(cfg: AlarmsConfig, data_dir: PathBuf, tx: Arc<watch::Sender<AlarmState>>) {
    let limit = memory_limit(&cfg);
    if let Some(l) = limit {
        tracing::info!(limit_bytes = l, "memory high watermark");
    }
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.check_interval_ms.max(10)));
    // Resident memory right after the last trim.
    let mut trimmed_at = resident_memory().unwrap_or(0);
    loop {
        tick.tick().await;
        // Freed memory stays resident until the allocator returns it: a queue that pages
        // a backlog out, or consumers draining one, free many small blocks between live
        // ones that glibc keeps. Give it back when the alarm is on (so the alarm sees the
        // drop) and whenever resident memory has grown by TRIM_STEP since the last trim.
        let mut used = resident_memory();
        // Measured from the lowest point since the last trim, so growth after a drain counts.
        trimmed_at = trimmed_at.min(used.unwrap_or(trimmed_at));
        if tx.borrow().memory || used.is_some_and(|u| u > trimmed_at + TRIM_STEP) {
            // It holds the allocator's locks for a few milliseconds: not on a worker.
            let _ = tokio::task::spawn_blocking(trim).await;
            used = resident_memory();
            trimmed_at = used.unwrap_or(0);
        }
        let free = free_disk(&data_dir);
        let state = AlarmState {
            memory: matches!((used, limit), (Some(u), Some(l)) if u > l),
            disk: matches!(free, Some(f) if f < cfg.disk_free_limit),
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
                        free = free.unwrap_or(0),
                        limit = cfg.disk_free_limit,
                        "disk resource limit alarm set: publishers are blocked"
                    );
                } else {
                    tracing::info!("disk resource limit alarm cleared");
                }
            }
            tx.send_replace(state);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory back to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

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
}
