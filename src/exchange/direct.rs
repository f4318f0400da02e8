//! Direct exchange: the routing key equals the binding key.

use std::collections::HashMap;

use super::{Destination, Dests};

#[derive(Debug, Default)]
pub struct DirectRouter {
    /// A destination appears once per binding (bindings may differ only by arguments).
    by_key: HashMap<String, Dests>,
}

impl DirectRouter {
    pub fn bind(&mut self, key: &str, dest: Destination) {
        self.by_key.entry(key.to_owned()).or_default().push(dest);
    }

    pub fn unbind(&mut self, key: &str, dest: &Destination) {
        if let Some(v) = self.by_key.get_mut(key) {
            v.remove(dest);
            if v.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    pub fn route(&self, key: &str, out: &mut Vec<Destination>) {
        if let Some(v) = self.by_key.get(key) {
            out.extend(v.as_slice().iter().cloned());
        }
    }
}
