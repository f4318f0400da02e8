//! The AMQP listener: accepts sockets and spawns a connection task for each.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::broker::Broker;

/// Bind the AMQP listener (port 0 picks a free port).
pub async fn bind(broker: &Broker) -> std::io::Result<TcpListener> {
    TcpListener::bind(&broker.config.amqp.listen).await
}

/// Accept connections until the broker shuts down.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) {
    let mut shutdown = broker.shutdown_signal();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tokio::spawn(crate::connection::serve(broker.clone(), socket, peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: log, back off, go on.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
