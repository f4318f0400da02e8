//! Which consumer gets the next message: consumer priorities (`x-priority` on
//! basic.consume) and single active consumer (`x-single-active-consumer` on the queue).
//!
//! Consumers are kept in bands of equal priority, highest first, each band in
//! registration order with its own round-robin cursor. A message goes to the first band
//! with a consumer that has credit, round-robin inside it, so lower priorities get
//! messages only while every higher consumer is blocked (rabbit_queue_consumers keeps a
//! priority queue of consumers the same way). With one band, as usual, this is plain
//! round-robin.
//!
//! With single active consumer, only the earliest registered consumer still present
//! receives; the rest wait in order and the next takes over when it goes
//! (rabbit_amqqueue_process's `active_consumer`; priorities play no part in 3.10).

use std::ops::Deref;

use super::Consumer;

/// Consumers with equal priority, `list[start..start + len]`.
#[derive(Debug, Clone, Copy)]
struct Band {
    priority: i64,
    start: usize,
    len: usize,
    /// Round-robin position inside the band.
    cursor: usize,
}

/// A queue's consumers in delivery order; owned by the queue actor. Reads go through
/// `Deref` to the slice; changes go through methods that keep the bands right.
#[derive(Debug, Default)]
pub(super) struct Consumers {
    list: Vec<Consumer>,
    bands: Vec<Band>,
    single_active: bool,
}

impl Deref for Consumers {
    type Target = [Consumer];
    fn deref(&self) -> &[Consumer] {
        &self.list
    }
}

impl Consumers {
    pub(super) fn new(single_active: bool) -> Consumers {
        Consumers {
            single_active,
            ..Default::default()
        }
    }

    pub(super) fn single_active(&self) -> bool {
        self.single_active
    }

    /// Register a consumer: after every consumer of its priority or higher.
    pub(super) fn add(&mut self, c: Consumer) {
        let pos = if self.single_active {
            self.list.len()
        } else {
            self.list
                .iter()
                .position(|x| x.priority < c.priority)
                .unwrap_or(self.list.len())
        };
        self.list.insert(pos, c);
        self.rebuild();
    }

    pub(super) fn retain(&mut self, keep: impl FnMut(&Consumer) -> bool) {
        let before = self.list.len();
        self.list.retain(keep);
        if self.list.len() != before {
            self.rebuild();
        }
    }

    pub(super) fn take_all(&mut self) -> Vec<Consumer> {
        self.bands.clear();
        std::mem::take(&mut self.list)
    }

    pub(super) fn by_uid(&mut self, uid: u64) -> Option<&mut Consumer> {
        self.list.iter_mut().find(|c| c.uid == uid)
    }

    /// The consumer to deliver the next message to, its credit taken; `None` if every
    /// consumer that may receive is blocked. Inlined: it runs once per delivery, and
    /// the call cost (measured with callgrind) was more than the work.
    #[inline]
    pub(super) fn pick(&mut self) -> Option<usize> {
        if self.single_active {
            return self.list.first_mut()?.try_take().then_some(0);
        }
        for b in &mut self.bands {
            for k in 0..b.len {
                let i = b.start + (b.cursor + k) % b.len;
                if self.list[i].try_take() {
                    b.cursor = (i - b.start + 1) % b.len;
                    return Some(i);
                }
            }
        }
        None
    }

    /// Give back the credit [`Consumers::pick`] took (nothing was left to deliver).
    pub(super) fn untake(&mut self, i: usize) {
        self.list[i].untake();
    }

    /// Recompute the bands after a change, keeping each surviving band's cursor.
    fn rebuild(&mut self) {
        let old = std::mem::take(&mut self.bands);
        let mut start = 0;
        while start < self.list.len() {
            let priority = if self.single_active {
                0
            } else {
                self.list[start].priority
            };
            let len = if self.single_active {
                self.list.len()
            } else {
                self.list[start..]
                    .iter()
                    .take_while(|c| c.priority == priority)
                    .count()
            };
            let cursor = old
                .iter()
                .find(|b| b.priority == priority)
                .map_or(0, |b| b.cursor % len);
            self.bands.push(Band {
                priority,
                start,
                len,
                cursor,
            });
            start += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::queue::ChannelLimiter;

    fn consumer(uid: u64, priority: i64, prefetch: u32) -> Consumer {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        Consumer {
            uid,
            tag: Arc::from(format!("c{uid}").as_str()),
            channel_uid: uid,
            channel: 1,
            conn_id: 1,
            events,
            no_ack: false,
            exclusive: false,
            prefetch,
            limiter: Arc::new(ChannelLimiter::default()),
            arguments: Default::default(),
            priority,
            in_flight: 0,
        }
    }

    fn picks(cs: &mut Consumers, n: usize) -> Vec<u64> {
        (0..n).map_while(|_| cs.pick().map(|i| cs[i].uid)).collect()
    }

    #[test]
    fn highest_band_round_robin_then_lower_when_full() {
        let mut cs = Consumers::new(false);
        cs.add(consumer(1, 0, 10));
        cs.add(consumer(2, 5, 2));
        cs.add(consumer(3, 5, 2));
        assert_eq!(picks(&mut cs, 6), [2, 3, 2, 3, 1, 1]);
    }

    #[test]
    fn single_active_is_the_earliest_and_the_next_takes_over() {
        let mut cs = Consumers::new(true);
        cs.add(consumer(1, 0, 2));
        cs.add(consumer(2, 9, 0));
        assert_eq!(picks(&mut cs, 5), [1, 1]);
        cs.retain(|c| c.uid != 1);
        assert_eq!(picks(&mut cs, 3), [2, 2, 2]);
    }
}
