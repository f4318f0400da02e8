//! Policies and operator policies (RabbitMQ's `rabbit_policy`, `rabbit_policies`): named,
//! per-vhost rules that give queues and exchanges whose names match a regex optional
//! arguments without redeclaring them.
//!
//! This module is pure: validation with RabbitMQ's texts, matching (pattern, apply-to,
//! priority), and the merge of a queue's own `x-` arguments with the winning policy and
//! operator policy into the arguments the queue actually runs with. Storing the policies
//! and pushing changes to live queues is the vhost's job (`vhost.rs`).
//!
//! Precedence, as rabbit_amqqueue_process:process_args_policy has it: a policy and an
//! operator policy are merged first (for numeric limits the lower value wins, otherwise
//! the policy's value); that is then merged with the queue's `x-` argument: for
//! `expires`, `message-ttl`, `max-length`, `max-length-bytes` and `delivery-limit` the
//! lower value wins, for everything else the queue's own argument wins.

use std::collections::BTreeMap;

use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use regex::Regex;
use serde_json::{Map, Value};

/// Which kind of policy: the ones users set, or the operator's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Policy,
    Operator,
}

/// What a policy applies to (`apply-to`). RabbitMQ also accepts a queue type's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    All,
    Queues,
    Exchanges,
    ClassicQueues,
    QuorumQueues,
    Streams,
}

impl ApplyTo {
    pub fn parse(s: &str) -> Option<ApplyTo> {
        Some(match s {
            "all" => ApplyTo::All,
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "classic_queues" => ApplyTo::ClassicQueues,
            "quorum_queues" => ApplyTo::QuorumQueues,
            "streams" => ApplyTo::Streams,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::ClassicQueues => "classic_queues",
            ApplyTo::QuorumQueues => "quorum_queues",
            ApplyTo::Streams => "streams",
        }
    }
}

/// What a policy is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Exchange,
    /// A queue, with whether it is a quorum queue (for `apply-to: quorum_queues`).
    Queue {
        quorum: bool,
    },
}

/// One validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    /// The pattern as given (exports and listings show it).
    pub pattern: String,
    regex: Regex,
    pub apply_to: ApplyTo,
    pub definition: Map<String, Value>,
    pub priority: i64,
}

/// Definition keys warren honours, per kind (rabbit_policies:register/0).
const POLICY_KEYS: &[&str] = &[
    "alternate-exchange",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "queue-mode",
    "overflow",
    "delivery-limit",
    "max-age",
    "max-segment-size",
    "queue-leader-locator",
    "initial-cluster-size",
    "consumer-timeout",
];

const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Keys whose merge takes the lower value (rabbit_policies:merge_policy_value/3 between
/// policy and operator policy; res_min between policy and queue argument).
const MIN_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Definition keys that map to a queue argument `x-KEY` warren acts on.
const QUEUE_KEYS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
    "consumer-timeout",
];

/// Erlang's `~p` of a JSON value, as RabbitMQ's validation messages print it.
fn erl(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Null => "null".to_owned(),
        Value::Array(_) | Value::Object(_) => v.to_string(),
        other => other.to_string(),
    }
}

fn non_negative(v: &Value, min: i64) -> bool {
    v.as_i64().is_some_and(|n| n >= min)
}

/// rabbit_policies:validate_policy0 for one key; `ha-*` (classic mirroring, gone in
/// RabbitMQ 4) are accepted so that old tooling does not fail, and ignored.
fn validate_key(key: &str, v: &Value) -> Result<(), String> {
    let bad = |what: &str| Err(format!("{} is not a valid {what}", erl(v)));
    match key {
        "alternate-exchange" if !v.is_string() => bad("alternate exchange name"),
        "dead-letter-exchange" if !v.is_string() => bad("dead letter exchange name"),
        "dead-letter-routing-key" if !v.is_string() => bad("dead letter routing key"),
        "message-ttl" if !non_negative(v, 0) => bad("message TTL"),
        "expires" if !non_negative(v, 1) => bad("queue expiry"),
        "max-length" if !non_negative(v, 0) => bad("maximum length"),
        "max-length-bytes" if !non_negative(v, 0) => bad("maximum length in bytes"),
        "max-in-memory-length" | "max-in-memory-bytes" if !non_negative(v, 0) => {
            bad("maximum memory in bytes")
        }
        "queue-mode" if !matches!(v.as_str(), Some("default" | "lazy")) => bad("queue-mode value"),
        "overflow"
            if !matches!(
                v.as_str(),
                Some("drop-head" | "reject-publish" | "reject-publish-dlx")
            ) =>
        {
            bad("overflow value")
        }
        "delivery-limit" if !non_negative(v, 0) => bad("delivery limit"),
        "queue-leader-locator"
            if !matches!(
                v.as_str(),
                Some("client-local" | "random" | "least-leaders")
            ) =>
        {
            bad("queue leader locator value")
        }
        "initial-cluster-size" if !non_negative(v, 0) => bad("cluster size"),
        "max-segment-size" if !non_negative(v, 0) => bad("segment size"),
        "consumer-timeout" if !non_negative(v, 0) => bad("consumer timeout"),
        _ => Ok(()),
    }
}

/// Validate a definition (rabbit_policy:validation/3): a non-empty JSON object whose keys
/// are all recognised for this kind, each value valid.
pub fn validate_definition(kind: Kind, definition: &Value) -> Result<Map<String, Value>, String> {
    let Some(map) = definition.as_object() else {
        return Err(format!("definition must be a dictionary: {definition}"));
    };
    if map.is_empty() {
        return Err("no policy provided".to_owned());
    }
    let known = match kind {
        Kind::Policy => POLICY_KEYS,
        Kind::Operator => OPERATOR_KEYS,
    };
    let mut unknown = Vec::new();
    for (k, v) in map {
        if known.contains(&k.as_str()) {
            validate_key(k, v)?;
        } else if kind == Kind::Policy && k.starts_with("ha-") {
            // Accepted and ignored (see `ignored_keys`).
        } else {
            unknown.push(format!("{{<<\"{k}\">>,{}}}", erl(v)));
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "[{}] are not recognised policy settings",
            unknown.join(",")
        ));
    }
    Ok(map.clone())
}

/// What `ha-*` keys (classic mirrored queues) mean here: nothing to do.
pub const MIRRORING: &str = "in a warren cluster every durable queue is replicated to the in-sync replicas already; a single node has nothing to mirror to";

/// Definition keys accepted but without effect in warren (logged when a policy is set).
pub fn ignored_keys(definition: &Map<String, Value>) -> Vec<&str> {
    definition
        .keys()
        .map(String::as_str)
        .filter(|k| {
            k.starts_with("ha-")
                || matches!(
                    *k,
                    "queue-mode"
                        | "max-in-memory-length"
                        | "max-in-memory-bytes"
                        | "max-age"
                        | "max-segment-size"
                        | "queue-leader-locator"
                        | "initial-cluster-size"
                )
        })
        .collect()
}

impl Policy {
    /// Build and validate a policy (rabbit_policy:policy_validation/0's checks, in order:
    /// priority, pattern, apply-to, definition).
    pub fn new(
        kind: Kind,
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: &str,
        definition: &Value,
        priority: i64,
    ) -> Result<Policy, String> {
        // rabbit_parameter_validation:regex/2.
        let regex = Regex::new(pattern)
            .map_err(|e| format!("<<\"{pattern}\">> is not a valid regular expression: {e}"))?;
        let apply_to = ApplyTo::parse(apply_to).ok_or_else(|| {
            format!(
                "apply-to '{apply_to}' unrecognised; should be one of: 'queues', 'classic_queues',  \
                 'quorum_queues', 'streams', 'exchanges', or 'all'"
            )
        })?;
        let definition = validate_definition(kind, definition)?;
        Ok(Policy {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            pattern: pattern.to_owned(),
            regex,
            apply_to,
            definition,
            priority,
        })
    }

    /// Whether it applies to `name` of kind `target` (rabbit_policy:matches/3; the
    /// regex is searched, not anchored, as re:run does).
    pub fn matches(&self, name: &str, target: Target) -> bool {
        let kind_ok = match (target, self.apply_to) {
            (_, ApplyTo::All) => true,
            (Target::Exchange, ApplyTo::Exchanges) => true,
            (Target::Queue { .. }, ApplyTo::Queues) => true,
            (Target::Queue { quorum }, ApplyTo::QuorumQueues) => quorum,
            (Target::Queue { quorum }, ApplyTo::ClassicQueues) => !quorum,
            _ => false,
        };
        kind_ok && self.regex.is_match(name)
    }

    /// The policy as RabbitMQ's definitions and listings show it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to.as_str(),
            "definition": self.definition,
            "priority": self.priority,
        })
    }
}

/// A vhost's policies and operator policies, by name.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: BTreeMap<String, Policy>,
    pub operator: BTreeMap<String, Policy>,
}

impl PolicySet {
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Policy> {
        match kind {
            Kind::Policy => &self.policies,
            Kind::Operator => &self.operator,
        }
    }

    pub fn of_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Policy> {
        match kind {
            Kind::Policy => &mut self.policies,
            Kind::Operator => &mut self.operator,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.operator.is_empty()
    }

    /// The policy and the operator policy that apply to `name`.
    pub fn matching(&self, name: &str, target: Target) -> (Option<&Policy>, Option<&Policy>) {
        (
            choose(self.policies.values(), name, target),
            choose(self.operator.values(), name, target),
        )
    }

    /// A queue's effective arguments under these policies.
    pub fn queue_arguments(&self, name: &str, declared: &FieldTable) -> FieldTable {
        if self.is_empty() {
            return declared.clone();
        }
        let (p, o) = self.matching(
            name,
            Target::Queue {
                quorum: is_quorum(declared),
            },
        );
        effective_queue_arguments(declared, p, o)
    }

    /// An exchange's alternate exchange under these policies.
    pub fn alternate_exchange(&self, name: &str, declared: &FieldTable) -> Option<String> {
        let (p, _) = self.matching(name, Target::Exchange);
        effective_alternate_exchange(declared, p)
    }
}

/// Whether queue arguments declare a quorum queue.
pub fn is_quorum(arguments: &FieldTable) -> bool {
    arguments
        .inner()
        .get("x-queue-type")
        .and_then(crate::arguments::as_str)
        .as_deref()
        == Some("quorum")
}

/// The policy that applies among `policies`: the highest priority match (ties: the one
/// listed first, as rabbit_policy's stable sort over its list does).
pub fn choose<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    name: &str,
    target: Target,
) -> Option<&'a Policy> {
    let mut best: Option<&Policy> = None;
    for p in policies {
        if p.matches(name, target) && best.is_none_or(|b| p.priority > b.priority) {
            best = Some(p);
        }
    }
    best
}

/// rabbit_policy:get/2: a key's value from the policy and the operator policy merged.
pub fn merged_value<'a>(
    key: &str,
    policy: Option<&'a Policy>,
    operator: Option<&'a Policy>,
) -> Option<Value> {
    let p = policy.and_then(|p| p.definition.get(key));
    let o = operator.and_then(|o| o.definition.get(key));
    match (p, o) {
        (Some(p), Some(o)) if MIN_KEYS.contains(&key) => Some(min_value(p, o)),
        (Some(p), _) => Some(p.clone()),
        (None, o) => o.cloned(),
    }
}

fn min_value(a: &Value, b: &Value) -> Value {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => Value::from(x.min(y)),
        _ => a.clone(),
    }
}

fn to_amqp(v: &Value) -> Option<AMQPValue> {
    match v {
        Value::String(s) => Some(AMQPValue::LongString(LongString::from(s.as_str()))),
        Value::Number(n) => n.as_i64().map(AMQPValue::LongLongInt),
        Value::Bool(b) => Some(AMQPValue::Boolean(*b)),
        _ => None,
    }
}

/// The arguments a queue runs with: its declared ones, with the policy's keys merged
/// in (see the module doc for the precedence). Keys the queue acts on only.
pub fn effective_queue_arguments(
    declared: &FieldTable,
    policy: Option<&Policy>,
    operator: Option<&Policy>,
) -> FieldTable {
    if policy.is_none() && operator.is_none() {
        return declared.clone();
    }
    let mut t: BTreeMap<_, _> = declared.inner().clone();
    for key in QUEUE_KEYS {
        let Some(from_policy) = merged_value(key, policy, operator).and_then(|v| to_amqp(&v))
        else {
            continue;
        };
        let arg = format!("x-{key}");
        let value = match t.get(arg.as_str()) {
            None => from_policy,
            Some(own) if MIN_KEYS.contains(key) => {
                match (
                    crate::arguments::as_i64(own),
                    crate::arguments::as_i64(&from_policy),
                ) {
                    (Some(a), Some(p)) if p < a => from_policy,
                    _ => own.clone(),
                }
            }
            Some(own) => own.clone(),
        };
        t.insert(arg.as_str().into(), value);
    }
    FieldTable::from(t)
}

/// An exchange's alternate exchange: its own argument, else the policy's
/// (rabbit_policy:get_arg/3; operator policies have no `alternate-exchange`).
pub fn effective_alternate_exchange(
    declared: &FieldTable,
    policy: Option<&Policy>,
) -> Option<String> {
    if let Some(own) = declared
        .inner()
        .get("alternate-exchange")
        .and_then(crate::arguments::as_str)
    {
        return Some(own);
    }
    policy?
        .definition
        .get("alternate-exchange")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(kind: Kind, name: &str, pattern: &str, def: Value, priority: i64) -> Policy {
        Policy::new(kind, "/", name, pattern, "all", &def, priority).unwrap()
    }

    fn err(kind: Kind, def: Value) -> String {
        Policy::new(kind, "/", "p", ".*", "all", &def, 0).unwrap_err()
    }

    #[test]
    fn validation_texts_follow_rabbitmq() {
        assert_eq!(
            err(Kind::Policy, json!({"max-length": -1})),
            "-1 is not a valid maximum length"
        );
        assert_eq!(
            err(Kind::Policy, json!({"message-ttl": "soon"})),
            "<<\"soon\">> is not a valid message TTL"
        );
        assert_eq!(
            err(Kind::Policy, json!({"expires": 0})),
            "0 is not a valid queue expiry"
        );
        assert_eq!(
            err(Kind::Policy, json!({"overflow": "drop-tail"})),
            "<<\"drop-tail\">> is not a valid overflow value"
        );
        assert_eq!(
            err(Kind::Policy, json!({"foo": 1})),
            "[{<<\"foo\">>,1}] are not recognised policy settings"
        );
        assert_eq!(err(Kind::Policy, json!({})), "no policy provided");
        // Operator policies take numeric limits only.
        assert_eq!(
            err(Kind::Operator, json!({"dead-letter-exchange": "dlx"})),
            "[{<<\"dead-letter-exchange\">>,<<\"dlx\">>}] are not recognised policy settings"
        );
        assert!(Policy::new(
            Kind::Policy,
            "/",
            "p",
            "(",
            "all",
            &json!({"expires": 1}),
            0
        )
        .unwrap_err()
        .contains("is not a valid regular expression"));
        assert!(Policy::new(
            Kind::Policy,
            "/",
            "p",
            ".*",
            "things",
            &json!({"expires": 1}),
            0
        )
        .unwrap_err()
        .starts_with("apply-to 'things' unrecognised"));
    }

    #[test]
    fn ha_and_queue_mode_are_accepted_and_reported_ignored() {
        let p = policy(
            Kind::Policy,
            "ha",
            ".*",
            json!({"ha-mode": "all", "ha-sync-mode": "automatic", "queue-mode": "lazy", "max-length": 5}),
            0,
        );
        let mut ignored = ignored_keys(&p.definition);
        ignored.sort();
        assert_eq!(ignored, ["ha-mode", "ha-sync-mode", "queue-mode"]);
    }

    #[test]
    fn highest_priority_match_wins_and_apply_to_filters() {
        let low = policy(Kind::Policy, "low", "^q", json!({"max-length": 1}), 1);
        let high = policy(Kind::Policy, "high", "^q\\.", json!({"max-length": 2}), 5);
        let exchanges = Policy::new(
            Kind::Policy,
            "/",
            "x",
            ".*",
            "exchanges",
            &json!({"alternate-exchange": "ae"}),
            10,
        )
        .unwrap();
        let all = [low, high, exchanges];
        let q = Target::Queue { quorum: false };
        assert_eq!(choose(&all, "q.1", q).unwrap().name, "high");
        assert_eq!(choose(&all, "qa", q).unwrap().name, "low");
        assert!(choose(&all, "other", q).is_none());
        assert_eq!(choose(&all, "any", Target::Exchange).unwrap().name, "x");
        // The pattern is searched, not anchored.
        assert!(policy(Kind::Policy, "m", "ab", json!({"expires": 1}), 0).matches("xaby", q));
    }

    #[test]
    fn quorum_and_classic_apply_to() {
        let p = Policy::new(
            Kind::Policy,
            "/",
            "p",
            ".*",
            "quorum_queues",
            &json!({"delivery-limit": 3}),
            0,
        )
        .unwrap();
        assert!(p.matches("q", Target::Queue { quorum: true }));
        assert!(!p.matches("q", Target::Queue { quorum: false }));
        assert!(!p.matches("q", Target::Exchange));
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn get_i(t: &FieldTable, k: &str) -> Option<i64> {
        t.inner().get(k).and_then(crate::arguments::as_i64)
    }

    #[test]
    fn numeric_limits_take_the_lowest_of_argument_policy_and_operator_policy() {
        let p = policy(
            Kind::Policy,
            "p",
            ".*",
            json!({"max-length": 10, "message-ttl": 500}),
            0,
        );
        let o = policy(
            Kind::Operator,
            "o",
            ".*",
            json!({"max-length": 3, "message-ttl": 1000}),
            0,
        );
        let declared = table(&[("x-max-length", AMQPValue::LongInt(5))]);
        let eff = effective_queue_arguments(&declared, Some(&p), Some(&o));
        assert_eq!(get_i(&eff, "x-max-length"), Some(3));
        assert_eq!(get_i(&eff, "x-message-ttl"), Some(500));
        let eff = effective_queue_arguments(&declared, Some(&p), None);
        assert_eq!(get_i(&eff, "x-max-length"), Some(5));
        let eff = effective_queue_arguments(&FieldTable::default(), None, Some(&o));
        assert_eq!(get_i(&eff, "x-max-length"), Some(3));
    }

    #[test]
    fn queue_argument_wins_for_other_keys() {
        let p = policy(
            Kind::Policy,
            "p",
            ".*",
            json!({"dead-letter-exchange": "from-policy", "overflow": "reject-publish"}),
            0,
        );
        let declared = table(&[(
            "x-dead-letter-exchange",
            AMQPValue::LongString("own".into()),
        )]);
        let eff = effective_queue_arguments(&declared, Some(&p), None);
        assert_eq!(
            eff.inner()
                .get("x-dead-letter-exchange")
                .and_then(crate::arguments::as_str)
                .as_deref(),
            Some("own")
        );
        assert_eq!(
            eff.inner()
                .get("x-overflow")
                .and_then(crate::arguments::as_str)
                .as_deref(),
            Some("reject-publish")
        );
    }

    #[test]
    fn alternate_exchange_argument_wins_over_policy() {
        let p = policy(
            Kind::Policy,
            "p",
            ".*",
            json!({"alternate-exchange": "pol"}),
            0,
        );
        assert_eq!(
            effective_alternate_exchange(&FieldTable::default(), Some(&p)).as_deref(),
            Some("pol")
        );
        let own = table(&[("alternate-exchange", AMQPValue::LongString("own".into()))]);
        assert_eq!(
            effective_alternate_exchange(&own, Some(&p)).as_deref(),
            Some("own")
        );
    }
}
