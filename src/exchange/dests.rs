//! The destinations of one routing entry (a fanout exchange, a direct key, a topic
//! node): a plain vector, since routing walks it for every message, plus an index of
//! positions once the list is long, so that unbinding one of 40,000 queues bound to
//! the same fanout does not scan the other 39,999.

use std::collections::HashMap;

use super::Destination;

/// Beyond this many entries, positions are indexed.
const SCAN: usize = 16;

#[derive(Debug, Default)]
pub struct Dests {
    items: Vec<Destination>,
    /// Where each destination sits in `items` (one per binding to it), once long.
    at: Option<HashMap<Destination, Vec<usize>>>,
}

impl Dests {
    pub fn as_slice(&self) -> &[Destination] {
        &self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, d: Destination) {
        if let Some(at) = &mut self.at {
            at.entry(d.clone()).or_default().push(self.items.len());
        }
        self.items.push(d);
        if self.at.is_none() && self.items.len() > SCAN {
            let mut at: HashMap<Destination, Vec<usize>> = HashMap::new();
            for (i, d) in self.items.iter().enumerate() {
                at.entry(d.clone()).or_default().push(i);
            }
            self.at = Some(at);
        }
    }

    /// Remove one occurrence of `d` (the order of the rest may change).
    pub fn remove(&mut self, d: &Destination) {
        let Some(at) = &mut self.at else {
            if let Some(i) = self.items.iter().position(|x| x == d) {
                self.items.swap_remove(i);
            }
            return;
        };
        let Some(spots) = at.get_mut(d) else { return };
        let Some(i) = spots.pop() else { return };
        if spots.is_empty() {
            at.remove(d);
        }
        let last = self.items.len() - 1;
        self.items.swap_remove(i);
        if i != last {
            // The last entry moved into the hole.
            if let Some(p) = at
                .get_mut(&self.items[i])
                .and_then(|v| v.iter_mut().find(|p| **p == last))
            {
                *p = i;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn q(n: usize) -> Destination {
        Destination::Queue(Arc::from(n.to_string()))
    }

    #[test]
    fn removes_what_was_pushed_short_and_long() {
        for n in [3, SCAN * 4] {
            let mut d = Dests::default();
            for i in 0..n {
                d.push(q(i));
            }
            d.push(q(0)); // a second binding to the same queue
            for i in (0..n).step_by(2) {
                d.remove(&q(i));
            }
            d.remove(&q(n + 7)); // not there: nothing happens
            let mut left: Vec<String> = d.as_slice().iter().map(|x| x.name().into()).collect();
            left.sort();
            let mut want: Vec<String> = (0..n)
                .filter(|i| i % 2 == 1)
                .map(|i| i.to_string())
                .collect();
            want.push("0".into());
            want.sort();
            assert_eq!(left, want, "n = {n}");
            for i in (1..n).step_by(2) {
                d.remove(&q(i));
            }
            d.remove(&q(0));
            assert!(d.is_empty());
        }
    }
}
