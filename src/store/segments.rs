//! What the writer knows of each segment file of the message journal, and what follows
//! from it: when a file can be deleted, and which files are worth compacting.
//!
//! A file holds message records (`M` persistent, `T` transient copies) and the queues'
//! `A` (let go of) and `D` (delivered) records. Recovery reads the `A`/`D` pairs of every
//! file as one set, so an ack is needed on disk for as long as some file still holds the
//! message record it names, whichever file the ack itself is in. The table keeps, per
//! file, which files its acks name messages in (`refers_to`); a file is deleted outright
//! only when it holds no live message and none of the files it refers to is left,
//! otherwise the compactor rewrites it keeping what is still needed.
//!
//! Files are numbered from one counter, for the writer's new segments and the
//! compactor's outputs alike. Recovery does not depend on the order: a message record
//! found twice (a crash after a compaction's output was in place but before its sources
//! were deleted) is the same message.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::record;

/// A file is compacted once this share of its bytes (or more) is records let go of.
const COMPACT_DEAD_SHARE: f64 = 0.5;

/// Files smaller than `segment_size / SMALL_DIVISOR` are merged once there are
/// [`SMALL_MERGE`] of them, so that a long-lived trickle of messages does not leave one
/// small file per segment ever written.
const SMALL_DIVISOR: u64 = 8;
const SMALL_MERGE: usize = 4;

/// A compaction job reads at most this many segments' worth of files.
const JOB_READ_SEGMENTS: u64 = 4;

/// Which message ids a file may hold records of.
#[derive(Clone, Debug, Default)]
pub(super) enum Members {
    #[default]
    None,
    /// Every id in the range, give or take (a segment the writer filled: ids arrive
    /// nearly in order, so this is its exact set but for a few stragglers).
    Range { lo: u64, hi: u64 },
    /// Exactly these, sorted (a compaction's output: a sparse set of old ids).
    Exact(Vec<u64>),
}

impl Members {
    pub fn may_contain(&self, id: u64) -> bool {
        match self {
            Members::None => false,
            Members::Range { lo, hi } => (*lo..=*hi).contains(&id),
            Members::Exact(ids) => ids.binary_search(&id).is_ok(),
        }
    }

    /// The writer appended a record of `id`.
    pub fn add(&mut self, id: u64) {
        match self {
            Members::None => *self = Members::Range { lo: id, hi: id },
            Members::Range { lo, hi } => {
                *lo = (*lo).min(id);
                *hi = (*hi).max(id);
            }
            Members::Exact(ids) => {
                if let Err(i) = ids.binary_search(&id) {
                    ids.insert(i, id);
                }
            }
        }
    }

    /// From the ids of the records a file holds (recovery): a range when they are dense,
    /// the exact set when sparse (a compaction's output).
    pub fn of(mut ids: Vec<u64>) -> Members {
        let (Some(&lo), Some(&hi)) = (ids.iter().min(), ids.iter().max()) else {
            return Members::None;
        };
        if hi - lo < 4 * ids.len() as u64 {
            return Members::Range { lo, hi };
        }
        ids.sort_unstable();
        ids.dedup();
        Members::Exact(ids)
    }

    /// Whether any id in `lo..=hi` may be here.
    fn overlaps(&self, lo: u64, hi: u64) -> bool {
        match self {
            Members::None => false,
            Members::Range { lo: a, hi: b } => *a <= hi && lo <= *b,
            Members::Exact(ids) => {
                let i = ids.partition_point(|&x| x < lo);
                ids.get(i).is_some_and(|&x| x <= hi)
            }
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Segment {
    /// Bytes in the file.
    pub size: u64,
    /// Message records some queue still holds (or a transient copy still in use).
    pub live: u64,
    /// Bytes of message records let go of since the file was written.
    pub dead: u64,
    pub members: Members,
    /// Files holding messages that this file's `A`/`D` records name (may include itself).
    pub refers_to: BTreeSet<u64>,
    /// Handed to the compactor; not touched until it answers.
    pub compacting: bool,
}

/// What a compaction needs to know of the files it does not rewrite: those its sources'
/// acks name, where the messages of those acks may still be.
pub(super) type Others = Vec<(u64, Members)>;

pub(super) struct Segments {
    pub files: BTreeMap<u64, Segment>,
    /// The file the writer appends to.
    pub current: u64,
    /// The next file number (new segments and compaction outputs).
    pub next: u64,
    segment_size: u64,
    /// Something happened that may let a file go or make one worth compacting (so the
    /// writer does not look through the table after every batch).
    pub changed: bool,
}

impl Segments {
    pub fn new(files: BTreeMap<u64, Segment>, current: u64, segment_size: u64) -> Segments {
        let next = files.keys().last().map_or(1, |n| n + 1).max(current + 1);
        Segments {
            files,
            current,
            next,
            segment_size,
            changed: true,
        }
    }

    pub fn allocate(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        n
    }

    pub fn current(&mut self) -> &mut Segment {
        self.files.entry(self.current).or_default()
    }

    /// A message record in `file` was let go of by its last holder.
    pub fn message_gone(&mut self, file: u64, len: u32) {
        if let Some(s) = self.files.get_mut(&file) {
            s.live = s.live.saturating_sub(1);
            s.dead += len as u64 + record::HEADER as u64;
            self.changed |= s.live == 0 || s.dead as f64 >= s.size as f64 * COMPACT_DEAD_SHARE;
        }
    }

    /// Files that can go now without being read: no live message, and no ack that some
    /// other remaining file may still need. Removes them from the table (the caller
    /// unlinks them), and what refers to them forgets them, which can free more.
    pub fn take_deletable(&mut self) -> Vec<u64> {
        let mut gone = Vec::new();
        loop {
            let ready: Vec<u64> = self
                .files
                .iter()
                .filter(|(&n, s)| {
                    n != self.current
                        && !s.compacting
                        && s.live == 0
                        && s.refers_to
                            .iter()
                            .all(|r| *r == n || !self.files.contains_key(r))
                })
                .map(|(&n, _)| n)
                .collect();
            if ready.is_empty() {
                return gone;
            }
            for n in ready {
                self.files.remove(&n);
                self.forget(&[n], None);
                gone.push(n);
            }
        }
    }

    /// `sources` are gone (replaced by `output`, when it has anything): acks that named
    /// messages in them now name the output.
    pub fn forget(&mut self, sources: &[u64], output: Option<u64>) {
        for s in self.files.values_mut() {
            let before = s.refers_to.len();
            s.refers_to.retain(|r| !sources.contains(r));
            if s.refers_to.len() < before {
                if let Some(o) = output {
                    s.refers_to.insert(o);
                }
            }
        }
    }

    /// The next files to compact together, if any are worth it: those mostly let go of
    /// (or holding nothing live but acks still needed), then small files when there are
    /// enough of them; at most about a segment's worth of live bytes in all, read from
    /// at most a few segments' worth of files.
    pub fn pick(&self) -> Vec<u64> {
        let eligible = |n: &u64, s: &Segment| *n != self.current && !s.compacting && s.size > 0;
        // What the output may hold, and what the job may read: a job stays short, so
        // its result (and the space it frees) comes soon, and the next one follows.
        let mut budget = self.segment_size;
        let mut reading = JOB_READ_SEGMENTS * self.segment_size;
        let mut picked = Vec::new();
        let mut take = |n: u64, s: &Segment, picked: &mut Vec<u64>| {
            let live = s.size.saturating_sub(s.dead);
            if picked.is_empty() || (live <= budget && s.size <= reading) {
                budget = budget.saturating_sub(live);
                reading = reading.saturating_sub(s.size);
                picked.push(n);
            }
        };
        for (&n, s) in &self.files {
            let dead_share = s.dead as f64 / s.size.max(1) as f64;
            if eligible(&n, s) && (s.live == 0 || dead_share >= COMPACT_DEAD_SHARE) {
                take(n, s, &mut picked);
            }
        }
        // Small files, the smallest first and a few at a time: each merge makes a file
        // a few times larger, so a byte is copied a few times at most on its way to a
        // file that is no longer small (as in a tiered LSM tree).
        let mut small: Vec<(u64, &Segment)> = self
            .files
            .iter()
            .filter(|(n, s)| {
                eligible(n, s) && !picked.contains(n) && s.size < self.segment_size / SMALL_DIVISOR
            })
            .map(|(&n, s)| (n, s))
            .collect();
        if small.len() >= SMALL_MERGE {
            small.sort_by_key(|(_, s)| s.size);
            for (n, s) in small.into_iter().take(SMALL_MERGE) {
                take(n, s, &mut picked);
            }
        }
        // Merging one file with nothing is copying it: only worth it when it sheds bytes.
        if picked.len() == 1 {
            let s = &self.files[&picked[0]];
            if s.live > 0 && (s.dead as f64) < s.size as f64 * COMPACT_DEAD_SHARE {
                picked.clear();
            }
        }
        picked
    }

    /// The files, other than `sources`, that the sources' acks may name messages in.
    pub fn others(&self, sources: &[u64]) -> Others {
        let mut named = BTreeSet::new();
        for n in sources {
            if let Some(s) = self.files.get(n) {
                named.extend(s.refers_to.iter().copied());
            }
        }
        named
            .into_iter()
            .filter(|n| !sources.contains(n))
            .filter_map(|n| Some((n, self.files.get(&n)?.members.clone())))
            .collect()
    }
}

/// Recovery: which files each file's acks may name, from the range of ids they name.
pub(super) fn link(files: &mut BTreeMap<u64, Segment>, acked_ranges: &BTreeMap<u64, (u64, u64)>) {
    for (&file, &(lo, hi)) in acked_ranges {
        let named = files
            .iter()
            .filter(|(_, s)| s.members.overlaps(lo, hi))
            .map(|(&n, _)| n)
            .collect();
        if let Some(s) = files.get_mut(&file) {
            s.refers_to = named;
        }
    }
}

/// Segment files are `messages/NNNNNNNNNNNNNNNN.seg`, numbered from 1 up.
pub(super) const SEGMENT_EXT: &str = "seg";

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.{SEGMENT_EXT}"))
}

/// A segment's name relative to the data directory, as replication names it.
pub(super) fn shipped_name(n: u64) -> String {
    format!("messages/{n:016}.{SEGMENT_EXT}")
}

pub(super) fn open_segment(dir: &Path, n: u64) -> io::Result<File> {
    super::files::options()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(size: u64, live: u64, dead: u64, lo: u64, hi: u64) -> Segment {
        Segment {
            size,
            live,
            dead,
            members: Members::Range { lo, hi },
            ..Segment::default()
        }
    }

    #[test]
    fn a_file_whose_acks_name_a_remaining_file_is_not_deleted_outright() {
        let mut files = BTreeMap::new();
        // 1 still holds a live message; 2's acks name messages in 1 and 2.
        files.insert(1, seg(100, 1, 50, 1, 10));
        let mut two = seg(100, 0, 100, 11, 20);
        two.refers_to = [1, 2].into();
        files.insert(2, two);
        files.insert(3, seg(0, 0, 0, 21, 21));
        let mut s = Segments::new(files, 3, 1000);
        assert!(s.take_deletable().is_empty(), "2's acks still matter to 1");
        assert_eq!(s.pick(), vec![1, 2], "both are worth rewriting");
        s.files.get_mut(&1).unwrap().live = 0;
        assert_eq!(s.take_deletable(), vec![1, 2], "1 goes, then 2 with it");
    }

    #[test]
    fn a_compaction_output_takes_over_what_acks_named_in_its_sources() {
        let mut files = BTreeMap::new();
        files.insert(1, seg(100, 1, 90, 1, 10));
        let mut two = seg(100, 1, 10, 11, 20);
        two.refers_to = [1].into();
        files.insert(2, two);
        let mut s = Segments::new(files, 2, 1000);
        s.files.remove(&1);
        s.forget(&[1], Some(7));
        assert_eq!(s.files[&2].refers_to, [7].into());
    }

    #[test]
    fn members_are_exact_when_sparse() {
        assert!(matches!(
            Members::of(vec![5, 6, 7, 9]),
            Members::Range { lo: 5, hi: 9 }
        ));
        let m = Members::of(vec![1000, 10, 5000]);
        assert!(m.may_contain(1000) && !m.may_contain(11));
        assert!(m.overlaps(900, 1100) && !m.overlaps(11, 999));
    }
}
