//! Target `store`: starting a broker on a damaged data directory (`Broker::open`):
//! record framing and checksums with torn tails and corruption in the middle
//! (`store::record::scan`), metadata-log records (vhosts, exchanges, queues, bindings
//! with their argument tables, policies, users, permissions, limits), message-segment
//! records (messages, acks, delivery marks), the snapshot they replay into, the queues
//! and access model recovered from it, and the migration of format 1's files
//! (`topology.log`, `access.json`, `policies.json`); then reading every recovered
//! message back (through the management API's get, which also renders the stored
//! properties) and exporting the definitions.
//!
//! Input: the data directory's files as a list of chunks, each `tag: u8`, `len: u16 LE`,
//! then `len` bytes (cut short at the end of the input). The tag's low 3 bits name the
//! file: 0 is format 1's `topology.log`, 1 to 4 are message segments 1 to 4, 5 is
//! `meta.log`, 6 is format 1's `access.json` (users and permissions), 7 its
//! `policies.json`. A chunk of a log is one record,
//! written with a correct header and checksum (so that mutations reach the record
//! decoders instead of stopping at the checksum), or, when the tag's high bit is set,
//! raw bytes appended as they are (torn or corrupt framing); chunks of the JSON files
//! are appended as they are. `tools/make_corpora.py` turns a real data directory into
//! this form.
//!
//! Checks beyond "no panic": none; a damaged directory may be refused, or recovered in
//! part.

use std::path::{Path, PathBuf};
use std::time::Duration;

use warren::broker::Broker;

/// The files a chunk list describes, by name relative to the data directory.
pub fn files(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let tag = rest[0];
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let body = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        let (name, log) = match tag & 7 {
            0 => ("topology.log".to_owned(), true),
            5 => ("meta.log".to_owned(), true),
            6 => ("access.json".to_owned(), false),
            7 => ("policies.json".to_owned(), false),
            n => (format!("messages/{n:016}.seg"), true),
        };
        let i = match files.iter().position(|(f, _)| *f == name) {
            Some(i) => i,
            None => {
                files.push((name, Vec::new()));
                files.len() - 1
            }
        };
        if tag & 0x80 != 0 || !log {
            files[i].1.extend_from_slice(body);
        } else {
            warren::store::record::append(&mut files[i].1, body);
        }
    }
    files
}

/// Scratch space for the data directory: `WARREN_FUZZ_TMP`, else /dev/shm, else the
/// system's temporary directory.
fn scratch() -> PathBuf {
    let base = std::env::var_os("WARREN_FUZZ_TMP")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("warren-fuzz-store-{}", std::process::id()))
}

fn lay_out(dir: &Path, data: &[u8]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("messages")).expect("scratch data dir");
    for (name, bytes) in files(data) {
        std::fs::write(dir.join(name), bytes).expect("write a data file");
    }
}

pub fn run(data: &[u8]) {
    let dir = scratch();
    lay_out(&dir, data);
    let mut config = crate::config();
    config.data_dir = dir.clone();
    // Few bodies in memory, so that most are read back from their segment.
    config.store.resident_messages = 2;
    config.store.segment_size = 64 * 1024;
    let rt = crate::runtime();
    rt.block_on(async {
        let Ok(broker) = Broker::open(config) else {
            return;
        };
        let _ = warren::definitions::export(&broker);
        let api = crate::management::Api::new(broker.clone());
        for (vhost, _) in broker.vhosts() {
            for q in vhost.queues() {
                let path = format!(
                    "/api/queues/{}/{}/get",
                    encode(&vhost.name),
                    encode(&q.name)
                );
                let body = br#"{"count":50,"ackmode":"ack_requeue_false","encoding":"auto"}"#;
                let answer = tokio::time::timeout(
                    Duration::from_secs(600),
                    api.call(b"POST", path.as_bytes(), body),
                )
                .await
                .expect("a recovered queue answers a get");
                if let Some((status, body)) = answer {
                    assert!(
                        status < 500,
                        "{path} answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
        crate::settle().await;
        broker.shut_down();
        broker.freeze_store();
        crate::settle().await;
        broker.close_store();
    });
    drop(rt);
}

/// Percent-encode a path segment.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
