//! exchange.* and queue.* methods: topology changes, with RabbitMQ's checks and texts.

use amq_protocol::protocol::{exchange, queue, AMQPClass};

use super::{Channel, Session};
use crate::error::AmqpError;
use crate::exchange::Destination;
use crate::protocol::short;
use crate::queue::{QueueCmd, QueueStats};
use crate::vhost::{check_exclusive, ExchangeDecl, QueueDecl};

impl Channel {
    pub(super) fn exchange_declare(
        &mut self,
        s: &mut Session,
        d: exchange::Declare,
    ) -> Result<(), AmqpError> {
        let name = d.exchange.as_str();
        if d.passive {
            if name.is_empty() {
                return Err(AmqpError::access_refused(
                    "operation not permitted on the default exchange",
                ));
            }
            s.vhost.check_exchange(name)?;
        } else {
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
        s.vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
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
        let q = if d.passive {
            let name = self.expand_queue(d.queue.as_str())?;
            s.vhost.queue_for(&name, s.conn_id)?
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
        let (name, key) = self.binding_target(b.queue.as_str(), b.routing_key.as_str())?;
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
        let (name, key) = self.binding_target(u.queue.as_str(), u.routing_key.as_str())?;
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
        let name = self.expand_queue(d.queue.as_str())?;
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
