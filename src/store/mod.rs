//! Durable state in the data directory.
//!
//! - `meta.toml`: the on-disk format version and this node's stable id.
//! - `warren.lock`: held (flock) while a broker runs, with its pid, so a second broker
//!   on the same directory stops with a clear error.
//! - `meta.log` ([`meta`]): every durable definition (vhosts, exchanges, queues,
//!   bindings, policies, users, permissions), one ordered log of typed changes.
//! - `messages/*.seg` ([`messages`]): persistent messages of durable queues.
//!
//! Every log uses the checksummed record framing of [`record`].

mod codec;
mod compact;
pub mod files;
mod index;
pub mod messages;
pub mod meta;
pub mod record;
mod segments;
pub mod shipping;
mod writer;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use messages::{MessageStore, Recovered};
pub use meta::{Change, MetaLog, Snapshot};

/// The on-disk format this binary writes. Older formats are migrated on start; newer
/// ones are refused.
/// - 1: users and policies in JSON files beside `topology.log` (see `meta/migrate.rs`).
/// - 2: one metadata log; journal segments deleted whole, never rewritten.
/// - 3: the journal is compacted (`compact.rs`): a message can be found in two
///   files after a crash, and files are numbered from one counter for new segments and
///   compaction outputs alike. Format 2's journal is a valid format 3 journal, so the
///   step is only the version in `meta.toml`; it exists so that an older warren, which
///   would deliver such a message twice, refuses the directory instead.
pub const FORMAT: u32 = 3;

#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

pub struct Store {
    pub meta: MetaLog,
    pub messages: Arc<MessageStore>,
    pub node_id: String,
    dir: PathBuf,
    next_qid: AtomicU64,
    /// Holds the data directory's lock until the store is closed (a graceful stop), not
    /// until the last reference goes: tasks winding down after a stop may still hold
    /// one, and a node started again in the same process must find the directory free.
    lock: std::sync::Mutex<Option<File>>,
}

/// What start-up finds on disk.
pub struct Opened {
    pub store: Arc<Store>,
    pub snapshot: Snapshot,
    /// Recovered messages by queue id.
    pub messages: HashMap<u64, Vec<Recovered>>,
}

impl Store {
    /// Open the data directory. A new one starts with the definitions in `seed`.
    pub fn open(
        dir: &Path,
        config: &crate::config::StoreConfig,
        seed: &[Change],
    ) -> Result<Opened, StoreError> {
        Self::open_shipped(dir, config, seed, None)
    }

    /// [`Store::open`] in a cluster's leader: every change to the files from now on goes
    /// to `shipping` for the followers, and confirms wait for them.
    pub fn open_shipped(
        dir: &Path,
        config: &crate::config::StoreConfig,
        seed: &[Change],
        shipping: Option<Arc<shipping::Shipping>>,
    ) -> Result<Opened, StoreError> {
        let err = |what: &str, e: std::io::Error| {
            StoreError(format!("{what} in data dir {}: {e}", dir.display()))
        };
        if let Some(warning) = files::exposure(dir) {
            tracing::warn!("{warning}");
        }
        files::create_dir(dir).map_err(|e| unusable(dir, &e))?;
        let lock = lock(dir)?;
        let (format, node_id) = meta_toml(dir)?;
        let (meta, snapshot) = MetaLog::open(dir, config.fsync, seed)
            .map_err(|e| err("cannot read the metadata log", e))?;
        if format < FORMAT {
            write_meta_toml(dir, &node_id)?;
            if format >= 1 {
                tracing::info!(from = format, to = FORMAT, "data dir upgraded: the message journal is read as it is and compacted from now on; an older warren will refuse this directory");
            }
        }
        meta::set_aside_format_1(dir).map_err(|e| err("cannot set format 1 files aside", e))?;
        // Ids are never reused; one at the end of the id space can only be damage.
        let next_qid = snapshot.max_qid().checked_add(1).ok_or_else(|| {
            StoreError(format!(
                "meta.log in data dir {} names a queue id ({}) no warren assigns; it is damaged: restore it from a backup",
                dir.display(),
                snapshot.max_qid()
            ))
        })?;
        let live: HashSet<u64> = snapshot
            .vhosts
            .values()
            .flat_map(|v| v.queues.values().map(|q| q.qid))
            .collect();
        if let Some(s) = &shipping {
            meta.ship_to(s.clone());
        }
        let (messages, recovered) =
            MessageStore::open_shipped(&dir.join("messages"), &live, config, shipping)
                .map_err(|e| err("cannot read the message store", e))?;
        let store = Arc::new(Store {
            meta,
            messages,
            node_id,
            dir: dir.to_path_buf(),
            next_qid: AtomicU64::new(next_qid),
            lock: std::sync::Mutex::new(Some(lock)),
        });
        Ok(Opened {
            store,
            snapshot,
            messages: recovered,
        })
    }

    /// Flush and stop the message store, and give up the data directory (the end of a
    /// graceful stop).
    pub fn close(&self) {
        self.messages.close();
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Stop recording deletions and consumption (the first step of a graceful stop).
    pub fn freeze(&self) {
        self.meta.freeze();
        self.messages.freeze();
    }

    /// Keep a copy of a message the broker can no longer handle (a dead letter whose
    /// properties do not decode) in `quarantine/`, rather than lose it: one file, one
    /// record in the message segments' format (a transient message, id 0), so the tools
    /// that read segments read it. `from` names where it was (logged, not in the name).
    pub fn set_aside(&self, from: &str, m: &crate::message::Message) {
        use codec::Put;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut record = Vec::new();
        record::append_with(&mut record, |o| {
            o.put_u8(b'T');
            o.put_u64(0);
            o.put_u16(0);
            o.put_bytes(&m.exchange);
            o.put_bytes(&m.routing_key);
            o.put_bytes(&m.properties);
            o.put_bytes(&m.body);
        });
        let what = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        match files::quarantine(&self.dir, Path::new("message"), &what, &record) {
            Ok(path) => tracing::warn!(from, copy = %path.display(), "message set aside"),
            Err(e) => tracing::error!(from, error = %e, "could not set a message aside"),
        }
    }

    /// A new durable queue's id, never reused.
    pub fn next_qid(&self) -> u64 {
        self.next_qid.fetch_add(1, Ordering::AcqRel)
    }
}

/// The data directory cannot be created or written: one line saying so and what to do.
fn unusable(dir: &Path, e: &std::io::Error) -> StoreError {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "give the user warren runs as write access to it (e.g. chown), or set data_dir to a writable directory"
        }
        _ => "set data_dir to a directory warren can create and write",
    };
    StoreError(format!(
        "data dir {} is not writable: {e}; {hint}",
        dir.display()
    ))
}

/// Take the data directory's lock (a follower holds it while it replicates).
pub fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("warren.lock");
    let mut f = files::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| unusable(dir, &e))?;
    if f.try_lock().is_err() {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(StoreError(format!(
            "data dir {} is in use by another warren process (pid {}); stop it or choose another data_dir",
            dir.display(),
            pid.trim()
        )));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// `warrenctl reset`: remove the metadata and the message journal (the node starts
/// empty, with the default user and vhost). What was set aside (`quarantine/`,
/// `diverged/`, `migrated-format-*/`) stays: it is the operator's. The caller holds
/// the directory's lock and no store is open on it.
pub fn wipe(dir: &Path) -> std::io::Result<()> {
    let meta = dir.join("meta.log");
    if meta.exists() {
        fs::remove_file(&meta)?;
    }
    let messages = dir.join("messages");
    if messages.exists() {
        fs::remove_dir_all(&messages)?;
    }
    File::open(dir)?.sync_all()
}

/// Read (or create) `meta.toml`: the format the directory is in (a new one is in this
/// binary's) and the node id.
fn meta_toml(dir: &Path) -> Result<(u32, String), StoreError> {
    let path: PathBuf = dir.join("meta.toml");
    if let Ok(text) = fs::read_to_string(&path) {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| StoreError(format!("{} is not valid: {e}", path.display())))?;
        let format = table
            .get("format")
            .and_then(|v| v.as_integer())
            .unwrap_or(0);
        if format > i64::from(FORMAT) {
            return Err(StoreError(format!(
                "data dir {} was written by a newer warren (format {format}); this binary reads formats up to {FORMAT}. \
                 Run the newer version, or point data_dir elsewhere.",
                dir.display()
            )));
        }
        if let Some(id) = table.get("node_id").and_then(|v| v.as_str()) {
            return Ok((format.max(0) as u32, id.to_owned()));
        }
    }
    let id = crate::util::generated_name("warren");
    write_meta_toml(dir, &id)?;
    Ok((FORMAT, id))
}

fn write_meta_toml(dir: &Path, id: &str) -> Result<(), StoreError> {
    let path = dir.join("meta.toml");
    let text =
        format!("# warren data directory; do not edit.\nformat = {FORMAT}\nnode_id = \"{id}\"\n");
    let tmp = dir.join("meta.toml.new");
    files::write_synced(&tmp, text.as_bytes())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| StoreError(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    /// A metadata log naming the last queue id (found by fuzzing: `+ 1` overflowed)
    /// is refused as damage, not wrapped round to reuse id 0.
    #[test]
    fn a_queue_id_at_the_end_of_the_id_space_is_refused() {
        let dir = std::env::temp_dir().join(format!("warren-qid-max-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let Opened { store, .. } = Store::open(&dir, &StoreConfig::default(), &[]).unwrap();
            store.meta.append(&Change::Queue {
                vhost: "/".into(),
                name: "q".into(),
                def: meta::QueueDef {
                    qid: u64::MAX,
                    auto_delete: false,
                    arguments: Default::default(),
                },
            });
            store.meta.sync();
        }
        let err = Store::open(&dir, &StoreConfig::default(), &[])
            .err()
            .unwrap();
        assert!(err.0.contains("no warren assigns"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
