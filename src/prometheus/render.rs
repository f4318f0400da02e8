//! The Prometheus text format, with rabbitmq_prometheus's metric names so that existing
//! dashboards (RabbitMQ-Overview, its alerts) read warren unchanged.
//!
//! `/metrics` is aggregated (one series per metric, summed over queues), as RabbitMQ's
//! default; `/metrics/per-object` adds `vhost`/`queue` labels, one series per queue.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::broker::Broker;

/// One metric family being written: `# HELP`, `# TYPE`, then its samples.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"");
                escape_into(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Per-queue series: (metric, type, help, value of a queue's gauges). Names, types and
/// help texts are rabbitmq_prometheus's (queue_coarse_metrics, queue_metrics,
/// queue_delivery_metrics).
type QueueSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::metrics::QueueGauges) -> u64,
);

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

fn ram(g: &crate::metrics::QueueGauges) -> u64 {
    (g.ready.load(Relaxed) as u64).saturating_sub(g.paged_out.load(Relaxed) as u64)
}

fn ram_bytes(g: &crate::metrics::QueueGauges) -> u64 {
    g.ready_bytes
        .load(Relaxed)
        .saturating_sub(g.paged_out_bytes.load(Relaxed))
}

const QUEUE_SERIES: &[QueueSeries] = &[
    (
        "rabbitmq_queue_messages_ready",
        GAUGE,
        "Messages ready to be delivered to consumers",
        |g| g.ready.load(Relaxed) as u64,
    ),
    (
        "rabbitmq_queue_messages_unacked",
        GAUGE,
        "Messages delivered to consumers but not yet acknowledged",
        |g| g.unacked.load(Relaxed) as u64,
    ),
    (
        "rabbitmq_queue_messages",
        GAUGE,
        "Sum of ready and unacknowledged messages - total queue depth",
        |g| (g.ready.load(Relaxed) + g.unacked.load(Relaxed)) as u64,
    ),
    ("rabbitmq_queue_consumers", GAUGE, "Consumers on a queue", |g| {
        g.consumers.load(Relaxed) as u64
    }),
    (
        "rabbitmq_queue_process_memory_bytes",
        GAUGE,
        "Memory in bytes used by the Erlang queue process",
        crate::queue::footprint::memory,
    ),
    (
        "rabbitmq_queue_messages_ram",
        GAUGE,
        "Ready and unacknowledged messages stored in memory",
        |g| ram(g) + g.unacked.load(Relaxed) as u64,
    ),
    (
        "rabbitmq_queue_messages_ram_bytes",
        GAUGE,
        "Size of ready and unacknowledged messages stored in memory",
        |g| ram_bytes(g) + g.unacked_bytes.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_ready_ram",
        GAUGE,
        "Ready messages stored in memory",
        ram,
    ),
    (
        "rabbitmq_queue_messages_unacked_ram",
        GAUGE,
        "Unacknowledged messages stored in memory",
        |g| g.unacked.load(Relaxed) as u64,
    ),
    (
        "rabbitmq_queue_messages_bytes",
        GAUGE,
        "Size in bytes of ready and unacknowledged messages",
        |g| g.ready_bytes.load(Relaxed) + g.unacked_bytes.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_ready_bytes",
        GAUGE,
        "Size in bytes of ready messages",
        |g| g.ready_bytes.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_unacked_bytes",
        GAUGE,
        "Size in bytes of all unacknowledged messages",
        |g| g.unacked_bytes.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_paged_out",
        GAUGE,
        "Messages paged out to disk",
        |g| g.paged_out.load(Relaxed) as u64,
    ),
    (
        "rabbitmq_queue_get_ack_total",
        COUNTER,
        "Total number of messages fetched from a queue with basic.get in manual acknowledgement mode",
        |g| g.counts.get.load(Relaxed),
    ),
    (
        "rabbitmq_queue_get_total",
        COUNTER,
        "Total number of messages fetched from a queue with basic.get in automatic acknowledgement mode",
        |g| g.counts.get_no_ack.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_delivered_ack_total",
        COUNTER,
        "Total number of messages delivered from a queue to consumers in manual acknowledgement mode",
        |g| g.counts.deliver.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_delivered_total",
        COUNTER,
        "Total number of messages delivered from a queue to consumers in automatic acknowledgement mode",
        |g| g.counts.deliver_no_ack.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_redelivered_total",
        COUNTER,
        "Total number of messages redelivered from a queue to consumers",
        |g| g.counts.redeliver.load(Relaxed),
    ),
    (
        "rabbitmq_queue_messages_acked_total",
        COUNTER,
        "Total number of messages acknowledged by consumers on a queue",
        |g| g.counts.ack.load(Relaxed),
    ),
    (
        "rabbitmq_queue_get_empty_total",
        COUNTER,
        "Total number of times basic.get operations fetched no message on a queue",
        |g| g.counts.get_empty.load(Relaxed),
    ),
];

/// The whole scrape.
pub fn render(broker: &Broker, per_object: bool) -> String {
    let mut out = Out {
        text: String::with_capacity(8192),
    };
    let node = crate::broker::node_name();
    let cluster = crate::broker::cluster_name();
    out.family(
        "rabbitmq_identity_info",
        "gauge",
        "RabbitMQ node & cluster identity info",
    );
    out.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", &node),
            ("rabbitmq_cluster", &cluster),
            ("rabbitmq_cluster_permanent_id", &cluster),
        ],
        1,
    );
    out.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    out.sample(
        "rabbitmq_build_info",
        &[
            ("rabbitmq_version", crate::RABBITMQ_COMPAT_VERSION),
            ("product", "warren"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );

    // Connections and channels.
    out.gauge(
        "rabbitmq_connections",
        "Connections currently open",
        broker.connection_count(),
    );
    out.gauge(
        "rabbitmq_channels",
        "Channels currently open",
        broker.channel_count(),
    );

    // Queues: walk every queue's gauges (atomics only; no actor is asked).
    let mut queues = Vec::new();
    for (vhost, _) in broker.vhosts() {
        for q in vhost.queues() {
            queues.push(q);
        }
    }
    let consumers: u64 = queues
        .iter()
        .map(|q| q.gauges.consumers.load(Relaxed) as u64)
        .sum();
    out.gauge("rabbitmq_queues", "Queues available", queues.len());
    out.gauge(
        "rabbitmq_consumers",
        "Consumers currently connected",
        consumers,
    );
    for (name, kind, help, value) in QUEUE_SERIES {
        out.family(name, kind, help);
        if per_object {
            for q in &queues {
                out.sample(
                    name,
                    &[("vhost", &q.vhost), ("queue", &q.name)],
                    value(&q.gauges),
                );
            }
        } else {
            let total: u64 = queues.iter().map(|q| value(&q.gauges)).sum();
            out.sample(name, &[], total);
        }
    }

    // Message counters since start.
    let proto = [("protocol", "amqp091")];
    for (field, help, value) in broker.counters.read() {
        let name = format!("rabbitmq_global_messages_{field}_total");
        out.family(&name, "counter", help);
        out.sample(&name, &proto, value);
    }
    out.family(
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
    );
    out.sample("rabbitmq_global_consumers", &proto, consumers);

    // The process and its resource alarms.
    let alarms = *broker.alarms().borrow();
    let cfg = &broker.config.alarms;
    if let Some(rss) = crate::alarm::resident_memory() {
        out.gauge(
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            rss,
        );
    }
    if let Some(limit) = crate::alarm::memory_limit(cfg) {
        out.gauge(
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            limit,
        );
    }
    if let Some(free) = crate::alarm::free_disk(&broker.config.data_dir) {
        out.gauge(
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            free,
        );
    }
    out.gauge(
        "rabbitmq_disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes",
        cfg.disk_free_limit,
    );
    if let Some(fds) = open_fds() {
        out.gauge("rabbitmq_process_open_fds", "Open file descriptors", fds);
    }
    out.gauge(
        "rabbitmq_alarms_memory_used_watermark",
        "is 1 if VM memory watermark alarm is in effect",
        alarms.memory as u8,
    );
    out.gauge(
        "rabbitmq_alarms_free_disk_space_watermark",
        "is 1 if free disk space watermark alarm is in effect",
        alarms.disk as u8,
    );
    if let Some(store) = &broker.store {
        let journal = store.messages.journal();
        out.gauge(
            "warren_store_journal_bytes",
            "Bytes in the message journal's segment files",
            journal.bytes,
        );
        out.gauge(
            "warren_store_journal_files",
            "Segment files in the message journal",
            journal.files,
        );
        out.family(
            "warren_store_compactions_total",
            "counter",
            "Compactions of the message journal (files rewritten with what is still needed)",
        );
        out.sample("warren_store_compactions_total", &[], journal.compactions);
        out.gauge(
            "warren_store_write_failing",
            "is 1 while the message store's writes fail (persistent publishes are refused)",
            store.messages.is_failing() as u8,
        );
    }
    out.gauge(
        "rabbitmq_alarms_file_descriptor_limit",
        "is 1 if file descriptor limit alarm is in effect",
        0,
    );
    if let Some(cluster) = crate::membership::get() {
        cluster.render_metrics(&mut out.text);
    }
    out.text
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Out {
            text: String::new(),
        };
        out.sample("m", &[("queue", "a\"b\\c\nd")], 1);
        assert_eq!(out.text, "m{queue=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
