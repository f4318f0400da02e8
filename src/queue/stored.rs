//! A queue's link to the message store.
//!
//! Each entry of a message the store holds for the queue carries a [`Stored`] token: a
//! persistent message of a durable queue (journaled; it survives a restart), or a message
//! paged out of a deep queue's memory (transient: written only so its body can leave
//! RAM; dropped at restart). The queue lets go of a message in many ways (ack, reject,
//! expiry, max-length, purge, delete, delivery to a no-ack consumer); rather than reporting
//! each, the token reports itself when the entry is dropped, into a lock-free channel the
//! actor drains once per burst, so the store gets one record per burst, not one per message.

use std::sync::mpsc;
use std::sync::Arc;

use crate::store::MessageStore;

/// Marks a transient token's id (store ids never reach 2^63).
const TRANSIENT: u64 = 1 << 63;

/// Where dropped tokens report to.
#[derive(Debug)]
struct Sink {
    tx: mpsc::Sender<u64>,
}

#[derive(Debug)]
pub struct Stored {
    sink: Arc<Sink>,
    /// The store id, with [`TRANSIENT`] set for a paged-out transient copy.
    raw: u64,
}

impl Stored {
    /// The message's id in the store.
    pub fn id(&self) -> u64 {
        self.raw & !TRANSIENT
    }

    /// Its id if it is journaled for this durable queue (it survives a restart).
    pub fn durable_id(&self) -> Option<u64> {
        (self.raw & TRANSIENT == 0).then_some(self.raw)
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        let _ = self.sink.tx.send(self.raw);
    }
}

/// Makes tokens; shared by the actor and its ready list's pager.
#[derive(Clone)]
pub struct Tokens {
    sink: Arc<Sink>,
}

impl Tokens {
    /// A persistent message journaled for the durable queue.
    pub fn durable(&self, id: u64) -> Stored {
        Stored {
            sink: self.sink.clone(),
            raw: id,
        }
    }

    /// A transient copy written to page the message out.
    pub fn transient(&self, id: u64) -> Stored {
        Stored {
            sink: self.sink.clone(),
            raw: id | TRANSIENT,
        }
    }
}

/// The actor's side: makes tokens, and forwards what was let go of to the store.
pub struct StoreLink {
    pub store: Arc<MessageStore>,
    /// The queue's id in the journal: durable queues only.
    pub qid: Option<u64>,
    pub tokens: Tokens,
    released: mpsc::Receiver<u64>,
}

impl StoreLink {
    pub fn new(store: Arc<MessageStore>, qid: Option<u64>) -> StoreLink {
        let (tx, released) = mpsc::channel();
        StoreLink {
            store,
            qid,
            tokens: Tokens {
                sink: Arc::new(Sink { tx }),
            },
            released,
        }
    }

    /// The token for a persistent message, if this queue is durable.
    pub fn token(&self, store_id: u64) -> Option<Stored> {
        self.qid.map(|_| self.tokens.durable(store_id))
    }

    /// Record first deliveries of journaled messages (they come back redelivered).
    pub fn delivered(&self, ids: Vec<u64>) {
        if let Some(qid) = self.qid {
            self.store.delivered(qid, ids);
        }
    }

    /// Tell the store about every message let go of since the last call.
    pub fn flush(&self) {
        let (mut durable, mut transient) = (Vec::new(), Vec::new());
        for raw in self.released.try_iter() {
            if raw & TRANSIENT == 0 {
                durable.push(raw);
            } else {
                transient.push(raw & !TRANSIENT);
            }
        }
        if let Some(qid) = self.qid {
            self.store.ack(qid, durable);
        }
        self.store.release(transient);
    }
}
