//! Declaration arguments (`x-...` field tables): equivalence checks on redeclare, with
//! RabbitMQ's exact PRECONDITION_FAILED texts (oslo.messaging matches them literally).

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::error::AmqpError;

/// Queue arguments RabbitMQ compares on redeclare (rabbit_amqqueue:declare_args/0 and
/// consume-time ones); others may differ freely.
pub const QUEUE_EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-queue-master-locator",
    "x-queue-leader-locator",
];

pub const EXCHANGE_EQUIVALENCE_KEYS: &[&str] = &["alternate-exchange"];

/// RabbitMQ's name for a field's type, as it prints it in error texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

pub fn as_i64(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i64,
        AMQPValue::ShortShortUInt(x) => *x as i64,
        AMQPValue::ShortInt(x) => *x as i64,
        AMQPValue::ShortUInt(x) => *x as i64,
        AMQPValue::LongInt(x) => *x as i64,
        AMQPValue::LongUInt(x) => *x as i64,
        AMQPValue::LongLongInt(x) => *x,
        _ => return None,
    })
}

pub fn as_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn value_text(v: &AMQPValue) -> String {
    if let Some(i) = as_i64(v) {
        return i.to_string();
    }
    if let Some(s) = as_str(v) {
        return s;
    }
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        other => format!("{other:?}"),
    }
}

/// rabbit_misc:val/1: `none`, or `the value 'X' of type 'T'`.
fn describe(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_owned(),
        Some(v) => format!("the value '{}' of type '{}'", value_text(v), type_name(v)),
    }
}

/// rabbit_misc:type_class/1: all integer types are one class.
fn type_class(v: &AMQPValue) -> &'static str {
    if as_i64(v).is_some() {
        "int"
    } else {
        type_name(v)
    }
}

/// Values RabbitMQ treats as the same: equal within a type class (all integers are one
/// class, both string encodings are one class).
fn equivalent(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_i64(a), as_i64(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (as_str(a), as_str(b)) {
        return x == y;
    }
    a == b
}

/// Compare the listed keys of a redeclaration with the existing arguments.
/// `what` is RabbitMQ's resource description, e.g. `queue 'q' in vhost '/'`.
pub fn assert_equivalent(
    current: &FieldTable,
    requested: &FieldTable,
    keys: &[&str],
    what: &str,
) -> Result<(), AmqpError> {
    for key in keys {
        let (cur, req) = (current.inner().get(*key), requested.inner().get(*key));
        let (received, current) = match (cur, req) {
            (None, None) => continue,
            (Some(a), Some(b)) if equivalent(a, b) => continue,
            // Same type class, different value: RabbitMQ prints the bare values.
            (Some(a), Some(b)) if type_class(a) == type_class(b) => (
                format!("'{}'", value_text(b)),
                format!("'{}'", value_text(a)),
            ),
            _ => (describe(req), describe(cur)),
        };
        return Err(AmqpError::precondition_failed(format!(
            "inequivalent arg '{key}' for {what}: received {received} but current is {current}"
        )));
    }
    Ok(())
}

/// A boolean or atom-valued field (durable, auto_delete, type...) that differs.
pub fn field_mismatch(
    key: &str,
    what: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> AmqpError {
    AmqpError::precondition_failed(format!(
        "inequivalent arg '{key}' for {what}: received '{received}' but current is '{current}'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_match_rabbitmq() {
        let mut a = FieldTable::default();
        a.insert("x-message-ttl".into(), AMQPValue::LongInt(100));
        let e = assert_equivalent(
            &FieldTable::default(),
            &a,
            QUEUE_EQUIVALENCE_KEYS,
            "queue 'q' in vhost '/'",
        )
        .unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': \
             received the value '100' of type 'signedint' but current is none"
        );
        let mut b = FieldTable::default();
        b.insert("x-message-ttl".into(), AMQPValue::LongLongInt(100));
        assert!(assert_equivalent(&a, &b, QUEUE_EQUIVALENCE_KEYS, "q").is_ok());
        let mut c = FieldTable::default();
        c.insert("x-message-ttl".into(), AMQPValue::LongInt(2000));
        let e = assert_equivalent(&a, &c, QUEUE_EQUIVALENCE_KEYS, "queue 'q' in vhost '/'")
            .unwrap_err();
        assert!(
            e.text.ends_with("received '2000' but current is '100'"),
            "{}",
            e.text
        );
    }
}
