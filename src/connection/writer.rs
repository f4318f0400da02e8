//! The connection's writer task: the only owner of the socket's write half. It takes
//! batches of frames from the connection task, gathers whatever else is already queued,
//! and writes it all with vectored writes, so frames are coalesced into few syscalls
//! (as RabbitMQ's rabbit_writer flushes when its inbox is empty).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// iovecs per writev (Linux allows 1024).
const MAX_IOV: usize = 256;

pub type WriterTx = mpsc::UnboundedSender<Vec<Bytes>>;

/// Generic over the write half (plain TCP or TLS), monomorphised per kind.
pub async fn run<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut rx: mpsc::UnboundedReceiver<Vec<Bytes>>,
) {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    while let Some(batch) = rx.recv().await {
        pending.extend(batch);
        while let Ok(more) = rx.try_recv() {
            pending.extend(more);
        }
        // flush: TLS keeps records it could not write yet; on plain TCP it is a no-op.
        let written = match write_all(&mut socket, &mut pending).await {
            Ok(()) => socket.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "socket write failed");
            break;
        }
    }
    let _ = socket.shutdown().await;
}

async fn write_all<W: AsyncWrite + Unpin>(
    socket: &mut W,
    pending: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !pending.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> = pending
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            socket.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = pending.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                pending.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}
