//! The broker: configuration, virtual hosts, users, and the registry of live
//! connections. One per process; shared by every connection as `Arc<Broker>`.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::auth::Users;
use crate::config::Config;
use crate::error::{code, AmqpError};
use crate::queue::{ConnEvent, EventTx};
use crate::store::{Opened, Store, StoreError};
use crate::vhost::Vhost;

/// What the broker knows of a live connection (for shutdown and, later, management).
pub struct ConnectionEntry {
    pub events: EventTx,
    pub peer: std::net::SocketAddr,
}

pub struct Broker {
    pub config: Config,
    /// The data directory's store (None for a broker that keeps nothing, in tests).
    pub store: Option<Arc<Store>>,
    pub users: Users,
    vhosts: DashMap<String, Arc<Vhost>>,
    connections: DashMap<u64, ConnectionEntry>,
    /// Flips to true when the broker starts shutting down; listeners stop accepting.
    shutdown: watch::Sender<bool>,
}

impl Broker {
    /// A broker that keeps nothing on disk.
    pub fn new(config: Config) -> Arc<Broker> {
        Self::build(config, None)
    }

    /// Open the data directory, recover durable state, and build the broker on it.
    /// Must run inside the tokio runtime (queues are tasks).
    pub fn open(config: Config) -> Result<Arc<Broker>, StoreError> {
        let Opened {
            store,
            snapshot,
            mut messages,
        } = Store::open(
            &config.data_dir,
            config.store.fsync,
            config.store.segment_size,
        )?;
        let broker = Self::build(config, Some(store.clone()));
        for (name, defs) in &snapshot.vhosts {
            let vhost = broker
                .vhosts
                .entry(name.clone())
                .or_insert_with(|| Vhost::with_store(name, Some(store.clone())))
                .clone();
            vhost.restore(defs, &mut messages);
        }
        let dropped: usize = messages.values().map(Vec::len).sum();
        if dropped > 0 {
            tracing::warn!(
                messages = dropped,
                "stored messages of unknown queues dropped"
            );
        }
        Ok(broker)
    }

    fn build(config: Config, store: Option<Arc<Store>>) -> Arc<Broker> {
        let vhosts = DashMap::new();
        vhosts.insert(
            config.defaults.vhost.clone(),
            Vhost::with_store(&config.defaults.vhost, store.clone()),
        );
        Arc::new(Broker {
            users: Users::new(&config.defaults),
            store,
            config,
            vhosts,
            connections: DashMap::new(),
            shutdown: watch::channel(false).0,
        })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn register_connection(&self, id: u64, entry: ConnectionEntry) {
        self.connections.insert(id, entry);
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections.remove(&id);
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// First step of a shutdown: from now on, queues letting go of messages or being
    /// deleted as their consumers disconnect is not recorded, so what is queued now is
    /// there at the next start.
    pub fn freeze_store(&self) {
        if let Some(s) = &self.store {
            s.freeze();
        }
    }

    /// Last step of a shutdown: write and sync what is pending, stop the store.
    pub fn close_store(&self) {
        if let Some(s) = &self.store {
            s.messages.close();
        }
    }

    /// Stop accepting and ask every connection to close with CONNECTION_FORCED.
    pub fn shut_down(&self) {
        let _ = self.shutdown.send(true);
        for c in self.connections.iter() {
            let _ = c.events.send(ConnEvent::Close(AmqpError::new(
                code::CONNECTION_FORCED,
                "broker shutdown",
            )));
        }
    }
}
