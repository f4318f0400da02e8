//! The durable topology: virtual hosts, durable exchanges and queues, and the bindings
//! between durable ends, as an append-only log of changes (`topology.log`).
//!
//! Changes are appended while the vhost's topology lock is held, so the log's order is
//! the order the changes happened in, and synced before the client hears declare-ok.
//! At start-up the log is replayed into a [`Snapshot`] and rewritten as just that
//! snapshot, so it never grows beyond one record per live entity plus recent changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use amq_protocol::types::FieldTable;

use super::codec::{Get, Put};
use super::record;

const FILE: &str = "topology.log";

/// The largest topology record a torn tail can announce (a change with its arguments is
/// a few kilobytes; random bytes rarely claim less than this).
const TORN_MAX: usize = 16 << 20;

/// Whether the message store next to the topology log has any segment.
fn has_segments(dir: &Path) -> bool {
    fs::read_dir(dir.join("messages")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "seg"))
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    /// The queue's id in the message store (unique across restarts).
    pub qid: u64,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub source: String,
    pub to_queue: bool,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct VhostDefs {
    pub exchanges: BTreeMap<String, ExchangeDef>,
    pub queues: BTreeMap<String, QueueDef>,
    bindings: BindingDefs,
}

impl VhostDefs {
    /// The bindings, in the order they were made.
    pub fn bindings(&self) -> impl Iterator<Item = &BindingDef> {
        self.bindings.by_seq.values()
    }
}

impl BindingDef {
    /// Every part of the binding, encoded as the log writes it: equal bindings have
    /// equal identities.
    fn identity(&self) -> Vec<u8> {
        let mut id = Vec::new();
        self.encode(&mut id);
        id
    }

    fn encode(&self, o: &mut Vec<u8>) {
        o.put_str(&self.source);
        o.put_u8(self.to_queue as u8);
        o.put_str(&self.destination);
        o.put_str(&self.routing_key);
        o.put_table(&self.arguments);
    }
}

/// A vhost's durable bindings in the order they were made, indexed by identity and by
/// each end, so that replaying a log of many binds, unbinds and deletions costs each
/// change a constant amount (a list searched per change made a 40k-binding replay
/// quadratic; the broker's live bindings are indexed the same way, exchange/bindings.rs).
#[derive(Debug, Default, Clone)]
struct BindingDefs {
    next: u64,
    by_seq: BTreeMap<u64, BindingDef>,
    by_identity: HashMap<Vec<u8>, u64>,
    by_source: HashMap<String, BTreeSet<u64>>,
    /// By destination: queues and exchanges apart (`to_queue`).
    by_destination: HashMap<(bool, String), BTreeSet<u64>>,
}

impl PartialEq for BindingDefs {
    fn eq(&self, other: &Self) -> bool {
        self.by_seq.values().eq(other.by_seq.values())
    }
}

impl BindingDefs {
    fn insert(&mut self, b: BindingDef) {
        let identity = b.identity();
        if self.by_identity.contains_key(&identity) {
            return;
        }
        let seq = self.next;
        self.next += 1;
        self.by_identity.insert(identity, seq);
        self.by_source
            .entry(b.source.clone())
            .or_default()
            .insert(seq);
        self.by_destination
            .entry((b.to_queue, b.destination.clone()))
            .or_default()
            .insert(seq);
        self.by_seq.insert(seq, b);
    }

    fn remove(&mut self, b: &BindingDef) {
        if let Some(seq) = self.by_identity.get(&b.identity()).copied() {
            self.remove_seq(seq);
        }
    }

    fn remove_seq(&mut self, seq: u64) {
        let Some(b) = self.by_seq.remove(&seq) else {
            return;
        };
        self.by_identity.remove(&b.identity());
        if let Some(set) = self.by_source.get_mut(&b.source) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_source.remove(&b.source);
            }
        }
        let dest = (b.to_queue, b.destination);
        if let Some(set) = self.by_destination.get_mut(&dest) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_destination.remove(&dest);
            }
        }
    }

    /// Drop every binding to the queue (`to_queue`) or exchange `name`.
    fn remove_destination(&mut self, to_queue: bool, name: &str) {
        let seqs = self
            .by_destination
            .remove(&(to_queue, name.to_owned()))
            .unwrap_or_default();
        for seq in seqs {
            self.remove_seq(seq);
        }
    }

    /// Drop every binding from the exchange `name`.
    fn remove_source(&mut self, name: &str) {
        let seqs = self.by_source.remove(name).unwrap_or_default();
        for seq in seqs {
            self.remove_seq(seq);
        }
    }
}

/// What the log describes, replayed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub vhosts: BTreeMap<String, VhostDefs>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    AddVhost(String),
    DeleteVhost(String),
    Exchange {
        vhost: String,
        name: String,
        def: ExchangeDef,
    },
    DeleteExchange {
        vhost: String,
        name: String,
    },
    Queue {
        vhost: String,
        name: String,
        def: QueueDef,
    },
    DeleteQueue {
        vhost: String,
        name: String,
    },
    Bind {
        vhost: String,
        binding: BindingDef,
    },
    Unbind {
        vhost: String,
        binding: BindingDef,
    },
}

impl Snapshot {
    /// Apply one change, with the same cascades the broker applies in memory: deleting a
    /// queue or exchange removes its bindings.
    pub fn apply(&mut self, c: Change) {
        match c {
            Change::AddVhost(v) => {
                self.vhosts.entry(v).or_default();
            }
            Change::DeleteVhost(v) => {
                self.vhosts.remove(&v);
            }
            Change::Exchange { vhost, name, def } => {
                self.vhosts
                    .entry(vhost)
                    .or_default()
                    .exchanges
                    .insert(name, def);
            }
            Change::DeleteExchange { vhost, name } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.exchanges.remove(&name);
                    v.bindings.remove_source(&name);
                    v.bindings.remove_destination(false, &name);
                }
            }
            Change::Queue { vhost, name, def } => {
                self.vhosts
                    .entry(vhost)
                    .or_default()
                    .queues
                    .insert(name, def);
            }
            Change::DeleteQueue { vhost, name } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.queues.remove(&name);
                    v.bindings.remove_destination(true, &name);
                }
            }
            Change::Bind { vhost, binding } => {
                self.vhosts
                    .entry(vhost)
                    .or_default()
                    .bindings
                    .insert(binding);
            }
            Change::Unbind { vhost, binding } => {
                if let Some(v) = self.vhosts.get_mut(&vhost) {
                    v.bindings.remove(&binding);
                }
            }
        }
    }

    /// The changes that rebuild this snapshot.
    fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for (vhost, defs) in &self.vhosts {
            out.push(Change::AddVhost(vhost.clone()));
            for (name, def) in &defs.exchanges {
                out.push(Change::Exchange {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    def: def.clone(),
                });
            }
            for (name, def) in &defs.queues {
                out.push(Change::Queue {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    def: def.clone(),
                });
            }
            for b in defs.bindings() {
                out.push(Change::Bind {
                    vhost: vhost.clone(),
                    binding: b.clone(),
                });
            }
        }
        out
    }

    pub fn max_qid(&self) -> u64 {
        self.vhosts
            .values()
            .flat_map(|v| v.queues.values().map(|q| q.qid))
            .max()
            .unwrap_or(0)
    }
}

fn encode(c: &Change, o: &mut Vec<u8>) {
    match c {
        Change::AddVhost(v) => {
            o.put_u8(b'V');
            o.put_str(v);
        }
        Change::DeleteVhost(v) => {
            o.put_u8(b'v');
            o.put_str(v);
        }
        Change::Exchange { vhost, name, def } => {
            o.put_u8(b'E');
            o.put_str(vhost);
            o.put_str(name);
            o.put_str(&def.kind);
            o.put_u8(def.auto_delete as u8);
            o.put_u8(def.internal as u8);
            o.put_table(&def.arguments);
        }
        Change::DeleteExchange { vhost, name } => {
            o.put_u8(b'e');
            o.put_str(vhost);
            o.put_str(name);
        }
        Change::Queue { vhost, name, def } => {
            o.put_u8(b'Q');
            o.put_str(vhost);
            o.put_str(name);
            o.put_u64(def.qid);
            o.put_u8(def.auto_delete as u8);
            o.put_table(&def.arguments);
        }
        Change::DeleteQueue { vhost, name } => {
            o.put_u8(b'q');
            o.put_str(vhost);
            o.put_str(name);
        }
        Change::Bind { vhost, binding: b } => {
            o.put_u8(b'B');
            o.put_str(vhost);
            b.encode(o);
        }
        Change::Unbind { vhost, binding: b } => {
            o.put_u8(b'b');
            o.put_str(vhost);
            b.encode(o);
        }
    }
}

fn decode(payload: &[u8]) -> Option<Change> {
    let mut g = Get::new(payload);
    let binding = |g: &mut Get<'_>| -> Option<BindingDef> {
        Some(BindingDef {
            source: g.string()?,
            to_queue: g.u8()? != 0,
            destination: g.string()?,
            routing_key: g.string()?,
            arguments: g.table()?,
        })
    };
    Some(match g.u8()? {
        b'V' => Change::AddVhost(g.string()?),
        b'v' => Change::DeleteVhost(g.string()?),
        b'E' => Change::Exchange {
            vhost: g.string()?,
            name: g.string()?,
            def: ExchangeDef {
                kind: g.string()?,
                auto_delete: g.u8()? != 0,
                internal: g.u8()? != 0,
                arguments: g.table()?,
            },
        },
        b'e' => Change::DeleteExchange {
            vhost: g.string()?,
            name: g.string()?,
        },
        b'Q' => Change::Queue {
            vhost: g.string()?,
            name: g.string()?,
            def: QueueDef {
                qid: g.u64()?,
                auto_delete: g.u8()? != 0,
                arguments: g.table()?,
            },
        },
        b'q' => Change::DeleteQueue {
            vhost: g.string()?,
            name: g.string()?,
        },
        b'B' => Change::Bind {
            vhost: g.string()?,
            binding: binding(&mut g)?,
        },
        b'b' => Change::Unbind {
            vhost: g.string()?,
            binding: binding(&mut g)?,
        },
        _ => return None,
    })
}

pub struct TopologyLog {
    path: PathBuf,
    file: Mutex<File>,
    /// Appended since the last sync.
    dirty: AtomicBool,
    /// Shutting down: connections closing must not delete auto-delete queues on disk.
    frozen: AtomicBool,
    fsync: bool,
}

impl TopologyLog {
    /// Replay the log in `dir`, then rewrite it as the snapshot it amounts to.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<(TopologyLog, Snapshot)> {
        let path = dir.join(FILE);
        let mut snapshot = Snapshot::default();
        if let Ok(data) = fs::read(&path) {
            let mut unreadable = Vec::new();
            let report = record::scan(&data, |offset, payload| match decode(payload) {
                Some(c) => snapshot.apply(c),
                None => unreadable.push(offset),
            });
            unreadable.extend(&report.corrupt_at);
            if report.valid_len < data.len()
                && !record::torn_tail(&data, report.valid_len, TORN_MAX)
            {
                unreadable.push(report.valid_len);
            }
            if let Some(first) = unreadable.iter().min() {
                // Replaying around a lost record could forget a queue, and recovery would
                // then drop that queue's messages: refuse, and touch nothing.
                return Err(io::Error::other(format!(
                    "{} is damaged ({} unreadable record(s), the first at offset {first}); \
                     nothing was changed. Restore it from a backup, or move it and messages/ \
                     aside to start without the durable topology and messages",
                    path.display(),
                    unreadable.len()
                )));
            }
            if report.valid_len < data.len() {
                // A torn tail after a crash: compaction below leaves it out; keep a copy.
                let what = format!("tail-at-{}", report.valid_len);
                let data_dir = path.parent().unwrap_or(dir);
                super::files::quarantine(data_dir, &path, &what, &data[report.valid_len..])?;
                record::report(&path, data.len(), &report);
            }
        } else if has_segments(dir) {
            return Err(io::Error::other(format!(
                "{} is missing but messages/ holds persistent messages: without it they belong \
                 to no queue. Restore it from a backup, or move messages/ aside to start empty; \
                 nothing was changed",
                path.display()
            )));
        }
        // Compact: write the snapshot to a new file, sync it, then swap it in.
        let tmp = dir.join(format!("{FILE}.new"));
        let mut buf = Vec::new();
        for c in snapshot.changes() {
            record::append_with(&mut buf, |o| encode(&c, o));
        }
        super::files::write_synced(&tmp, &buf)?;
        fs::rename(&tmp, &path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok((
            TopologyLog {
                path,
                file: Mutex::new(file),
                dirty: AtomicBool::new(false),
                frozen: AtomicBool::new(false),
                fsync,
            },
            snapshot,
        ))
    }

    /// Record a change (not yet synced; see [`TopologyLog::sync`]). Call it while
    /// holding the lock that orders the change itself.
    pub fn append(&self, c: &Change) {
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let mut buf = Vec::new();
        record::append_with(&mut buf, |o| encode(c, o));
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&buf) {
            tracing::error!(error = %e, file = %self.path.display(), "could not record a topology change");
        }
        self.dirty.store(true, Ordering::Release);
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// Make appended changes durable (before the client is told they happened).
    pub fn sync(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) && self.fsync {
            let f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = f.sync_data() {
                tracing::error!(error = %e, file = %self.path.display(), "could not sync the topology log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = std::env::temp_dir().join(format!("warren-topology-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (log, snap) = TopologyLog::open(&dir, true).unwrap();
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
        let (_log, snap) = TopologyLog::open(&dir, true).unwrap();
        let defs = &snap.vhosts["/"];
        assert_eq!(defs.queues.keys().collect::<Vec<_>>(), vec!["q"]);
        assert_eq!(defs.exchanges["x"], x);
        assert_eq!(defs.bindings().collect::<Vec<_>>(), vec![&b]);
        assert_eq!(snap.max_qid(), 3);
    }
}
