//! The connection handshake: protocol header, start/start-ok (authentication),
//! tune/tune-ok, open/open-ok. Bounded by the handshake timeout as a whole.

use std::sync::Arc;

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Connection;
use crate::auth::{AuthError, MECHANISMS, MECHANISMS_TLS};
use crate::channel::ClientCaps;
use crate::error::AmqpError;
use crate::protocol::frame::{self, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::protocol::method::{self, Method};
use crate::protocol::{short, PROTOCOL_HEADER};
use crate::vhost::Vhost;

/// What the handshake settles.
pub struct Negotiated {
    pub user: String,
    pub vhost: Arc<Vhost>,
    pub caps: ClientCaps,
    pub name: Option<String>,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// How a handshake ended early.
pub enum Abort {
    /// Just drop the socket (bad header already answered, peer gone, failed login
    /// without authentication_failure_close).
    Drop,
    /// Send connection.close with this error first.
    Close(AmqpError),
}

impl From<AmqpError> for Abort {
    fn from(e: AmqpError) -> Self {
        Abort::Close(e)
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(short(cap), AMQPValue::Boolean(true));
    }
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    let mut p = FieldTable::default();
    p.insert(short("capabilities"), AMQPValue::FieldTable(caps));
    // Clients (kombu/Celery) pick their basic.qos semantics from product and version;
    // warren implements RabbitMQ 3.x's, so it says so, and names itself in
    // `information` and `warren_version`.
    p.insert(short("product"), s("RabbitMQ"));
    p.insert(short("version"), s(crate::RABBITMQ_COMPAT_VERSION));
    p.insert(
        short("platform"),
        s(&format!("warren {} (Rust)", env!("CARGO_PKG_VERSION"))),
    );
    p.insert(short("cluster_name"), s("warren"));
    p.insert(short("copyright"), s("Copyright (c) the warren authors"));
    p.insert(
        short("information"),
        s(&format!(
            "warren {}, a RabbitMQ-compatible AMQP 0-9-1 broker. Licensed under the MIT license.",
            env!("CARGO_PKG_VERSION")
        )),
    );
    p.insert(short("warren_version"), s(env!("CARGO_PKG_VERSION")));
    p
}

impl<R: AsyncRead + Unpin + Send> Connection<R> {
    /// Read until a whole frame is buffered. `None` when the peer closed.
    async fn read_frame(&mut self, frame_max: u32) -> Result<Option<frame::Frame>, Abort> {
        loop {
            match frame::decode(&mut self.rbuf, frame_max) {
                Ok(Some(f)) if f.kind == FRAME_HEARTBEAT => continue,
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(Abort::Close(AmqpError::frame_error(e))),
            }
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// The next method on channel 0, or an error in RabbitMQ's terms.
    async fn expect_method(&mut self, frame_max: u32) -> Result<connection::AMQPMethod, Abort> {
        let Some(f) = self.read_frame(frame_max).await? else {
            return Err(Abort::Drop);
        };
        if f.kind != FRAME_METHOD || f.channel != 0 {
            return Err(Abort::Close(AmqpError::command_invalid(
                "expected a connection method on channel 0",
            )));
        }
        let (class_id, method_id) = method::class_method(&f.payload);
        match method::decode(&f.payload) {
            Ok(Method::Other(c)) => match *c {
                AMQPClass::Connection(m) => Ok(m),
                _ => Err(Abort::Close(
                    AmqpError::command_invalid("expected a connection method")
                        .on(class_id, method_id),
                )),
            },
            Ok(_) => Err(Abort::Close(
                AmqpError::command_invalid("expected a connection method").on(class_id, method_id),
            )),
            Err(method::DecodeError::TooDeep { .. }) => Err(Abort::Close(
                AmqpError::syntax_error(format!(
                    "malformed connection method: {}",
                    crate::protocol::table::Refused::TooDeep
                ))
                .on(class_id, method_id),
            )),
            Err(_) => Err(Abort::Close(
                AmqpError::syntax_error("malformed connection method").on(class_id, method_id),
            )),
        }
    }

    pub(super) async fn handshake(&mut self) -> Result<Negotiated, Abort> {
        // Protocol header.
        while self.rbuf.len() < 8 {
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Err(Abort::Drop),
                Ok(_) => {}
            }
        }
        if &self.rbuf[..8] != PROTOCOL_HEADER {
            tracing::warn!(peer = %self.peer, "unsupported protocol header {:?}", &self.rbuf[..8]);
            self.out.buf.extend_from_slice(PROTOCOL_HEADER);
            self.flush();
            return Err(Abort::Drop);
        }
        let _ = self.rbuf.split_to(8);

        let amqp = self.broker.config.amqp.clone();
        // Before tune-ok no frame_max is agreed, so frames are held to the spec's minimum
        // frame size, as RabbitMQ holds them (a start-ok with client properties over 4 KiB
        // is a frame error): nobody buffers more than 4 KiB before logging in.
        let pre_tune_max = frame::FRAME_MIN_SIZE;

        self.send0(AMQPClass::Connection(connection::AMQPMethod::Start(
            connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongString::from(
                    match self.tls {
                        Some(_) => MECHANISMS_TLS,
                        None => MECHANISMS,
                    }
                    .as_bytes()
                    .to_vec(),
                ),
                locales: LongString::from(b"en_US".to_vec()),
            },
        )));
        self.flush();

        let start_ok = match self.expect_method(pre_tune_max).await? {
            connection::AMQPMethod::StartOk(s) => s,
            _ => {
                return Err(Abort::Close(AmqpError::command_invalid(
                    "expected connection.start-ok",
                )))
            }
        };
        let props = start_ok.client_properties.inner();
        let cap = |name: &str| match props.get("capabilities") {
            Some(AMQPValue::FieldTable(t)) => {
                matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
            }
            _ => false,
        };
        let caps = ClientCaps {
            consumer_cancel_notify: cap("consumer_cancel_notify"),
            connection_blocked: cap("connection.blocked"),
        };
        let auth_failure_close = cap("authentication_failure_close");
        let name = match props.get("connection_name") {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        let mechanism = start_ok.mechanism.as_str().to_owned();
        let user = match crate::auth::authenticate(
            &self.broker.access,
            &mechanism,
            start_ok.response.as_bytes(),
            self.peer.ip(),
            self.tls.as_ref().map(|t| &t.external_login),
        ) {
            Ok(user) => user,
            Err(AuthError::UnknownMechanism(m)) => {
                return Err(Abort::Close(AmqpError::command_invalid(format!(
                    "unknown authentication mechanism '{m}'"
                ))))
            }
            Err(e) => {
                let why = match e {
                    AuthError::Refused(why) => why,
                    _ => "malformed credentials".to_owned(),
                };
                tracing::warn!(peer = %self.peer, mechanism = %mechanism, "login refused: {why}");
                return Err(if auth_failure_close {
                    Abort::Close(AmqpError::access_refused(format!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    )))
                } else {
                    Abort::Drop
                });
            }
        };
        tracing::info!(peer = %self.peer, user = %user, connection_name = name.as_deref().unwrap_or(""), "connection authenticated");

        self.send0(AMQPClass::Connection(connection::AMQPMethod::Tune(
            connection::Tune {
                channel_max: amqp.channel_max,
                frame_max: amqp.frame_max,
                heartbeat: amqp.heartbeat,
            },
        )));
        self.flush();
        let tune_ok = match self.expect_method(pre_tune_max).await? {
            connection::AMQPMethod::TuneOk(t) => t,
            _ => {
                return Err(Abort::Close(AmqpError::command_invalid(
                    "expected connection.tune-ok",
                )))
            }
        };
        // rabbit_reader's checks: the client may lower our limits, not raise them.
        let frame_max = tune_ok.frame_max;
        if frame_max != 0 && frame_max < frame::FRAME_MIN_SIZE {
            return Err(Abort::Close(AmqpError::not_allowed(format!(
                "frame_max={frame_max} < {} min size",
                frame::FRAME_MIN_SIZE
            ))));
        }
        if amqp.frame_max != 0 && (frame_max == 0 || frame_max > amqp.frame_max) {
            return Err(Abort::Close(AmqpError::not_allowed(format!(
                "frame_max={frame_max} > {} max size",
                amqp.frame_max
            ))));
        }
        let channel_max = match tune_ok.channel_max {
            0 => amqp.channel_max,
            n if amqp.channel_max != 0 && n > amqp.channel_max => {
                return Err(Abort::Close(AmqpError::not_allowed(format!(
                    "channel_max={n} > {} max",
                    amqp.channel_max
                ))))
            }
            n => n,
        };

        let open = match self.expect_method(frame_max).await? {
            connection::AMQPMethod::Open(o) => o,
            _ => {
                return Err(Abort::Close(AmqpError::command_invalid(
                    "expected connection.open",
                )))
            }
        };
        let vhost_name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(vhost_name) else {
            tracing::warn!(peer = %self.peer, user = %user, "connection refused: vhost '{vhost_name}' not found");
            return Err(Abort::Close(
                AmqpError::not_allowed(format!("vhost {vhost_name} not found")).on(10, 40),
            ));
        };
        if let Err(e) = self.broker.admit_connection(&user, vhost_name) {
            tracing::warn!(peer = %self.peer, user = %user, "connection refused: {}", e.text);
            return Err(Abort::Close(e.on(10, 40)));
        }
        self.send0(AMQPClass::Connection(connection::AMQPMethod::OpenOk(
            connection::OpenOk {},
        )));
        self.flush();
        Ok(Negotiated {
            user,
            vhost,
            caps,
            name,
            channel_max,
            frame_max,
            heartbeat: tune_ok.heartbeat,
        })
    }
}
