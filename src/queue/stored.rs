//! A durable queue's link to the message store.
//!
//! Each entry of a persistent message carries a [`Stored`] token. The queue lets go of a
//! message in many ways (ack, reject, expiry, max-length, purge, delete, delivery to a
//! no-ack consumer); rather than reporting each, the token reports itself when the entry
//! is dropped, into a lock-free channel the actor drains once per burst, so the store
//! gets one record per burst, not one per message.

use std::sync::mpsc;
use std::sync::Arc;

use crate::store::MessageStore;

/// Where dropped tokens report to.
#[derive(Debug)]
struct Sink {
    tx: mpsc::Sender<u64>,
}

#[derive(Debug)]
pub struct Stored {
    sink: Arc<Sink>,
    pub id: u64,
}

impl Drop for Stored {
    fn drop(&mut self) {
        let _ = self.sink.tx.send(self.id);
    }
}

/// The actor's side: makes tokens, and forwards what was let go of to the store.
pub struct StoreLink {
    pub store: Arc<MessageStore>,
    pub qid: u64,
    sink: Arc<Sink>,
    released: mpsc::Receiver<u64>,
}

impl StoreLink {
    pub fn new(store: Arc<MessageStore>, qid: u64) -> StoreLink {
        let (tx, released) = mpsc::channel();
        StoreLink {
            store,
            qid,
            sink: Arc::new(Sink { tx }),
            released,
        }
    }

    pub fn token(&self, id: u64) -> Stored {
        Stored {
            sink: self.sink.clone(),
            id,
        }
    }

    /// Tell the store about every message let go of since the last call.
    pub fn flush(&self) {
        let ids: Vec<u64> = self.released.try_iter().collect();
        self.store.ack(self.qid, ids);
    }
}
