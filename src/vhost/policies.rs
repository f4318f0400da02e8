//! A vhost's policies (see `policy.rs` for what they mean): kept here, consulted when
//! a queue or exchange is created, and pushed to every queue and exchange when one is
//! set or cleared.

use std::sync::Arc;

use amq_protocol::types::FieldTable;

use super::Vhost;
use crate::exchange::Exchange;
use crate::policy::{Kind, Policy, PolicySet};
use crate::queue::args::QueueArgs;
use crate::queue::{QueueCmd, QueueHandle};
use crate::store::meta::PolicyDef;
use crate::store::Change;

/// Broker-wide settings every queue of a vhost starts with (from the configuration).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueDefaults {
    /// `amqp.consumer_timeout` in ms (None: off).
    pub consumer_timeout: Option<u64>,
    /// `amqp.consumer_timeout_action = "close_channel"`: RabbitMQ's behaviour.
    pub timeout_closes_channel: bool,
    /// `amqp.flow_high_messages` / `amqp.flow_low_messages` (see `queue/flow.rs`).
    pub flow: crate::queue::flow::FlowMarks,
}

impl Vhost {
    fn policy_set(&self) -> std::sync::RwLockReadGuard<'_, PolicySet> {
        self.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the defaults queues created from now on start with (the broker does, at start).
    pub fn set_queue_defaults(&self, d: QueueDefaults) {
        *self
            .queue_defaults
            .write()
            .unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// What a queue named `name` declared with `declared` runs with: its arguments
    /// merged with the policies that match it, and the broker's defaults.
    pub(super) fn queue_args(&self, name: &str, declared: &FieldTable) -> QueueArgs {
        let effective = self.policy_set().queue_arguments(name, declared);
        let defaults = *self
            .queue_defaults
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut args = QueueArgs::parse(&effective);
        if args.consumer_timeout.is_none() {
            args.consumer_timeout = defaults.consumer_timeout;
        }
        args.timeout_closes_channel = defaults.timeout_closes_channel;
        args.flow = defaults.flow;
        args
    }

    pub(super) fn apply_exchange_policy(&self, x: &mut Exchange) {
        x.alternate = self
            .policy_set()
            .alternate_exchange(&x.name, &x.arguments)
            .map(Arc::from);
    }

    /// Add or replace a policy, record it, then apply the policies to every queue and
    /// exchange.
    pub fn set_policy(&self, kind: Kind, policy: Policy) {
        let ignored = crate::policy::ignored_keys(&policy.definition);
        if ignored.iter().any(|k| k.starts_with("ha-")) {
            tracing::info!(
                vhost = %self.name,
                policy = %policy.name,
                "ha-* policy keys have no effect: {}",
                crate::policy::MIRRORING
            );
        }
        if !ignored.is_empty() {
            tracing::info!(
                vhost = %self.name,
                policy = %policy.name,
                keys = ?ignored,
                "policy keys accepted but without effect in warren (no mirroring, no lazy mode, no streams)"
            );
        }
        self.insert_policy(kind, policy, true);
    }

    /// A policy from the metadata log (start-up): applied, not recorded again.
    pub fn restore_policy(&self, kind: Kind, policy: Policy) {
        self.insert_policy(kind, policy, false);
    }

    fn insert_policy(&self, kind: Kind, policy: Policy, record: bool) {
        {
            let mut set = self.policies.write().unwrap_or_else(|e| e.into_inner());
            if record {
                // Under the policy lock: two callers setting the same name are recorded
                // in the order they took effect.
                self.log(|vhost| Change::Policy {
                    vhost,
                    def: PolicyDef {
                        operator: kind == Kind::Operator,
                        name: policy.name.clone(),
                        pattern: policy.pattern.clone(),
                        apply_to: policy.apply_to.as_str().to_owned(),
                        definition: serde_json::Value::Object(policy.definition.clone())
                            .to_string(),
                        priority: policy.priority,
                    },
                });
            }
            set.of_mut(kind).insert(policy.name.clone(), policy);
        }
        if record {
            self.sync_log();
        }
        self.apply_policies();
    }

    /// Remove a policy (recorded); false if there is none of that name.
    pub fn clear_policy(&self, kind: Kind, name: &str) -> bool {
        let removed = {
            let mut set = self.policies.write().unwrap_or_else(|e| e.into_inner());
            let removed = set.of_mut(kind).remove(name).is_some();
            if removed {
                self.log(|vhost| Change::ClearPolicy {
                    vhost,
                    operator: kind == Kind::Operator,
                    name: name.to_owned(),
                });
            }
            removed
        };
        if removed {
            self.sync_log();
            self.apply_policies();
        }
        removed
    }

    /// The names of the policy and operator policy that apply to a queue or exchange
    /// (rabbitmqctl's `policy` and `operator_policy` columns).
    pub fn policy_names(&self, name: &str, target: crate::policy::Target) -> [Option<String>; 2] {
        let set = self.policy_set();
        let (p, o) = set.matching(name, target);
        [p.map(|p| p.name.clone()), o.map(|o| o.name.clone())]
    }

    /// The policies of a kind, by name.
    pub fn policies(&self, kind: Kind) -> Vec<Policy> {
        self.policy_set().of(kind).values().cloned().collect()
    }

    /// Re-evaluate every queue and exchange after a policy change (rabbit_policy's
    /// update_matched_objects): exchanges get their alternate exchange again, queues
    /// their effective arguments (the actor applies them: see `QueueCmd::ArgsChanged`).
    fn apply_policies(&self) {
        let queues: Vec<Arc<QueueHandle>> = {
            let mut t = self.write();
            for x in t.exchanges.values_mut() {
                self.apply_exchange_policy(x);
            }
            t.queues.values().cloned().collect()
        };
        for q in queues {
            let args = self.queue_args(&q.name, &q.arguments);
            q.send(QueueCmd::ArgsChanged(Box::new(args)));
        }
    }
}
