//! Policy changes reaching a live queue: the actor takes the new effective arguments
//! (see `policy.rs` for how they are computed) and applies what changed at once.

use std::sync::Arc;

use super::super::args::{Overflow, QueueArgs};
use super::super::dead_letter::DeadLetterTarget;
use super::QueueActor;

impl QueueActor {
    /// A policy changed what the queue runs with (rabbit_amqqueue_process:
    /// process_args_policy): limits, TTL, expiry and dead-lettering take effect now; a
    /// lower length limit drops (dead-letters) from the head at once, paged messages
    /// included. Per-message expiry already fixed stays, as in RabbitMQ.
    pub(super) fn args_changed(&mut self, new: QueueArgs) {
        let new = QueueArgs {
            // Declared-only properties: a policy can't change them.
            max_priority: self.args.max_priority,
            single_active_consumer: self.args.single_active_consumer,
            ..new
        };
        let old = std::mem::replace(&mut self.args, new);
        self.dead_letter =
            self.args
                .dead_letter_exchange
                .clone()
                .map(|exchange| DeadLetterTarget {
                    exchange,
                    routing_key: self.args.dead_letter_routing_key.clone(),
                });
        if self.args.message_ttl.is_some() {
            self.may_expire = true;
        }
        if old.expires != self.args.expires {
            self.idle_deadline = None;
            self.touch();
        }
        self.update_admission();
        if self.over_limit() {
            self.drop_over_limit();
        }
    }

    /// Keep reject-publish admission in step with the arguments: installed the first
    /// time a policy asks for it, reconfigured or disabled afterwards.
    fn update_admission(&mut self) {
        let Some(handle) = self.handle.upgrade() else {
            return;
        };
        let wanted = self.args.admission_control();
        let dlx = self.args.overflow == Overflow::RejectPublishDlx;
        match handle.admission.get() {
            Some(a) => {
                if wanted && !a.enabled() {
                    a.reset(self.ready.len() as u64, self.ready.bytes());
                }
                a.reconfigure(
                    wanted,
                    self.args.max_length,
                    self.args.max_length_bytes,
                    dlx,
                );
            }
            None if wanted => {
                let a = Arc::new(super::super::admission::Admission::new(
                    self.args.max_length,
                    self.args.max_length_bytes,
                    dlx,
                ));
                a.reset(self.ready.len() as u64, self.ready.bytes());
                if handle.admission.set(a.clone()).is_ok() {
                    self.ready.set_admission(a);
                }
            }
            None => {}
        }
    }
}
