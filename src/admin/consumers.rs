//! Consumers as listings describe them: `warrenctl list_consumers` and `/api/consumers`
//! both gather [`ConsumerRow`]s here, asking each queue (the owner of its consumers).

use std::sync::Arc;
use std::time::Duration;

use crate::queue::{ConsumerInfo, QueueCmd, QueueHandle};
use crate::vhost::Vhost;

pub struct ConsumerRow {
    pub vhost: Arc<str>,
    pub queue: Arc<QueueHandle>,
    pub info: ConsumerInfo,
}

/// The consumers of every queue of `vhosts`, in vhost then queue-name order. A queue
/// that does not answer within `wait` (or was deleted meanwhile) is left out.
pub async fn gather(vhosts: &[Arc<Vhost>], wait: Duration) -> Vec<ConsumerRow> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut rows = Vec::new();
    for v in vhosts {
        let mut queues = v.queues();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for q in queues {
            let ask = q.ask(|reply| QueueCmd::Consumers { reply });
            let Ok(Some(list)) = tokio::time::timeout_at(deadline, ask).await else {
                continue;
            };
            rows.extend(list.into_iter().map(|info| ConsumerRow {
                vhost: v.name.clone(),
                queue: q.clone(),
                info,
            }));
        }
    }
    rows
}
