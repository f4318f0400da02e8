//! Messages as the management API shows and takes them: basic properties as JSON
//! objects (RabbitMQ's field names), payloads as text or base64.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::definitions::{json_to_table, table_to_json};

/// The content header's raw properties as RabbitMQ's management plugin lists them;
/// absent properties are left out.
pub fn properties_json(raw: &[u8]) -> Value {
    let mut m = Map::new();
    // amq-protocol's property parser recurses into the headers without a bound: only
    // properties whose headers passed warren's own walk are handed to it.
    if crate::protocol::properties::Properties::parse(raw).is_none() {
        return Value::Object(m);
    }
    let Ok((_, p)) = parse_properties(raw) else {
        return Value::Object(m);
    };
    let mut s = |k: &str, v: &Option<amq_protocol::types::ShortString>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::from(v.as_str()));
        }
    };
    s("content_type", p.content_type());
    s("content_encoding", p.content_encoding());
    s("correlation_id", p.correlation_id());
    s("reply_to", p.reply_to());
    s("expiration", p.expiration());
    s("message_id", p.message_id());
    s("type", p.kind());
    s("user_id", p.user_id());
    s("app_id", p.app_id());
    s("cluster_id", p.cluster_id());
    if let Some(h) = p.headers() {
        m.insert("headers".into(), table_to_json(h));
    }
    if let Some(d) = p.delivery_mode() {
        m.insert("delivery_mode".into(), Value::from(*d));
    }
    if let Some(d) = p.priority() {
        m.insert("priority".into(), Value::from(*d));
    }
    if let Some(t) = p.timestamp() {
        m.insert("timestamp".into(), Value::from(*t));
    }
    Value::Object(m)
}

/// Properties from a publish request's `properties` object, encoded as a content
/// header carries them. Unknown keys are refused, as RabbitMQ does.
pub fn properties_from_json(m: &Map<String, Value>) -> Result<Bytes, String> {
    let mut p = AMQPProperties::default();
    for (k, v) in m {
        let text = || -> Result<amq_protocol::types::ShortString, String> {
            match v {
                Value::String(s) => amq_protocol::types::ShortString::try_new(s.as_str())
                    .map_err(|_| format!("property {k} is longer than 255 bytes")),
                Value::Number(n) => Ok(n.to_string().into()),
                _ => Err(format!("invalid value for property {k}")),
            }
        };
        let int = || -> Result<u64, String> {
            match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("invalid value for property {k}"))
        };
        p = match k.as_str() {
            "content_type" => p.with_content_type(text()?),
            "content_encoding" => p.with_content_encoding(text()?),
            "correlation_id" => p.with_correlation_id(text()?),
            "reply_to" => p.with_reply_to(text()?),
            "expiration" => p.with_expiration(text()?),
            "message_id" => p.with_message_id(text()?),
            "type" => p.with_type(text()?),
            "user_id" => p.with_user_id(text()?),
            "app_id" => p.with_app_id(text()?),
            "cluster_id" => p.with_cluster_id(text()?),
            "headers" => p.with_headers(json_to_table(Some(v))),
            "delivery_mode" => p.with_delivery_mode(int()?.min(255) as u8),
            "priority" => p.with_priority(int()?.min(255) as u8),
            "timestamp" => p.with_timestamp(int()?),
            _ => return Err(format!("unknown property {k}")),
        };
    }
    let encoded = gen_properties(&p)(WriteContext::from(Vec::new()))
        .map(|w| Bytes::from(w.write))
        .map_err(|e| format!("cannot encode properties: {e}"));
    encoded
}

/// A payload as a get reply shows it: text when `encoding` is "auto" and it is UTF-8,
/// else base64. `truncate` cuts it to that many bytes first.
pub fn payload_json(body: &[u8], encoding: &str, truncate: Option<usize>) -> (Value, &'static str) {
    let body = &body[..truncate.map_or(body.len(), |t| t.min(body.len()))];
    match std::str::from_utf8(body) {
        Ok(s) if encoding != "base64" => (Value::from(s), "string"),
        _ => (
            Value::from(base64::engine::general_purpose::STANDARD.encode(body)),
            "base64",
        ),
    }
}

/// A publish request's payload: `payload_encoding` "string" (the default) or "base64".
pub fn payload_from_json(m: &Map<String, Value>) -> Result<Bytes, String> {
    let payload = m.get("payload").and_then(Value::as_str).unwrap_or("");
    match m
        .get("payload_encoding")
        .and_then(Value::as_str)
        .unwrap_or("string")
    {
        "string" => Ok(Bytes::copy_from_slice(payload.as_bytes())),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map(Bytes::from)
            .map_err(|_| "payload is not valid base64".to_owned()),
        other => Err(format!("invalid payload_encoding {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_round_trip_through_json() {
        let given = json!({"content_type": "text/plain", "delivery_mode": 2,
                           "headers": {"k": "v"}, "priority": 3});
        let raw = properties_from_json(given.as_object().unwrap()).unwrap();
        assert_eq!(properties_json(&raw), given);
        assert!(properties_from_json(json!({"bogus": 1}).as_object().unwrap()).is_err());
    }

    #[test]
    fn payloads_are_text_unless_binary_or_asked_for_base64() {
        assert_eq!(payload_json(b"hi", "auto", None), (json!("hi"), "string"));
        assert_eq!(
            payload_json(&[0xff], "auto", None),
            (json!("/w=="), "base64")
        );
        assert_eq!(
            payload_json(b"hello", "auto", Some(2)),
            (json!("he"), "string")
        );
    }
}
