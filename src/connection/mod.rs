//! One client connection: a task that reads frames and drives its channels, plus a
//! writer task that owns the socket's write half (`writer.rs`). The handshake is in
//! `handshake.rs`. Queues reach the connection through its event channel
//! ([`ConnEvent`]); everything a channel writes goes through one [`OutBuf`] that is
//! handed to the writer once per loop iteration.

mod handshake;
mod heartbeat;
mod throttle;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{channel, connection, AMQPClass};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::broker::{Broker, ConnState, ConnectionEntry};
use crate::channel::{Channel, PublishBatch, Session, State};
use crate::error::AmqpError;
use crate::event::ConnEvent;
use crate::protocol::frame::{self, Frame, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::protocol::method::{self, Method};
use crate::protocol::outbuf::OutBuf;
use crate::protocol::short;
use crate::tls::PeerTls;
use crate::util::IdHash;
use handshake::{Abort, Negotiated};
use heartbeat::Heartbeat;
use throttle::Throttle;
use writer::WriterTx;

/// A connection's open channels. Boxed: a `Channel` is several hundred bytes and the
/// table allocates room for a few, so unboxed an idle one-channel connection would pay
/// for three channels it doesn't have.
type Channels = HashMap<u16, Box<Channel>, IdHash>;

/// Read sizes: an idle connection keeps a small buffer (it is most of what an idle
/// connection costs); one whose reads fill the buffer gets bigger reads (fewer syscalls
/// per message), up to the maximum, within a few reads.
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;
/// How long we wait for close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Events handled per wake-up before reading the socket again.
const EVENT_BURST: usize = 64;

/// Generic over the socket's read half so that plain TCP and TLS each get their own
/// monomorphised code: the plain path reads a `tcp::OwnedReadHalf` directly, with no
/// dynamic dispatch or extra lock per read.
pub struct Connection<R> {
    id: u64,
    broker: Arc<Broker>,
    peer: SocketAddr,
    /// Our end: the listener's address the client reached.
    local: SocketAddr,
    /// The TLS session's facts on an amqps connection (EXTERNAL login, listings).
    tls: Option<Arc<PeerTls>>,
    reader: R,
    rbuf: BytesMut,
    /// How much room the next read gets (adapts between READ_MIN and READ_MAX).
    read_size: usize,
    /// Outgoing frames during the handshake (afterwards the session's buffer is used).
    out: OutBuf,
    writer: WriterTx,
    /// The client sent connection.close: after close-ok, wait for it to close the
    /// socket (as RabbitMQ does) rather than racing it with our own close.
    client_closed: bool,
    /// Open channels, published for listing and the per-user channel limit.
    channel_count: Arc<std::sync::atomic::AtomicUsize>,
    /// running / flow / blocked, published for listing.
    state: Arc<ConnState>,
}

/// Serve one accepted plain-TCP socket until it closes.
pub async fn serve(broker: Arc<Broker>, socket: TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().unwrap_or(peer);
    let (reader, write_half) = socket.into_split();
    serve_halves(broker, reader, write_half, (peer, local), None).await
}

/// Serve one amqps connection (handshake done, see [`crate::tls`]) until it closes.
pub async fn serve_tls(
    broker: Arc<Broker>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    tls: PeerTls,
) {
    // The TLS session is one state machine for both directions, so its halves share it
    // through tokio's split (a lock per read or write call, on this path only).
    let local = stream.get_ref().0.local_addr().unwrap_or(peer);
    let (reader, write_half) = tokio::io::split(stream);
    serve_halves(
        broker,
        reader,
        write_half,
        (peer, local),
        Some(Arc::new(tls)),
    )
    .await
}

/// Serve one connection over any byte stream (the fuzz harness in tests/fuzz drives it
/// through an in-memory pipe). `ends`: the peer's address and ours.
pub async fn serve_halves<R, W>(
    broker: Arc<Broker>,
    reader: R,
    write_half: W,
    (peer, local): (SocketAddr, SocketAddr),
    tls: Option<Arc<PeerTls>>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (writer_tx, writer_rx) = writer::outbox();
    let writer_task = tokio::spawn(writer::run(write_half, writer_rx));
    let mut conn = Connection {
        id: crate::util::next_id(),
        broker: broker.clone(),
        peer,
        local,
        tls,
        reader,
        rbuf: BytesMut::with_capacity(READ_MIN),
        read_size: READ_MIN,
        out: OutBuf::default(),
        writer: writer_tx,
        client_closed: false,
        channel_count: Arc::default(),
        state: Arc::default(),
    };
    match &conn.tls {
        None => tracing::info!(peer = %peer, "accepting AMQP connection"),
        Some(t) => tracing::info!(
            peer = %peer,
            protocol = t.protocol,
            cipher = %t.cipher,
            peer_cert_subject = t.peer_cert_subject.as_deref().unwrap_or(""),
            "accepting AMQP connection over TLS"
        ),
    }
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout);
    match tokio::time::timeout(timeout, conn.handshake()).await {
        Err(_) => {
            tracing::warn!(peer = %peer, "closing connection: handshake not completed in {}s", timeout.as_secs())
        }
        Ok(Err(Abort::Drop)) => {}
        Ok(Err(Abort::Close(e))) => {
            tracing::warn!(peer = %peer, "closing connection during handshake: {}", e.text);
            conn.send0(close_method(&e));
            conn.flush();
            conn.linger(crate::protocol::frame::FRAME_MIN_SIZE).await;
        }
        Ok(Ok(n)) => conn.run(n).await,
    }
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
}

fn close_method(e: &AmqpError) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: e.code,
        reply_text: short(e.text.clone()),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

/// connection.close-ok, our answer to every client close.
fn close_ok_method() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
}

fn channel_close_method(e: &AmqpError) -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: e.code,
        reply_text: short(e.text.clone()),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

/// Why the main loop ended.
enum End {
    /// Clean close by either side, or the peer went away.
    Closed,
    /// We sent connection.close and stop reading once close-ok comes (or time runs out).
    Error,
}

impl<R: AsyncRead + Unpin + Send> Connection<R> {
    fn send0(&mut self, class: AMQPClass) {
        method::encode(&mut self.out.buf, 0, &class);
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.writer.send(self.out.take());
        }
    }

    /// After a close (ours, or the client's and our close-ok): read until the peer closes
    /// the socket or time runs out, so our last frame isn't lost to a TCP reset. A
    /// close-ok ends it early; a connection.close is answered with close-ok, as RabbitMQ
    /// answers each (a client whose close crossed ours, or that sent two, waits for it);
    /// anything else is dropped.
    async fn linger(&mut self, frame_max: u32) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            loop {
                let f = match frame::decode(&mut self.rbuf, frame_max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => {
                        // Not frames: drop them, so nothing grows while we wait.
                        self.rbuf.clear();
                        break;
                    }
                };
                if f.kind != FRAME_METHOD || f.channel != 0 {
                    continue;
                }
                match method::class_method(&f.payload) {
                    (10, 51) => return,
                    (10, 50) => {
                        let mut out = BytesMut::new();
                        method::encode(&mut out, 0, &close_ok_method());
                        self.writer.send(vec![out.freeze()]);
                    }
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    async fn run(&mut self, n: Negotiated) {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        self.broker.register_connection(
            self.id,
            ConnectionEntry {
                events: events_tx.clone(),
                peer: self.peer,
                local: self.local,
                user: n.user.clone(),
                vhost: n.vhost.name.to_string(),
                name: n.name.clone(),
                channels: self.channel_count.clone(),
                connected_at: std::time::SystemTime::now(),
                tls: self.tls.clone(),
                state: self.state.clone(),
            },
        );
        tracing::info!(
            peer = %self.peer,
            user = %n.user,
            vhost = %n.vhost.name,
            connection_name = n.name.as_deref().unwrap_or(""),
            "connection granted access to vhost"
        );
        // The handshake flushed its frames; its buffer (sized for connection.start's
        // properties) goes, so an idle connection doesn't keep it.
        debug_assert!(self.out.is_empty());
        self.out = OutBuf::default();
        let mut s = Session {
            conn_id: self.id,
            broker: self.broker.clone(),
            vhost: n.vhost.clone(),
            user: n.user.clone(),
            frame_max: n.frame_max,
            caps: n.caps,
            events: events_tx,
            store_synced: Arc::default(),
            out: OutBuf::default(),
            exclusive_queues: Vec::new(),
            publishes: PublishBatch::default(),
            confirms_due: Vec::new(),
            published: false,
            tally: Default::default(),
        };
        let mut channels: Channels = HashMap::default();
        let mut heartbeat = Heartbeat::new(n.heartbeat);
        // Resource alarms and flow control: when the socket is not read (alarm.rs,
        // queue/flow.rs); consumers on other connections keep draining meanwhile.
        let mut alarms = self.broker.alarms();
        let mut throttle =
            Throttle::new(*alarms.borrow_and_update(), self.state.clone(), self.peer);
        // Set once we sent connection.close: the deadline for close-ok.
        let mut closing: Option<Instant> = None;
        let mut end = End::Closed;
        let store_synced = s.store_synced.clone();

        loop {
            let mut result: Result<bool, AmqpError> = Ok(true);
            // Frames are split off the front of the buffer and may live on in queues, so
            // space is not always reclaimed in place: make room for the next read.
            if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
                self.rbuf.reserve(self.read_size);
            }
            let room = self.rbuf.capacity() - self.rbuf.len();
            tokio::select! {
                ev = events_rx.recv() => {
                    let mut next = ev;
                    for _ in 0..EVENT_BURST {
                        let Some(ev) = next else { break };
                        if let Err(e) = self.handle_event(&mut s, &mut channels, ev) {
                            result = Err(e);
                            break;
                        }
                        next = events_rx.try_recv().ok();
                    }
                }
                // The store has synced what this connection persisted.
                _ = store_synced.notified() => {
                    for ch in channels.values_mut() {
                        ch.flush_confirms(&mut s);
                    }
                }
                changed = alarms.changed(), if throttle.alarms_open => {
                    throttle.alarms_changed(changed.ok().map(|()| *alarms.borrow_and_update()));
                }
                // The client read what it was behind on: deliveries may go out again.
                _ = self.writer.drained() => {
                    for ch in channels.values() {
                        ch.kick_queues();
                    }
                }
                _ = throttle.drained(), if throttle.in_flow() => throttle.flow_ends(),
                r = self.reader.read_buf(&mut self.rbuf), if throttle.reading() => {
                    match r {
                        Ok(0) | Err(_) => result = Ok(false),
                        Ok(got) => {
                            if got == room {
                                self.read_size = (self.read_size * 2).min(READ_MAX);
                            }
                            heartbeat.received();
                            result = self.process_frames(&mut s, &mut channels, &n, closing.is_some()).await;
                        }
                    }
                }
                _ = tokio::time::sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => {
                    tracing::debug!(peer = %self.peer, "no connection.close-ok in time");
                    break;
                }
                _ = heartbeat.tick(), if heartbeat.on() => {
                    let gone = heartbeat.on_tick(&mut s.out, !throttle.reading());
                    if gone && closing.is_none() {
                        tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {}s", heartbeat.interval);
                        break;
                    }
                }
            }
            match result {
                Ok(true) => {}
                Ok(false) => break, // peer closed, or the close handshake completed
                Err(e) => {
                    if closing.is_none() {
                        tracing::warn!(peer = %self.peer, "closing connection: {}", e.text);
                        for ch in channels.values_mut() {
                            ch.teardown();
                        }
                        channels.clear();
                        method::encode(&mut s.out.buf, 0, &close_method(&e));
                        closing = Some(Instant::now() + CLOSE_TIMEOUT);
                        end = End::Error;
                        // What the client sent after the offending frame may be buffered
                        // already, its own connection.close (crossing ours) among it.
                        if !matches!(
                            self.process_frames(&mut s, &mut channels, &n, true).await,
                            Ok(true)
                        ) {
                            break;
                        }
                    }
                }
            }
            self.channel_count
                .store(channels.len(), std::sync::atomic::Ordering::Relaxed);
            throttle.apply_alarm(&mut s, closing.is_some());
            // Publishes routed in this round go to their queues in one send each, then
            // confirms, then all frames to the writer in one piece.
            let published = !s.publishes.is_empty();
            s.publishes.flush();
            // Only queues actually over the mark are kept; flow ends when all drained.
            throttle.behind_on(&mut s.publishes.throttled, closing.is_some());
            for n in std::mem::take(&mut s.confirms_due) {
                if let Some(ch) = channels.get_mut(&n) {
                    ch.flush_confirms(&mut s);
                }
            }
            s.tally.flush(&self.broker.counters);
            if !s.out.is_empty() {
                self.writer.send(s.out.take());
                heartbeat.sent();
            }
            if published {
                // The queues just woken sit in this worker's next-task slot, which other
                // workers can't steal: step aside so they (and the consumers they wake) run
                // now instead of after this publisher's next reads.
                tokio::task::yield_now().await;
            }
        }
        s.tally.flush(&self.broker.counters);

        if !s.out.is_empty() {
            self.writer.send(s.out.take());
        }
        for ch in channels.values_mut() {
            ch.teardown();
        }
        Self::delete_exclusive_queues(&mut s).await;
        self.broker.unregister_connection(self.id);
        if self.client_closed {
            self.linger(n.frame_max).await;
        }
        if let End::Error = end {
            tracing::debug!(peer = %self.peer, "connection closed after error");
        }
        tracing::info!(
            peer = %self.peer,
            user = %n.user,
            connection_name = n.name.as_deref().unwrap_or(""),
            "closing AMQP connection"
        );
    }

    /// Decode and handle every complete frame in the read buffer. `Ok(false)` ends the
    /// connection cleanly (connection.close-ok exchanged).
    async fn process_frames(
        &mut self,
        s: &mut Session,
        channels: &mut Channels,
        n: &Negotiated,
        closing: bool,
    ) -> Result<bool, AmqpError> {
        loop {
            let f = match frame::decode(&mut self.rbuf, n.frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(true),
                Err(e) => {
                    if closing {
                        return Ok(false);
                    }
                    return Err(AmqpError::frame_error(e));
                }
            };
            if closing {
                // Only the peer's close-ok, or its own close, matters now. A close that
                // crossed ours is answered, as RabbitMQ answers it: the client is waiting
                // for its close-ok, and without one it would wait out its timeout instead
                // of seeing the error we sent.
                if f.kind == FRAME_METHOD && f.channel == 0 {
                    match method::class_method(&f.payload) {
                        (10, 51) => return Ok(false),
                        (10, 50) => {
                            s.send(0, close_ok_method());
                            return Ok(false);
                        }
                        _ => {}
                    }
                }
                continue;
            }
            if !self.handle_frame(s, channels, n, f).await? {
                return Ok(false);
            }
        }
    }

    async fn handle_frame(
        &mut self,
        s: &mut Session,
        channels: &mut Channels,
        n: &Negotiated,
        f: Frame,
    ) -> Result<bool, AmqpError> {
        if f.kind == FRAME_HEARTBEAT {
            if f.channel != 0 {
                return Err(AmqpError::unexpected_frame(format!(
                    "type 8, all octets = {}",
                    frame::erlang_binary(&f.payload)
                )));
            }
            return Ok(true);
        }
        if f.channel == 0 {
            return self.handle_channel0(s, channels, f).await;
        }
        let number = f.channel;
        let ids = if f.kind == FRAME_METHOD {
            method::class_method(&f.payload)
        } else {
            (0, 0)
        };
        if ids == (20, 40) {
            // channel.close is answered without looking at its arguments, but they must
            // decode, as in RabbitMQ (a reply text that is not UTF-8 is a frame error).
            method::decode(&f.payload).map_err(|e| crate::channel::decode_error(e, &f.payload))?;
        }
        let Some(ch) = channels.get_mut(&number) else {
            match ids {
                // Our channel.close crossed the client's: we already answered its close
                // and forgot the channel, so its close-ok to ours needs nothing more.
                (20, 41) => return Ok(true),
                (20, 40) => {
                    s.send(
                        number,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    return Ok(true);
                }
                _ => {}
            }
            if ids != (20, 10) {
                return Err(if f.kind == FRAME_METHOD {
                    AmqpError::channel_error("expected 'channel.open'").on(ids.0, ids.1)
                } else {
                    AmqpError::unexpected_frame(
                        "expected method frame, got non method frame instead",
                    )
                });
            }
            if n.channel_max != 0 && channels.len() >= n.channel_max as usize {
                return Err(AmqpError::not_allowed(format!(
                    "number of channels opened ({}) has reached the negotiated channel_max ({})",
                    channels.len(),
                    n.channel_max
                )));
            }
            // Only the count is limited: RabbitMQ opens channel 65535 under channel_max
            // 2047, and so does warren (channels are a map, not a table of channel_max).
            self.broker
                .admit_channel(&s.user)
                .map_err(|e| e.on(20, 10))?;
            channels.insert(
                number,
                Box::new(Channel::new(number, self.writer.congestion())),
            );
            self.channel_count
                .store(channels.len(), std::sync::atomic::Ordering::Relaxed);
            s.send(
                number,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Ok(true);
        };
        match ids {
            (20, 40) => {
                // channel.close from the client (also answers our close if both crossed).
                ch.teardown_and_wait().await;
                channels.remove(&number);
                s.send(
                    number,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                return Ok(true);
            }
            (20, 41) => {
                if ch.state == State::Closing {
                    channels.remove(&number);
                }
                return Ok(true);
            }
            _ if ch.state == State::Closing => return Ok(true),
            _ => {}
        }
        if let Err(e) = ch.handle_frame(s, f).await {
            if e.is_connection_error() {
                return Err(e);
            }
            tracing::warn!(peer = %self.peer, channel = number, "channel error: {}", e.text);
            ch.teardown();
            ch.state = State::Closing;
            s.send(number, channel_close_method(&e));
        }
        Ok(true)
    }

    async fn delete_exclusive_queues(s: &mut Session) {
        for q in std::mem::take(&mut s.exclusive_queues) {
            let _ = s.vhost.delete_queue(&q, false, false).await;
        }
    }

    async fn handle_channel0(
        &mut self,
        s: &mut Session,
        channels: &mut Channels,
        f: Frame,
    ) -> Result<bool, AmqpError> {
        if f.kind != FRAME_METHOD {
            return Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ));
        }
        let (class_id, method_id) = method::class_method(&f.payload);
        let m =
            method::decode(&f.payload).map_err(|e| crate::channel::decode_error(e, &f.payload))?;
        match m {
            Method::Other(c) => match *c {
                AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                    tracing::debug!(peer = %self.peer, "client closed connection: {} {}", c.reply_code, c.reply_text);
                    // Release everything before close-ok, so a client that reconnects
                    // at once finds its exclusive and auto-delete queues gone.
                    s.publishes.flush();
                    for ch in channels.values_mut() {
                        ch.teardown_and_wait().await;
                    }
                    channels.clear();
                    Self::delete_exclusive_queues(s).await;
                    s.send(0, close_ok_method());
                    self.client_closed = true;
                    Ok(false)
                }
                // A close-ok nobody asked for is refused like any other unexpected
                // method (504), as RabbitMQ does.
                AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                    s.send(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                            connection::UpdateSecretOk {},
                        )),
                    );
                    Ok(true)
                }
                AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
                | AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => Ok(true),
                _ => Err(
                    AmqpError::channel_error("unexpected method in connection state running")
                        .on(class_id, method_id),
                ),
            },
            _ => Err(
                AmqpError::channel_error("unexpected method in connection state running")
                    .on(class_id, method_id),
            ),
        }
    }

    fn handle_event(
        &mut self,
        s: &mut Session,
        channels: &mut Channels,
        ev: ConnEvent,
    ) -> Result<(), AmqpError> {
        match ev {
            ConnEvent::Deliveries(ds) => {
                for d in ds {
                    match channels.get_mut(&d.channel) {
                        Some(ch) if ch.uid == d.channel_uid => ch.deliver(s, d),
                        // The channel closed meanwhile; its queues requeue on ChannelDown.
                        _ => {}
                    }
                }
            }
            ConnEvent::ConsumerCancelled {
                channel_uid,
                consumer_tag,
            } => {
                if let Some(ch) = channels.values_mut().find(|c| c.uid == channel_uid) {
                    ch.consumer_cancelled(s, &consumer_tag);
                }
            }
            ConnEvent::CancelOk {
                channel_uid,
                consumer_tag,
                nowait,
            } => {
                if let Some(ch) = channels.values_mut().find(|c| c.uid == channel_uid) {
                    ch.cancel_ok(s, &consumer_tag, nowait);
                }
            }
            ConnEvent::ListChannels(reply) => {
                // Channels we are closing (waiting for close-ok) are not listed.
                let mut infos: Vec<_> = channels
                    .values()
                    .filter(|c| c.state == State::Open)
                    .map(|c| c.info())
                    .collect();
                infos.sort_by_key(|i| i.number);
                let _ = reply.send(infos);
            }
            ConnEvent::Close(e) => return Err(*e),
            ConnEvent::DeliveryTimedOut {
                channel_uid,
                queue_id,
                msg_id,
            } => {
                if let Some(ch) = channels.values_mut().find(|c| c.uid == channel_uid) {
                    ch.delivery_timed_out(queue_id, msg_id);
                }
            }
            ConnEvent::CloseChannel { channel_uid, error } => {
                if let Some((&number, ch)) = channels
                    .iter_mut()
                    .find(|(_, c)| c.uid == channel_uid && c.state == State::Open)
                {
                    tracing::warn!(peer = %self.peer, channel = number, "channel error: {}", error.text);
                    ch.teardown();
                    ch.state = State::Closing;
                    s.send(number, channel_close_method(&error));
                }
            }
        }
        Ok(())
    }
}
