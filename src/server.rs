//! The AMQP listeners: plain TCP (`amqp.listen`) and, when `[tls]` is configured, amqps
//! (`tls.listen`); each accepts sockets and spawns a connection task for each.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::accept;
use crate::broker::Broker;
use crate::tls::Tls;

/// Bind the AMQP listener (port 0 picks a free port).
pub async fn bind(broker: &Broker) -> std::io::Result<TcpListener> {
    TcpListener::bind(&broker.config.amqp.listen).await
}

/// Bind the amqps listener.
pub async fn bind_tls(broker: &Broker) -> std::io::Result<TcpListener> {
    TcpListener::bind(&broker.config.tls.listen).await
}

/// The one line printed when the listener cannot be bound: what is wrong, and what to do.
pub fn bind_error(listen: &str, e: &std::io::Error) -> String {
    bind_error_for("amqp.listen", listen, e)
}

/// [`bind_error`] for the listener configured by `key`.
pub fn bind_error_for(key: &str, listen: &str, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another process (another warren or RabbitMQ?) is listening there; stop it or set {key} to a free port"
        ),
        std::io::ErrorKind::PermissionDenied => "ports below 1024 need root or CAP_NET_BIND_SERVICE; use a higher port or grant the capability".to_owned(),
        std::io::ErrorKind::AddrNotAvailable => "no local interface has that address; use one of this host's addresses or 0.0.0.0".to_owned(),
        _ => format!("check {key} (host:port)"),
    };
    format!("cannot listen on {listen} ({key}): {e}; {hint}")
}

/// Accept connections until the broker shuts down.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) {
    let mut shutdown = broker.shutdown_signal();
    let mut failures = accept::Failures::new("amqp");
    loop {
        tokio::select! {
            (mut socket, peer) = failures.next(&listener) => {
                let broker = broker.clone();
                tokio::spawn(async move {
                    // A cluster follower's front names the client it passes on.
                    let Some(peer) = crate::proxy::real_peer(&mut socket, peer).await else { return };
                    crate::connection::serve(broker, socket, peer).await;
                });
            }
            // wait_for, not changed(): a shutdown before this task first ran must count.
            _ = async { shutdown.wait_for(|&down| down).await.is_ok() } => break,
        }
    }
}

/// Accept amqps connections until the broker shuts down. The TLS handshake runs in the
/// connection's own task, so a slow or failing client never holds up accepting others.
pub async fn serve_tls(broker: Arc<Broker>, listener: TcpListener, tls: Arc<Tls>) {
    let mut shutdown = broker.shutdown_signal();
    let mut failures = accept::Failures::new("amqps");
    loop {
        tokio::select! {
            (mut socket, peer) = failures.next(&listener) => {
                let _ = socket.set_nodelay(true);
                let (broker, tls) = (broker.clone(), tls.clone());
                tokio::spawn(async move {
                    let Some(peer) = crate::proxy::real_peer(&mut socket, peer).await else { return };
                    if let Some((stream, info)) = tls.accept(socket, peer).await {
                        crate::connection::serve_tls(broker, stream, peer, info).await;
                    }
                });
            }
            _ = async { shutdown.wait_for(|&down| down).await.is_ok() } => break,
        }
    }
}

pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
