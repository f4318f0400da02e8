//! Target `connection`: the whole connection state machine, fed a client's byte stream:
//! protocol header, handshake (start-ok and SASL, tune-ok, open), channels, every
//! method, publishing (content assembly, routing, confirms, transactions), consuming,
//! heartbeats and closing, against a fresh in-memory broker (the store has its own
//! target).
//!
//! Input: what a client sends (a recording of a real client is a valid input). The
//! harness writes it into an in-memory pipe the connection task reads
//! (`connection::serve_halves`), one client turn at a time: after every frame except
//! those a client pipelines (publish, content, ack/nack/reject) it lets the broker run
//! until idle, so replies such as deliveries come before the acks that follow them, as
//! with a real client. Then, if it negotiated a heartbeat of 1 or 2 s, it stays silent
//! until the broker gives up on it (tokio's time is paused, so waiting costs only the
//! events in it); then it closes its side and waits for the connection task to end.
//!
//! Why not wait for longer heartbeats too: queues keep their deadlines (TTL, x-expires,
//! the consumer-timeout scan) in `std::time::Instant`, which paused tokio time does not
//! move. When virtual time passes such a deadline before real time does, the queue's
//! timer fires, finds nothing due and re-arms at once until real time catches up
//! (harmless outside the harness, where both clocks agree). Virtual time is therefore
//! kept at most a few seconds ahead of real time, and the default consumer timeout is
//! off (`x-consumer-timeout` still turns it on).
//!
//! Checks beyond "no panic": everything the broker writes is well-formed: whole frames
//! with the end octet, no larger than the negotiated frame_max, methods that decode,
//! content headers that parse. Once the connection has ended, it is no longer listed and
//! its exclusive queues are gone; and the broker still serves a well-behaved client
//! (handshake, declare, publish, get, close) on a second connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::broker::Broker;
use warren::protocol::method;
use warren::protocol::properties::Properties;

use crate::wire::{pieces, Piece};

/// Whether the client would wait for the broker after sending this piece.
fn turn_ends_after(p: &Piece<'_>) -> bool {
    match p {
        Piece::Frame { kind: 1, .. } => !matches!(
            p.method(),
            Some((60, 40)) | Some((60, 80)) | Some((60, 90)) | Some((60, 120))
        ),
        Piece::Frame { kind: 2 | 3, .. } => false,
        _ => true,
    }
}

/// What the client negotiated in its tune-ok, as far as the harness read it.
#[derive(Default, Clone, Copy)]
struct Tuned {
    frame_max: u32,
    heartbeat: u16,
}

/// Play one client conversation against `broker` over an in-memory pipe; returns what
/// the broker wrote and what the client asked for in tune-ok.
async fn converse(broker: &Arc<Broker>, data: &[u8]) -> (Vec<u8>, Tuned) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (server_read, server_write) = tokio::io::split(server);
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let conn = tokio::spawn(warren::connection::serve_halves(
        broker.clone(),
        server_read,
        server_write,
        (peer, local),
        None,
    ));
    let (mut from_broker, mut to_broker) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = from_broker.read_to_end(&mut out).await;
        out
    });
    let mut tuned = Tuned::default();
    for p in pieces(data) {
        if let (Some((10, 31)), Piece::Frame { payload, .. }) = (p.method(), p) {
            if payload.len() >= 12 {
                tuned.frame_max = u32::from_be_bytes(payload[6..10].try_into().unwrap());
                tuned.heartbeat = u16::from_be_bytes([payload[10], payload[11]]);
            }
        }
        if to_broker.write_all(p.bytes()).await.is_err() {
            break;
        }
        if turn_ends_after(&p) {
            crate::settle().await;
        }
    }
    // Silent for two heartbeat intervals and a half: heartbeats go out, then the
    // broker gives up on the client.
    let silence = match tuned.heartbeat {
        1 | 2 => u64::from(tuned.heartbeat) * 2000 + 500,
        _ => 100,
    };
    tokio::time::sleep(Duration::from_millis(silence)).await;
    let _ = to_broker.shutdown().await;
    // The connection ends once the client has gone (its writer lingers at most 5 s).
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the connection task was still running 10 s after the client closed"
    );
    drop(to_broker);
    let out = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the broker's side of the pipe closes after the connection ends")
        .expect("reader task");
    (out, tuned)
}

pub fn run(data: &[u8]) {
    let rt = crate::runtime();
    let (out, tuned, probe) = rt.block_on(async {
        let mut config = crate::config();
        config.amqp.consumer_timeout = 0;
        let broker = Broker::new(config);
        let (out, tuned) = converse(&broker, data).await;
        crate::settle().await;
        // Nothing of the connection outlives it.
        assert_eq!(
            broker.connection_count(),
            0,
            "a closed connection is still listed"
        );
        let vhost = broker.vhost("/").expect("the default vhost");
        for q in vhost.queues() {
            assert!(
                q.exclusive_owner.is_none(),
                "exclusive queue {:?} outlived its connection",
                q.name
            );
        }
        // The broker still answers: a client declares, publishes, gets.
        let (probe, _) = converse(&broker, &probe_conversation()).await;
        broker.shut_down();
        (out, tuned, probe)
    });
    drop(rt);
    check_output(&out, tuned);
    check_probe(&probe);
}

const PROBE_QUEUE: &str = "warren-fuzz-probe-7f3a9c";

/// A well-behaved client's conversation: handshake, a channel, an exclusive queue, a
/// publish to it, a get, close.
fn probe_conversation() -> Vec<u8> {
    use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};
    use amq_protocol::types::{FieldTable, LongString, ShortString};
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&warren::protocol::PROTOCOL_HEADER[..]);
    let mut m = |ch: u16, c: AMQPClass| method::encode(&mut out, ch, &c);
    m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: ShortString::from("PLAIN"),
            response: LongString::from(b"\0guest\0guest".to_vec()),
            locale: ShortString::from("en_US"),
        })),
    );
    m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 131_072,
            heartbeat: 0,
        })),
    );
    m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: ShortString::from("/"),
        })),
    );
    m(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    m(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: ShortString::from(PROBE_QUEUE),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ShortString::from(""),
            routing_key: ShortString::from(PROBE_QUEUE),
            mandatory: true,
            immediate: false,
        })),
    );
    drop(m);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&5u64.to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&crate::wire::frame(2, 1, &header));
    out.extend_from_slice(&crate::wire::frame(3, 1, b"probe"));
    let mut m = |ch: u16, c: AMQPClass| method::encode(&mut out, ch, &c);
    m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: ShortString::from(PROBE_QUEUE),
            no_ack: true,
        })),
    );
    m(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: ShortString::from("bye"),
            class_id: 0,
            method_id: 0,
        })),
    );
    out.to_vec()
}

/// The probe got its message back and a close-ok.
fn check_probe(out: &[u8]) {
    let all = pieces(out);
    let methods: Vec<(u16, u16)> = all.iter().filter_map(|p| p.method()).collect();
    let body = all.iter().find_map(|p| match p {
        Piece::Frame {
            kind: 3, payload, ..
        } => Some(*payload),
        _ => None,
    });
    assert!(
        methods.contains(&(60, 71)) && body == Some(&b"probe"[..]) && methods.last() == Some(&(10, 51)),
        "after the input, a well-behaved client no longer gets through: methods {methods:?}, body {body:02x?}"
    );
}

/// basic.return, basic.deliver and basic.get-ok carry the exchange and routing key a
/// publisher sent, byte for byte (as RabbitMQ does: short strings are binaries), so they
/// need not be UTF-8, which amq-protocol's decoder requires. These three are encoded by
/// hand: check their layout without that requirement.
fn echoes_client_bytes(p: &[u8]) -> bool {
    // Field sizes in order; 0 is a short string (a length octet, then that many bytes).
    let layout: &[usize] = match p.get(..4) {
        Some([0, 60, 0, 50]) => &[2, 0, 0, 0], // reply code and text, exchange, key
        Some([0, 60, 0, 60]) => &[0, 8, 1, 0, 0], // consumer tag, delivery tag, redelivered
        Some([0, 60, 0, 71]) => &[8, 1, 0, 0, 4], // delivery tag, redelivered, ..., count
        _ => return false,
    };
    let mut at = 4usize;
    for &size in layout {
        at += match size {
            0 => match p.get(at) {
                Some(&len) => 1 + len as usize,
                None => return false,
            },
            n => n,
        };
        if at > p.len() {
            return false;
        }
    }
    at == p.len()
}

/// Everything the broker wrote is well-formed, and no frame is larger than the
/// frame_max the client asked for (when the broker accepted it).
fn check_output(out: &[u8], tuned: Tuned) {
    if out.starts_with(b"AMQP") {
        // A protocol header answers an unsupported one, and ends the connection.
        assert_eq!(out, &warren::protocol::PROTOCOL_HEADER[..]);
        return;
    }
    let all = pieces(out);
    for p in &all {
        match *p {
            Piece::Frame {
                kind,
                payload,
                whole,
                ..
            } => {
                assert_eq!(
                    whole.last(),
                    Some(&0xCE),
                    "broker wrote a frame without its end octet"
                );
                if (warren::protocol::frame::FRAME_MIN_SIZE..=131_072).contains(&tuned.frame_max) {
                    assert!(
                        whole.len() <= tuned.frame_max as usize,
                        "broker wrote a {}-byte frame after frame_max {} was negotiated",
                        whole.len(),
                        tuned.frame_max
                    );
                }
                match kind {
                    1 => {
                        let bytes = bytes::Bytes::copy_from_slice(payload);
                        if let Err(e) = method::decode(&bytes) {
                            assert!(
                                echoes_client_bytes(payload),
                                "broker wrote a method it cannot decode ({e:?}): {payload:02x?}"
                            );
                        }
                    }
                    2 => {
                        assert!(payload.len() >= 14, "short content header from the broker");
                        assert!(
                            Properties::parse(&payload[12..]).is_some(),
                            "broker wrote content-header properties it does not accept: {payload:02x?}"
                        );
                    }
                    3 | 8 => {}
                    k => panic!("broker wrote a frame of type {k}"),
                }
            }
            Piece::Rest(rest) => panic!("broker wrote a partial frame at the end: {rest:02x?}"),
            Piece::Header(h) => panic!("broker wrote {h:02x?} in the middle of its frames"),
        }
    }
}
