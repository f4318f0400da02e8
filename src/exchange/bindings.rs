//! An exchange's outgoing bindings: listed in the order they were made, and found by
//! identity (bind, unbind) or by destination (a queue or exchange going away) without a
//! scan. Binding is a client's to repeat at will, and each one runs under its vhost's
//! topology lock: a linear search here made 40,000 binds take seconds and stalled every
//! connection waiting for that lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;

use super::{Binding, Destination};

/// What makes two bindings the same one (the source is the exchange holding them).
/// Arguments compare by their encoding: a field table is ordered by key, so equal
/// tables encode equally.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    destination: Destination,
    routing_key: String,
    arguments: Vec<u8>,
}

impl Identity {
    fn of(b: &Binding) -> Identity {
        Identity {
            destination: b.destination.clone(),
            routing_key: b.routing_key.clone(),
            arguments: gen_field_table(&b.arguments)(WriteContext::from(Vec::new()))
                .map(|c| c.write)
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Bindings {
    next: u64,
    /// By insertion number: the order they were made.
    ordered: BTreeMap<u64, Binding>,
    by_identity: HashMap<Identity, u64>,
    by_destination: HashMap<Destination, BTreeSet<u64>>,
}

impl Bindings {
    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }

    /// In the order they were made.
    pub fn iter(&self) -> impl Iterator<Item = &Binding> {
        self.ordered.values()
    }

    /// Add a binding; false if the same one is there already.
    pub fn insert(&mut self, b: Binding) -> bool {
        let id = Identity::of(&b);
        if self.by_identity.contains_key(&id) {
            return false;
        }
        let n = self.next;
        self.next += 1;
        self.by_destination
            .entry(b.destination.clone())
            .or_default()
            .insert(n);
        self.by_identity.insert(id, n);
        self.ordered.insert(n, b);
        true
    }

    /// Remove a binding, returning it; `None` if there was none.
    pub fn remove(&mut self, b: &Binding) -> Option<Binding> {
        let n = self.by_identity.remove(&Identity::of(b))?;
        if let Some(set) = self.by_destination.get_mut(&b.destination) {
            set.remove(&n);
            if set.is_empty() {
                self.by_destination.remove(&b.destination);
            }
        }
        self.ordered.remove(&n)
    }

    /// Remove every binding to `dest`, returning them in the order they were made.
    pub fn remove_destination(&mut self, dest: &Destination) -> Vec<Binding> {
        let Some(set) = self.by_destination.remove(dest) else {
            return Vec::new();
        };
        let gone: Vec<Binding> = set
            .into_iter()
            .filter_map(|n| self.ordered.remove(&n))
            .collect();
        for b in &gone {
            self.by_identity.remove(&Identity::of(b));
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldTable};
    use std::sync::Arc;

    fn b(dest: &str, key: &str, arg: Option<i32>) -> Binding {
        let mut arguments = FieldTable::default();
        if let Some(a) = arg {
            arguments.insert("a".into(), AMQPValue::LongInt(a));
        }
        Binding {
            source: Arc::from("x"),
            destination: Destination::Queue(Arc::from(dest)),
            routing_key: key.into(),
            arguments,
        }
    }

    #[test]
    fn identity_order_and_destination() {
        let mut s = Bindings::default();
        assert!(s.insert(b("q1", "k", None)));
        assert!(!s.insert(b("q1", "k", None)), "same binding twice is one");
        assert!(
            s.insert(b("q1", "k", Some(1))),
            "other arguments, another binding"
        );
        assert!(s.insert(b("q2", "k", None)));
        assert!(s.insert(b("q1", "j", None)));
        assert_eq!(s.len(), 4);
        let keys: Vec<_> = s
            .iter()
            .map(|x| (x.destination.name(), &*x.routing_key))
            .collect();
        assert_eq!(keys, [("q1", "k"), ("q1", "k"), ("q2", "k"), ("q1", "j")]);
        assert!(s.remove(&b("q1", "k", Some(2))).is_none());
        assert!(s.remove(&b("q1", "k", Some(1))).is_some());
        let gone = s.remove_destination(&b("q1", "", None).destination);
        assert_eq!(gone.len(), 2);
        assert_eq!(s.len(), 1);
        assert!(
            s.insert(b("q1", "k", None)),
            "gone means gone from every index"
        );
        assert!(s
            .remove_destination(&b("q3", "", None).destination)
            .is_empty());
    }
}
