//! What the broker counts for monitoring (the Prometheus endpoint that shows it is
//! `crate::prometheus`, above the broker; this sits below connections and queues).
//!
//! Counting stays off the hot path's shared cache lines: a connection counts in a plain
//! [`Tally`] while it handles a read and adds it to the broker's atomic [`Global`] once
//! per read; a queue actor writes its [`QueueGauges`] once per burst. A scrape only loads
//! atomics, so it never waits on (or wakes) a queue, however many there are.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Declares the message counters once, as RabbitMQ's `rabbitmq_global_messages_*`
/// names them: the atomic totals, the per-connection tally, and the list a scrape walks.
macro_rules! counters {
    ($($field:ident: $help:literal,)*) => {
        /// Message counters for the whole broker since it started.
        #[derive(Debug, Default)]
        pub struct Global {
            $(pub $field: AtomicU64,)*
        }

        /// A connection's counts since its last flush into [`Global`].
        #[derive(Debug, Default)]
        pub struct Tally {
            $(pub $field: u64,)*
        }

        impl Tally {
            /// Add the counts to `global` and start again from zero.
            pub fn flush(&mut self, global: &Global) {
                $(if self.$field != 0 {
                    global.$field.fetch_add(std::mem::take(&mut self.$field), Relaxed);
                })*
            }
        }

        impl Tally {
            /// A message delivered: by basic.consume or basic.get, with or without acks.
            pub fn delivery(&mut self, by_get: bool, no_ack: bool, redelivered: bool) {
                self.delivered += 1;
                self.redelivered += redelivered as u64;
                *match (by_get, no_ack) {
                    (false, true) => &mut self.delivered_consume_auto_ack,
                    (false, false) => &mut self.delivered_consume_manual_ack,
                    (true, true) => &mut self.delivered_get_auto_ack,
                    (true, false) => &mut self.delivered_get_manual_ack,
                } += 1;
            }
        }

        impl Global {
            /// (metric name suffix, help text, value) for each counter.
            pub fn read(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($field), $help, self.$field.load(Relaxed)),)*]
            }
        }
    };
}

counters! {
    received: "Total number of messages received from publishers",
    received_confirm: "Total number of messages received from publishers expecting confirmations",
    routed: "Total number of messages routed to queues or streams",
    unroutable_dropped: "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
    unroutable_returned: "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
    confirmed: "Total number of messages confirmed to publishers",
    delivered: "Total number of messages delivered to consumers",
    delivered_consume_auto_ack: "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
    delivered_consume_manual_ack: "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
    delivered_get_auto_ack: "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
    delivered_get_manual_ack: "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
    get_empty: "Total number of times basic.get operations fetched no message",
    redelivered: "Total number of messages redelivered to consumers",
    acknowledged: "Total number of messages acknowledged by consumers",
}

/// A queue's current counts, written by its actor after each burst of work (the actor
/// is their only writer) and read by scrapes and listings without asking the actor.
#[derive(Debug, Default)]
pub struct QueueGauges {
    pub ready: AtomicU32,
    pub unacked: AtomicU32,
    pub consumers: AtomicU32,
    /// Ready messages whose bodies are only on disk.
    pub paged_out: AtomicU32,
    /// Bytes of the ready messages' bodies.
    pub ready_bytes: AtomicU64,
    /// Bytes of the ready messages' bodies that are only on disk.
    pub paged_out_bytes: AtomicU64,
    /// Bytes of the unacknowledged messages' bodies.
    pub unacked_bytes: AtomicU64,
    /// What the queue has done since it was created (message_stats).
    pub counts: QueueCounters,
}

/// A queue's sizes at the end of a burst, as its actor hands them to [`QueueGauges::set`].
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueSizes {
    pub ready: usize,
    pub unacked: usize,
    pub consumers: usize,
    pub paged_out: usize,
    pub ready_bytes: u64,
    pub paged_out_bytes: u64,
    pub unacked_bytes: u64,
}

impl QueueGauges {
    /// The sizes as last set.
    pub fn get(&self) -> QueueSizes {
        QueueSizes {
            ready: self.ready.load(Relaxed) as usize,
            unacked: self.unacked.load(Relaxed) as usize,
            consumers: self.consumers.load(Relaxed) as usize,
            paged_out: self.paged_out.load(Relaxed) as usize,
            ready_bytes: self.ready_bytes.load(Relaxed),
            paged_out_bytes: self.paged_out_bytes.load(Relaxed),
            unacked_bytes: self.unacked_bytes.load(Relaxed),
        }
    }

    pub fn set(&self, s: QueueSizes) {
        self.ready.store(s.ready as u32, Relaxed);
        self.unacked.store(s.unacked as u32, Relaxed);
        self.consumers.store(s.consumers as u32, Relaxed);
        self.paged_out.store(s.paged_out as u32, Relaxed);
        self.ready_bytes.store(s.ready_bytes, Relaxed);
        self.paged_out_bytes.store(s.paged_out_bytes, Relaxed);
        self.unacked_bytes.store(s.unacked_bytes, Relaxed);
    }
}

/// Declares a queue's message counters once: the plain [`QueueCounts`] its actor
/// increments, the atomic [`QueueCounters`] it publishes them into once per burst, and
/// the list readers walk. Names are RabbitMQ's queue `message_stats` keys.
macro_rules! queue_counters {
    ($($field:ident,)*) => {
        /// A queue's message counts since it was created, kept by its actor in plain
        /// integers (no atomic on the per-message path).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct QueueCounts {
            $(pub $field: u64,)*
        }

        /// [`QueueCounts`] as readers see them: stored (not added: the actor is the only
        /// writer) after each burst.
        #[derive(Debug, Default)]
        pub struct QueueCounters {
            $(pub $field: AtomicU64,)*
        }

        impl QueueCounters {
            pub fn store(&self, c: &QueueCounts) {
                $(self.$field.store(c.$field, Relaxed);)*
            }

            pub fn load(&self) -> QueueCounts {
                QueueCounts { $($field: self.$field.load(Relaxed),)* }
            }
        }

        impl QueueCounts {
            /// (message_stats key, count) for each counter.
            pub fn fields(&self) -> [(&'static str, u64); [$(stringify!($field),)*].len()] {
                [$((stringify!($field), self.$field),)*]
            }
        }
    };
}

queue_counters! {
    publish,
    deliver,
    deliver_no_ack,
    get,
    get_no_ack,
    get_empty,
    redeliver,
    ack,
}

impl QueueCounts {
    /// RabbitMQ's `deliver_get`: every delivery, by consume or get, with or without ack.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// A message handed out: by basic.consume or basic.get, with or without acks.
    pub fn delivery(&mut self, by_get: bool, no_ack: bool, redelivered: bool) {
        self.redeliver += redelivered as u64;
        *match (by_get, no_ack) {
            (false, false) => &mut self.deliver,
            (false, true) => &mut self.deliver_no_ack,
            (true, false) => &mut self.get,
            (true, true) => &mut self.get_no_ack,
        } += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_to_the_totals_once_and_starts_over() {
        let g = Global::default();
        let mut t = Tally {
            received: 3,
            acknowledged: 2,
            ..Tally::default()
        };
        t.flush(&g);
        t.flush(&g);
        t.received += 1;
        t.flush(&g);
        let read: std::collections::HashMap<_, _> =
            g.read().into_iter().map(|(k, _, v)| (k, v)).collect();
        assert_eq!(read["received"], 4);
        assert_eq!(read["acknowledged"], 2);
        assert_eq!(read["routed"], 0);
        assert_eq!(t.received, 0);
    }
}
