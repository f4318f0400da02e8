//! The control socket: how `warrenctl` talks to a running broker. A Unix domain socket
//! in the data directory, mode 0600: being able to open it is the credential (no
//! cookie, no epmd, no node names). The protocol is one JSON [`Request`] per line, one
//! JSON [`Response`] line back; a connection may send several.
//!
//! The broker answers with data (columns and rows, or a JSON document); presentation
//! (tables, `--formatter json`, the informational line) is the CLI's business.

pub mod cluster;
mod commands;
pub use commands::{EX_DATAERR, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};
mod diagnostics;
pub mod stopped;

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::broker::Broker;

pub use warren_ctl::{socket_path, Request, Response, SOCKET_NAME};

/// Requests larger than this are refused (a definitions import is the big one).
const MAX_REQUEST: usize = 64 * 1024 * 1024;

/// Create the socket (mode 0600). A socket file left by a broker that is gone is
/// replaced; one that answers belongs to a running broker, and we refuse to start.
pub async fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another warren is running with this data directory (its control socket {} answers)",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Serve control connections until the broker shuts down; then remove the socket.
pub async fn serve(broker: Arc<Broker>, listener: UnixListener) {
    let mut shutdown = broker.shutdown_signal();
    let mut failures = crate::accept::Failures::new("control");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failures.accepted();
                    tokio::spawn(serve_one(broker.clone(), stream));
                }
                Err(e) => {
                    // Out of descriptors, the operator's warrenctl is served on the
                    // reserve one: it is how connections get closed to end the episode.
                    let mut served = false;
                    if crate::accept::out_of_descriptors(&e) && crate::accept::release_reserve() {
                        let accepted = tokio::time::timeout(
                            std::time::Duration::from_millis(10),
                            listener.accept(),
                        )
                        .await;
                        if let Ok(Ok((stream, _))) = accepted {
                            served = true;
                            let broker = broker.clone();
                            tokio::spawn(async move {
                                serve_one(broker, stream).await;
                                crate::accept::reserve();
                            });
                        } else {
                            crate::accept::reserve();
                        }
                    }
                    failures.failed(&e, served).await;
                }
            },
            // wait_for, not changed(): a shutdown before this task first ran must count.
            _ = async { shutdown.wait_for(|&down| down).await.is_ok() } => break,
        }
    }
    let _ = std::fs::remove_file(socket_path(&broker.config.data_dir));
}

/// Run one control request; `from` says where it came from (warrenctl on this node's
/// socket, or a cluster follower passing one on) for the log.
pub async fn answer(broker: &Broker, req: Request, from: &str) -> Response {
    // await_startup is a probe (the Docker image's HEALTHCHECK runs it every 5 s):
    // logged at debug so that it does not fill the log.
    if req.command == "await_startup" {
        tracing::debug!(command = %req.command, from, "control request");
    } else {
        tracing::info!(command = %req.command, from, "control request");
    }
    commands::handle(broker, req).await
}

async fn serve_one(broker: Arc<Broker>, stream: UnixStream) {
    serve_requests(stream, |req| answer(&broker, req, "warrenctl")).await
}

/// One control connection: a JSON request per line, each answered by `answer` with one
/// JSON line, until the client closes it. Every control socket (a serving broker's, a
/// cluster follower's, a stopped node's) speaks through this.
pub async fn serve_requests<F, Fut>(stream: UnixStream, answer: F)
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_REQUEST => return,
            Ok(_) => {}
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(req).await,
            Err(e) => Response::error(EX_USAGE, format!("malformed control request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}
