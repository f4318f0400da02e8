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

/// Tags in definitions JSON: a list, or RabbitMQ's older comma-separated string. Read
/// by the definitions import and by the migration of format 1's `access.json`.
pub fn json_tags(v: Option<&serde_json::Value>) -> Vec<String> {
    use serde_json::Value;
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
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

/// A multiply-rotate hasher (FxHash's shape, 8 bytes a step) for the maps the message
/// path consults several times per message: SipHash there was a fifth of the broker's
/// instructions. Two flavours: [`IdHash`] for ids the broker assigns itself (store ids,
/// queue ids, channel numbers), and [`KeyHash`], seeded per process, for names clients
/// choose (exchange names, routing keys, consumer tags), whose maps are small and
/// per channel, so a client crafting collisions only slows its own channel.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

const SEED_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        // The multiply spreads sequential ids into the high bits, which hashbrown uses
        // for its control bytes.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED_MUL);
    }
}

/// `S` for maps keyed by broker-assigned ids.
pub type IdHash = std::hash::BuildHasherDefault<FastHasher>;

/// `S` for small per-connection maps keyed by client-chosen names: [`FastHasher`] from
/// a per-process random start.
#[derive(Clone, Copy)]
pub struct KeyHash(u64);

impl Default for KeyHash {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        KeyHash(*SEED.get_or_init(|| RandomState::new().build_hasher().finish()))
    }
}

impl BuildHasher for KeyHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

#[cfg(test)]
mod hash_tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn equal_keys_hash_equal_and_byte_strings_differ() {
        let k = KeyHash::default();
        assert_eq!(
            k.hash_one(b"amq.direct" as &[u8]),
            k.hash_one(b"amq.direct" as &[u8])
        );
        assert_ne!(k.hash_one(b"a.b.c" as &[u8]), k.hash_one(b"a.b.d" as &[u8]));
        // Lookups by slice find keys stored as Bytes (same Hash impl as [u8]).
        let mut m: HashMap<bytes::Bytes, u32, KeyHash> = HashMap::default();
        m.insert(bytes::Bytes::from_static(b"routing.key.long.enough"), 7);
        assert_eq!(m.get(b"routing.key.long.enough" as &[u8]), Some(&7));
    }

    #[test]
    fn sequential_ids_spread_over_the_high_bits() {
        let top: std::collections::HashSet<u64> = (0..1000u64)
            .map(|i| IdHash::default().hash_one(i) >> 57)
            .collect();
        assert!(top.len() > 100, "{}", top.len());
    }
}
