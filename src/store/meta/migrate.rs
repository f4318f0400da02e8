//! Format 1 to format 2. Format 1 kept exchanges, queues and bindings in `topology.log`
//! (whose records format 2 still reads), users, vhosts' descriptions, permissions and
//! limits in `access.json` (RabbitMQ's definitions JSON, as warren exported it) and
//! policies in `policies.json`. Format 2 keeps all of it in `meta.log`.
//!
//! Start-up reads the old files into one snapshot, writes `meta.log`, records format 2 in
//! `meta.toml`, and only then moves the old files into `migrated-format-1/`: they are
//! set aside, never deleted, and a crash at any step leaves either the old files (read
//! again at the next start) or a complete `meta.log`.

use std::fs;
use std::io;
use std::path::Path;

use serde_json::Value;

use crate::util::json_tags;

use super::records::{
    Change, Limits, PermissionDef, PolicyDef, Snapshot, TopicPermissionDef, UserDef, VhostInfo,
};

const TOPOLOGY: &str = "topology.log";
const ACCESS: &str = "access.json";
const POLICIES: &str = "policies.json";
const ASIDE: &str = "migrated-format-1";

pub(super) fn format_1_present(dir: &Path) -> bool {
    [TOPOLOGY, ACCESS, POLICIES]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// What format 1's files amount to. Without `access.json` (a format 1 broker wrote it at
/// every start, so only one that never finished starting lacks it) users start from
/// `seed`, as on a new data directory.
pub(super) fn read_format_1(dir: &Path, seed: &[Change]) -> io::Result<Snapshot> {
    let topology = dir.join(TOPOLOGY);
    let mut snapshot = if topology.exists() {
        super::replay(&topology, dir)?
    } else if super::has_segments(dir) {
        return Err(super::missing(&topology));
    } else {
        Snapshot::default()
    };
    match json(dir, ACCESS)? {
        Some(doc) => access(&mut snapshot, &doc),
        None => {
            for c in seed {
                snapshot.apply(c.clone());
            }
        }
    }
    if let Some(doc) = json(dir, POLICIES)? {
        policies(&mut snapshot, &doc);
    }
    tracing::info!(
        dir = %dir.display(),
        "data directory in format 1 (topology.log, access.json, policies.json): migrated to meta.log"
    );
    Ok(snapshot)
}

/// Once `meta.log` and `meta.toml` say format 2: move whatever format 1 files are left
/// into `migrated-format-1/` (after a migration, or a crash right after one).
pub fn set_aside_format_1(dir: &Path) -> io::Result<()> {
    for name in [TOPOLOGY, ACCESS, POLICIES] {
        let from = dir.join(name);
        if !from.exists() {
            continue;
        }
        let aside = dir.join(ASIDE);
        crate::store::files::create_dir(&aside)?;
        let mut to = aside.join(name);
        let mut n = 1;
        while to.exists() {
            to = aside.join(format!("{name}.{n}"));
            n += 1;
        }
        fs::rename(&from, &to)?;
        tracing::info!(file = name, to = %to.display(), "format 1 file set aside");
    }
    Ok(())
}

fn json(dir: &Path, name: &str) -> io::Result<Option<Value>> {
    match fs::read(dir.join(name)) {
        Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|e| {
            io::Error::other(format!(
                "{name} in the data directory is not valid JSON: {e}; nothing was changed"
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn list<'a>(doc: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    doc.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn limits(v: Option<&Value>) -> Limits {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// `access.json`: the users in it are all the users there were (a deleted default user
/// stays deleted), and likewise permissions.
fn access(snapshot: &mut Snapshot, doc: &Value) {
    for u in list(doc, "users") {
        snapshot.apply(Change::User {
            name: text(u, "name"),
            def: UserDef {
                password_hash: text(u, "password_hash"),
                hashing_algorithm: text(u, "hashing_algorithm"),
                tags: json_tags(u.get("tags")),
                limits: limits(u.get("limits")),
            },
        });
    }
    for v in list(doc, "vhosts") {
        let vhost = text(v, "name");
        snapshot.apply(Change::AddVhost(vhost.clone()));
        snapshot.apply(Change::VhostInfo {
            vhost,
            info: VhostInfo {
                description: v
                    .pointer("/metadata/description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                tags: json_tags(v.pointer("/metadata/tags")),
            },
        });
    }
    for p in list(doc, "parameters") {
        if p.get("component").and_then(Value::as_str) == Some("vhost-limits") {
            snapshot.apply(Change::VhostLimits {
                vhost: text(p, "vhost"),
                limits: limits(p.get("value")),
            });
        }
    }
    for p in list(doc, "permissions") {
        snapshot.apply(Change::Permission {
            vhost: text(p, "vhost"),
            user: text(p, "user"),
            def: PermissionDef {
                configure: text(p, "configure"),
                write: text(p, "write"),
                read: text(p, "read"),
            },
        });
    }
    for t in list(doc, "topic_permissions") {
        snapshot.apply(Change::TopicPermission {
            vhost: text(t, "vhost"),
            user: text(t, "user"),
            exchange: text(t, "exchange"),
            def: TopicPermissionDef {
                write: text(t, "write"),
                read: text(t, "read"),
            },
        });
    }
}

/// `policies.json`: `{"policies": [...], "operator_policies": [...]}`.
fn policies(snapshot: &mut Snapshot, doc: &Value) {
    for (key, operator) in [("policies", false), ("operator_policies", true)] {
        for p in list(doc, key) {
            snapshot.apply(Change::Policy {
                vhost: text(p, "vhost"),
                def: PolicyDef {
                    operator,
                    name: text(p, "name"),
                    pattern: text(p, "pattern"),
                    apply_to: p
                        .get("apply-to")
                        .and_then(Value::as_str)
                        .unwrap_or("all")
                        .to_owned(),
                    definition: p
                        .get("definition")
                        .map(Value::to_string)
                        .unwrap_or_else(|| "{}".to_owned()),
                    priority: p.get("priority").and_then(Value::as_i64).unwrap_or(0),
                },
            });
        }
    }
}
