//! The broker: configuration, virtual hosts, users, and the registry of live
//! connections. One per process; shared by every connection as `Arc<Broker>`.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::auth::Users;
use crate::config::Config;
use crate::error::{code, AmqpError};
use crate::queue::{ConnEvent, EventTx};
use crate::vhost::Vhost;

/// What the broker knows of a live connection (for shutdown and, later, management).
pub struct ConnectionEntry {
    pub events: EventTx,
    pub peer: std::net::SocketAddr,
}

pub struct Broker {
    pub config: Config,
    pub users: Users,
    vhosts: DashMap<String, Arc<Vhost>>,
    connections: DashMap<u64, ConnectionEntry>,
    /// Flips to true when the broker starts shutting down; listeners stop accepting.
    shutdown: watch::Sender<bool>,
}

impl Broker {
    pub fn new(config: Config) -> Arc<Broker> {
        let vhosts = DashMap::new();
        vhosts.insert(
            config.defaults.vhost.clone(),
            Vhost::new(&config.defaults.vhost),
        );
        Arc::new(Broker {
            users: Users::new(&config.defaults),
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
