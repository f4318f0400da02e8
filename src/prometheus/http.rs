//! The Prometheus endpoint's HTTP server: GET `/metrics` and `/metrics/per-object`,
//! one response per connection, over TCP or (with `metrics.tls_listen`) TLS. Scrapers need nothing more, so this is a few lines of
//! tokio rather than an HTTP stack.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::tls::Tls;

/// Longest request head accepted.
const HEAD_MAX: usize = 16 * 1024;
/// A client that hasn't sent its request by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve scrapes until the broker shuts down.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) {
    let mut shutdown = broker.shutdown_signal();
    let mut failures = crate::accept::Failures::new("prometheus");
    loop {
        tokio::select! {
            (stream, _) = failures.next(&listener) => {
                tokio::spawn(handle(broker.clone(), stream));
            }
            // wait_for, not changed(): a shutdown before this task first ran must count.
            _ = async { shutdown.wait_for(|&down| down).await.is_ok() } => break,
        }
    }
}

/// Serve scrapes over HTTPS (the `[tls]` certificate) until the broker shuts down.
pub async fn serve_tls(broker: Arc<Broker>, listener: TcpListener, tls: Arc<Tls>) {
    let mut shutdown = broker.shutdown_signal();
    let mut failures = crate::accept::Failures::new("prometheus_tls");
    loop {
        tokio::select! {
            (stream, peer) = failures.next(&listener) => {
                let (broker, tls) = (broker.clone(), tls.clone());
                tokio::spawn(async move {
                    if let Some((stream, _)) = tls.accept(stream, peer).await {
                        handle(broker, stream).await;
                    }
                });
            }
            // wait_for, not changed(): a shutdown before this task first ran must count.
            _ = async { shutdown.wait_for(|&down| down).await.is_ok() } => break,
        }
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(broker: Arc<Broker>, mut stream: S) {
    let Ok(Some(head)) = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let mut words = head.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", render(&broker, false).await),
        ("GET" | "HEAD", "/metrics/per-object") => ("200 OK", render(&broker, true).await),
        ("GET" | "HEAD", _) => ("404 Not Found", "Not Found\n".to_owned()),
        _ => ("405 Method Not Allowed", "Method Not Allowed\n".to_owned()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(header.as_bytes()).await;
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// A scrape of many queues takes milliseconds: off the workers that run queues.
async fn render(broker: &Arc<Broker>, per_object: bool) -> String {
    let b = broker.clone();
    tokio::task::spawn_blocking(move || super::render::render(&b, per_object))
        .await
        .unwrap_or_default()
}

/// The request line of a request whose head has fully arrived; None if the client went
/// away or sent more than [`HEAD_MAX`] without ending its head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            return head.lines().next().map(str::to_owned);
        }
        if buf.len() > HEAD_MAX {
            return None;
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
