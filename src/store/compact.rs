//! Compaction: rewriting journal files that are mostly let go of, so that disk use
//! follows the live backlog rather than everything ever published.
//!
//! The writer picks the files (see `segments.rs`) and hands them to this thread, which
//! reads them and writes one new file with what is still needed:
//! - message records some queue still holds, unchanged (same id, same queue list);
//! - `D` pairs of live messages;
//! - `A` pairs of live messages (another queue that held the message let go of it) and
//!   of let-go messages whose record may still be in a file that is not being rewritten
//!   (recovery would bring them back without the ack).
//!
//! Crash safety: the output is written under a temporary name, synced, renamed into
//! place and the directory synced; only then does the writer switch its index to it and
//! delete the sources. A crash before the rename leaves the sources (the temporary file
//! is removed at start); after it, both, and recovery takes a message found twice once.
//! Deletions the writer made before the job are synced before acks are dropped on
//! their account, so a crash cannot bring back a file whose acks are gone.
//!
//! Cost: the thread runs at a lower CPU priority and reads at a bounded rate, so that
//! publishing and delivery keep their latency while it works.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::codec::{Get, Put};
use super::index::{Index, Ref};
use super::record;
use super::segments::{Members, Others};

/// Bytes read per second at most (page cache or disk). Recently written files are
/// mostly in the page cache; the cap is for old ones, read from the disk itself. It
/// must stay above the rate publishers can fill segments at, or disk use outgrows the
/// backlog while they run (measured: about 365 MB/s of 1 KB persistent messages on the
/// 2-core test machine).
const READ_RATE: f64 = 1024.0 * 1024.0 * 1024.0;
/// Index look-ups per lock: the writer and readers share the lock.
const LOOKUPS_PER_LOCK: usize = 4096;

pub(super) struct Job {
    pub sources: Vec<u64>,
    pub output: u64,
    pub others: Others,
}

/// What a job did, for the writer to apply.
pub(super) struct Outcome {
    pub sources: Vec<u64>,
    /// The output's number and size, when it holds anything.
    pub output: Option<(u64, u64)>,
    /// Messages copied, and where they are now (holders as when copied).
    pub moved: Vec<(u64, Ref)>,
    /// Every message id the output holds a record of.
    pub members: Members,
    /// The job failed (logged); the sources are untouched.
    pub failed: bool,
}

pub(super) fn temporary(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.seg.compact"))
}

/// Remove what a crash left of a compaction in progress (its sources are intact).
pub(super) fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("compact") {
            tracing::info!(file = %path.display(), "removing an unfinished compaction (its sources are intact)");
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Run jobs until the writer hangs up; each outcome goes back through `done`.
pub(super) fn run(
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    jobs: mpsc::Receiver<Job>,
    done: impl Fn(Outcome) -> bool,
) {
    lower_priority();
    let mut data = Vec::new();
    while let Ok(job) = jobs.recv() {
        let sources = job.sources.clone();
        let outcome = compact(&dir, &index, job, &mut data).unwrap_or_else(|e| {
            tracing::error!(error = %e, ?sources, "compaction failed; the files stay as they are and are tried again later");
            Outcome {
                sources,
                output: None,
                moved: Vec::new(),
                members: Members::None,
                failed: true,
            }
        });
        if data.capacity() > 128 << 20 {
            data = Vec::new();
        }
        if !done(outcome) {
            return;
        }
    }
}

/// This thread yields the CPU to the broker's (Linux: a thread's nice value is its own).
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread, no pointers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

fn compact(dir: &Path, index: &Mutex<Index>, job: Job, data: &mut Vec<u8>) -> io::Result<Outcome> {
    // Make the writer's earlier deletions durable before dropping acks because of them.
    File::open(dir)?.sync_all()?;
    let started = Instant::now();
    let mut read_total = 0u64;
    let mut out = Vec::new();
    let mut moved = Vec::new();
    let mut members = Vec::new();
    for &source in &job.sources {
        data.clear();
        File::open(super::segments::segment_path(dir, source))?.read_to_end(data)?;
        read_total += data.len() as u64;
        rewrite(
            source,
            data,
            index,
            &job,
            &mut out,
            &mut moved,
            &mut members,
        );
        pace(started, read_total);
    }
    if out.is_empty() {
        return Ok(Outcome {
            sources: job.sources,
            output: None,
            moved,
            members: Members::None,
            failed: false,
        });
    }
    let tmp = temporary(dir, job.output);
    let path = super::segments::segment_path(dir, job.output);
    let written = super::files::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&out)?;
            f.sync_data()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        // A full disk most likely: give back what the attempt took.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    for (_, r) in &mut moved {
        r.segment = job.output as u32;
    }
    members.sort_unstable();
    members.dedup();
    Ok(Outcome {
        sources: job.sources,
        output: Some((job.output, out.len() as u64)),
        moved,
        members: Members::Exact(members),
        failed: false,
    })
}

/// Sleep as needed to keep reading under [`READ_RATE`].
fn pace(started: Instant, bytes: u64) {
    let due = Duration::from_secs_f64(bytes as f64 / READ_RATE);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// Append to `out` what `data` (the file `source`) holds that is still needed.
fn rewrite(
    source: u64,
    data: &[u8],
    index: &Mutex<Index>,
    job: &Job,
    out: &mut Vec<u8>,
    moved: &mut Vec<(u64, Ref)>,
    members: &mut Vec<u64>,
) {
    // First the ids every record names, to ask the index in a few locked batches.
    let mut ids = Vec::new();
    record::scan(data, |_, payload| {
        let mut g = Get::new(payload);
        match g.u8() {
            Some(b'M' | b'T') => ids.extend(g.u64()),
            Some(b'A' | b'D') => {
                let (Some(_qid), Some(n)) = (g.u64(), g.u32()) else {
                    return;
                };
                ids.extend((0..n).map_while(|_| g.u64()));
            }
            _ => {}
        }
    });
    ids.sort_unstable();
    ids.dedup();
    let mut live: std::collections::HashMap<u64, Ref, crate::util::IdHash> = Default::default();
    for chunk in ids.chunks(LOOKUPS_PER_LOCK) {
        let index = index.lock().unwrap_or_else(|e| e.into_inner());
        live.extend(chunk.iter().filter_map(|&id| Some((id, index.get(id)?))));
    }
    let elsewhere = |id: u64| job.others.iter().any(|(_, m)| m.may_contain(id));
    let mut seen: HashSet<u64, crate::util::IdHash> = HashSet::default();
    record::scan(data, |at, payload| {
        let mut g = Get::new(payload);
        match g.u8() {
            Some(b'M' | b'T') => {
                let Some(id) = g.u64() else { return };
                // The record the index points at (a file can hold a stale duplicate).
                let Some(r) = live.get(&id) else { return };
                if r.segment as u64 != source
                    || r.offset as usize != at + record::HEADER
                    || !seen.insert(id)
                {
                    return;
                }
                let offset = (out.len() + record::HEADER) as u32;
                record::append(out, payload);
                members.push(id);
                moved.push((id, Ref { offset, ..*r }));
            }
            Some(kind @ (b'A' | b'D')) => {
                let (Some(qid), Some(n)) = (g.u64(), g.u32()) else {
                    return;
                };
                let keep: Vec<u64> = (0..n)
                    .map_while(|_| g.u64())
                    .filter(|id| live.contains_key(id) || (kind == b'A' && elsewhere(*id)))
                    .collect();
                if keep.is_empty() {
                    return;
                }
                record::append_with(out, |o| {
                    o.put_u8(kind);
                    o.put_u64(qid);
                    o.put_u32(keep.len() as u32);
                    keep.iter().for_each(|id| o.put_u64(*id));
                });
            }
            _ => {}
        }
    });
}
