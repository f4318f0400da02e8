//! The connection's writer task: the only owner of the socket's write half. It takes
//! batches of frames from the connection task, gathers whatever else is already queued,
//! and writes it all with vectored writes, so frames are coalesced into few syscalls
//! (as RabbitMQ's rabbit_writer flushes when its inbox is empty).
//!
//! The hand-off is one shared vector behind a mutex (locked once per batch, to append or
//! to swap it out) and a [`Notify`]: an mpsc channel would allocate a 32-slot block and
//! cache-padded state up front, over a kilobyte that every idle connection would carry.
//!
//! A client that does not read its socket would otherwise make the outbox hold every
//! message its consumers are sent (a consumer without prefetch takes a whole backlog):
//! past [`CONGESTED_BYTES`] not yet written, the connection is congested, and queues
//! hold its consumers' deliveries (their channel limiters say so) until the writer has
//! brought it below [`UNCONGESTED_BYTES`] and woken the connection task to kick them.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// iovecs per writev (Linux allows 1024).
const MAX_IOV: usize = 256;

/// Bytes queued for the socket past which the connection is congested.
pub const CONGESTED_BYTES: usize = 16 << 20;
/// ...and below which it is not any more.
pub const UNCONGESTED_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Outbox {
    frames: Mutex<Vec<Bytes>>,
    ready: Notify,
    /// Bytes handed to the writer and not yet written to the socket.
    queued: AtomicUsize,
    /// Set by the sender past [`CONGESTED_BYTES`], cleared by the writer below
    /// [`UNCONGESTED_BYTES`]; shared with the connection's channel limiters.
    congested: Arc<AtomicBool>,
    /// Signalled when the writer clears `congested`.
    drained: Notify,
    /// One side is gone: the connection task (the writer writes what is left, then shuts
    /// the socket down) or the writer (the socket failed: later frames are dropped).
    closed: AtomicBool,
}

/// The connection task's side of the hand-off; dropping it ends the writer.
pub struct WriterTx(Arc<Outbox>);

/// The writer task's side.
pub struct WriterRx(Arc<Outbox>);

impl Outbox {
    /// The queued frames; a panic elsewhere while holding the lock leaves a plain vector.
    fn frames(&self) -> std::sync::MutexGuard<'_, Vec<Bytes>> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn outbox() -> (WriterTx, WriterRx) {
    let shared = Arc::new(Outbox::default());
    (WriterTx(shared.clone()), WriterRx(shared))
}

impl WriterTx {
    /// Queue frames for the socket (in order after everything sent before).
    pub fn send(&self, batch: Vec<Bytes>) {
        if self.0.closed.load(Ordering::Acquire) {
            return;
        }
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        if self.0.queued.fetch_add(bytes, Ordering::AcqRel) + bytes > CONGESTED_BYTES {
            self.0.congested.store(true, Ordering::Release);
        }
        {
            let mut frames = self.0.frames();
            if frames.is_empty() {
                *frames = batch;
            } else {
                frames.extend(batch);
            }
        }
        self.0.ready.notify_one();
    }
}

impl WriterTx {
    /// The congestion flag, for the connection's channel limiters.
    pub fn congestion(&self) -> Arc<AtomicBool> {
        self.0.congested.clone()
    }

    /// Resolves when the writer has relieved a congestion (a permit is kept if the
    /// connection task was not waiting).
    pub async fn drained(&self) {
        self.0.drained.notified().await
    }
}

impl Drop for WriterTx {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

impl WriterRx {
    /// The next frames to write; None once the connection task is gone and all it sent
    /// has been taken.
    async fn recv(&mut self) -> Option<Vec<Bytes>> {
        loop {
            // Read `closed` before taking: a batch sent before the close is seen either way.
            let closed = self.0.closed.load(Ordering::Acquire);
            let batch = std::mem::take(&mut *self.0.frames());
            if !batch.is_empty() {
                return Some(batch);
            }
            if closed {
                return None;
            }
            // A send after the take leaves a permit: this returns at once.
            self.0.ready.notified().await;
        }
    }
}

/// Generic over the write half (plain TCP or TLS), monomorphised per kind.
pub async fn run<W: AsyncWrite + Unpin>(mut socket: W, mut rx: WriterRx) {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    while let Some(batch) = rx.recv().await {
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        pending.extend(batch);
        // flush: TLS keeps records it could not write yet; on plain TCP it is a no-op.
        let written = match write_all(&mut socket, &mut pending).await {
            Ok(()) => socket.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "socket write failed");
            break;
        }
        let left = rx.0.queued.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        if left < UNCONGESTED_BYTES && rx.0.congested.swap(false, Ordering::AcqRel) {
            rx.0.drained.notify_one();
        }
    }
    rx.0.closed.store(true, Ordering::Release);
    rx.0.frames().clear();
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
