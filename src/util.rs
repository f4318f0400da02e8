//! Small helpers with no better home.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 16 unpredictable bytes, from std's per-process random hash keys (no RNG crate needed
/// for names that only have to be unique and hard to guess).
pub fn random_16() -> [u8; 16] {
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// RabbitMQ-style generated name: `prefix-` + 22 url-safe base64 characters
/// (`amq.gen-...` queues, `amq.ctag-...` consumer tags).
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = random_16();
    let mut bits: u128 = u128::from_le_bytes(bytes);
    let mut s = String::with_capacity(prefix.len() + 23);
    s.push_str(prefix);
    s.push('-');
    for _ in 0..22 {
        s.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    s
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id (connections, channels, consumers).
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_names_are_unique_and_shaped_like_rabbitmqs() {
        let a = super::generated_name("amq.gen");
        let b = super::generated_name("amq.gen");
        assert_ne!(a, b);
        assert!(a.starts_with("amq.gen-"));
        assert_eq!(a.len(), "amq.gen-".len() + 22);
    }
}

/// Hashes the broker's own integer ids (store message ids, queue ids) with one multiply
/// instead of SipHash. The keys are sequential numbers the broker assigns, never client
/// input, so flooding resistance buys nothing; the store's index and recovery hash one
/// per message, where SipHash was the largest cost.
#[derive(Clone, Copy, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the multiply spreads sequential ids into the high bits,
        // which hashbrown uses for its control bytes.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// [`std::collections::HashMap`]'s `S` for maps keyed by broker-assigned ids.
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;
