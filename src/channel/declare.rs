//! exchange.* and queue.* methods: topology changes, with RabbitMQ's checks and texts.

use amq_protocol::protocol::{exchange, queue, AMQPClass};

use super::{Channel, Session};
use crate::access::Perm;
use crate::error::AmqpError;
use crate::exchange::{Destination, ExchangeKind};
use crate::protocol::{short, ShortString};
use crate::queue::{QueueCmd, QueueStats};
use crate::vhost::{check_exclusive, ExchangeDecl, QueueDecl};

impl Channel {
    pub(super) fn exchange_declare(
        &mut self,
        s: &mut Session,
        d: exchange::Declare,
    ) -> Result<(), AmqpError> {
        let d = exchange::Declare {
            exchange: strip_cr_lf(d.exchange),
            ..d
        };
        let name = d.exchange.as_str();
        if d.passive {
            if name.is_empty() {
                return Err(AmqpError::access_refused(
                    "operation not permitted on the default exchange",
                ));
            }
            s.vhost.check_exchange(name)?;
        } else {
            // rabbit_channel: type, then default exchange, then configure permission;
            // a new exchange with an alternate exchange also needs read on itself and
            // write on the alternate.
            if !name.is_empty() && ExchangeKind::parse(d.kind.as_str()).is_some() {
                s.authorize("exchange", name, Perm::Configure)?;
                if !s.vhost.exchange_exists(name) {
                    if let Some(ae) = string_arg(&d.arguments, "alternate-exchange") {
                        s.authorize("exchange", name, Perm::Read)?;
                        s.authorize("exchange", &ae, Perm::Write)?;
                    }
                }
            }
            s.vhost.declare_exchange(ExchangeDecl {
                name,
                kind: d.kind.as_str(),
                durable: d.durable,
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments,
            })?;
        }
        if !d.nowait {
            s.send(
                self.number,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        s: &mut Session,
        d: exchange::Delete,
    ) -> Result<(), AmqpError> {
        let d = exchange::Delete {
            exchange: strip_cr_lf(d.exchange),
            ..d
        };
        let name = d.exchange.as_str();
        // The default and amq.* exchanges are refused before permissions (RabbitMQ).
        if !name.is_empty() && !name.starts_with("amq.") {
            s.authorize("exchange", name, Perm::Configure)?;
        }
        s.vhost.delete_exchange(name, d.if_unused)?;
        if !d.nowait {
            s.send(
                self.number,
                AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn exchange_bind(
        &mut self,
        s: &mut Session,
        b: exchange::Bind,
    ) -> Result<(), AmqpError> {
        let b = exchange::Bind {
            source: strip_cr_lf(b.source),
            destination: strip_cr_lf(b.destination),
            ..b
        };
        authorize_binding(
            s,
            b.source.as_str(),
            "exchange",
            b.destination.as_str(),
            b.routing_key.as_str(),
        )?;
        let dest = Destination::Exchange(b.destination.as_str().into());
        s.vhost.bind(
            b.source.as_str(),
            dest,
            b.routing_key.as_str(),
            b.arguments,
            s.conn_id,
        )?;
        if !b.nowait {
            s.send(
                self.number,
                AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(
        &mut self,
        s: &mut Session,
        u: exchange::Unbind,
    ) -> Result<(), AmqpError> {
        let u = exchange::Unbind {
            source: strip_cr_lf(u.source),
            destination: strip_cr_lf(u.destination),
            ..u
        };
        authorize_binding(
            s,
            u.source.as_str(),
            "exchange",
            u.destination.as_str(),
            u.routing_key.as_str(),
        )?;
        let dest = Destination::Exchange(u.destination.as_str().into());
        s.vhost.unbind(
            u.source.as_str(),
            dest,
            u.routing_key.as_str(),
            u.arguments,
            s.conn_id,
        )?;
        if !u.nowait {
            s.send(
                self.number,
                AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
            );
        }
        Ok(())
    }

    pub(super) async fn queue_declare(
        &mut self,
        s: &mut Session,
        d: queue::Declare,
    ) -> Result<(), AmqpError> {
        let d = queue::Declare {
            queue: strip_cr_lf(d.queue),
            ..d
        };
        if d.passive && s.broker.reply_to.exists(d.queue.as_str()) {
            // The direct reply-to pseudo-queue (and live reply ids): RabbitMQ answers
            // 0 messages, 1 consumer (rabbit_channel:return_queue_declare_ok(_, _, 0, 1)).
            if !d.nowait {
                s.send(
                    self.number,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 1,
                    })),
                );
            }
            return Ok(());
        }
        let q = if d.passive {
            // Taken as it is: an empty name is not the channel's last queue here (RabbitMQ
            // answers "no queue ''"), unlike in the methods that use a queue.
            s.vhost.queue_for(d.queue.as_str(), s.conn_id)?
        } else {
            let name = match d.queue.as_str() {
                "" => crate::util::generated_name("amq.gen"),
                n if n.starts_with("amq.") => {
                    return Err(AmqpError::access_refused(format!(
                        "queue name '{n}' contains reserved prefix 'amq.*'"
                    )))
                }
                n => n.to_owned(),
            };
            s.authorize("queue", &name, Perm::Configure)?;
            if s.vhost.lookup_queue(&name).is_none() {
                // Only a new queue counts against the limit, and only a new queue's
                // dead-letter exchange is checked (rabbit_channel).
                s.broker.admit_queue(&s.vhost, &name)?;
                if let Some(dlx) = string_arg(&d.arguments, "x-dead-letter-exchange") {
                    s.authorize("queue", &name, Perm::Read)?;
                    s.authorize("exchange", &dlx, Perm::Write)?;
                }
            }
            let decl = QueueDecl {
                name,
                durable: d.durable,
                exclusive: d.exclusive,
                auto_delete: d.auto_delete,
                arguments: d.arguments,
            };
            let (q, created) = s.vhost.declare_queue(decl, s.conn_id)?;
            if created && q.exclusive_owner.is_some() {
                s.exclusive_queues.push(q.clone());
            }
            q
        };
        self.last_queue = Some(q.name.to_string());
        if d.nowait {
            // Counts as use for x-expires (otherwise the Stats below says so).
            q.send(QueueCmd::Touch);
            return Ok(());
        }
        let stats = q
            .ask(|reply| QueueCmd::Stats { reply })
            .await
            .unwrap_or(QueueStats::default());
        s.send(
            self.number,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: short(&*q.name),
                message_count: stats.messages_ready,
                consumer_count: stats.consumers,
            })),
        );
        Ok(())
    }

    /// queue.bind/unbind: an empty queue name is the last declared queue, and then an
    /// empty routing key is that queue's name too (RabbitMQ's shortcuts).
    fn binding_target(&self, queue: &str, key: &str) -> Result<(String, String), AmqpError> {
        let name = self.expand_queue(queue)?;
        let key = if queue.is_empty() && key.is_empty() {
            name.clone()
        } else {
            key.to_owned()
        };
        Ok((name, key))
    }

    pub(super) fn queue_bind(&mut self, s: &mut Session, b: queue::Bind) -> Result<(), AmqpError> {
        let b = queue::Bind {
            queue: strip_cr_lf(b.queue),
            exchange: strip_cr_lf(b.exchange),
            ..b
        };
        let (name, key) = self.binding_target(b.queue.as_str(), b.routing_key.as_str())?;
        authorize_binding(s, b.exchange.as_str(), "queue", &name, &key)?;
        s.vhost.bind(
            b.exchange.as_str(),
            Destination::Queue(name.into()),
            &key,
            b.arguments,
            s.conn_id,
        )?;
        if !b.nowait {
            s.send(
                self.number,
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn queue_unbind(
        &mut self,
        s: &mut Session,
        u: queue::Unbind,
    ) -> Result<(), AmqpError> {
        let u = queue::Unbind {
            queue: strip_cr_lf(u.queue),
            exchange: strip_cr_lf(u.exchange),
            ..u
        };
        let (name, key) = self.binding_target(u.queue.as_str(), u.routing_key.as_str())?;
        authorize_binding(s, u.exchange.as_str(), "queue", &name, &key)?;
        s.vhost.unbind(
            u.exchange.as_str(),
            Destination::Queue(name.into()),
            &key,
            u.arguments,
            s.conn_id,
        )?;
        s.send(
            self.number,
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        );
        Ok(())
    }

    pub(super) async fn queue_purge(
        &mut self,
        s: &mut Session,
        p: queue::Purge,
    ) -> Result<(), AmqpError> {
        let name = self.expand_queue(p.queue.as_str())?;
        s.authorize("queue", &name, Perm::Read)?;
        let q = s.vhost.queue_for(&name, s.conn_id)?;
        let n = q
            .ask(|reply| QueueCmd::Purge { reply })
            .await
            .ok_or_else(|| AmqpError::not_found(format!("no {}", q.describe())))?;
        if !p.nowait {
            s.send(
                self.number,
                AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: n,
                })),
            );
        }
        Ok(())
    }

    pub(super) async fn queue_delete(
        &mut self,
        s: &mut Session,
        d: queue::Delete,
    ) -> Result<(), AmqpError> {
        let d = queue::Delete {
            queue: strip_cr_lf(d.queue),
            ..d
        };
        let name = self.expand_queue(d.queue.as_str())?;
        s.authorize("queue", &name, Perm::Configure)?;
        // Deleting a queue that does not exist succeeds with a count of 0 (RabbitMQ).
        let n = match s.vhost.lookup_queue(&name) {
            None => 0,
            Some(q) => {
                check_exclusive(&q, s.conn_id)?;
                let n = s.vhost.delete_queue(&q, d.if_unused, d.if_empty).await?;
                s.exclusive_queues.retain(|x| x.id != q.id);
                n
            }
        };
        if !d.nowait {
            s.send(
                self.number,
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: n,
                })),
            );
        }
        Ok(())
    }
}

/// RabbitMQ drops CR and LF from the names of queues and exchanges that are declared,
/// deleted, bound and unbound (rabbit_channel's strip_cr_lf: a name with a line break is
/// near impossible to manage from a shell), so `"orders\r\n"` declares `orders` and
/// declare-ok says so. Names given to basic.get, basic.consume, queue.purge and
/// basic.publish, routing keys and consumer tags are taken as they are, as there.
fn strip_cr_lf(name: ShortString) -> ShortString {
    if name.as_str().contains(['\r', '\n']) {
        short(name.as_str().replace(['\r', '\n'], ""))
    } else {
        name
    }
}

/// queue.bind/unbind and exchange.bind/unbind (rabbit_channel:binding_action): write on
/// the destination, then the default-exchange check, then read on the source and, for
/// a topic source, topic read on the binding key.
fn authorize_binding(
    s: &Session,
    source: &str,
    dest_kind: &str,
    dest: &str,
    key: &str,
) -> Result<(), AmqpError> {
    s.authorize(dest_kind, dest, Perm::Write)?;
    if source.is_empty() || (dest_kind == "exchange" && dest.is_empty()) {
        return Ok(()); // the vhost refuses it with RabbitMQ's default-exchange text
    }
    s.authorize("exchange", source, Perm::Read)?;
    s.authorize_topic(source, key, Perm::Read)
}

/// A string-valued argument naming another resource (alternate or dead-letter exchange).
fn string_arg(args: &amq_protocol::types::FieldTable, key: &str) -> Option<String> {
    use amq_protocol::types::AMQPValue;
    match args.inner().get(key)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}
