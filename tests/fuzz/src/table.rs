//! Target `table`: AMQP field tables (`protocol::table`): the depth and length check
//! that runs before amq-protocol's recursive parser, the decode itself, and the raw
//! field walkers dead-lettering and the headers exchange use.
//!
//! Input: a table as it stands on the wire (4-byte length, then fields); the length is
//! the input's to get wrong. The same bytes are also tried with a correct length.
//!
//! Checks beyond "no panic":
//! - the raw walkers agree with the check (a table the check accepts can be walked);
//! - a table warren decodes can be stored and read back (the store writes it with
//!   amq-protocol's encoder and reads it with `table::decode`) unchanged.

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::FieldTable;
use warren::protocol::table::{self, Refused};

fn encode(t: &FieldTable) -> Vec<u8> {
    gen_field_table(t)(WriteContext::from(Vec::new()))
        .expect("a decoded table encodes")
        .write
}

fn framed(data: &[u8]) {
    let checked = table::check_framed(data);
    let decoded = table::decode(data);
    if let Err(Refused::TooDeep) = checked {
        assert_eq!(decoded.as_ref().err(), Some(&Refused::TooDeep));
    }
    if let Ok(len) = checked {
        assert!(len <= data.len());
        walk(&data[4..len]);
        if decoded.is_err() {
            // What the check accepts and amq-protocol refuses: keys that are not UTF-8
            // (see the note at has_non_utf8_key); nothing else.
            assert!(
                has_non_utf8_key(&data[4..len]),
                "a table the check accepted does not decode: {:02x?}",
                &data[..len]
            );
        }
    }
    if let Ok(t) = decoded {
        assert!(checked.is_ok(), "decoded a table the check refused");
        let _ = warren::definitions::table_to_json(&t);
        let _ = format!("{t:?}");
        // What the store does with it: write it, read it back.
        let bytes = encode(&t);
        let back = table::decode(&bytes).unwrap_or_else(|e| {
            panic!(
                "a table warren decoded does not decode again after encoding ({e}): {bytes:02x?}"
            )
        });
        assert_eq!(
            encode(&back),
            bytes,
            "a table changed in a store round trip"
        );
    }
}

/// Whether a table payload the check accepted has a field name, at any depth, that is
/// not UTF-8. `table::check` accepts any bytes there (as RabbitMQ does: keys are
/// binaries); amq-protocol's parser, behind `table::decode`, refuses them. Reported as
/// a finding (tests/fuzz/README.md); the targets tolerate it and nothing else.
pub fn has_non_utf8_key(payload: &[u8]) -> bool {
    fn value(v: &[u8]) -> bool {
        if let Some(items) = table::array_items(v) {
            return items.into_iter().any(value);
        }
        match table::table_fields(v) {
            Some(fields) => fields
                .iter()
                .any(|f| std::str::from_utf8(f.key).is_err() || value(f.value)),
            None => false,
        }
    }
    table::fields(payload).is_some_and(|fields| {
        fields
            .iter()
            .any(|f| std::str::from_utf8(f.key).is_err() || value(f.value))
    })
}

/// The raw walkers over a table payload the check accepted.
fn walk(payload: &[u8]) {
    let fields = table::fields(payload).expect("the check accepted it, so it can be walked");
    assert_eq!(fields.len(), table::iter(payload).count());
    let mut rebuilt = Vec::new();
    for f in &fields {
        value(f.value, 0);
        rebuilt.push((f.key, f.value));
    }
    assert_eq!(
        table::table_payload(&rebuilt),
        payload,
        "fields copied byte for byte"
    );
    if let Some(f) = fields.first() {
        let _ = table::get(&fields, &String::from_utf8_lossy(f.key));
    }
}

fn value(v: &[u8], depth: usize) {
    assert!(depth <= table::MAX_DEPTH);
    let _ = table::as_int(v);
    let _ = table::as_longstr(v);
    if let Some(items) = table::array_items(v) {
        for i in items {
            value(i, depth + 1);
        }
    }
    if let Some(fields) = table::table_fields(v) {
        for f in fields {
            value(f.value, depth + 1);
        }
    }
}

pub fn run(data: &[u8]) {
    framed(data);
    // The same fields with a length that matches.
    let mut fixed = Vec::with_capacity(data.len());
    fixed.extend_from_slice(&(data.len().saturating_sub(4) as u32).to_be_bytes());
    fixed.extend_from_slice(data.get(4..).unwrap_or_default());
    framed(&fixed);
    let _ = table::check(data);
}
