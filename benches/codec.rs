//! The per-message wire path: cutting publishes (method + header + body frames) out of a
//! read buffer and decoding them, and encoding deliveries.
//!
//!     cargo bench --bench codec

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use warren::message::Message;
use warren::protocol::frame::{self, put_header, FRAME_BODY, FRAME_END, FRAME_HEADER};
use warren::protocol::method::{self, Method};
use warren::protocol::outbuf::OutBuf;
use warren::protocol::properties::Properties;

const BATCH: usize = 1000;

/// One publish as a client sends it: basic.publish, a content header with
/// delivery-mode 1, and a body frame.
fn publish_frames(out: &mut BytesMut, body: &[u8]) {
    let mut args = BytesMut::new();
    args.extend_from_slice(&[0, 60, 0, 40, 0, 0]);
    args.extend_from_slice(&[0]); // exchange ""
    args.extend_from_slice(&[5]);
    args.extend_from_slice(b"queue"); // routing key
    args.extend_from_slice(&[0]); // bits
    put_header(out, frame::FRAME_METHOD, 1, args.len() as u32);
    out.extend_from_slice(&args);
    out.extend_from_slice(&[FRAME_END]);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&[0x10, 0x00, 1]); // flags: delivery-mode; value 1
    put_header(out, FRAME_HEADER, 1, header.len() as u32);
    out.extend_from_slice(&header);
    out.extend_from_slice(&[FRAME_END]);
    put_header(out, FRAME_BODY, 1, body.len() as u32);
    out.extend_from_slice(body);
    out.extend_from_slice(&[FRAME_END]);
}

fn decode_publishes(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_publish");
    for size in [16usize, 1024] {
        let mut wire = BytesMut::new();
        for _ in 0..BATCH {
            publish_frames(&mut wire, &vec![b'x'; size]);
        }
        let wire = wire.freeze();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let mut n = 0usize;
                while let Ok(Some(f)) = frame::decode(&mut buf, 131_072) {
                    match f.kind {
                        frame::FRAME_METHOD => {
                            if let Ok(Method::Publish(p)) = method::decode(&f.payload) {
                                n += p.routing_key.len();
                            }
                        }
                        FRAME_HEADER => {
                            let props = Properties::parse(&f.payload[12..]);
                            n += props.is_some() as usize;
                        }
                        _ => n += f.payload.len(),
                    }
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

fn encode_deliveries(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_deliver");
    for size in [16usize, 1024, 65536] {
        let m = Message {
            exchange: Bytes::from_static(b""),
            routing_key: Bytes::from_static(b"queue"),
            properties: Bytes::from_static(&[0x10, 0x00, 1]),
            body: Bytes::from(vec![b'x'; size]),
            store_id: None,
        };
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{size}B"), |b| {
            let mut out = OutBuf::default();
            b.iter(|| {
                for tag in 0..BATCH as u64 {
                    method::encode_deliver(
                        &mut out.buf,
                        1,
                        b"amq.ctag-abcdefghijklmnopqrstuv",
                        tag,
                        false,
                        b"",
                        b"queue",
                    );
                    m.write_content(&mut out, 1, 131_072);
                }
                black_box(out.take().len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode_publishes, encode_deliveries);
criterion_main!(benches);
