//! Target `method`: method-frame payloads (`protocol::method::decode`): class and
//! method ids, every method's arguments, the field tables among them (client
//! properties, declare/bind/consume arguments) with their declared lengths and nesting
//! depth, and the error a refused method turns into.
//!
//! Input: one method frame's payload (class id, method id, arguments).
//!
//! Checks beyond "no panic": a method warren decoded through amq-protocol and encodes
//! again (as it does for everything it sends) decodes again to the same method.

use bytes::{Bytes, BytesMut};
use warren::protocol::method::{self, DecodeError, Method};

pub fn run(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    match method::decode(&payload) {
        Ok(Method::Other(class)) => {
            let mut out = BytesMut::new();
            method::encode(&mut out, 1, &class);
            if out.is_empty() {
                // amq-protocol refused to encode it (logged); nothing to compare.
                return;
            }
            let again = Bytes::copy_from_slice(&out[7..out.len() - 1]);
            match method::decode(&again) {
                Ok(Method::Other(c2)) => assert_eq!(
                    format!("{class:?}"),
                    format!("{c2:?}"),
                    "a method changed in an encode/decode round trip"
                ),
                Ok(other) => {
                    // Hand-decoded methods (qos, ack, ...) come back in their own type.
                    let _ = format!("{other:?}");
                }
                Err(e) => panic!(
                    "warren encoded a method it cannot decode again ({e:?}): {class:?} -> {:02x?}",
                    &again[..]
                ),
            }
        }
        Ok(m) => {
            let _ = format!("{m:?}");
        }
        Err(e) => {
            if let DecodeError::TooDeep { .. } = e {
                assert!(data.len() >= 4 + 5 * warren::protocol::table::MAX_DEPTH);
            }
            let err = warren::channel::decode_error(e, data);
            assert!(
                err.code >= 500,
                "a decode error is a connection or channel error"
            );
            let _ = err.text.len();
        }
    }
}
