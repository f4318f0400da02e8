//! Where each live message lies in the journal, by store id.
//!
//! The store numbers messages itself, from one counter, and most of them go within
//! seconds, so the live ids of a deep backlog are nearly dense and nearly in order. A hash
//! map pays for sparse keys it never gets: about 52 bytes per entry at a million (8 for
//! the key, 16 for the value, and half its buckets empty after the last doubling), which
//! was half of what a queued message cost. Here ids are grouped in chunks of
//! [`CHUNK`] consecutive ids, each a sorted array of (low bits, [`Ref`]): 20 bytes per
//! live message, and no rehash of the whole index when it grows.
//!
//! Removal leaves a tombstone (`holders == 0`), swept when a chunk is more than half
//! tombstones; a chunk with no live entry goes. A backlog drained from the front empties
//! its chunks one by one, so the index shrinks as the queue does.

use std::collections::HashMap;

use crate::util::IdHash;

/// Ids per chunk: the chunk map stays a few hundred entries at a million messages, and a
/// chunk's array (at most 80 KB) is cheap to insert into near its end.
const CHUNK_BITS: u32 = 12;
const CHUNK: u64 = 1 << CHUNK_BITS;

/// Where a live message lies, and how many queues still hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ref {
    /// 0 only for a tombstone inside the index: a live message has a holder.
    pub holders: u32,
    pub segment: u32,
    /// The record's payload: offset in the segment file, and length. A segment ends at
    /// the first batch past `store.segment_size` (at most 1 GiB), so offsets fit 32 bits.
    pub offset: u32,
    pub len: u32,
}

#[derive(Clone, Copy)]
struct Slot {
    low: u16,
    at: Ref,
}

// One per live message: keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<Slot>() == 20);

#[derive(Default)]
struct Chunk {
    /// Sorted by `low`; tombstones included.
    slots: Vec<Slot>,
    live: u32,
}

impl Chunk {
    fn find(&self, low: u16) -> Result<usize, usize> {
        // Ids mostly arrive in order: check the end before searching.
        match self.slots.last() {
            Some(s) if s.low < low => Err(self.slots.len()),
            None => Err(0),
            _ => self.slots.binary_search_by_key(&low, |s| s.low),
        }
    }

    /// Drop tombstones once they are the majority (amortised: each sweep at least halves
    /// the array), and give back the memory a drained chunk no longer needs.
    fn sweep(&mut self) {
        let len = self.slots.len();
        if len < 32 || (self.live as usize) * 2 > len {
            return;
        }
        self.slots.retain(|s| s.at.holders > 0);
        if self.slots.capacity() > 2 * self.slots.len() {
            self.slots.shrink_to(self.slots.len() * 3 / 2);
        }
    }
}

/// Live messages by id.
#[derive(Default)]
pub(super) struct Index {
    chunks: HashMap<u64, Chunk, IdHash>,
    len: usize,
}

fn split(id: u64) -> (u64, u16) {
    (id >> CHUNK_BITS, (id & (CHUNK - 1)) as u16)
}

impl Index {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, id: u64) -> Option<Ref> {
        let (hi, low) = split(id);
        let chunk = self.chunks.get(&hi)?;
        let i = chunk.find(low).ok()?;
        let at = chunk.slots[i].at;
        (at.holders > 0).then_some(at)
    }

    /// Index a message (`at.holders` must not be 0); replaces an entry with the same id.
    pub fn insert(&mut self, id: u64, at: Ref) {
        debug_assert!(at.holders > 0, "a live message has a holder");
        let (hi, low) = split(id);
        let chunk = self.chunks.entry(hi).or_default();
        match chunk.find(low) {
            Ok(i) => {
                if chunk.slots[i].at.holders == 0 {
                    chunk.live += 1;
                    self.len += 1;
                }
                chunk.slots[i].at = at;
            }
            Err(i) => {
                chunk.slots.insert(i, Slot { low, at });
                chunk.live += 1;
                self.len += 1;
            }
        }
    }

    /// Point a live message at a copy of its record (compaction); holders unchanged.
    pub fn relocate(&mut self, id: u64, segment: u32, offset: u32) {
        let (hi, low) = split(id);
        if let Some(chunk) = self.chunks.get_mut(&hi) {
            if let Ok(i) = chunk.find(low) {
                let at = &mut chunk.slots[i].at;
                if at.holders > 0 {
                    at.segment = segment;
                    at.offset = offset;
                }
            }
        }
    }

    /// One holder let go of message `id`: its entry when that was the last one (it is
    /// gone from the index then), None otherwise or when the id is not indexed.
    pub fn release(&mut self, id: u64) -> Option<Ref> {
        self.let_go(id).and_then(|(_, gone)| gone)
    }

    /// As [`Index::release`], also saying which file the record was in (for every
    /// holder, not only the last): None only when the id is not indexed.
    pub fn let_go(&mut self, id: u64) -> Option<(u32, Option<Ref>)> {
        let (hi, low) = split(id);
        let chunk = self.chunks.get_mut(&hi)?;
        let i = chunk.find(low).ok()?;
        let slot = &mut chunk.slots[i].at;
        if slot.holders == 0 {
            return None;
        }
        slot.holders -= 1;
        let segment = slot.segment;
        if slot.holders > 0 {
            return Some((segment, None));
        }
        let gone = *slot;
        chunk.live -= 1;
        self.len -= 1;
        if chunk.live == 0 {
            self.chunks.remove(&hi);
        } else {
            chunk.sweep();
        }
        Some((segment, Some(gone)))
    }
}

impl Extend<(u64, Ref)> for Index {
    fn extend<I: IntoIterator<Item = (u64, Ref)>>(&mut self, iter: I) {
        for (id, at) in iter {
            self.insert(id, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(holders: u32, offset: u32) -> Ref {
        Ref {
            holders,
            segment: 1,
            offset,
            len: 10,
        }
    }

    #[test]
    fn finds_what_was_inserted_in_any_order_across_chunks() {
        let mut ix = Index::default();
        // Out of order, across chunk boundaries, with gaps.
        let ids: Vec<u64> = (0..20_000u64).map(|i| (i * 7919) % 50_000).collect();
        for &id in &ids {
            ix.insert(id, at(1, id as u32));
        }
        assert_eq!(ix.len(), ids.len());
        for &id in &ids {
            assert_eq!(ix.get(id), Some(at(1, id as u32)));
        }
        let absent = (0..50_000u64).find(|id| !ids.contains(id)).unwrap();
        assert_eq!(ix.get(absent), None);
        assert_eq!(ix.get(u64::MAX >> 1), None);
    }

    #[test]
    fn release_counts_holders_and_removes_on_the_last() {
        let mut ix = Index::default();
        ix.insert(5, at(2, 50));
        assert_eq!(ix.release(5), None, "one holder left");
        assert_eq!(ix.get(5), Some(at(1, 50)));
        assert_eq!(ix.release(5), Some(at(0, 50)));
        assert_eq!(ix.get(5), None);
        assert_eq!(ix.release(5), None, "already gone");
        assert_eq!(ix.release(6), None, "never there");
        assert_eq!(ix.len(), 0);
    }

    #[test]
    fn a_drained_backlog_leaves_nothing_behind() {
        let mut ix = Index::default();
        let n = 3 * CHUNK + 100;
        for id in 1..=n {
            ix.insert(id, at(1, id as u32));
        }
        // Drain from the front, checking the rest stays reachable through the sweeps.
        for id in 1..=n {
            assert!(ix.release(id).is_some());
            if id % 997 == 0 {
                for later in [id + 1, (id + n) / 2, n] {
                    if later <= n && later > id {
                        assert_eq!(ix.get(later), Some(at(1, later as u32)));
                    }
                }
            }
        }
        assert_eq!(ix.len(), 0);
        assert!(ix.chunks.is_empty(), "empty chunks are dropped");
    }

    #[test]
    fn a_tombstone_can_be_indexed_again() {
        let mut ix = Index::default();
        for id in 0..100 {
            ix.insert(id, at(1, 0));
        }
        ix.release(40);
        ix.insert(40, at(3, 4));
        assert_eq!(ix.get(40), Some(at(3, 4)));
        assert_eq!(ix.len(), 100);
    }

    #[test]
    fn sweeping_keeps_every_live_entry() {
        let mut ix = Index::default();
        for id in 0..CHUNK {
            ix.insert(id, at(1, id as u32));
        }
        // Release every other one, then most of the rest: several sweeps run.
        for id in (0..CHUNK).step_by(2) {
            ix.release(id);
        }
        for id in (1..CHUNK).step_by(2).filter(|id| id % 10 != 1) {
            ix.release(id);
        }
        for id in 0..CHUNK {
            let expect = (id % 2 == 1 && id % 10 == 1).then(|| at(1, id as u32));
            assert_eq!(ix.get(id), expect, "id {id}");
        }
        let chunk = &ix.chunks[&0];
        assert_eq!(chunk.live as usize, ix.len());
        assert!(chunk.slots.len() < 2 * ix.len() + 32, "tombstones swept");
    }
}
