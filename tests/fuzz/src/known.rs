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

// No open bug is skipped: the last ones (store-qid-overflow, the JSON short strings of
// definitions-long-argument-key, management-long-argument-key and
// management-long-property) were fixed in the broker, and their reproducers in
// crashes/ now run clean. Add a filter here (used through `skipping()`) only while a
// reported bug waits for its fix.
