//! Message rates for /api/overview (`publish_details: {"rate": ...}` and so on), as
//! RabbitMQ's management plugin shows them: per second over the last sampling interval.
//!
//! A task samples the broker's message counters every [`INTERVAL`] (a few atomic
//! loads) and keeps the rates of the last interval; requests only read them.
//!
//! Queues' rates ([`QueueRates`]) are sampled the same way, by one task for all queues:
//! every interval it loads each queue's counter atomics (a dozen loads per queue, no
//! message to any actor), so 10k queues cost a few milliseconds every 5 s and nothing
//! per request.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::broker::Broker;
use crate::metrics::QueueGauges;

/// RabbitMQ's default `collect_statistics_interval` (5 s).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The last interval's rate per message_stats key.
#[derive(Default)]
pub struct Rates {
    rates: Mutex<Map<String, Value>>,
}

impl Rates {
    /// Add `<key>_details: {"rate": r}` next to each counter of `stats`.
    pub fn decorate(&self, stats: &mut Value) {
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Value::Object(m) = stats else { return };
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            let rate = rates.get(&k).cloned().unwrap_or(Value::from(0.0));
            let mut details = Map::new();
            details.insert("rate".into(), rate);
            m.insert(format!("{k}_details"), Value::Object(details));
        }
    }

    /// Sample `read` every `every` until `shutdown` changes.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        read: impl Fn() -> Value + Send + 'static,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut prev = (Instant::now(), read());
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = (Instant::now(), read());
            let secs = now.0.duration_since(prev.0).as_secs_f64().max(1e-3);
            let rates = per_second(&prev.1, &now.1, secs);
            *self.rates.lock().unwrap_or_else(|e| e.into_inner()) = rates;
            prev = now;
        }
    }
}

/// Each counter's increase from `old` to `new` divided by `secs`, to one decimal.
fn per_second(old: &Value, new: &Value, secs: f64) -> Map<String, Value> {
    let mut rates = Map::new();
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        for (k, v) in b {
            let (Some(new), Some(old)) = (v.as_u64(), a.get(k).and_then(Value::as_u64)) else {
                continue;
            };
            let rate = new.saturating_sub(old) as f64 / secs;
            rates.insert(k.clone(), Value::from((rate * 10.0).round() / 10.0));
        }
    }
    rates
}

/// What a queue's rates are taken of, in [`QUEUE_KEYS`] order.
type QueueSample = [i64; QUEUE_KEYS.len()];

/// The keys a queue shows `<key>_details: {"rate": r}` for: its message_stats counters,
/// then its message counts (whose rates are negative while a queue drains).
pub const QUEUE_KEYS: [&str; 12] = [
    "publish",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "redeliver",
    "ack",
    "deliver_get",
    "messages_ready",
    "messages_unacknowledged",
    "messages",
];

fn queue_sample(g: &QueueGauges) -> QueueSample {
    let c = g.counts.load();
    let (ready, unacked) = (g.ready.load(Relaxed) as i64, g.unacked.load(Relaxed) as i64);
    let mut s = [0i64; QUEUE_KEYS.len()];
    for (i, (_, v)) in c.fields().into_iter().enumerate() {
        s[i] = v as i64;
    }
    s[8] = c.deliver_get() as i64;
    s[9] = ready;
    s[10] = unacked;
    s[11] = ready + unacked;
    s
}

/// Every queue's rates over the last sampling interval, by queue id.
#[derive(Default)]
pub struct QueueRates {
    rates: Mutex<HashMap<u64, [f64; QUEUE_KEYS.len()]>>,
}

impl QueueRates {
    /// The queue's rate for each of [`QUEUE_KEYS`] (zeros until it has been sampled twice).
    pub fn of(&self, queue_id: u64) -> [f64; QUEUE_KEYS.len()] {
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        rates.get(&queue_id).copied().unwrap_or_default()
    }

    /// Sample every queue of `broker` every `every` until it shuts down. A queue that
    /// went away drops out at the next sample.
    pub async fn run(self: Arc<Self>, broker: Arc<Broker>, every: Duration) {
        let mut shutdown = broker.shutdown_signal();
        let mut prev: (Instant, HashMap<u64, QueueSample>) = (Instant::now(), HashMap::new());
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|&down| down) => return,
            }
            let now = Instant::now();
            let mut samples = HashMap::with_capacity(prev.1.len());
            for (vhost, _) in broker.vhosts() {
                for q in vhost.queues() {
                    samples.insert(q.id, queue_sample(&q.gauges));
                }
            }
            let secs = now.duration_since(prev.0).as_secs_f64().max(1e-3);
            let rates = samples
                .iter()
                .filter_map(|(id, new)| {
                    let old = prev.1.get(id)?;
                    let mut r = [0.0; QUEUE_KEYS.len()];
                    for (i, r) in r.iter_mut().enumerate() {
                        *r = round1((new[i] - old[i]) as f64 / secs);
                    }
                    Some((*id, r))
                })
                .collect();
            *self.rates.lock().unwrap_or_else(|e| e.into_inner()) = rates;
            prev = (now, samples);
        }
    }
}

/// `{"rate": r}`, the shape of every `*_details`.
pub fn details(rate: f64) -> Value {
    serde_json::json!({ "rate": rate })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_queue_sample_lists_counters_then_depths() {
        let g = QueueGauges::default();
        g.counts.store(&crate::metrics::QueueCounts {
            publish: 7,
            deliver: 2,
            get_no_ack: 1,
            ack: 2,
            ..Default::default()
        });
        g.set(crate::metrics::QueueSizes {
            ready: 4,
            unacked: 0,
            ..Default::default()
        });
        let s = queue_sample(&g);
        let by_key: HashMap<_, _> = QUEUE_KEYS.iter().zip(s).collect();
        assert_eq!(by_key[&"publish"], 7);
        assert_eq!(by_key[&"ack"], 2);
        assert_eq!(by_key[&"deliver_get"], 3);
        assert_eq!(by_key[&"messages"], 4);
    }

    #[test]
    fn rates_are_the_intervals_increase_per_second() {
        let r = per_second(
            &json!({"publish": 10, "ack": 4}),
            &json!({"publish": 35, "ack": 4}),
            5.0,
        );
        assert_eq!(
            Value::Object(r.clone()),
            json!({"publish": 5.0, "ack": 0.0})
        );
        let rates = Rates::default();
        *rates.rates.lock().unwrap() = r;
        let mut stats = json!({"publish": 35, "get": 1});
        rates.decorate(&mut stats);
        assert_eq!(stats["publish_details"], json!({"rate": 5.0}));
        assert_eq!(
            stats["get_details"],
            json!({"rate": 0.0}),
            "not sampled yet: 0"
        );
    }
}
