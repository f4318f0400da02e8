//! Definitions: users, vhosts, permissions, limits and topology in RabbitMQ's JSON format
//! (`rabbitmqctl export_definitions`), so that a RabbitMQ export imports into warren with
//! working passwords and a warren export imports into RabbitMQ. Used by warrenctl's
//! export/import and by `definitions.load_file` at boot.
//!
//! Policies are exported and imported (operator policies are not part of RabbitMQ's
//! definitions, so neither of warren's). Runtime parameters other than vhost limits,
//! and global parameters, are not supported yet: imported ones are reported and skipped.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{json, Map, Value};

use crate::access::{password, Limits};
use crate::broker::{Broker, VhostMeta};
use crate::exchange::Destination;
use crate::protocol::table;
use crate::util::json_tags;
use crate::vhost::{ExchangeDecl, QueueDecl, Vhost};

/// What an import did not take. Warnings are things warren ignores on purpose (unknown
/// keys, unsupported parameters); errors are items it could not apply (the rest still are).
#[derive(Debug, Default)]
pub struct ImportReport {
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &[
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
];

/// The whole broker's definitions.
pub fn export(broker: &Broker) -> Value {
    let access = &broker.access;
    let users: Vec<Value> = access
        .users()
        .into_iter()
        .map(|u| {
            json!({
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": u.hashing_algorithm,
                "tags": u.tags,
                "limits": u.limits,
            })
        })
        .collect();
    let mut vhosts = Vec::new();
    let mut parameters = Vec::new();
    let mut exchanges = Vec::new();
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    for (vhost, meta) in broker.vhosts() {
        let limits = access.vhost_limits(&vhost.name);
        vhosts.push(json!({
            "name": &*vhost.name,
            "limits": limits.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "metadata": {"description": meta.description, "tags": meta.tags},
        }));
        if !limits.is_empty() {
            parameters.push(json!({
                "component": "vhost-limits",
                "name": "limits",
                "value": limits,
                "vhost": &*vhost.name,
            }));
        }
        for x in vhost.exchanges() {
            // The default and amq.* exchanges exist everywhere; RabbitMQ leaves them out.
            if x.name.is_empty() || x.name.starts_with("amq.") {
                continue;
            }
            let mut e = json!({
                "name": x.name,
                "vhost": &*vhost.name,
                "type": x.kind.as_str(),
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "arguments": table_to_json(&x.arguments),
            });
            // RabbitMQ 3.10 writes `internal` only for internal exchanges.
            if x.internal {
                e["internal"] = json!(true);
            }
            exchanges.push(e);
        }
        let mut qs = vhost.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs.iter().filter(|q| q.exclusive_owner.is_none()) {
            queues.push(json!({
                "name": &*q.name,
                "vhost": &*vhost.name,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": table_to_json(&q.arguments),
                "type": if crate::policy::is_quorum(&q.arguments) { "quorum" } else { "classic" },
            }));
        }
        for b in vhost.bindings() {
            let (dest_type, dest) = match &b.destination {
                Destination::Queue(q) => ("queue", q),
                Destination::Exchange(x) => ("exchange", x),
            };
            bindings.push(json!({
                "source": &*b.source,
                "vhost": &*vhost.name,
                "destination": &**dest,
                "destination_type": dest_type,
                "routing_key": b.routing_key,
                "arguments": table_to_json(&b.arguments),
            }));
        }
    }
    let permissions: Vec<Value> = access
        .permissions()
        .into_iter()
        .map(|(vhost, user, p)| {
            json!({
                "user": user,
                "vhost": vhost,
                "configure": p.configure.as_str(),
                "write": p.write.as_str(),
                "read": p.read.as_str(),
            })
        })
        .collect();
    let topic_permissions: Vec<Value> = access
        .topic_permissions()
        .into_iter()
        .map(|(vhost, user, t)| {
            json!({
                "user": user,
                "vhost": vhost,
                "exchange": t.exchange,
                "write": t.write.as_str(),
                "read": t.read.as_str(),
            })
        })
        .collect();
    json!({
        "rabbit_version": crate::RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": crate::RABBITMQ_COMPAT_VERSION,
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": parameters,
        "global_parameters": [],
        "policies": broker
            .list_policies(crate::policy::Kind::Policy, None)
            .iter()
            .map(crate::policy::Policy::to_json)
            .collect::<Vec<_>>(),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// Import definitions, in dependency order. Existing users get the imported hash and
/// tags; existing queues and exchanges must be equivalent, as with a declare.
pub fn import(broker: &Broker, defs: &Value) -> ImportReport {
    let mut r = ImportReport::default();
    let Some(top) = defs.as_object() else {
        r.errors.push(
            "definitions must be a JSON object (as rabbitmqctl export_definitions writes)".into(),
        );
        return r;
    };
    if let Err(e) = check_json(defs) {
        r.errors.push(e);
        return r;
    }
    for key in top.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        r.warnings.push(format!("unknown key '{key}' ignored"));
    }
    let n = list(top, "global_parameters").len();
    if n > 0 {
        r.warnings
            .push(format!("{n} global parameters ignored (not supported yet)"));
    }
    // In RabbitMQ's order: who and where first, then what may be done there, then the
    // topology the policies apply to.
    let mut import = Importer { broker, r };
    import.users(list(top, "users"));
    import.vhosts(list(top, "vhosts"));
    import.permissions(list(top, "permissions"));
    import.topic_permissions(list(top, "topic_permissions"));
    import.parameters(list(top, "parameters"));
    import.policies(list(top, "policies"));
    import.exchanges(list(top, "exchanges"));
    import.queues(list(top, "queues"));
    import.bindings(list(top, "bindings"));
    import.r
}

/// One import under way: each section's items applied through the broker's own
/// operations (so each is recorded as the CLI's would be), each failure a line in the
/// report naming the item.
struct Importer<'a> {
    broker: &'a Broker,
    r: ImportReport,
}

impl Importer<'_> {
    /// The vhost an item belongs in; its absence is the item's error.
    fn vhost(&mut self, what: &str, name: &str) -> Option<Arc<Vhost>> {
        let v = self.broker.vhost(name);
        if v.is_none() {
            self.r
                .errors
                .push(format!("{what}: vhost '{name}' does not exist"));
        }
        v
    }

    fn users(&mut self, items: &[Value]) {
        let access = &self.broker.access;
        for u in items {
            let name = str_field(u, "name");
            let hash = str_field(u, "password_hash");
            let algorithm = u
                .get("hashing_algorithm")
                .and_then(Value::as_str)
                .unwrap_or(password::SHA256);
            // Hand-written definitions may carry a plain password (RabbitMQ accepts it).
            let result = match u.get("password").and_then(Value::as_str) {
                Some(pass) if hash.is_empty() => {
                    access.insert_user(name, password::hash(pass), password::SHA256.into(), true)
                }
                _ => access.insert_user(name, hash.to_owned(), algorithm.to_owned(), true),
            };
            let result = result
                .and_then(|_| access.set_user_tags(name, json_tags(u.get("tags"))))
                .and_then(|_| access.set_user_limits(name, limits(u.get("limits"))));
            if let Err(e) = result {
                self.r.errors.push(format!("user '{name}': {e}"));
            }
        }
    }

    fn vhosts(&mut self, items: &[Value]) {
        for v in items {
            let name = str_field(v, "name");
            let meta = VhostMeta {
                description: v
                    .pointer("/metadata/description")
                    .or_else(|| v.get("description"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                tags: json_tags(v.pointer("/metadata/tags").or_else(|| v.get("tags"))),
            };
            if let Err(e) = self.broker.add_vhost(name, meta) {
                self.r.errors.push(format!("vhost '{name}': {e}"));
            }
        }
    }

    fn permissions(&mut self, items: &[Value]) {
        for p in items {
            let (user, vhost) = (str_field(p, "user"), str_field(p, "vhost"));
            let what = format!("permissions of user '{user}' in vhost '{vhost}'");
            if self.vhost(&what, vhost).is_none() {
                continue;
            }
            if let Err(e) = self.broker.access.set_permissions(
                vhost,
                user,
                str_field(p, "configure"),
                str_field(p, "write"),
                str_field(p, "read"),
            ) {
                self.r.errors.push(format!("{what}: {e}"));
            }
        }
    }

    fn topic_permissions(&mut self, items: &[Value]) {
        for p in items {
            let (user, vhost) = (str_field(p, "user"), str_field(p, "vhost"));
            let what = format!("topic permissions of user '{user}' in vhost '{vhost}'");
            if self.vhost(&what, vhost).is_none() {
                continue;
            }
            if let Err(e) = self.broker.access.set_topic_permissions(
                vhost,
                user,
                str_field(p, "exchange"),
                str_field(p, "write"),
                str_field(p, "read"),
            ) {
                self.r.errors.push(format!("{what}: {e}"));
            }
        }
    }

    /// Runtime parameters: vhost limits only, others are reported and skipped.
    fn parameters(&mut self, items: &[Value]) {
        for p in items {
            let (component, vhost) = (str_field(p, "component"), str_field(p, "vhost"));
            if component != "vhost-limits" {
                self.r.warnings.push(format!(
                    "parameter '{}' of component '{component}' in vhost '{vhost}' ignored (not supported yet)",
                    str_field(p, "name")
                ));
                continue;
            }
            let what = format!("limits of vhost '{vhost}'");
            if self.vhost(&what, vhost).is_none() {
                continue;
            }
            if let Err(e) = self
                .broker
                .access
                .set_vhost_limits(vhost, limits(p.get("value")))
            {
                self.r.errors.push(format!("{what}: {e}"));
            }
        }
    }

    fn policies(&mut self, items: &[Value]) {
        for p in items {
            let (name, vhost) = (str_field(p, "name"), str_field(p, "vhost"));
            let what = format!("policy '{name}' in vhost '{vhost}'");
            if self.vhost(&what, vhost).is_none() {
                continue;
            }
            // RabbitMQ writes the priority as a number; hand-written files may quote it.
            let priority = match p.get("priority") {
                None => Some(0),
                Some(v) => v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok())),
            };
            let Some(priority) = priority else {
                self.r
                    .errors
                    .push(format!("{what}: priority must be a number"));
                continue;
            };
            if let Err(e) = self.broker.set_policy(
                crate::policy::Kind::Policy,
                vhost,
                name,
                str_field(p, "pattern"),
                p.get("definition").unwrap_or(&Value::Null),
                priority,
                p.get("apply-to").and_then(Value::as_str).unwrap_or("all"),
            ) {
                self.r.errors.push(format!("{what}: {e}"));
            }
        }
    }

    fn exchanges(&mut self, items: &[Value]) {
        for x in items {
            let (name, vhost_name) = (str_field(x, "name"), str_field(x, "vhost"));
            let what = format!("exchange '{name}' in vhost '{vhost_name}'");
            let Some(vhost) = self.vhost(&what, vhost_name) else {
                continue;
            };
            if name.is_empty() || name.starts_with("amq.") {
                continue; // every vhost has them
            }
            let decl = ExchangeDecl {
                name,
                kind: x.get("type").and_then(Value::as_str).unwrap_or("direct"),
                durable: bool_field(x, "durable", true),
                auto_delete: bool_field(x, "auto_delete", false),
                internal: bool_field(x, "internal", false),
                arguments: json_to_table(x.get("arguments")),
            };
            if let Err(e) = vhost.declare_exchange(decl) {
                self.r.errors.push(format!("{what}: {}", e.text));
            }
        }
    }

    fn queues(&mut self, items: &[Value]) {
        for q in items {
            let (name, vhost_name) = (str_field(q, "name"), str_field(q, "vhost"));
            let what = format!("queue '{name}' in vhost '{vhost_name}'");
            let Some(vhost) = self.vhost(&what, vhost_name) else {
                continue;
            };
            let decl = QueueDecl {
                name: name.to_owned(),
                durable: bool_field(q, "durable", true),
                exclusive: false,
                auto_delete: bool_field(q, "auto_delete", false),
                arguments: json_to_table(q.get("arguments")),
            };
            // Connection id 0 is never a client's: the queue has no exclusive owner.
            if let Err(e) = vhost.declare_queue(decl, 0) {
                self.r.errors.push(format!("{what}: {}", e.text));
            }
        }
    }

    fn bindings(&mut self, items: &[Value]) {
        for b in items {
            let vhost_name = str_field(b, "vhost");
            let (source, dest) = (str_field(b, "source"), str_field(b, "destination"));
            let what = format!("binding from '{source}' to '{dest}' in vhost '{vhost_name}'");
            let Some(vhost) = self.vhost(&what, vhost_name) else {
                continue;
            };
            let destination = match str_field(b, "destination_type") {
                "exchange" => Destination::Exchange(dest.into()),
                _ => Destination::Queue(dest.into()),
            };
            if let Err(e) = vhost.bind(
                source,
                destination,
                str_field(b, "routing_key"),
                json_to_table(b.get("arguments")),
                0,
            ) {
                self.r.errors.push(format!("{what}: {}", e.text));
            }
        }
    }
}

fn list<'a>(top: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    top.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn bool_field(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// A limits object (`{"max-connections": 10}`); non-integer values are dropped.
pub fn limits(v: Option<&Value>) -> Limits {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// AMQP arguments as RabbitMQ's exports write them.
pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::DecimalValue(d) => json!(d.value),
        AMQPValue::Void => Value::Null,
    }
}

/// Refuse a JSON document that could not become field tables: its arguments and headers
/// do, so its objects and arrays may nest no deeper than the tables warren decodes
/// ([`table::MAX_DEPTH`]; a table too deep to decode again must never reach the store),
/// and its object keys (field names, short strings) may be at most 255 bytes.
/// Every document that can carry tables (HTTP bodies, definitions, policies) passes
/// here, so [`json_to_table`] can take what it is given.
pub fn check_json(v: &Value) -> Result<(), String> {
    fn within(v: &Value, levels: usize) -> Result<(), String> {
        let deeper = || format!("JSON nested deeper than {} levels", table::MAX_DEPTH);
        match v {
            Value::Array(a) if levels == 0 => Err(deeper()),
            Value::Object(_) if levels == 0 => Err(deeper()),
            Value::Array(a) => a.iter().try_for_each(|i| within(i, levels - 1)),
            Value::Object(m) => m.iter().try_for_each(|(k, i)| {
                if k.len() > 255 {
                    let at = (0..=64).rev().find(|&n| k.is_char_boundary(n)).unwrap_or(0);
                    return Err(format!(
                        "JSON key longer than 255 bytes (a field name): '{}...'",
                        &k[..at]
                    ));
                }
                within(i, levels - 1)
            }),
            _ => Ok(()),
        }
    }
    within(v, table::MAX_DEPTH)
}

/// JSON arguments as RabbitMQ's import reads them: strings are long strings, integers
/// signed 64-bit, objects tables.
pub fn json_to_table(v: Option<&Value>) -> FieldTable {
    let mut t = FieldTable::default();
    if let Some(Value::Object(m)) = v {
        for (k, v) in m {
            t.insert(ShortString::from(k.as_str()), json_to_value(v));
        }
    }
    t
}

fn json_to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_to_value).collect::<Vec<_>>(),
        )),
        Value::Object(_) => AMQPValue::FieldTable(json_to_table(Some(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_bounded_as_tables_are() {
        let mut v = json!(1);
        for _ in 0..table::MAX_DEPTH {
            v = json!({ "k": v });
        }
        assert_eq!(check_json(&v), Ok(()));
        assert!(check_json(&json!([v])).is_err());
        assert!(check_json(&json!({ "a": [v] })).is_err());
        let long = "k".repeat(256);
        assert!(check_json(&json!({ "arguments": { long.clone(): 1 } }))
            .unwrap_err()
            .contains("longer than 255"));
        assert_eq!(check_json(&json!({ &long[..255]: 1 })), Ok(()));
    }

    #[test]
    fn arguments_round_trip() {
        let v = json!({"x-message-ttl": 1000, "alternate-exchange": "ae", "x-match": "all",
                       "nested": {"a": [1, "b", true]}});
        assert_eq!(table_to_json(&json_to_table(Some(&v))), v);
    }

    #[test]
    fn tags_in_both_formats() {
        assert_eq!(json_tags(Some(&json!("a, b"))), vec!["a", "b"]);
        assert_eq!(json_tags(Some(&json!(["monitoring"]))), vec!["monitoring"]);
    }
}
