//! Field tables at the byte level: walk a table's fields without decoding their values,
//! and write tables whose untouched values are copied byte for byte.
//!
//! Dead-lettering rewrites a message's headers; going through a decoded table type
//! would re-encode every value (and could change type tags the publisher chose), so the
//! rewrite works on raw `(key, tagged value)` pairs instead. Tags follow RabbitMQ's
//! reading of the spec (`s` is a signed short, `l` a signed long long).

use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::FieldTable;
use bytes::BufMut;

/// The deepest nesting of tables and arrays warren decodes (the outer table is level 1).
///
/// amq-protocol's parser, and the encoder, `Clone`, `Drop` and `Debug` of its value types,
/// recurse once per level with no bound of their own: a 9 KB frame nesting 1,500 tables
/// overflows a worker's stack and aborts the process. Every table is therefore walked
/// (without recursion deeper than this bound) before it is decoded, and JSON documents
/// that could become tables (HTTP bodies, definitions, policies) are held to the same
/// bound, so every table warren stores decodes again when read back. An unoptimised
/// build needs about 5 KB of stack per level; 64 levels leave most of a worker's 2 MiB.
pub const MAX_DEPTH: usize = 64;

/// Why a table was refused before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Tables or arrays nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A field or value is truncated or has an unknown type tag.
    Malformed,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TooDeep => write!(f, "field table nested deeper than {MAX_DEPTH} levels"),
            Refused::Malformed => f.write_str("malformed field table"),
        }
    }
}

/// Check a table payload (the bytes after its 4-byte length): well-formed, and no deeper
/// than [`MAX_DEPTH`]. Recursion here is bounded by the depth it checks.
pub fn check(payload: &[u8]) -> Result<(), Refused> {
    check_fields(payload, 1)
}

fn check_fields(payload: &[u8], depth: usize) -> Result<(), Refused> {
    for field in iter(payload) {
        check_value(field.ok_or(Refused::Malformed)?.value, depth)?;
    }
    Ok(())
}

/// `v` is one well-formed tagged value (as `value_len` measured it) at `depth`.
fn check_value(v: &[u8], depth: usize) -> Result<(), Refused> {
    match v[0] {
        b'F' | b'A' if depth >= MAX_DEPTH => Err(Refused::TooDeep),
        b'F' => check_fields(&v[5..], depth + 1),
        b'A' => {
            let mut items = &v[5..];
            while !items.is_empty() {
                let n = value_len(items).ok_or(Refused::Malformed)?;
                check_value(&items[..n], depth + 1)?;
                items = &items[n..];
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Check a length-prefixed table (as it stands on the wire) and return its total length.
pub fn check_framed(framed: &[u8]) -> Result<usize, Refused> {
    let len = u32::from_be_bytes(
        framed
            .get(..4)
            .ok_or(Refused::Malformed)?
            .try_into()
            .unwrap_or_default(),
    );
    let end = (len as usize).checked_add(4).ok_or(Refused::Malformed)?;
    check(framed.get(4..end).ok_or(Refused::Malformed)?)?;
    Ok(end)
}

/// Decode a length-prefixed table, refusing one that is malformed or too deep before
/// amq-protocol's recursive parser sees it. The only way warren decodes a table.
pub fn decode(framed: &[u8]) -> Result<FieldTable, Refused> {
    check_framed(framed)?;
    let repaired = repair_keys(framed);
    parse_field_table(repaired.as_deref().unwrap_or(framed))
        .map(|(_, t)| t)
        .map_err(|_| Refused::Malformed)
}

/// A copy of a checked, length-prefixed table whose field names that are not UTF-8 have
/// each bad byte replaced by `?` (same length, so the table's framing holds), or `None`
/// when every name, at every depth, is UTF-8 already.
///
/// RabbitMQ takes any bytes as a field name (it checks UTF-8 in a method's own short
/// strings, not inside tables); amq-protocol's parser refuses such a name and with it
/// the whole frame. A repaired name only differs from the client's in bytes that no
/// text-keyed lookup (`x-*` arguments, `x-match`, `CC`) could have matched anyway.
pub fn repair_keys(framed: &[u8]) -> Option<Vec<u8>> {
    let mut bad = Vec::new();
    bad_keys(framed.get(4..)?, 4, 1, &mut bad);
    if bad.is_empty() {
        return None;
    }
    let mut out = framed.to_vec();
    for at in bad {
        out[at] = b'?';
    }
    Some(out)
}

/// Collect the offsets (from `base`) of the bytes of field names that are not UTF-8, in
/// the table payload `payload` and every table nested in it. Depth is bounded as in
/// [`check`], which the caller has passed.
fn bad_keys(payload: &[u8], base: usize, depth: usize, bad: &mut Vec<usize>) {
    let start = payload.as_ptr() as usize;
    for field in iter(payload).map_while(|f| f) {
        if std::str::from_utf8(field.key).is_err() {
            let key_at = base + (field.key.as_ptr() as usize - start);
            let mut pos = 0;
            for chunk in field.key.utf8_chunks() {
                pos += chunk.valid().len();
                bad.extend((pos..pos + chunk.invalid().len()).map(|i| key_at + i));
                pos += chunk.invalid().len();
            }
        }
        let value_at = base + (field.value.as_ptr() as usize - start);
        bad_keys_in_value(field.value, value_at, depth, bad);
    }
}

fn bad_keys_in_value(v: &[u8], base: usize, depth: usize, bad: &mut Vec<usize>) {
    if depth >= MAX_DEPTH {
        return;
    }
    match v.first() {
        Some(b'F') => bad_keys(&v[5..], base + 5, depth + 1, bad),
        Some(b'A') => {
            let mut at = 5;
            while at < v.len() {
                let Some(n) = value_len(&v[at..]) else { return };
                bad_keys_in_value(&v[at..at + n], base + at, depth + 1, bad);
                at += n;
            }
        }
        _ => {}
    }
}

/// One field of a table: its key and its value bytes, type tag included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawField<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Length of the tagged value at the start of `v` (tag included), if well-formed.
fn value_len(v: &[u8]) -> Option<usize> {
    let tag = *v.first()?;
    let fixed = match tag {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'u' | b'U' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'S' | b'A' | b'F' | b'x' => {
            let len = u32::from_be_bytes(v.get(1..5)?.try_into().ok()?) as usize;
            let total = 5usize.checked_add(len)?;
            return (total <= v.len()).then_some(total);
        }
        _ => return None,
    };
    (fixed < v.len()).then_some(1 + fixed)
}

/// The fields of a table payload (the bytes after its 4-byte length), in wire order.
pub fn fields(payload: &[u8]) -> Option<Vec<RawField<'_>>> {
    iter(payload).collect()
}

/// The fields of a table payload one by one, without allocating; an item is `None`
/// (and the last) where the table is malformed.
pub fn iter(mut payload: &[u8]) -> impl Iterator<Item = Option<RawField<'_>>> {
    std::iter::from_fn(move || {
        if payload.is_empty() {
            return None;
        }
        let field = (|| {
            let klen = payload[0] as usize;
            let key = payload.get(1..1 + klen)?;
            let rest = &payload[1 + klen..];
            let vlen = value_len(rest)?;
            Some((key, rest, vlen))
        })();
        match field {
            Some((key, rest, vlen)) => {
                payload = &rest[vlen..];
                Some(Some(RawField {
                    key,
                    value: &rest[..vlen],
                }))
            }
            None => {
                payload = &[];
                Some(None)
            }
        }
    })
}

/// The items (tagged values) of an array value (`A` tag included).
pub fn array_items(value: &[u8]) -> Option<Vec<&[u8]>> {
    if value.first() != Some(&b'A') {
        return None;
    }
    let mut payload = value.get(5..)?;
    let mut out = Vec::new();
    while !payload.is_empty() {
        let n = value_len(payload)?;
        out.push(&payload[..n]);
        payload = &payload[n..];
    }
    Some(out)
}

/// The fields of a table value (`F` tag included).
pub fn table_fields(value: &[u8]) -> Option<Vec<RawField<'_>>> {
    if value.first() != Some(&b'F') {
        return None;
    }
    fields(value.get(5..)?)
}

/// The bytes of a string value (`S`).
pub fn as_longstr(value: &[u8]) -> Option<&[u8]> {
    (value.first() == Some(&b'S')).then(|| &value[5..])
}

/// An integer value of any integer type.
pub fn as_int(value: &[u8]) -> Option<i64> {
    let b = value.get(1..)?;
    Some(match value[0] {
        b'b' => b[0] as i8 as i64,
        b'B' => b[0] as i64,
        b's' | b'U' => i16::from_be_bytes(b.try_into().ok()?) as i64,
        b'u' => u16::from_be_bytes(b.try_into().ok()?) as i64,
        b'I' => i32::from_be_bytes(b.try_into().ok()?) as i64,
        b'i' => u32::from_be_bytes(b.try_into().ok()?) as i64,
        b'l' | b'L' => i64::from_be_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// The value of `key` in a list of fields.
pub fn get<'a>(fields: &[RawField<'a>], key: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.key == key.as_bytes())
        .map(|f| f.value)
}

// ---- writing ----

pub fn longstr(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + s.len());
    v.put_u8(b'S');
    v.put_u32(s.len() as u32);
    v.extend_from_slice(s);
    v
}

pub fn long(n: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.put_u8(b'l');
    v.put_i64(n);
    v
}

pub fn timestamp(secs: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.put_u8(b'T');
    v.put_u64(secs);
    v
}

pub fn array<I: AsRef<[u8]>>(items: &[I]) -> Vec<u8> {
    let len: usize = items.iter().map(|i| i.as_ref().len()).sum();
    let mut v = Vec::with_capacity(5 + len);
    v.put_u8(b'A');
    v.put_u32(len as u32);
    for i in items {
        v.extend_from_slice(i.as_ref());
    }
    v
}

/// A table payload (without its length prefix) from fields, in the order given.
pub fn table_payload<K: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(K, V)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in fields {
        let k = k.as_ref();
        // Keys are shortstrs; every key we write or copy is at most 255 bytes.
        v.put_u8(k.len().min(255) as u8);
        v.extend_from_slice(&k[..k.len().min(255)]);
        v.extend_from_slice(val.as_ref());
    }
    v
}

/// A table value (`F` tag, length, payload).
pub fn table<K: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(K, V)]) -> Vec<u8> {
    let payload = table_payload(fields);
    let mut v = Vec::with_capacity(5 + payload.len());
    v.put_u8(b'F');
    v.put_u32(payload.len() as u32);
    v.extend_from_slice(&payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Framed (length-prefixed) form of a table payload.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn field_names_that_are_not_utf8_are_repaired_at_every_depth() {
        let inner = table(&[(&b"in\xfe"[..], longstr(b"v\xff"))]);
        let t = framed(&table_payload(&[
            (&b"x-max-length"[..], long(5)),
            (&b"k\xff\xc3"[..], long(1)),
            (&b"arr"[..], array(&[inner.clone(), long(2)])),
            (&b"t"[..], table(&[(&b"\xe2\x82"[..], inner)])),
        ]));
        let decoded = decode(&t).expect("decodes");
        let keys: Vec<&str> = decoded.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["arr", "k??", "t", "x-max-length"]);
        let repaired = repair_keys(&t).unwrap();
        assert_eq!(repaired.len(), t.len());
        // Values are bytes and stay as sent; only names changed.
        let f = fields(&repaired[4..]).unwrap();
        let nested = table_fields(get(&f, "t").unwrap()).unwrap();
        assert_eq!(nested[0].key, b"??");
        let deepest = table_fields(nested[0].value).unwrap();
        assert_eq!(
            (deepest[0].key, as_longstr(deepest[0].value)),
            (&b"in?"[..], Some(&b"v\xff"[..]))
        );
        let ok = framed(&table_payload(&[("ключ".as_bytes(), long(1))]));
        assert_eq!(repair_keys(&ok), None);
    }

    #[test]
    fn walks_and_rewrites_fields() {
        let payload = table_payload(&[
            (&b"a"[..], longstr(b"x")),
            (&b"n"[..], long(-3)),
            (&b"arr"[..], array(&[longstr(b"k1"), long(2)])),
            (&b"t"[..], table(&[(&b"q"[..], longstr(b"v"))])),
        ]);
        let f = fields(&payload).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(as_longstr(get(&f, "a").unwrap()), Some(&b"x"[..]));
        assert_eq!(as_int(get(&f, "n").unwrap()), Some(-3));
        let items = array_items(get(&f, "arr").unwrap()).unwrap();
        assert_eq!(items.len(), 2);
        let inner = table_fields(get(&f, "t").unwrap()).unwrap();
        assert_eq!(as_longstr(get(&inner, "q").unwrap()), Some(&b"v"[..]));
        // Copying the raw pairs reproduces the payload exactly.
        let again: Vec<(&[u8], &[u8])> = f.iter().map(|x| (x.key, x.value)).collect();
        assert_eq!(table_payload(&again), payload);
    }

    #[test]
    fn rejects_truncated_tables() {
        assert!(fields(&[1, b'a', b'S', 0, 0, 0, 9]).is_none());
        assert!(fields(&[1, b'a', b'?']).is_none());
        assert!(fields(&[5, b'a']).is_none());
    }

    /// A framed table `depth` levels deep, alternating tables and arrays below the top.
    pub(crate) fn nested(depth: usize) -> Vec<u8> {
        let mut value = longstr(b"bottom");
        for level in (2..=depth).rev() {
            value = if level % 2 == 0 {
                table(&[(&b"t"[..], value)])
            } else {
                array(&[long(level as i64), value])
            };
        }
        let payload = table_payload(&[(&b"top"[..], value)]);
        let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&payload);
        framed
    }

    #[test]
    fn depth_is_bounded_before_decoding() {
        assert_eq!(check_framed(&nested(1)).map(|_| ()), Ok(()));
        assert_eq!(decode(&nested(MAX_DEPTH)).map(|_| ()), Ok(()));
        assert_eq!(
            decode(&nested(MAX_DEPTH + 1)).map(|_| ()),
            Err(Refused::TooDeep)
        );
        // Far deeper than any stack could take: refused at level MAX_DEPTH + 1.
        assert_eq!(decode(&nested(20_000)).map(|_| ()), Err(Refused::TooDeep));
        assert_eq!(
            decode(&[0, 0, 0, 3, 1, b'a', b'?']).map(|_| ()),
            Err(Refused::Malformed)
        );
        assert_eq!(decode(&[0, 0, 0, 9]).map(|_| ()), Err(Refused::Malformed));
    }

    /// Everything warren does with a decoded table (clone, encode, format, drop) recurses
    /// per level: at the deepest table it accepts, all of it fits in a tokio worker's
    /// default 2 MiB stack with room to spare, even unoptimised.
    #[test]
    fn deepest_accepted_table_fits_a_worker_stack() {
        use amq_protocol::frame::WriteContext;
        use amq_protocol::types::generation::gen_field_table;
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let t = decode(&nested(MAX_DEPTH)).unwrap();
                let copy = t.clone();
                assert!(format!("{copy:?}").len() > MAX_DEPTH);
                let out = gen_field_table(&t)(WriteContext::from(Vec::new())).unwrap();
                assert_eq!(out.write, nested(MAX_DEPTH));
                drop((t, copy));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
