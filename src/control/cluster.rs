//! The cluster commands' side that needs no cluster: how `cluster_status` is printed,
//! and what a single node (no `[cluster]` section) answers, as a lone RabbitMQ node does
//! (a cluster of one). A cluster's leader answers through [`crate::membership`].

use serde_json::{json, Value};

use super::{Request, Response};
use crate::broker::Broker;

use super::EX_UNAVAILABLE;

pub fn single_node(broker: &Broker, req: &Request) -> Response {
    let me = crate::broker::node_name();
    match req.command.as_str() {
        "cluster_status" => {
            let listeners: Vec<Value> = broker
                .listeners()
                .iter()
                .map(|(protocol, at)| listener(&me, protocol, at))
                .collect();
            let doc = json!({
                "cluster_name": me,
                "disk_nodes": [me],
                "ram_nodes": [],
                "running_nodes": [me],
                "versions": {me.clone(): {"warren_version": env!("CARGO_PKG_VERSION")}},
                "maintenance_status": {me.clone(): "not under maintenance"},
                "alarms": alarm_list(broker, &me),
                "partitions": {},
                "listeners": {me.clone(): listeners},
            });
            status_response(doc)
        }
        "update_cluster_nodes" | "change_cluster_node_type" => nothing_to_do(&req.command),
        "stop_app" => {
            crate::app::request_stop();
            Response::default()
        }
        "start_app" => Response::default(),
        "reset" | "force_reset" => Response::error(
            EX_UNAVAILABLE,
            format!("warren is still running on node {me}.\nPlease stop it with 'warrenctl stop_app' first."),
        ),
        _ => Response::error(
            EX_UNAVAILABLE,
            format!(
                "{me} is a single node (no [cluster] section): '{}' is for cluster nodes",
                req.command
            ),
        ),
    }
}

pub fn nothing_to_do(command: &str) -> Response {
    let why = match command {
        "update_cluster_nodes" => "every node finds the others through etcd (cluster.etcd_endpoints): there is nothing to update",
        _ => "every warren node keeps its data on disk (RAM nodes are deprecated in RabbitMQ too): there is nothing to change",
    };
    Response::message(why)
}

pub fn listener(node: &str, protocol: &str, at: &str) -> Value {
    let (interface, port) = at.rsplit_once(':').unwrap_or((at, ""));
    let purpose = match protocol {
        "amqp" => "AMQP 0-9-1",
        "amqp/ssl" => "AMQP 0-9-1 over TLS",
        "http" => "HTTP API",
        "https" => "HTTP API over TLS (HTTPS)",
        "clustering" => "inter-node and CLI tool communication",
        _ => "",
    };
    json!({
        "node": node,
        "interface": interface.trim_matches(['[', ']']),
        "port": port.parse::<u16>().unwrap_or(0),
        "protocol": protocol,
        "purpose": purpose,
    })
}

pub fn alarm_list(broker: &Broker, node: &str) -> Value {
    let a = *broker.alarms().borrow();
    let mut list = vec![];
    if a.memory {
        list.push(json!({"node": node, "type": "memory"}));
    }
    if a.disk {
        list.push(json!({"node": node, "type": "disk"}));
    }
    if a.replicas {
        list.push(json!({"node": node, "type": "too_few_in_sync_replicas"}));
    }
    Value::Array(list)
}

/// The document and its text rendering, as rabbitmqctl prints `cluster_status`.
pub fn status_response(doc: Value) -> Response {
    let mut text = String::new();
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let section = |text: &mut String, title: &str, lines: Vec<String>| {
        text.push_str(&format!("{title}\n\n"));
        if lines.is_empty() {
            text.push_str("(none)\n");
        }
        for l in lines {
            text.push_str(&format!("{l}\n"));
        }
        text.push('\n');
    };
    let name = doc["cluster_name"].as_str().unwrap_or_default();
    section(&mut text, "Basics", vec![format!("Cluster name: {name}")]);
    section(&mut text, "Disk Nodes", list(&doc["disk_nodes"]));
    section(&mut text, "Running Nodes", list(&doc["running_nodes"]));
    let map_lines = |v: &Value, f: &dyn Fn(&str, &Value) -> Vec<String>| -> Vec<String> {
        v.as_object()
            .map(|m| m.iter().flat_map(|(k, v)| f(k, v)).collect())
            .unwrap_or_default()
    };
    section(
        &mut text,
        "Versions",
        map_lines(&doc["versions"], &|n, v| {
            vec![format!(
                "{n}: warren {}",
                v["warren_version"].as_str().unwrap_or("?")
            )]
        }),
    );
    section(
        &mut text,
        "Maintenance status",
        map_lines(&doc["maintenance_status"], &|n, v| {
            vec![format!("Node: {n}, status: {}", v.as_str().unwrap_or(""))]
        }),
    );
    let alarms: Vec<String> = doc["alarms"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    format!(
                        "Node {}: {} alarm",
                        x["node"].as_str().unwrap_or(""),
                        x["type"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    section(&mut text, "Alarms", alarms);
    section(&mut text, "Network Partitions", vec![]);
    section(
        &mut text,
        "Listeners",
        map_lines(&doc["listeners"], &|_, v| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|l| {
                            format!(
                                "Node: {}, interface: {}, port: {}, protocol: {}, purpose: {}",
                                l["node"].as_str().unwrap_or(""),
                                l["interface"].as_str().unwrap_or(""),
                                l["port"],
                                l["protocol"].as_str().unwrap_or(""),
                                l["purpose"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        }),
    );
    if doc.get("in_sync_replicas").is_some() {
        let mut lines = vec![match doc["leader"].as_str() {
            Some(l) => format!("Leader: {l} (election {})", doc["election"]),
            None => "Leader: (none)".to_owned(),
        }];
        lines.push(format!(
            "In-sync replicas: {} (min_insync_replicas {})",
            list(&doc["in_sync_replicas"]).join(", "),
            doc["min_insync_replicas"]
        ));
        if let Some(rows) = doc.get("replication").and_then(Value::as_array) {
            for r in rows {
                lines.push(format!(
                    "Node: {}, connected: {}, in sync: {}, behind: {} changes, {:.1} s",
                    r["node"].as_str().unwrap_or(""),
                    r["connected"],
                    r["in_sync"],
                    r["lag_changes"],
                    r["lag_seconds"].as_f64().unwrap_or(0.0)
                ));
            }
        }
        section(&mut text, "Replication (warren)", lines);
    }
    Response {
        message: Some(text.trim_end().to_owned()),
        document: Some(doc),
        ..Default::default()
    }
}
