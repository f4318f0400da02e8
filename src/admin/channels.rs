//! Channels as listings describe them: `warrenctl list_channels` and `/api/channels`
//! both gather [`ChannelRow`]s here. Each connection owns its channels and answers
//! [`ConnEvent::ListChannels`] between frames, so a listing costs the connections a
//! moment each and never stops them.

use std::net::SocketAddr;
use std::time::Duration;

use crate::broker::{Broker, ConnectionEntry};
use crate::event::{ChannelInfo, ConnEvent};

pub struct ChannelRow {
    pub conn_id: u64,
    /// The connection's name (`peer -> local`, see [`ConnectionEntry::display_name`]).
    pub conn_name: String,
    pub peer: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub info: ChannelInfo,
}

impl ChannelRow {
    /// The channel's name as RabbitMQ gives it: its connection's, and its number.
    pub fn name(&self) -> String {
        format!("{} ({})", self.conn_name, self.info.number)
    }
}

/// The channels of the connections `which` selects, in connection order, then channel
/// order. A connection that does not answer within `wait` (or closed meanwhile) is left
/// out: it has no channels to show.
pub async fn gather(
    broker: &Broker,
    which: impl Fn(u64, &ConnectionEntry) -> bool,
    wait: Duration,
) -> Vec<ChannelRow> {
    let mut asked = Vec::new();
    broker.for_each_connection(|id, c| {
        if !which(id, c) {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if c.events.send(ConnEvent::ListChannels(tx)).is_ok() {
            asked.push((
                id,
                c.display_name(),
                c.peer,
                c.user.clone(),
                c.vhost.clone(),
                rx,
            ));
        }
    });
    asked.sort_by_key(|a| a.0);
    let deadline = tokio::time::Instant::now() + wait;
    let mut rows = Vec::new();
    for (conn_id, conn_name, peer, user, vhost, rx) in asked {
        let Ok(Ok(infos)) = tokio::time::timeout_at(deadline, rx).await else {
            continue;
        };
        for info in infos {
            rows.push(ChannelRow {
                conn_id,
                conn_name: conn_name.clone(),
                peer,
                user: user.clone(),
                vhost: vhost.clone(),
                info,
            });
        }
    }
    rows
}
