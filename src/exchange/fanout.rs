//! Fanout exchange: every binding gets every message, whatever the routing key.

use super::{Destination, Dests};

#[derive(Debug, Default)]
pub struct FanoutRouter {
    dests: Dests,
}

impl FanoutRouter {
    pub fn bind(&mut self, dest: Destination) {
        self.dests.push(dest);
    }

    pub fn unbind(&mut self, dest: &Destination) {
        self.dests.remove(dest);
    }

    pub fn route(&self, out: &mut Vec<Destination>) {
        out.extend(self.dests.as_slice().iter().cloned());
    }
}
