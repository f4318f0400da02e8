//! A queue as listings describe it: `warrenctl list_queues` and `/api/queues` both
//! render a [`QueueInfo`], whose sizes come from the queue's gauges (`metrics`), the
//! figures its actor publishes after each burst of work.

use std::sync::Arc;

use crate::metrics::QueueSizes;
use crate::policy::Target;
use crate::queue::{QueueCmd, QueueHandle};
use crate::vhost::Vhost;

pub struct QueueInfo {
    pub queue: Arc<QueueHandle>,
    /// Declared as a quorum queue (`x-queue-type`); warren runs it as a classic one.
    pub quorum: bool,
    /// The policy and operator policy that apply to it, by name.
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    pub sizes: QueueSizes,
    /// warren's own: messages sent to the queue that it has not taken yet (bounded by
    /// flow control, see `queue/flow.rs`).
    pub mailbox: u64,
}

impl QueueInfo {
    /// As the queue last published its gauges: no question to the actor, so cheap
    /// enough for dashboards that poll every queue.
    pub fn current(v: &Vhost, q: &Arc<QueueHandle>) -> QueueInfo {
        Self::with_sizes(v, q, q.inflow.queued(), q.gauges.get())
    }

    /// Once the queue has handled everything sent to it before the question, so that a
    /// listing right after a publish shows it (what a rabbitmqctl user expects): the
    /// actor answers with the gauges it publishes at the end of that burst, after its
    /// deliveries and page-outs. Asking changes nothing (not the `x-expires` clock).
    pub async fn settled(v: &Vhost, q: &Arc<QueueHandle>) -> QueueInfo {
        // Read before asking: the question waits behind whatever is in the mailbox.
        let mailbox = q.inflow.queued();
        let sizes = match q.ask(|reply| QueueCmd::Sizes { reply }).await {
            Some(s) => s,
            None => q.gauges.get(), // deleted meanwhile: what it last said
        };
        Self::with_sizes(v, q, mailbox, sizes)
    }

    fn with_sizes(v: &Vhost, q: &Arc<QueueHandle>, mailbox: u64, sizes: QueueSizes) -> QueueInfo {
        let quorum = crate::policy::is_quorum(&q.arguments);
        let [policy, operator_policy] = v.policy_names(&q.name, Target::Queue { quorum });
        QueueInfo {
            queue: q.clone(),
            quorum,
            policy,
            operator_policy,
            sizes,
            mailbox,
        }
    }

    /// `classic` or `quorum`, as declared.
    pub fn kind(&self) -> &'static str {
        if self.quorum {
            "quorum"
        } else {
            "classic"
        }
    }

    pub fn messages(&self) -> u64 {
        (self.sizes.ready + self.sizes.unacked) as u64
    }

    /// Ready messages whose bodies are only on disk (never more than the ready ones).
    pub fn paged_out(&self) -> u64 {
        self.sizes.paged_out.min(self.sizes.ready) as u64
    }

    /// Ready messages with their bodies in memory.
    pub fn ready_ram(&self) -> u64 {
        self.sizes.ready as u64 - self.paged_out()
    }

    /// In memory: the ready ones not paged out, and every unacknowledged one.
    pub fn ram(&self) -> u64 {
        self.ready_ram() + self.sizes.unacked as u64
    }

    pub fn paged_out_bytes(&self) -> u64 {
        self.sizes.paged_out_bytes.min(self.sizes.ready_bytes)
    }

    pub fn bytes(&self) -> u64 {
        self.sizes.ready_bytes + self.sizes.unacked_bytes
    }

    pub fn ram_bytes(&self) -> u64 {
        self.bytes() - self.paged_out_bytes()
    }
}
