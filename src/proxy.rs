//! The PROXY protocol (version 1, HAProxy's text form) between a cluster follower's front
//! door (`cluster::front`) and the leader: the follower opens a connection to the leader for
//! each client and writes one line first, `PROXY TCP4 <client> <follower> <cport>
//! <fport>\r\n`, so that the leader sees the real client (for `loopback_users`,
//! connection names, `list_connections`' peer columns and the logs), never the proxy.
//!
//! The leader believes that line only from a peer it trusts: an address a follower that
//! proved the cluster's secret connected from ([`trust`]). From anyone else it is not
//! even looked for: what the peer sends is the protocol's, and a "PROXY" there is
//! refused as any garbage is.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 line, CRLF included (the specification's bound).
const MAX_LINE: usize = 107;

/// How long a trusted peer may take to send its line (it writes it before anything).
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

static TRUSTED: RwLock<Option<HashSet<IpAddr>>> = RwLock::new(None);

/// Trust `ip`'s PROXY lines from now on: a follower connected from it and proved the
/// secret (or the cluster has none, which start-up warns about).
pub fn trust(ip: IpAddr) {
    let mut t = TRUSTED.write().unwrap_or_else(|e| e.into_inner());
    t.get_or_insert_with(HashSet::new).insert(ip);
}

fn trusted(ip: IpAddr) -> bool {
    let t = TRUSTED.read().unwrap_or_else(|e| e.into_inner());
    t.as_ref().is_some_and(|t| t.contains(&ip))
}

/// The line a front writes before a client's bytes.
pub fn header(client: SocketAddr, local: SocketAddr) -> String {
    match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            c.ip(),
            l.ip(),
            c.port(),
            l.port()
        ),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                v6(client),
                v6(local),
                client.port(),
                local.port()
            )
        }
    }
}

/// The client a PROXY line names: `Ok(None)` for `PROXY UNKNOWN` (the peer itself
/// stands for the client), an error for anything that is not a v1 line.
pub fn parse(line: &str) -> Result<Option<SocketAddr>, String> {
    let bad = || format!("malformed PROXY line {:?}", line.trim_end());
    let body = line
        .strip_prefix("PROXY ")
        .and_then(|l| l.strip_suffix("\r\n"))
        .ok_or_else(bad)?;
    let fields: Vec<&str> = body.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Ok(None),
        [proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| bad())?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(bad());
            }
            let port: u16 = sport.parse().map_err(|_| bad())?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(bad()),
    }
}

/// The client behind `stream`: the address a trusted peer's PROXY line names (the line
/// is read off the stream), else `peer`. `None`: a trusted peer sent a broken line or
/// none in time; the connection is to be dropped.
pub async fn real_peer(stream: &mut TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
    if !trusted(peer.ip()) {
        return Some(peer);
    }
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut buf = [0u8; MAX_LINE];
    let len = loop {
        let n = match tokio::time::timeout_at(deadline.into(), stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => n,
            Err(_) => {
                tracing::warn!(%peer, "a cluster member sent no PROXY line in time; connection dropped");
                return None;
            }
        };
        let seen = &buf[..n];
        let prefix = &b"PROXY "[..n.min(6)];
        if seen[..prefix.len()] != *prefix {
            // A client on a member's host, connecting directly: no line.
            return Some(peer);
        }
        if let Some(end) = seen.windows(2).position(|w| w == b"\r\n") {
            break end + 2;
        }
        if n == MAX_LINE {
            tracing::warn!(%peer, "a PROXY line longer than 107 bytes; connection dropped");
            return None;
        }
        // Split across segments (rare: the front writes it in one go).
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut line = vec![0u8; len];
    stream.read_exact(&mut line).await.ok()?;
    match parse(&String::from_utf8_lossy(&line)) {
        Ok(client) => Some(client.unwrap_or(peer)),
        Err(e) => {
            tracing::warn!(%peer, error = e, "connection dropped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_parses_back_to_its_client() {
        let c: SocketAddr = "10.0.0.7:41000".parse().unwrap();
        let l: SocketAddr = "10.0.0.2:5672".parse().unwrap();
        let h = header(c, l);
        assert_eq!(h, "PROXY TCP4 10.0.0.7 10.0.0.2 41000 5672\r\n");
        assert_eq!(parse(&h), Ok(Some(c)));
        let c6: SocketAddr = "[fe80::1]:5".parse().unwrap();
        let h6 = header(c6, l);
        assert_eq!(parse(&h6), Ok(Some(c6)));
        assert_eq!(parse("PROXY UNKNOWN\r\n"), Ok(None));
    }

    #[test]
    fn broken_lines_are_refused() {
        for l in [
            "PROXY TCP4 10.0.0.7 10.0.0.2 41000\r\n",
            "PROXY TCP4 ::1 ::1 1 2\r\n",
            "PROXY TCP4 10.0.0.7 10.0.0.2 99999 1\r\n",
            "PROXY TCP5 10.0.0.7 10.0.0.2 1 2\r\n",
            "PROXY TCP4 10.0.0.7 10.0.0.2 1 2",
            "AMQP\0\0\x09\x01",
        ] {
            assert!(parse(l).is_err(), "{l:?}");
        }
    }

    #[tokio::test]
    async fn only_a_trusted_peer_line_is_read() {
        // Addresses of this test's own (trust is process-wide, and other tests trust
        // the followers they run, from 127.0.0.1).
        let (stranger, member) = ("127.0.0.3", "127.0.0.4");
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let send = |from: &'static str, bytes: &'static [u8]| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let mut s = socket.connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, bytes)
                .await
                .unwrap();
            s
        };
        // Not trusted: the line stays, the peer is kept.
        let _c = send(stranger, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nAMQP").await;
        let (mut s, peer) = listener.accept().await.unwrap();
        assert_eq!(real_peer(&mut s, peer).await, Some(peer));
        let mut first = [0u8; 5];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PROXY");
        trust(member.parse().unwrap());
        let _c = send(member, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nAMQP").await;
        let (mut s, peer) = listener.accept().await.unwrap();
        assert_eq!(
            real_peer(&mut s, peer).await,
            Some("1.2.3.4:1".parse().unwrap())
        );
        let mut rest = [0u8; 4];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"AMQP");
        // Trusted, but a client of its own (no line): untouched.
        let _c = send(member, b"AMQP\0\0\x09\x01").await;
        let (mut s, peer) = listener.accept().await.unwrap();
        assert_eq!(real_peer(&mut s, peer).await, Some(peer));
        // Trusted, broken line: dropped.
        let _c = send(member, b"PROXY TCP4 nonsense\r\n").await;
        let (mut s, peer) = listener.accept().await.unwrap();
        assert_eq!(real_peer(&mut s, peer).await, None);
        // Still not trusted: trust is per address.
        let _c = send(stranger, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").await;
        let (mut s, peer) = listener.accept().await.unwrap();
        assert_eq!(real_peer(&mut s, peer).await, Some(peer));
    }
}
