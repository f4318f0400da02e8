//! Routing cost with many bindings: a topic exchange with 10 000 bindings must route
//! by walking the key's words, not the bindings.
//!
//!     cargo bench --bench routing

use std::hint::black_box;

use amq_protocol::types::FieldTable;
use criterion::{criterion_group, criterion_main, Criterion};
use warren::exchange::Destination;
use warren::vhost::{ExchangeDecl, QueueDecl, Vhost};

fn topic_routing(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("topic_route");
    for bindings in [10usize, 10_000] {
        let vhost = Vhost::new("/");
        vhost
            .declare_exchange(ExchangeDecl {
                name: "t",
                kind: "topic",
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            })
            .unwrap();
        // 100 queues, `bindings` binding keys spread over them: "stock.<i>.*" and a few
        // wildcard-heavy ones.
        for q in 0..100 {
            let decl = QueueDecl {
                name: format!("q{q}"),
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: FieldTable::default(),
            };
            vhost.declare_queue(decl, 1).unwrap();
        }
        for i in 0..bindings {
            let key = match i % 100 {
                0 => format!("stock.#.{i}"),
                1 => format!("*.{i}.#"),
                _ => format!("stock.{i}.*"),
            };
            let dest = Destination::Queue(format!("q{}", i % 100).into());
            vhost
                .bind("t", dest, &key, FieldTable::default(), 1)
                .unwrap();
        }
        g.bench_function(format!("{bindings}_bindings"), |b| {
            let mut out = Vec::new();
            let mut i = 0usize;
            b.iter(|| {
                out.clear();
                i = (i + 7) % bindings.max(1);
                let key = format!("stock.{i}.nyse");
                let _ = vhost.route("t", &key, &mut || None, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, topic_routing);
criterion_main!(benches);
