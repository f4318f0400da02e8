//! What each control command does on the broker side, under rabbitmqctl's names. Usage
//! checks (argument counts) happen in warrenctl; these check meaning (does the user
//! exist, is the regex valid) and answer with rabbitmqctl's texts and exit codes.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::{Request, Response};
use crate::access::{AccessError, Limits};
use crate::admin::queues::QueueInfo;
use crate::broker::{Broker, VhostMeta};
use crate::exchange::Destination;
use crate::queue::QueueCmd;

/// rabbitmqctl's exit codes.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_SOFTWARE: u8 = 70;

pub async fn handle(broker: &Broker, req: Request) -> Response {
    match run(broker, &req).await {
        Ok(r) => r,
        Err(r) => r,
    }
}

type Result<T = Response> = std::result::Result<T, Response>;

fn access_err(e: AccessError) -> Response {
    Response::error(e.exit_code(), e.to_string())
}

fn arg(req: &Request, i: usize) -> Result<&str> {
    req.args.get(i).map(String::as_str).ok_or_else(|| {
        Response::error(
            EX_USAGE,
            format!("not enough arguments for {}", req.command),
        )
    })
}

fn policy_kind(command: &str) -> crate::policy::Kind {
    if command.contains("operator") {
        crate::policy::Kind::Operator
    } else {
        crate::policy::Kind::Policy
    }
}

fn ok() -> Result {
    Ok(Response::default())
}

async fn run(broker: &Broker, req: &Request) -> Result {
    let access = &broker.access;
    let vhost = req
        .vhost
        .clone()
        .unwrap_or_else(|| broker.config.defaults.vhost.clone());
    let need_vhost = || {
        broker
            .vhost(&vhost)
            .ok_or_else(|| access_err(AccessError::NoSuchVhost(vhost.clone())))
    };
    match req.command.as_str() {
        "status" | "await_startup" | "ping" => Ok(status(broker)),
        "cluster_status"
        | "stop_app"
        | "start_app"
        | "reset"
        | "force_reset"
        | "join_cluster"
        | "forget_cluster_node"
        | "update_cluster_nodes"
        | "change_cluster_node_type"
        | "set_cluster_name" => Ok(match crate::membership::get() {
            Some(cluster) => cluster.command(broker, req).await,
            None => super::cluster::single_node(broker, req),
        }),
        "diagnostics" | "doctor" => {
            let secs = match req.flags.get("interval") {
                None => super::diagnostics::DEFAULT_INTERVAL_SECS,
                Some(v) => match v.parse::<f64>() {
                    Ok(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => s,
                    _ => {
                        return Err(Response::error(
                            EX_USAGE,
                            format!("--interval expects seconds (0 to 3600), got '{v}'"),
                        ))
                    }
                },
            };
            Ok(super::diagnostics::run(broker, std::time::Duration::from_secs_f64(secs)).await)
        }
        "add_user" => {
            access
                .add_user(arg(req, 0)?, Some(arg(req, 1)?))
                .map_err(access_err)?;
            ok()
        }
        "delete_user" => {
            access.delete_user(arg(req, 0)?).map_err(access_err)?;
            ok()
        }
        "change_password" => {
            access
                .change_password(arg(req, 0)?, Some(arg(req, 1)?))
                .map_err(access_err)?;
            ok()
        }
        "clear_password" => {
            access
                .change_password(arg(req, 0)?, None)
                .map_err(access_err)?;
            ok()
        }
        "authenticate_user" => {
            let user = arg(req, 0)?;
            access.check_password(user, arg(req, 1)?).map_err(|why| {
                Response::error(
                    EX_DATAERR,
                    format!("Error: failed to authenticate user \"{user}\"\n{why}"),
                )
            })?;
            Ok(Response::message("Success"))
        }
        "set_user_tags" => {
            let tags = req.args.iter().skip(1).cloned().collect();
            access
                .set_user_tags(arg(req, 0)?, tags)
                .map_err(access_err)?;
            ok()
        }
        "list_users" => Ok(Response::table(
            cols(&["user", "tags"]),
            access
                .users()
                .into_iter()
                .map(|u| vec![json!(u.name), json!(u.tags)])
                .collect(),
        )),
        "set_user_limits" => {
            let limits = parse_limits(arg(req, 1)?)?;
            access
                .set_user_limits(arg(req, 0)?, limits)
                .map_err(access_err)?;
            ok()
        }
        "clear_user_limits" => {
            let user = arg(req, 0)?;
            let which = arg(req, 1)?;
            let mut limits = access
                .user(user)
                .ok_or_else(|| access_err(AccessError::NoSuchUser(user.into())))?
                .limits;
            if which == "all" {
                limits.clear();
            } else {
                limits.remove(which);
            }
            access.set_user_limits(user, limits).map_err(access_err)?;
            ok()
        }
        "list_user_limits" => {
            let users = match req.args.first() {
                Some(u) => vec![access
                    .user(u)
                    .ok_or_else(|| access_err(AccessError::NoSuchUser(u.clone())))?],
                None => access.users(),
            };
            Ok(Response::table(
                cols(&["user", "limits"]),
                users
                    .into_iter()
                    .filter(|u| !u.limits.is_empty() || !req.args.is_empty())
                    .map(|u| vec![json!(u.name), json!(u.limits)])
                    .collect(),
            ))
        }
        "add_vhost" => {
            let meta = VhostMeta {
                description: req.flags.get("description").cloned().unwrap_or_default(),
                tags: req
                    .flags
                    .get("tags")
                    .map(|t| {
                        t.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            broker.add_vhost(arg(req, 0)?, meta).map_err(access_err)?;
            ok()
        }
        "delete_vhost" => {
            // rabbitmqctl exits 65 for a missing vhost here.
            broker
                .delete_vhost(arg(req, 0)?)
                .await
                .map_err(|e| Response::error(EX_DATAERR, e.to_string()))?;
            ok()
        }
        "list_vhosts" => {
            let all = ["name", "description", "tags", "tracing", "cluster_state"];
            let columns = columns(req, &all, &["name"])?;
            let rows = broker
                .vhosts()
                .into_iter()
                .map(|(v, meta)| {
                    columns
                        .iter()
                        .map(|c| match c.as_str() {
                            "name" => json!(&*v.name),
                            "description" => json!(meta.description),
                            "tags" => json!(meta.tags),
                            "tracing" => json!(false),
                            _ => json!({"warren": "running"}),
                        })
                        .collect()
                })
                .collect();
            Ok(Response::table(columns, rows))
        }
        "set_vhost_limits" => {
            need_vhost()?;
            let limits = parse_limits(arg(req, 0)?)?;
            access
                .set_vhost_limits(&vhost, limits)
                .map_err(access_err)?;
            ok()
        }
        "clear_vhost_limits" => {
            need_vhost()?;
            access
                .set_vhost_limits(&vhost, Limits::new())
                .map_err(access_err)?;
            ok()
        }
        "list_vhost_limits" => {
            let rows = broker
                .vhosts()
                .into_iter()
                .filter(|(v, _)| req.flags.contains_key("global") || *v.name == *vhost)
                .filter_map(|(v, _)| {
                    let l = access.vhost_limits(&v.name);
                    (!l.is_empty()).then(|| vec![json!(&*v.name), json!(l)])
                })
                .collect();
            Ok(Response::table(cols(&["vhost", "limits"]), rows))
        }
        "set_permissions" => {
            need_vhost()?;
            access
                .set_permissions(
                    &vhost,
                    arg(req, 0)?,
                    arg(req, 1)?,
                    arg(req, 2)?,
                    arg(req, 3)?,
                )
                .map_err(access_err)?;
            ok()
        }
        "clear_permissions" => {
            need_vhost()?;
            access
                .clear_permissions(&vhost, arg(req, 0)?)
                .map_err(access_err)?;
            ok()
        }
        "list_permissions" => {
            need_vhost()?;
            Ok(Response::table(
                cols(&["user", "configure", "write", "read"]),
                access
                    .permissions()
                    .into_iter()
                    .filter(|(v, _, _)| *v == vhost)
                    .map(|(_, u, p)| {
                        vec![
                            json!(u),
                            json!(p.configure.as_str()),
                            json!(p.write.as_str()),
                            json!(p.read.as_str()),
                        ]
                    })
                    .collect(),
            ))
        }
        "set_policy" | "set_operator_policy" => {
            need_vhost()?;
            let kind = policy_kind(&req.command);
            let definition: Value = serde_json::from_str(arg(req, 2)?).map_err(|e| {
                Response::error(EX_DATAERR, format!("Could not parse JSON document: {e}"))
            })?;
            crate::definitions::check_json(&definition)
                .map_err(|e| Response::error(EX_DATAERR, e))?;
            let priority = match req.flags.get("priority") {
                None => 0,
                Some(p) => p.parse::<i64>().map_err(|_| {
                    Response::error(EX_DATAERR, format!("\"{p}\" priority must be a number"))
                })?,
            };
            let apply_to = req.flags.get("apply-to").map_or("all", String::as_str);
            broker
                .set_policy(
                    kind,
                    &vhost,
                    arg(req, 0)?,
                    arg(req, 1)?,
                    &definition,
                    priority,
                    apply_to,
                )
                .map_err(|e| Response::error(EX_DATAERR, format!("Validation failed\n\n{e}")))?;
            let mirroring = definition
                .as_object()
                .is_some_and(|d| d.keys().any(|k| k.starts_with("ha-")));
            if mirroring {
                return Ok(Response::message(format!(
                    "ha-* keys have no effect: {}",
                    crate::policy::MIRRORING
                )));
            }
            ok()
        }
        "clear_policy" | "clear_operator_policy" => {
            need_vhost()?;
            if !broker.clear_policy(policy_kind(&req.command), &vhost, arg(req, 0)?) {
                return Err(Response::error(EX_DATAERR, "Parameter does not exist"));
            }
            ok()
        }
        "list_policies" | "list_operator_policies" => {
            need_vhost()?;
            let kind = if req.command == "list_policies" {
                crate::policy::Kind::Policy
            } else {
                crate::policy::Kind::Operator
            };
            Ok(Response::table(
                cols(&[
                    "vhost",
                    "name",
                    "pattern",
                    "apply-to",
                    "definition",
                    "priority",
                ]),
                broker
                    .list_policies(kind, Some(&vhost))
                    .into_iter()
                    .map(|p| {
                        vec![
                            json!(p.vhost),
                            json!(p.name),
                            json!(p.pattern),
                            json!(p.apply_to.as_str()),
                            json!(p.definition),
                            json!(p.priority),
                        ]
                    })
                    .collect(),
            ))
        }
        "list_user_permissions" => {
            let user = arg(req, 0)?;
            if access.user(user).is_none() {
                return Err(access_err(AccessError::NoSuchUser(user.into())));
            }
            Ok(Response::table(
                cols(&["vhost", "configure", "write", "read"]),
                access
                    .permissions()
                    .into_iter()
                    .filter(|(_, u, _)| u == user)
                    .map(|(v, _, p)| {
                        vec![
                            json!(v),
                            json!(p.configure.as_str()),
                            json!(p.write.as_str()),
                            json!(p.read.as_str()),
                        ]
                    })
                    .collect(),
            ))
        }
        "set_topic_permissions" => {
            need_vhost()?;
            access
                .set_topic_permissions(
                    &vhost,
                    arg(req, 0)?,
                    arg(req, 1)?,
                    arg(req, 2)?,
                    arg(req, 3)?,
                )
                .map_err(access_err)?;
            ok()
        }
        "clear_topic_permissions" => {
            need_vhost()?;
            access
                .clear_topic_permissions(&vhost, arg(req, 0)?, req.args.get(1).map(String::as_str))
                .map_err(access_err)?;
            ok()
        }
        "list_topic_permissions" | "list_user_topic_permissions" => {
            let by_user = req.command == "list_user_topic_permissions";
            let user = if by_user { Some(arg(req, 0)?) } else { None };
            if !by_user {
                need_vhost()?;
            }
            let first = if by_user { "vhost" } else { "user" };
            Ok(Response::table(
                cols(&[first, "exchange", "write", "read"]),
                access
                    .topic_permissions()
                    .into_iter()
                    .filter(|(v, u, _)| match user {
                        Some(user) => u == user,
                        None => *v == vhost,
                    })
                    .map(|(v, u, t)| {
                        vec![
                            json!(if by_user { v } else { u }),
                            json!(t.exchange),
                            json!(t.write.as_str()),
                            json!(t.read.as_str()),
                        ]
                    })
                    .collect(),
            ))
        }
        "list_queues" => {
            let v = need_vhost()?;
            list_queues(req, &v).await
        }
        "list_consumers" => {
            let v = need_vhost()?;
            list_consumers(req, &v).await
        }
        "list_exchanges" => {
            let v = need_vhost()?;
            let all = [
                "name",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
                "vhost",
                "policy",
            ];
            let columns = columns(req, &all, &["name", "type"])?;
            let rows = v
                .exchanges()
                .into_iter()
                .map(|x| {
                    columns
                        .iter()
                        .map(|c| match c.as_str() {
                            "name" => json!(x.name),
                            "type" => json!(x.kind.as_str()),
                            "durable" => json!(x.durable),
                            "auto_delete" => json!(x.auto_delete),
                            "internal" => json!(x.internal),
                            "arguments" => crate::definitions::table_to_json(&x.arguments),
                            "vhost" => json!(&*v.name),
                            "policy" => json!(v
                                .policy_names(&x.name, crate::policy::Target::Exchange)[0]
                                .as_deref()
                                .unwrap_or("")),
                            _ => json!(""),
                        })
                        .collect()
                })
                .collect();
            Ok(Response::table(columns, rows))
        }
        "list_bindings" => {
            let v = need_vhost()?;
            let all = [
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
                "vhost",
            ];
            let columns = columns(req, &all, &all[..6])?;
            // The default exchange's implicit binding to every queue comes first, as
            // RabbitMQ lists it.
            let mut queues = v.queues();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            let mut bindings: Vec<crate::exchange::Binding> = queues
                .iter()
                .map(|q| crate::exchange::Binding {
                    source: "".into(),
                    destination: Destination::Queue(q.name.clone()),
                    routing_key: q.name.to_string(),
                    arguments: Default::default(),
                })
                .collect();
            bindings.extend(v.bindings());
            let rows = bindings
                .into_iter()
                .map(|b| {
                    let (kind, dest) = match &b.destination {
                        Destination::Queue(q) => ("queue", q.to_string()),
                        Destination::Exchange(x) => ("exchange", x.to_string()),
                    };
                    columns
                        .iter()
                        .map(|c| match c.as_str() {
                            "source_name" => json!(&*b.source),
                            "source_kind" => json!("exchange"),
                            "destination_name" => json!(dest),
                            "destination_kind" => json!(kind),
                            "routing_key" => json!(b.routing_key),
                            "arguments" => crate::definitions::table_to_json(&b.arguments),
                            _ => json!(&*v.name),
                        })
                        .collect()
                })
                .collect();
            Ok(Response::table(columns, rows))
        }
        "list_connections" => {
            let all = [
                "pid",
                "name",
                "user_provided_name",
                "user",
                "vhost",
                "host",
                "port",
                "peer_host",
                "peer_port",
                "channels",
                "state",
                "protocol",
                "connected_at",
                "ssl",
                "ssl_protocol",
                "ssl_cipher",
                "peer_cert_subject",
            ];
            let columns = columns(req, &all, &["user", "peer_host", "peer_port", "state"])?;
            let mut rows = Vec::new();
            broker.for_each_connection(|id, c| {
                let at = c
                    .connected_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or_default();
                rows.push((
                    id,
                    columns
                        .iter()
                        .map(|col| match col.as_str() {
                            "pid" => json!(pid(id)),
                            "name" => json!(c.display_name()),
                            "user_provided_name" => json!(c.name.as_deref().unwrap_or("")),
                            "host" => json!(c.local.ip().to_string()),
                            "port" => json!(c.local.port()),
                            "user" => json!(c.user),
                            "vhost" => json!(c.vhost),
                            "peer_host" => json!(c.peer.ip().to_string()),
                            "peer_port" => json!(c.peer.port()),
                            "channels" => json!(c.channels.load(Ordering::Relaxed)),
                            "state" => json!(c.state.name()),
                            "protocol" => json!("AMQP 0-9-1"),
                            "ssl" => json!(c.tls.is_some()),
                            "ssl_protocol" => json!(c.tls.as_ref().map(|t| t.protocol)),
                            "ssl_cipher" => json!(c.tls.as_ref().map(|t| t.cipher.clone())),
                            "peer_cert_subject" => {
                                json!(c.tls.as_ref().and_then(|t| t.peer_cert_subject.clone()))
                            }
                            _ => json!(at),
                        })
                        .collect(),
                ));
            });
            rows.sort_by_key(|(id, _)| *id);
            Ok(Response::table(
                columns,
                rows.into_iter().map(|(_, r)| r).collect(),
            ))
        }
        "list_channels" => list_channels(broker, req).await,
        "close_connection" => {
            let target = arg(req, 0)?;
            let reason = req
                .args
                .get(1)
                .map(String::as_str)
                .unwrap_or("Closed via warrenctl");
            let mut found = None;
            broker.for_each_connection(|id, c| {
                if pid(id) == target
                    || id.to_string() == target
                    || c.name.as_deref() == Some(target)
                {
                    found = Some(id);
                }
            });
            match found {
                Some(id) if broker.close_connection(id, reason) => ok(),
                _ => Err(Response::error(
                    EX_DATAERR,
                    format!("no connection '{target}' (see warrenctl list_connections pid name)"),
                )),
            }
        }
        "purge_queue" | "delete_queue" => {
            let v = need_vhost()?;
            let name = arg(req, 0)?;
            let Some(q) = v.lookup_queue(name) else {
                return Err(Response::error(
                    EX_UNAVAILABLE,
                    format!("Queue not found: queue '{name}' in vhost '{vhost}'"),
                ));
            };
            let n = if req.command == "purge_queue" {
                q.ask(|reply| QueueCmd::Purge { reply }).await.unwrap_or(0)
            } else {
                let if_unused = req.flags.contains_key("if-unused");
                let if_empty = req.flags.contains_key("if-empty");
                v.delete_queue(&q, if_unused, if_empty)
                    .await
                    .map_err(|e| Response::error(EX_DATAERR, e.text))?
            };
            Ok(Response::message(format!(
                "Queue was successfully {}: {n} messages",
                if req.command == "purge_queue" {
                    "purged"
                } else {
                    "deleted"
                }
            )))
        }
        "export_definitions" => Ok(Response {
            document: Some(crate::definitions::export(broker)),
            ..Default::default()
        }),
        "import_definitions" => {
            let Some(doc) = &req.body else {
                return Err(Response::error(EX_USAGE, "no definitions sent"));
            };
            let report = crate::definitions::import(broker, doc);
            let mut lines: Vec<String> = report
                .warnings
                .iter()
                .map(|w| format!("warning: {w}"))
                .collect();
            lines.extend(report.errors.iter().map(|e| format!("error: {e}")));
            let code = if report.errors.is_empty() {
                0
            } else {
                EX_DATAERR
            };
            Ok(Response {
                exit_code: code,
                message: (!lines.is_empty()).then(|| lines.join("\n")),
                ..Default::default()
            })
        }
        other => Err(Response::error(
            EX_USAGE,
            format!("Command '{other}' not found. Run 'warrenctl help' for the list of commands."),
        )),
    }
}

/// Connections are named like Erlang pids in listings, so close_connection can take
/// what list_connections printed.
fn pid(id: u64) -> String {
    format!("<warren.{id}.0>")
}

/// A channel's pid in listings: its connection's, with the channel number in place of
/// the 0 (channel 0 being the connection itself), so list_consumers' channel_pid
/// matches list_channels' pid.
fn channel_pid(conn_id: u64, channel: u16) -> String {
    format!("<warren.{conn_id}.{channel}>")
}

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The columns asked for (positional arguments), checked against those known.
fn columns(req: &Request, all: &[&str], default: &[&str]) -> Result<Vec<String>> {
    if req.args.is_empty() {
        return Ok(cols(default));
    }
    let bad: Vec<&String> = req
        .args
        .iter()
        .filter(|a| !all.contains(&a.as_str()))
        .collect();
    if !bad.is_empty() {
        return Err(Response::error(
            EX_USAGE,
            format!(
                "Error (argument validation): Info key(s) {} are not supported. Valid keys: {}",
                bad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
                all.join(", ")
            ),
        ));
    }
    Ok(req.args.clone())
}

fn parse_limits(s: &str) -> Result<Limits> {
    let v: Value = serde_json::from_str(s).map_err(|e| {
        Response::error(
            EX_DATAERR,
            format!("JSON decoding error: {e} (expected e.g. '{{\"max-connections\": 10}}')"),
        )
    })?;
    if !v.is_object() {
        return Err(Response::error(EX_DATAERR, "limits must be a JSON object"));
    }
    Ok(crate::definitions::limits(Some(&v)))
}

async fn list_queues(req: &Request, v: &crate::vhost::Vhost) -> Result {
    let all = [
        "name",
        "durable",
        "auto_delete",
        "arguments",
        "exclusive",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "messages_ready_ram",
        "messages_unacknowledged_ram",
        "messages_ram",
        "consumers",
        "vhost",
        "type",
        "state",
        "policy",
        "operator_policy",
        "mailbox_messages",
    ];
    let columns = columns(req, &all, &["name", "messages"])?;
    let mut queues = v.queues();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = Vec::with_capacity(queues.len());
    for q in queues {
        let info = QueueInfo::settled(v, &q).await;
        let s = &info.sizes;
        rows.push(
            columns
                .iter()
                .map(|c| match c.as_str() {
                    "name" => json!(&*q.name),
                    "durable" => json!(q.durable),
                    "auto_delete" => json!(q.auto_delete),
                    "arguments" => crate::definitions::table_to_json(&q.arguments),
                    "exclusive" => json!(q.exclusive_owner.is_some()),
                    "messages" => json!(info.messages()),
                    "messages_ready" => json!(s.ready),
                    "messages_unacknowledged" => json!(s.unacked),
                    "messages_ready_ram" => json!(info.ready_ram()),
                    "messages_unacknowledged_ram" => json!(s.unacked),
                    "messages_ram" => json!(info.ram()),
                    "consumers" => json!(s.consumers),
                    "vhost" => json!(&*v.name),
                    "type" => json!(info.kind()),
                    "policy" => json!(info.policy.as_deref().unwrap_or("")),
                    "operator_policy" => json!(info.operator_policy.as_deref().unwrap_or("")),
                    "mailbox_messages" => json!(info.mailbox),
                    _ => json!("running"),
                })
                .collect(),
        );
    }
    Ok(Response::table(columns, rows))
}

/// Every consumer of the vhost's queues, asked of each queue's actor (the consumers'
/// owner), in queue-name order.
async fn list_consumers(req: &Request, v: &std::sync::Arc<crate::vhost::Vhost>) -> Result {
    let all = [
        "queue_name",
        "channel_pid",
        "consumer_tag",
        "ack_required",
        "prefetch_count",
        "active",
        "activity_status",
        "arguments",
        "exclusive",
    ];
    // rabbitmqctl's defaults: all but activity_status (and warren's exclusive).
    let default = [
        "queue_name",
        "channel_pid",
        "consumer_tag",
        "ack_required",
        "prefetch_count",
        "active",
        "arguments",
    ];
    let columns = columns(req, &all, &default)?;
    let vhost = [v.clone()];
    let rows = crate::admin::consumers::gather(&vhost, CHANNELS_TIMEOUT)
        .await
        .into_iter()
        .map(|row| {
            let c = &row.info;
            columns
                .iter()
                .map(|col| match col.as_str() {
                    "queue_name" => json!(&*row.queue.name),
                    "channel_pid" => json!(channel_pid(c.conn_id, c.channel)),
                    "consumer_tag" => json!(&*c.tag),
                    "ack_required" => json!(!c.no_ack),
                    "prefetch_count" => json!(c.prefetch),
                    "active" => json!(c.active),
                    "activity_status" => json!(c.activity_status),
                    "exclusive" => json!(c.exclusive),
                    _ => crate::definitions::table_to_json(&c.arguments),
                })
                .collect()
        })
        .collect();
    Ok(Response::table(columns, rows))
}

/// How long list_channels waits for a connection to describe its channels; one that
/// is stuck is left out rather than holding up the listing.
const CHANNELS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every open channel of every connection (see `admin/channels.rs`: each connection
/// task owns its channels and answers between frames, so the listing costs the message
/// path nothing; RabbitMQ asks each channel process the same way).
async fn list_channels(broker: &Broker, req: &Request) -> Result {
    let all = [
        "pid",
        "name",
        "connection",
        "number",
        "user",
        "vhost",
        "transactional",
        "confirm",
        "consumer_count",
        "messages_unacknowledged",
        "messages_unconfirmed",
        "messages_uncommitted",
        "acks_uncommitted",
        "prefetch_count",
        "global_prefetch_count",
    ];
    let default = ["pid", "user", "consumer_count", "messages_unacknowledged"];
    let columns = columns(req, &all, &default)?;
    let rows = crate::admin::channels::gather(broker, |_, _| true, CHANNELS_TIMEOUT)
        .await
        .into_iter()
        .map(|row| {
            let ch = &row.info;
            columns
                .iter()
                .map(|col| match col.as_str() {
                    "pid" => json!(channel_pid(row.conn_id, ch.number)),
                    "name" => json!(row.name()),
                    "connection" => json!(pid(row.conn_id)),
                    "number" => json!(ch.number),
                    "user" => json!(row.user),
                    "vhost" => json!(row.vhost),
                    "transactional" => json!(ch.transactional),
                    "confirm" => json!(ch.confirm),
                    "consumer_count" => json!(ch.consumer_count),
                    "messages_unacknowledged" => json!(ch.messages_unacknowledged),
                    "messages_unconfirmed" => json!(ch.messages_unconfirmed),
                    "messages_uncommitted" => json!(ch.messages_uncommitted),
                    "acks_uncommitted" => json!(ch.acks_uncommitted),
                    "prefetch_count" => json!(ch.prefetch_count),
                    _ => json!(ch.global_prefetch_count),
                })
                .collect()
        })
        .collect();
    Ok(Response::table(columns, rows))
}

fn status(broker: &Broker) -> Response {
    let vhosts = broker.vhosts();
    let queues: usize = vhosts.iter().map(|(v, _)| v.queues().len()).sum();
    Response {
        document: Some(json!({
            "pid": std::process::id(),
            "node": crate::broker::node_name(),
            "role": crate::membership::get().map_or("single", |m| m.role()),
            "app_running": true,
            "product_name": "warren",
            "product_version": env!("CARGO_PKG_VERSION"),
            "rabbitmq_compat_version": crate::RABBITMQ_COMPAT_VERSION,
            "data_directory": broker.config.data_dir.display().to_string(),
            "amqp_listener": broker.config.amqp.listen,
            "vhosts": vhosts.len(),
            "connections": broker.connection_count(),
            "queues": queues,
            "users": broker.access.users().len(),
        })),
        ..Default::default()
    }
}
