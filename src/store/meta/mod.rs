//! The metadata store: every durable definition as one append-only, checksummed log of
//! typed changes (`meta.log`; the records are in [`records`]): vhosts with their
//! description, tags and limits; durable exchanges and queues with their arguments; the
//! bindings between durable ends; policies and operator policies; users, permissions and
//! topic permissions. It is the single owner of what the broker knows across a restart,
//! and the ordered stream a replica would follow.
//!
//! A change is appended inside the operation that makes it, under the lock that orders
//! it in memory (the vhost's topology lock, the access model's lock, a vhost's policy
//! lock), so the log's order is the order the changes happened in; it is synced before
//! the client, the CLI or the HTTP caller hears that it happened. At start-up the log is
//! replayed into a [`Snapshot`] and rewritten as just that snapshot, so it never grows
//! beyond one record per live definition plus recent changes.
//!
//! Format 1 data directories (`topology.log`, `access.json`, `policies.json`) are
//! migrated on start by [`migrate`].

mod migrate;
pub mod records;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use migrate::set_aside_format_1;
pub use records::*;

use super::record;
use super::shipping::{FileOp, Shipping};

const FILE: &str = "meta.log";

/// How often a metadata change still waiting for the followers says so.
const REPLICATION_WAIT: Duration = Duration::from_secs(10);

/// A fenced leader re-executes within this; a change waiting past it ends the process.
const FENCED_GRACE: Duration = Duration::from_secs(2);

/// The largest record a torn tail can announce (a change with its arguments is a few
/// kilobytes; random bytes rarely claim less than this).
const TORN_MAX: usize = 16 << 20;

/// Whether the message store next to the log has any segment.
fn has_segments(dir: &Path) -> bool {
    fs::read_dir(dir.join("messages")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "seg"))
    })
}

/// The log is gone but messages are on disk: refuse to start, touching nothing.
fn missing(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is missing but messages/ holds persistent messages: without it they belong \
         to no queue. Restore it from a backup, or move messages/ aside to start empty; \
         nothing was changed",
        path.display()
    ))
}

/// The snapshot a log file amounts to (`meta.log`, or format 1's `topology.log`, whose
/// records are a subset). A torn tail after a crash is set aside in `quarantine/`; any
/// other unreadable record refuses the whole file, touching nothing.
fn replay(path: &Path, dir: &Path) -> io::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    let data = fs::read(path)?;
    let mut unreadable = Vec::new();
    let report = record::scan(&data, |offset, payload| match records::decode(payload) {
        Some(c) => snapshot.apply(c),
        None => unreadable.push(offset),
    });
    unreadable.extend(&report.corrupt_at);
    if report.valid_len < data.len() && !record::torn_tail(&data, report.valid_len, TORN_MAX) {
        unreadable.push(report.valid_len);
    }
    if let Some(first) = unreadable.iter().min() {
        // Replaying around a lost record could forget a queue, and recovery would then
        // drop that queue's messages: refuse, and touch nothing.
        return Err(io::Error::other(format!(
            "{} is damaged ({} unreadable record(s), the first at offset {first}); \
             nothing was changed. Restore it from a backup, or move it and messages/ \
             aside to start without the durable definitions and messages",
            path.display(),
            unreadable.len()
        )));
    }
    if report.valid_len < data.len() {
        // A torn tail after a crash: compaction leaves it out; keep a copy.
        let what = format!("tail-at-{}", report.valid_len);
        super::files::quarantine(dir, path, &what, &data[report.valid_len..])?;
        record::report(path, data.len(), &report);
    }
    Ok(snapshot)
}

pub struct MetaLog {
    path: PathBuf,
    /// The file and its length (where the next record goes, as replication names it).
    file: Mutex<(File, u64)>,
    /// In a cluster's leader: appends go to the followers, and a sync waits for them.
    shipping: OnceLock<Arc<Shipping>>,
    /// The last change shipped.
    shipped: AtomicU64,
    /// Appended since the last sync.
    dirty: AtomicBool,
    /// Shutting down: connections closing must not delete auto-delete queues on disk.
    frozen: AtomicBool,
    fsync: bool,
}

impl MetaLog {
    /// Replay the log in `dir` (or migrate format 1's files), then rewrite it as the
    /// snapshot it amounts to. A data directory with neither starts from `seed`: the
    /// default vhost, user and permissions.
    pub fn open(dir: &Path, fsync: bool, seed: &[Change]) -> io::Result<(MetaLog, Snapshot)> {
        let path = dir.join(FILE);
        let snapshot = if path.exists() {
            replay(&path, dir)?
        } else if migrate::format_1_present(dir) {
            migrate::read_format_1(dir, seed)?
        } else if has_segments(dir) {
            return Err(missing(&path));
        } else {
            let mut fresh = Snapshot::default();
            for c in seed {
                fresh.apply(c.clone());
            }
            fresh
        };
        // Compact: write the snapshot to a new file, sync it, then swap it in.
        let tmp = dir.join(format!("{FILE}.new"));
        let mut buf = Vec::new();
        for c in snapshot.changes() {
            record::append_with(&mut buf, |o| records::encode(&c, o));
        }
        super::files::write_synced(&tmp, &buf)?;
        fs::rename(&tmp, &path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        let len = buf.len() as u64;
        Ok((
            MetaLog {
                path,
                file: Mutex::new((file, len)),
                shipping: OnceLock::new(),
                shipped: AtomicU64::new(0),
                dirty: AtomicBool::new(false),
                frozen: AtomicBool::new(false),
                fsync,
            },
            snapshot,
        ))
    }

    /// Record a change (not yet synced; see [`MetaLog::sync`]). Call it while
    /// holding the lock that orders the change itself.
    pub fn append(&self, c: &Change) {
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let mut buf = Vec::new();
        record::append_with(&mut buf, |o| records::encode(c, o));
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.0.write_all(&buf) {
            tracing::error!(error = %e, file = %self.path.display(), "could not record a change to the durable definitions");
            return;
        }
        let offset = f.1;
        f.1 += buf.len() as u64;
        if let Some(shipping) = self.shipping.get() {
            let seq = shipping.push(FileOp::Append {
                file: FILE.to_owned(),
                offset,
                data: buf.into(),
            });
            self.shipped.store(seq, Ordering::Release);
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// In a cluster's leader: ship every change from now on (the followers get the file
    /// as it is when they connect).
    pub fn ship_to(&self, shipping: Arc<Shipping>) {
        let _ = self.shipping.set(shipping);
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// Make appended changes durable (before the client is told they happened).
    /// In a cluster, also wait until enough followers hold them (blocking, off the
    /// runtime's workers: metadata changes are rare, and their callers answer only
    /// after this).
    pub fn sync(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) && self.fsync {
            let f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = f.0.sync_data() {
                tracing::error!(error = %e, file = %self.path.display(), "could not sync the metadata log");
            }
        }
        if let Some(shipping) = self.shipping.get() {
            let seq = self.shipped.load(Ordering::Acquire);
            // Off the runtime's worker: the tasks that keep the lease and the in-sync
            // replicas (which end this wait) must go on running meanwhile.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(|| replicated(shipping, seq))
                }
                _ => replicated(shipping, seq),
            }
        }
    }
}

/// Wait until change `seq` is on enough replicas. Its caller answers only after this, so
/// it does not give up: a follower that fell silent leaves the in-sync replicas within
/// `cluster.ack_timeout_ms`, and then this returns. A leader that lost its lease never
/// returns: its caller must not hear of a change the next leader may not have. The
/// process re-executes as a follower (or, stopping, ends) instead.
fn replicated(shipping: &Shipping, seq: u64) {
    let mut waited = Duration::ZERO;
    while !shipping.wait(seq, REPLICATION_WAIT) {
        if !shipping.lease_valid() {
            std::thread::sleep(FENCED_GRACE);
            tracing::error!(seq, "leadership is lost with a change to the durable definitions not on enough replicas; ending the process so that no one is told it happened");
            std::process::exit(75);
        }
        waited += REPLICATION_WAIT;
        tracing::warn!(
            seq,
            waited_s = waited.as_secs(),
            "a change to the durable definitions waits for the in-sync replicas"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::FieldTable;

    fn bind(source: &str, to_queue: bool, destination: &str, key: &str) -> Change {
        Change::Bind {
            vhost: "/".into(),
            binding: BindingDef {
                source: source.into(),
                to_queue,
                destination: destination.into(),
                routing_key: key.into(),
                arguments: FieldTable::default(),
            },
        }
    }

    fn listed(snap: &Snapshot) -> Vec<String> {
        snap.vhosts["/"]
            .bindings()
            .map(|b| {
                format!(
                    "{}>{}{}:{}",
                    b.source,
                    if b.to_queue { "q:" } else { "x:" },
                    b.destination,
                    b.routing_key
                )
            })
            .collect()
    }

    /// Binds, unbinds and the cascades of deleting a queue or an exchange, through the
    /// indexes: the same bindings remain, in the order they were made.
    #[test]
    fn bindings_replay_with_cascades_in_order() {
        let mut snap = Snapshot::default();
        for c in [
            bind("x", true, "q1", "a"),
            bind("x", true, "q2", "a"),
            bind("x", false, "x2", ""),
            bind("y", true, "q1", "b"),
            bind("x2", true, "q2", "c"),
            bind("x", true, "q1", "a"), // again: still one
            bind("q1", false, "x", ""), // an exchange named like a queue
        ] {
            snap.apply(c);
        }
        assert_eq!(
            listed(&snap),
            [
                "x>q:q1:a",
                "x>q:q2:a",
                "x>x:x2:",
                "y>q:q1:b",
                "x2>q:q2:c",
                "q1>x:x:"
            ]
        );
        snap.apply(Change::DeleteQueue {
            vhost: "/".into(),
            name: "q1".into(),
        });
        assert_eq!(
            listed(&snap),
            ["x>q:q2:a", "x>x:x2:", "x2>q:q2:c", "q1>x:x:"]
        );
        let Change::Bind { binding, .. } = bind("x2", true, "q2", "c") else {
            unreachable!()
        };
        snap.apply(Change::Unbind {
            vhost: "/".into(),
            binding: binding.clone(),
        });
        snap.apply(Change::Unbind {
            vhost: "/".into(),
            binding,
        });
        assert_eq!(listed(&snap), ["x>q:q2:a", "x>x:x2:", "q1>x:x:"]);
        // Deleting exchange x takes its bindings as source and as destination.
        snap.apply(Change::DeleteExchange {
            vhost: "/".into(),
            name: "x".into(),
        });
        assert_eq!(listed(&snap), Vec::<String>::new());
        // Bound again after an unbind: last in order.
        snap.apply(bind("y", true, "q3", "k"));
        snap.apply(bind("z", true, "q3", "k"));
        snap.apply(Change::Unbind {
            vhost: "/".into(),
            binding: BindingDef {
                source: "y".into(),
                to_queue: true,
                destination: "q3".into(),
                routing_key: "k".into(),
                arguments: FieldTable::default(),
            },
        });
        snap.apply(bind("y", true, "q3", "k"));
        assert_eq!(listed(&snap), ["z>q:q3:k", "y>q:q3:k"]);
    }

    #[test]
    fn replays_and_compacts() {
        let dir = std::env::temp_dir().join(format!("warren-meta-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (log, snap) = MetaLog::open(&dir, true, &[]).unwrap();
        assert_eq!(snap, Snapshot::default());
        let v = "/".to_string();
        let q = QueueDef {
            qid: 3,
            auto_delete: false,
            arguments: FieldTable::default(),
        };
        let x = ExchangeDef {
            kind: "topic".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        };
        let b = BindingDef {
            source: "x".into(),
            to_queue: true,
            destination: "q".into(),
            routing_key: "a.#".into(),
            arguments: FieldTable::default(),
        };
        log.append(&Change::Queue {
            vhost: v.clone(),
            name: "q".into(),
            def: q.clone(),
        });
        log.append(&Change::Queue {
            vhost: v.clone(),
            name: "gone".into(),
            def: QueueDef {
                qid: 4,
                ..q.clone()
            },
        });
        log.append(&Change::Exchange {
            vhost: v.clone(),
            name: "x".into(),
            def: x.clone(),
        });
        log.append(&Change::Bind {
            vhost: v.clone(),
            binding: b.clone(),
        });
        log.append(&Change::DeleteQueue {
            vhost: v.clone(),
            name: "gone".into(),
        });
        log.sync();
        drop(log);
        let (_log, snap) = MetaLog::open(&dir, true, &[]).unwrap();
        let defs = &snap.vhosts["/"];
        assert_eq!(defs.queues.keys().collect::<Vec<_>>(), vec!["q"]);
        assert_eq!(defs.exchanges["x"], x);
        assert_eq!(defs.bindings().collect::<Vec<_>>(), vec![&b]);
        assert_eq!(snap.max_qid(), 3);
    }

    fn every_kind_of_change() -> Vec<Change> {
        let limits: Limits = [
            ("max-connections".to_owned(), 7),
            ("max-channels".to_owned(), -1),
        ]
        .into_iter()
        .collect();
        vec![
            Change::AddVhost("app".into()),
            Change::VhostInfo {
                vhost: "app".into(),
                info: VhostInfo {
                    description: "the app".into(),
                    tags: vec!["prod".into(), "eu".into()],
                },
            },
            Change::VhostLimits {
                vhost: "app".into(),
                limits: limits.clone(),
            },
            Change::User {
                name: "alice".into(),
                def: UserDef {
                    password_hash: "aGFzaA==".into(),
                    hashing_algorithm: "rabbit_password_hashing_sha256".into(),
                    tags: vec!["management".into()],
                    limits,
                },
            },
            Change::User {
                name: "bob".into(),
                def: UserDef {
                    password_hash: String::new(),
                    hashing_algorithm: "rabbit_password_hashing_sha256".into(),
                    tags: Vec::new(),
                    limits: Limits::new(),
                },
            },
            Change::Permission {
                vhost: "app".into(),
                user: "alice".into(),
                def: PermissionDef {
                    configure: "^alice-".into(),
                    write: ".*".into(),
                    read: "".into(),
                },
            },
            Change::Permission {
                vhost: "app".into(),
                user: "bob".into(),
                def: PermissionDef {
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                },
            },
            Change::TopicPermission {
                vhost: "app".into(),
                user: "alice".into(),
                exchange: "amq.topic".into(),
                def: TopicPermissionDef {
                    write: "^{username}\\.".into(),
                    read: ".*".into(),
                },
            },
            Change::TopicPermission {
                vhost: "app".into(),
                user: "alice".into(),
                exchange: "other".into(),
                def: TopicPermissionDef {
                    write: "x".into(),
                    read: "y".into(),
                },
            },
            Change::Policy {
                vhost: "app".into(),
                def: PolicyDef {
                    operator: false,
                    name: "p".into(),
                    pattern: "^a".into(),
                    apply_to: "queues".into(),
                    definition: r#"{"max-length":5}"#.into(),
                    priority: -2,
                },
            },
            Change::Policy {
                vhost: "app".into(),
                def: PolicyDef {
                    operator: true,
                    name: "p".into(),
                    pattern: ".*".into(),
                    apply_to: "all".into(),
                    definition: r#"{"expires":1000}"#.into(),
                    priority: 0,
                },
            },
        ]
    }

    /// Every kind of record survives the log and compaction, clears and cascades
    /// included, and a reopened log is the snapshot the changes amount to.
    #[test]
    fn every_kind_of_record_replays_and_compacts() {
        let dir = std::env::temp_dir().join(format!("warren-meta-kinds-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (log, _) = MetaLog::open(&dir, true, &[]).unwrap();
        let mut expected = Snapshot::default();
        let mut changes = every_kind_of_change();
        changes.extend([
            Change::ClearTopicPermission {
                vhost: "app".into(),
                user: "alice".into(),
                exchange: Some("other".into()),
            },
            Change::ClearPolicy {
                vhost: "app".into(),
                operator: false,
                name: "p".into(),
            },
            Change::ClearPermission {
                vhost: "app".into(),
                user: "bob".into(),
            },
            Change::DeleteUser("bob".into()),
        ]);
        for c in &changes {
            let mut one = Vec::new();
            records::encode(c, &mut one);
            assert_eq!(records::decode(&one).as_ref(), Some(c), "round trip");
            log.append(c);
            expected.apply(c.clone());
        }
        log.sync();
        drop(log);
        let (log, snap) = MetaLog::open(&dir, true, &[]).unwrap();
        assert_eq!(snap, expected);
        assert_eq!(snap.users.keys().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(snap.topic_permissions.len(), 1);
        assert_eq!(snap.vhosts["app"].policies.len(), 1, "the operator policy");
        assert_eq!(snap.vhosts["app"].info.tags, ["prod", "eu"]);
        // Deleting the vhost takes its permissions, limits and policies with it.
        log.append(&Change::DeleteVhost("app".into()));
        log.sync();
        drop(log);
        let (_log, snap) = MetaLog::open(&dir, true, &[]).unwrap();
        assert!(snap.vhosts.is_empty());
        assert!(snap.permissions.is_empty() && snap.topic_permissions.is_empty());
        assert_eq!(snap.users.len(), 1, "users are not in a vhost");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A new data directory starts from the seed; an existing one never again, even
    /// with every user deleted.
    #[test]
    fn the_seed_is_for_a_new_directory_only() {
        let dir = std::env::temp_dir().join(format!("warren-meta-seed-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let seed = every_kind_of_change();
        let (log, snap) = MetaLog::open(&dir, true, &seed).unwrap();
        assert_eq!(snap.users.len(), 2);
        log.append(&Change::DeleteUser("alice".into()));
        log.append(&Change::DeleteUser("bob".into()));
        log.sync();
        drop(log);
        let (_log, snap) = MetaLog::open(&dir, true, &seed).unwrap();
        assert!(snap.users.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
