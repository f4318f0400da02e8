//! Target `definitions`: importing RabbitMQ's definitions JSON (`definitions::import`:
//! users, vhosts, permissions, topic permissions, limits, policies, exchanges, queues,
//! bindings, and the field tables their arguments become), into a fresh in-memory
//! broker, then exporting it (`definitions::export`).
//!
//! Input: a JSON document (what `rabbitmqctl export_definitions` writes, or anything).
//!
//! Checks beyond "no panic": what warren exports, it imports again without an error,
//! into a broker that then exports the same document.

use serde_json::Value;
use warren::broker::Broker;
use warren::definitions::{export, import};

pub fn run(data: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let rt = crate::runtime();
    rt.block_on(async {
        let first = Broker::new(crate::config());
        let _ = import(&first, &doc);
        crate::settle().await;
        let exported = export(&first);

        let second = Broker::new(crate::config());
        let report = import(&second, &exported);
        assert!(
            report.errors.is_empty(),
            "warren's own export does not import again: {:?}\nexport: {exported:#}",
            report.errors
        );
        crate::settle().await;
        let again = export(&second);
        assert_eq!(
            strip(exported),
            strip(again),
            "an export imported and exported again is not the same"
        );
        first.shut_down();
        second.shut_down();
    });
}

/// What legitimately differs between two brokers' exports: nothing yet, beyond the
/// version fields.
fn strip(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("rabbit_version");
        m.remove("rabbitmq_version");
    }
    v
}
