//! A queue's memory footprint, estimated from the counts its actor publishes (the
//! `memory` of /api/queues and `rabbitmq_queue_process_memory_bytes`), so that reading
//! it never asks the actor anything.
//!
//! The estimate adds what grows with the queue's contents:
//! - the actor and its handle (their struct sizes, plus a fixed allowance for the task and
//!   its mailbox);
//! - one ready-list entry per ready message ([`super::ready::QUEUED_BYTES`]), resident or
//!   paged out;
//! - per message whose body is in memory (ready and resident, or unacked): the
//!   [`Message`] and its `Arc` header, plus the body's bytes;
//! - per unacked message: its entry in the unacked map (key, value and the map's control
//!   byte, at the map's 7/8 load factor).
//!
//! Left out, so it is an estimate and not an accounting: spare capacity in the ready
//! list and maps, the properties, exchange and routing-key bytes of a message (usually
//! views into the frame the body came in), and sharing — a body routed to several queues
//! (fanout) is counted in each of them, as each would hold it if it were alone.

use std::sync::atomic::Ordering::Relaxed;

use crate::message::Message;
use crate::metrics::QueueGauges;

/// The task, its timer and its two mailbox lanes: a rough, fixed allowance.
const TASK_ALLOWANCE: u64 = 1024;

/// A message body held in memory: the `Message` behind its `Arc` (two counters).
const MESSAGE_BYTES: u64 = (std::mem::size_of::<Message>() + 16) as u64;

/// Bytes of memory the queue is estimated to hold (see the module doc).
pub fn memory(g: &QueueGauges) -> u64 {
    let ready = g.ready.load(Relaxed) as u64;
    let paged = (g.paged_out.load(Relaxed) as u64).min(ready);
    let unacked = g.unacked.load(Relaxed) as u64;
    let resident_bytes = g
        .ready_bytes
        .load(Relaxed)
        .saturating_sub(g.paged_out_bytes.load(Relaxed));
    let fixed = (super::actor::ACTOR_BYTES + std::mem::size_of::<super::QueueHandle>()) as u64
        + TASK_ALLOWANCE;
    let unacked_entry = super::actor::UNACKED_ENTRY_BYTES as u64 * 8 / 7 + 1;
    fixed
        + ready * super::ready::QUEUED_BYTES as u64
        + (ready - paged + unacked) * MESSAGE_BYTES
        + resident_bytes
        + g.unacked_bytes.load(Relaxed)
        + unacked * unacked_entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::QueueSizes;

    #[test]
    fn memory_grows_with_resident_bodies_and_not_with_paged_ones() {
        let g = QueueGauges::default();
        let empty = memory(&g);
        g.set(QueueSizes {
            ready: 10,
            ready_bytes: 10_000,
            ..QueueSizes::default()
        });
        let resident = memory(&g);
        assert!(resident >= empty + 10_000 + 10 * MESSAGE_BYTES);
        g.set(QueueSizes {
            ready: 10,
            ready_bytes: 10_000,
            paged_out: 10,
            paged_out_bytes: 10_000,
            ..QueueSizes::default()
        });
        let paged = memory(&g);
        assert_eq!(paged, empty + 10 * super::super::ready::QUEUED_BYTES as u64);
        g.set(QueueSizes {
            unacked: 10,
            unacked_bytes: 10_000,
            ..QueueSizes::default()
        });
        assert!(
            memory(&g) > resident,
            "an unacked message costs more than a ready one"
        );
    }
}
