//! Password hashes in RabbitMQ's format, so that definitions exported from RabbitMQ
//! import with working passwords and ours import into RabbitMQ.
//!
//! `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ utf8 password)) with
//! a 4-byte random salt. An empty hash is a passwordless user: no password matches it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The only algorithm warren writes; RabbitMQ's default since 3.6.
pub const SHA256: &str = "rabbit_password_hashing_sha256";

/// The algorithms warren can check. md5 is what pre-3.6 exports carry.
pub fn supported(algorithm: &str) -> bool {
    matches!(algorithm, SHA256 | "rabbit_password_hashing_md5")
}

/// Hash a password with a fresh random salt.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 4];
    salt.copy_from_slice(&crate::util::random_16()[..4]);
    hash_with_salt(salt, password)
}

fn hash_with_salt(salt: [u8; 4], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    STANDARD.encode(out)
}

/// Does `password` match `stored` (base64, as exported)? An empty or undecodable hash
/// matches nothing, which is how RabbitMQ makes passwordless users.
pub fn verify(algorithm: &str, stored: &str, password: &str) -> bool {
    let Ok(raw) = STANDARD.decode(stored) else {
        return false;
    };
    if raw.len() < 5 {
        return false;
    }
    let (salt, digest) = raw.split_at(4);
    let computed: Vec<u8> = match algorithm {
        "rabbit_password_hashing_md5" => return false, // no md5 crate: refuse rather than guess
        _ => {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(password.as_bytes());
            h.finalize().to_vec()
        }
    };
    constant_time_eq(&computed, digest)
}

/// Compare without an early exit, so timing says nothing about how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Is this a well-formed stored hash (for import)? Empty means passwordless.
pub fn well_formed(stored: &str) -> bool {
    stored.is_empty() || STANDARD.decode(stored).is_ok_and(|r| r.len() > 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_hash_exported_by_rabbitmq() {
        // From `rabbitmqctl export_definitions` on RabbitMQ 3.10 (tests/fixtures): the
        // password of fixture-alice is alice-secret, guest's is guest.
        assert!(verify(
            SHA256,
            "L3tg6tSv7AskNqeFnd0lZApU70CjTvPszpip7IsfE+2ohVw2",
            "alice-secret"
        ));
        assert!(!verify(
            SHA256,
            "L3tg6tSv7AskNqeFnd0lZApU70CjTvPszpip7IsfE+2ohVw2",
            "alice"
        ));
        assert!(verify(
            SHA256,
            "7GVZNmoCQY8VmY5SvX/C2m0zi5DXHljP5nZTt0meFXY6Kzd7",
            "guest"
        ));
    }

    #[test]
    fn round_trips_with_fresh_salts() {
        let a = hash("s3cret");
        let b = hash("s3cret");
        assert_ne!(a, b, "salts differ");
        assert!(verify(SHA256, &a, "s3cret") && verify(SHA256, &b, "s3cret"));
        assert!(!verify(SHA256, &a, "S3cret"));
        assert_eq!(hash_with_salt([1, 2, 3, 4], "x").len(), 48);
    }

    #[test]
    fn empty_hash_is_passwordless() {
        assert!(!verify(SHA256, "", ""));
        assert!(!verify(SHA256, "", "anything"));
        assert!(well_formed("") && !well_formed("!!"));
    }
}
