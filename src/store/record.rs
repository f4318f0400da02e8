//! The on-disk record framing shared by every log: `len: u32 LE`, `crc32: u32 LE` of
//! the payload, then `len` payload bytes. Reading detects a torn tail (a crash in the
//! middle of a write) and corruption in the middle, and resynchronises after the latter
//! so the rest of the file is still recovered.

use std::path::Path;

/// No record is larger than this (a 512 MiB message plus its metadata).
const MAX_RECORD: usize = 600 * 1024 * 1024;
pub const HEADER: usize = 8;

pub fn append(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Append a record whose payload is written by `fill` straight into `out`.
pub fn append_with(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    fill(out);
    let len = out.len() - start - HEADER;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn valid_at(data: &[u8], pos: usize) -> Option<usize> {
    let head = data.get(pos..pos + HEADER)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_RECORD {
        return None;
    }
    let payload = data.get(pos + HEADER..pos + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(len)
}

/// Where the payload of the valid record at `pos` lies in `data`, if it is valid.
pub fn payload_at(data: &[u8], pos: usize) -> Option<std::ops::Range<usize>> {
    let len = valid_at(data, pos)?;
    Some(pos + HEADER..pos + HEADER + len)
}

/// What a scan found wrong.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Where the valid data ends; bytes after it are a torn tail to truncate.
    pub valid_len: usize,
    /// Offsets of corrupt stretches that were skipped (valid records follow them).
    pub corrupt_at: Vec<usize>,
}

/// Call `f(offset, payload)` for every valid record in `data`.
pub fn scan(data: &[u8], mut f: impl FnMut(usize, &[u8])) -> ScanReport {
    let mut report = ScanReport::default();
    let mut pos = 0;
    while pos < data.len() {
        if let Some(len) = valid_at(data, pos) {
            f(pos, &data[pos + HEADER..pos + HEADER + len]);
            pos += HEADER + len;
            report.valid_len = pos;
            continue;
        }
        // Corrupt here: is there anything valid further on? Then this is damage in the
        // middle; otherwise a torn tail.
        match (pos + 1..data.len()).find(|&p| valid_at(data, p).is_some()) {
            Some(next) => {
                report.corrupt_at.push(pos);
                pos = next;
            }
            None => break,
        }
    }
    report
}

/// Whether the bytes after `valid_len` can be what a crash leaves of one record being
/// written: fewer bytes than a header, or a header announcing at most `max` bytes that
/// run past the end of the file. Anything else there is damage, not a torn write.
pub fn torn_tail(data: &[u8], valid_len: usize, max: usize) -> bool {
    let tail = &data[valid_len.min(data.len())..];
    if tail.len() < HEADER {
        return true;
    }
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    len <= max && HEADER + len > tail.len()
}

/// Log a scan's findings once, naming the file.
pub fn report(path: &Path, total: usize, r: &ScanReport) {
    for at in &r.corrupt_at {
        tracing::warn!(file = %path.display(), offset = at, "corrupt record skipped; later records recovered");
    }
    if r.valid_len < total {
        tracing::warn!(
            file = %path.display(),
            offset = r.valid_len,
            bytes = total - r.valid_len,
            "torn tail after a crash: truncated at the last valid record"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(data: &[u8]) -> (Vec<Vec<u8>>, ScanReport) {
        let mut out = Vec::new();
        let r = scan(data, |_, p| out.push(p.to_vec()));
        (out, r)
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let mut buf = Vec::new();
        append(&mut buf, b"one");
        append_with(&mut buf, |o| o.extend_from_slice(b"two"));
        let whole = buf.len();
        append(&mut buf, b"three");
        buf.truncate(buf.len() - 2); // the crash hit mid-write
        let (recs, r) = records(&buf);
        assert_eq!(recs, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(r.valid_len, whole);
        assert!(r.corrupt_at.is_empty());
    }

    #[test]
    fn corruption_in_the_middle_is_skipped() {
        let mut buf = Vec::new();
        append(&mut buf, b"first record");
        let bad = buf.len();
        append(&mut buf, b"second record");
        append(&mut buf, b"third record");
        buf[bad + 10] ^= 0xff;
        let (recs, r) = records(&buf);
        assert_eq!(
            recs,
            vec![b"first record".to_vec(), b"third record".to_vec()]
        );
        assert_eq!(r.corrupt_at, vec![bad]);
        assert_eq!(r.valid_len, buf.len());
    }

    #[test]
    fn torn_tails_are_told_from_damage() {
        let mut buf = Vec::new();
        append(&mut buf, b"whole");
        let whole = buf.len();
        append(&mut buf, b"cut short by a crash");
        assert!(torn_tail(&buf[..buf.len() - 3], whole, 1024));
        assert!(torn_tail(&buf[..whole + 5], whole, 1024));
        // A complete record whose checksum fails is damage, as is a length no record has.
        let mut bad = buf.clone();
        bad[whole + 9] ^= 1;
        assert!(!torn_tail(&bad, whole, 1024));
        let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(97) | 0x80).collect();
        assert!(!torn_tail(&garbage, 0, 1024));
    }
}
