//! Authentication: SASL PLAIN and AMQPLAIN responses, checked against the users that
//! [`crate::access::Access`] owns, and EXTERNAL on TLS connections (the user named by
//! the client certificate, see [`crate::tls`]).

use std::net::IpAddr;

use amq_protocol::types::AMQPValue;

use crate::access::Access;

/// In RabbitMQ's order.
pub const MECHANISMS: &str = "AMQPLAIN PLAIN";
/// On TLS connections EXTERNAL is offered too, with or without a client certificate:
/// as in rabbit_auth_mechanism_ssl, a client without one is then refused with a reason
/// rather than left unable to pick a mechanism.
pub const MECHANISMS_TLS: &str = "AMQPLAIN PLAIN EXTERNAL";

/// Why a login failed; logged in full, while the client only hears RabbitMQ's terse text.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    UnknownMechanism(String),
    Malformed,
    Refused(String),
}

/// Check a start-ok response; returns the user name. `external` is the TLS session's
/// certificate login (the name, or why there is none); `None` on plain TCP, where
/// EXTERNAL is not offered.
pub fn authenticate(
    access: &Access,
    mechanism: &str,
    response: &[u8],
    peer: IpAddr,
    external: Option<&Result<String, String>>,
) -> Result<String, AuthError> {
    if mechanism == "EXTERNAL" {
        // The response (an authorisation identity, usually empty) is ignored, as in
        // RabbitMQ: the certificate alone names the user.
        return match external {
            None => Err(AuthError::UnknownMechanism(mechanism.to_owned())),
            Some(Err(why)) => Err(AuthError::Refused(why.clone())),
            Some(Ok(user)) => {
                access
                    .authenticate_external(user, peer)
                    .map_err(AuthError::Refused)?;
                Ok(user.clone())
            }
        };
    }
    let (user, pass) = match mechanism {
        "PLAIN" => parse_plain(response)?,
        "AMQPLAIN" => parse_amqplain(response)?,
        other => return Err(AuthError::UnknownMechanism(other.to_owned())),
    };
    access
        .authenticate(&user, &pass, peer)
        .map_err(AuthError::Refused)?;
    Ok(user)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
fn parse_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| AuthError::Malformed);
    Ok((s(user)?, s(pass)?))
}

/// AMQPLAIN: a field table's entries (LOGIN, PASSWORD) without the table's length prefix.
fn parse_amqplain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
    framed.extend_from_slice(response);
    let table = crate::protocol::table::decode(&framed).map_err(|_| AuthError::Malformed)?;
    let get = |k: &str| match table.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    match (get("LOGIN"), get("PASSWORD")) {
        (Some(u), Some(p)) => Ok((u, p)),
        _ => Err(AuthError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Users(Access);

    impl Users {
        fn authenticate(&self, m: &str, r: &[u8], peer: IpAddr) -> Result<String, AuthError> {
            authenticate(&self.0, m, r, peer, None)
        }
    }

    fn users() -> Users {
        Users(Access::new(&crate::config::DefaultsConfig::default()))
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn plain_and_amqplain() {
        assert_eq!(
            users().authenticate("PLAIN", b"\0guest\0guest", LOCAL),
            Ok("guest".into())
        );
        // AMQPLAIN as py-amqp sends it: LOGIN S "guest", PASSWORD S "guest", no length prefix.
        let mut r = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
            r.push(k.len() as u8);
            r.extend_from_slice(k.as_bytes());
            r.push(b'S');
            r.extend_from_slice(&(v.len() as u32).to_be_bytes());
            r.extend_from_slice(v.as_bytes());
        }
        assert_eq!(
            users().authenticate("AMQPLAIN", &r, LOCAL),
            Ok("guest".into())
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            users().authenticate("PLAIN", b"\0guest\0nope", LOCAL),
            Err(AuthError::Refused(_))
        ));
        assert!(matches!(
            users().authenticate("PLAIN", b"garbage", LOCAL),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            users().authenticate("CRAM", b"", LOCAL),
            Err(AuthError::UnknownMechanism(_))
        ));
        // EXTERNAL: unknown on plain TCP; on TLS it logs in the certificate's user.
        assert!(matches!(
            users().authenticate("EXTERNAL", b"", LOCAL),
            Err(AuthError::UnknownMechanism(_))
        ));
        let access = Access::new(&crate::config::DefaultsConfig::default());
        let ext = |name: Result<String, String>, peer| {
            authenticate(&access, "EXTERNAL", b"", peer, Some(&name))
        };
        assert_eq!(ext(Ok("guest".into()), LOCAL), Ok("guest".into()));
        assert_eq!(
            ext(Ok("CN=nobody".into()), LOCAL),
            Err(AuthError::Refused("user 'CN=nobody' - not found".into()))
        );
        assert!(matches!(
            ext(
                Err("connection peer presented no TLS (x.509) certificate".into()),
                LOCAL
            ),
            Err(AuthError::Refused(_))
        ));
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(matches!(
            ext(Ok("guest".into()), remote),
            Err(AuthError::Refused(_))
        ));
        assert!(matches!(
            users().authenticate("PLAIN", b"\0guest\0guest", remote),
            Err(AuthError::Refused(_))
        ));
    }
}
