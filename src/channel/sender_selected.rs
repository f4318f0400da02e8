//! Sender-selected distribution: the `CC` and `BCC` headers (arrays of longstr) add
//! routing keys to a publish, and `BCC` is removed before anyone sees the message
//! (rabbit_basic:header_routes and strip_header).
//!
//! Only publishes whose properties carry a headers table are looked at, and then only
//! for these two keys, walking the table's raw bytes without decoding it.

use bytes::Bytes;

use crate::error::AmqpError;
use crate::protocol::properties::{self, Properties};
use crate::protocol::table;

/// A publish's extra routing keys, and its properties with `BCC` taken out.
pub(super) struct SenderSelected {
    /// The `CC` keys, then the `BCC` ones, in header order.
    pub keys: Vec<String>,
    /// Set when `BCC` was present: the rewritten property list and its index.
    pub stripped: Option<(Bytes, Properties)>,
}

/// `None` for the usual publish without `CC` or `BCC` (no allocation then).
pub(super) fn parse(raw: &[u8], props: &Properties) -> Result<Option<SenderSelected>, AmqpError> {
    let Some(payload) = props.headers_payload(raw) else {
        return Ok(None);
    };
    let mut keys = Vec::new();
    let mut found = false;
    let mut bcc = false;
    // A malformed table was refused when the properties were parsed; stop at it here.
    for field in table::iter(payload).map_while(|f| f) {
        let name = match field.key {
            b"CC" => "CC",
            b"BCC" => "BCC",
            _ => continue,
        };
        found = true;
        bcc |= name == "BCC";
        // RabbitMQ takes the longstr items of an array and skips other items; any
        // other type is an invalid message.
        let Some(items) = table::array_items(field.value) else {
            return Err(AmqpError::precondition_failed(format!(
                "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                type_name(field.value[0])
            )));
        };
        keys.extend(
            items
                .into_iter()
                .filter_map(table::as_longstr)
                .map(|k| String::from_utf8_lossy(k).into_owned()),
        );
    }
    if !found {
        return Ok(None);
    }
    let stripped = if bcc {
        let kept: Vec<(&[u8], &[u8])> = table::iter(payload)
            .map_while(|f| f)
            .filter(|f| f.key != b"BCC")
            .map(|f| (f.key, f.value))
            .collect();
        let new = properties::rewrite_headers(raw, &table::table_payload(&kept))
            .ok_or_else(|| AmqpError::frame_error("malformed content header"))?;
        let parsed = Properties::parse(&new)
            .ok_or_else(|| AmqpError::frame_error("malformed content header"))?;
        Some((Bytes::from(new), parsed))
    } else {
        None
    };
    Ok(Some(SenderSelected { keys, stripped }))
}

/// RabbitMQ's name for a field's type, as it prints it in errors.
fn type_name(tag: u8) -> &'static str {
    match tag {
        b'S' => "longstr",
        b's' => "short",
        b'I' => "signedint",
        b'l' => "long",
        b'b' => "byte",
        b'B' => "unsignedbyte",
        b'u' => "unsignedshort",
        b'i' => "unsignedint",
        b'f' => "float",
        b'd' => "double",
        b'D' => "decimal",
        b't' => "bool",
        b'T' => "timestamp",
        b'F' => "table",
        b'x' => "binary",
        b'V' => "void",
        _ => "unknown",
    }
}
