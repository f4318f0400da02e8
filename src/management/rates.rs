//! Message rates for /api/overview (`publish_details: {"rate": ...}` and so on), as
//! RabbitMQ's management plugin shows them: per second over the last sampling interval.
//!
//! A task samples the broker's message counters every [`INTERVAL`] (a few atomic
//! loads) and keeps the rates of the last interval; requests only read them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
