//! Why a connection is not being read, as RabbitMQ's reader keeps it in its `throttle`
//! record: a resource alarm (the connection is `blocked` once it has published while
//! one is raised, and told so with connection.blocked if it asked), or flow control
//! (queues its publishes left above their high mark; it is read again once they all
//! drained, see `queue/flow.rs`). The state listings show (`running`, `flow`,
//! `blocked`) follows from the two.

use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::protocol::{connection, AMQPClass};

use crate::alarm::AlarmState;
use crate::broker::ConnState;
use crate::channel::Session;
use crate::protocol::short;
use crate::queue::QueueHandle;

pub(super) struct Throttle {
    /// The alarms in effect, as last seen.
    alarm: AlarmState,
    /// The alarm monitor is still there to tell of changes.
    pub alarms_open: bool,
    blocked: bool,
    /// Queues this connection's publishes left above their flow high mark.
    behind: Vec<Arc<QueueHandle>>,
    state: Arc<ConnState>,
    peer: SocketAddr,
}

impl Throttle {
    pub fn new(alarm: AlarmState, state: Arc<ConnState>, peer: SocketAddr) -> Throttle {
        Throttle {
            alarm,
            alarms_open: true,
            blocked: false,
            behind: Vec::new(),
            state,
            peer,
        }
    }

    /// Whether the socket may be read now.
    pub fn reading(&self) -> bool {
        !self.blocked && self.behind.is_empty()
    }

    /// The alarms changed to `now` (None: the monitor is gone, nothing will change).
    pub fn alarms_changed(&mut self, now: Option<AlarmState>) {
        match now {
            Some(a) => self.alarm = a,
            None => self.alarms_open = false,
        }
    }

    /// Held back by flow control.
    pub fn in_flow(&self) -> bool {
        !self.behind.is_empty()
    }

    /// Wait until every queue this connection is behind on has drained.
    pub async fn drained(&self) {
        for q in &self.behind {
            q.inflow.wait_drained().await;
        }
    }

    /// The queues drained: flow ends.
    pub fn flow_ends(&mut self) {
        self.behind.clear();
        self.state.set(if self.blocked {
            ConnState::BLOCKED
        } else {
            ConnState::RUNNING
        });
        tracing::debug!(peer = %self.peer, "connection leaves flow: its queues drained");
    }

    /// This round's publishes left `queues` above their high mark (none while closing:
    /// a closing connection is read to the end).
    pub fn behind_on(&mut self, queues: &mut Vec<Arc<QueueHandle>>, closing: bool) {
        if queues.is_empty() {
            return;
        }
        if closing {
            queues.clear();
            self.behind.clear();
            return;
        }
        if self.behind.is_empty() && !self.blocked {
            self.state.set(ConnState::FLOW);
            tracing::debug!(peer = %self.peer, "connection in flow: a queue it publishes to is behind");
        }
        self.behind.append(queues);
    }

    /// After each round: block a connection that publishes while an alarm is raised,
    /// unblock it once none is (connection.blocked / unblocked if the client asked).
    pub fn apply_alarm(&mut self, s: &mut Session, closing: bool) {
        if self.alarm.any() && s.published && !self.blocked && !closing {
            self.blocked = true;
            self.state.set(ConnState::BLOCKED);
            tracing::warn!(peer = %self.peer, "connection blocked: {}", self.alarm.reason());
            if s.caps.connection_blocked {
                s.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                        reason: short(self.alarm.reason()),
                    })),
                );
            }
        } else if !self.alarm.any() && self.blocked {
            self.blocked = false;
            self.state.set(if self.behind.is_empty() {
                ConnState::RUNNING
            } else {
                ConnState::FLOW
            });
            tracing::info!(peer = %self.peer, "connection unblocked");
            if s.caps.connection_blocked {
                s.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                        connection::Unblocked {},
                    )),
                );
            }
        }
    }
}
