//! Bugs already found and reported, whose reproducers are in tests/fuzz/crashes/: while
//! fuzzing (run.sh sets `WARREN_FUZZ_SKIP_KNOWN=1`), inputs that would hit one again are
//! skipped, so that a run looks for new bugs instead of stopping at the same one. The
//! reproducers themselves run without it, and fail until the bug is fixed. Delete an
//! entry together with its fix.

use std::sync::OnceLock;

/// Whether known bugs are skipped (`WARREN_FUZZ_SKIP_KNOWN` set and not `0`).
pub fn skipping() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var("WARREN_FUZZ_SKIP_KNOWN").is_ok_and(|v| v != "0"))
}

/// crashes/store-qid-overflow: a topology record whose queue id is u64::MAX makes
/// `Store::open` overflow computing the next id (`snapshot.max_qid() + 1`).
pub fn store_qid_overflow(topology_record: &[u8]) -> bool {
    let mut g = Reader(topology_record);
    (|| {
        if g.u8()? != b'Q' {
            return None;
        }
        g.bytes()?;
        g.bytes()?;
        Some(g.u64()? == u64::MAX)
    })()
    .unwrap_or(false)
}

/// crashes/definitions-long-argument-key, management-long-argument-key and
/// management-long-property: text longer than 255 bytes where a JSON document becomes an
/// AMQP short string (`ShortString::from`, which panics): an object key inside
/// arguments or headers (`definitions::json_to_table`), or a string property of a
/// message published through the management API (`properties_from_json`).
pub fn json_long_short_string(doc: &[u8]) -> bool {
    fn walk(v: &serde_json::Value, in_properties: bool) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| {
                k.len() > 255
                    || (in_properties && v.as_str().is_some_and(|s| s.len() > 255))
                    || walk(v, k == "properties")
            }),
            serde_json::Value::Array(a) => a.iter().any(|v| walk(v, false)),
            _ => false,
        }
    }
    serde_json::from_slice::<serde_json::Value>(doc).is_ok_and(|v| walk(&v, false))
}

/// The store codec's little-endian reading, for the filters above.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<()> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n).map(|_| ())
    }
}
