//! The management API's HTTP/1.1 server, over TCP and over TLS: hyper serving the
//! router on each accepted connection, with a deadline for the request head.
//!
//! A client that opens a connection and trickles (or never finishes) its request line
//! and headers is disconnected after [`HEADER_READ_TIMEOUT`] (the slowloris attack:
//! otherwise each such client holds a socket and a task forever). The deadline runs from
//! when the server starts waiting for a request head, so an idle keep-alive connection
//! is closed after it too; a request whose head has arrived is not limited by it.
//! RabbitMQ's HTTP server (cowboy) closes such connections by its `request_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::tls::Tls;

/// How long a client has to send a request's line and headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` (with TLS when `tls` is given) until `shutdown` turns true;
/// connections then finish the request they are in.
pub async fn serve(
    app: Router,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = crate::accept::Failures::new("management");
    loop {
        tokio::select! {
            (mut tcp, peer) = failures.next(&listener) => {
                let _ = tcp.set_nodelay(true);
                let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
                tokio::spawn(async move {
                    // A cluster follower's front names the client it passes on.
                    let Some(peer) = crate::proxy::real_peer(&mut tcp, peer).await else { return };
                    // Handlers see the peer (for loopback-only users) in ConnectInfo.
                    let app = app.layer(axum::Extension(ConnectInfo(peer)));
                    match tls {
                        None => connection(app, tcp, peer, shutdown).await,
                        Some(tls) => {
                            // The handshake has its own timeout ([tls] handshake_timeout).
                            let Some((stream, _)) = tls.accept(tcp, peer).await else { return };
                            connection(app, stream, peer, shutdown).await;
                        }
                    }
                });
            }
            // wait_for, not changed(): a shutdown before this task first ran must count.
            _ = async { shutdown.wait_for(|&down| down).await.is_ok() } => break,
        }
    }
}

/// One connection, until the client closes it, a deadline passes, or the broker stops.
async fn connection<S>(
    app: Router,
    stream: S,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // is_ok(), not the guard wait_for returns: it must not live across an await.
        _ = async { shutdown.wait_for(|&down| down).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "management HTTP connection ended");
    }
}
