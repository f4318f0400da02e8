//! Headers exchange: a binding's arguments are matched against the message's headers.
//! `x-match` is `all` (default) or `any`, which ignore `x-`-prefixed keys, or
//! `all-with-x` / `any-with-x`, which don't (RabbitMQ 3.10+). A void binding value
//! matches any value for that key.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::Destination;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
}

#[derive(Debug)]
struct Entry {
    mode: Mode,
    with_x: bool,
    arguments: FieldTable,
    dest: Destination,
}

#[derive(Debug, Default)]
pub struct HeadersRouter {
    entries: Vec<Entry>,
}

fn mode_of(arguments: &FieldTable) -> (Mode, bool) {
    let s = match arguments.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => return (Mode::All, false),
    };
    match s.as_str() {
        "any" => (Mode::Any, false),
        "any-with-x" => (Mode::Any, true),
        "all-with-x" => (Mode::All, true),
        _ => (Mode::All, false),
    }
}

/// Binding arguments RabbitMQ refuses (rabbit_exchange_type_headers:validate_binding).
pub fn validate_binding(arguments: &FieldTable) -> Result<(), String> {
    match arguments.inner().get("x-match") {
        None => Ok(()),
        Some(AMQPValue::LongString(s)) => match s.as_bytes() {
            b"all" | b"any" | b"all-with-x" | b"any-with-x" => Ok(()),
            other => Err(format!(
                "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                String::from_utf8_lossy(other)
            )),
        },
        Some(v) => Err(format!(
            "Invalid x-match field type {} (value {v:?}); expected longstr",
            crate::arguments::type_name(v)
        )),
    }
}

impl HeadersRouter {
    pub fn bind(&mut self, arguments: &FieldTable, dest: Destination) {
        let (mode, with_x) = mode_of(arguments);
        self.entries.push(Entry {
            mode,
            with_x,
            arguments: arguments.clone(),
            dest,
        });
    }

    pub fn unbind(&mut self, arguments: &FieldTable, dest: &Destination) {
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| &e.dest == dest && &e.arguments == arguments)
        {
            self.entries.remove(i);
        }
    }

    pub fn route(&self, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let empty = FieldTable::default();
        let headers = headers.unwrap_or(&empty);
        for e in &self.entries {
            if matches(e, headers) {
                out.push(e.dest.clone());
            }
        }
    }
}

fn matches(e: &Entry, headers: &FieldTable) -> bool {
    let mut considered =
        e.arguments.inner().iter().filter(|(k, _)| {
            k.as_str() != "x-match" && (e.with_x || !k.as_str().starts_with("x-"))
        });
    let hit = |(k, v): (&amq_protocol::types::ShortString, &AMQPValue)| match headers.inner().get(k)
    {
        None => false,
        Some(h) => matches!(v, AMQPValue::Void) || values_equal(v, h),
    };
    match e.mode {
        Mode::All => considered.all(hit),
        Mode::Any => considered.any(hit),
    }
}

/// Equality across the integer and string encodings a client may pick for one value.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    fn int(v: &AMQPValue) -> Option<i128> {
        Some(match v {
            AMQPValue::ShortShortInt(x) => *x as i128,
            AMQPValue::ShortShortUInt(x) => *x as i128,
            AMQPValue::ShortInt(x) => *x as i128,
            AMQPValue::ShortUInt(x) => *x as i128,
            AMQPValue::LongInt(x) => *x as i128,
            AMQPValue::LongUInt(x) => *x as i128,
            AMQPValue::LongLongInt(x) => *x as i128,
            AMQPValue::Timestamp(x) => *x as i128,
            _ => return None,
        })
    }
    fn text(v: &AMQPValue) -> Option<&[u8]> {
        match v {
            AMQPValue::LongString(s) => Some(s.as_bytes()),
            AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
            _ => None,
        }
    }
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (text(a), text(b)) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{LongString, ShortString};
    use std::sync::Arc;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
    }

    fn routes(binding: FieldTable, headers: FieldTable) -> bool {
        let mut r = HeadersRouter::default();
        r.bind(&binding, Destination::Queue(Arc::from("q")));
        let mut out = Vec::new();
        r.route(Some(&headers), &mut out);
        !out.is_empty()
    }

    #[test]
    fn all_and_any() {
        let b = table(&[("a", s("1")), ("b", AMQPValue::LongInt(2))]);
        assert!(routes(
            b.clone(),
            table(&[("a", s("1")), ("b", AMQPValue::ShortShortUInt(2))])
        ));
        assert!(!routes(b.clone(), table(&[("a", s("1"))])));
        let mut any = b.clone();
        any.insert("x-match".into(), s("any"));
        assert!(routes(any.clone(), table(&[("a", s("1"))])));
        assert!(!routes(any, table(&[("a", s("2"))])));
    }

    #[test]
    fn x_keys_only_count_with_x() {
        let b = table(&[("x-match", s("all")), ("x-k", s("v"))]);
        assert!(routes(b, table(&[])));
        let b = table(&[("x-match", s("all-with-x")), ("x-k", s("v"))]);
        assert!(!routes(b.clone(), table(&[])));
        assert!(routes(b, table(&[("x-k", s("v"))])));
        let b = table(&[("x-match", s("any")), ("x-k", s("v"))]);
        assert!(!routes(b, table(&[("x-k", s("v"))])));
    }

    #[test]
    fn void_matches_presence() {
        let b = table(&[("k", AMQPValue::Void)]);
        assert!(routes(b.clone(), table(&[("k", s("anything"))])));
        assert!(!routes(b, table(&[])));
    }
}
