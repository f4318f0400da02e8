//! Fanout exchange: every binding gets every message, whatever the routing key.

use super::Destination;

#[derive(Debug, Default)]
pub struct FanoutRouter {
    dests: Vec<Destination>,
}

impl FanoutRouter {
    pub fn bind(&mut self, dest: Destination) {
        self.dests.push(dest);
    }

    pub fn unbind(&mut self, dest: &Destination) {
        if let Some(i) = self.dests.iter().position(|d| d == dest) {
            self.dests.swap_remove(i);
        }
    }

    pub fn route(&self, out: &mut Vec<Destination>) {
        out.extend(self.dests.iter().cloned());
    }
}
