//! Heartbeats as a connection keeps them: one tick every half interval; a heartbeat
//! frame goes out on a tick after which nothing else was sent, and a peer silent for
//! two whole intervals (four ticks) is gone. Silence while the connection is not read
//! (blocked by an alarm, or held back by flow control) proves nothing and is not
//! counted.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::protocol::frame;
use crate::protocol::outbuf::OutBuf;

pub(super) struct Heartbeat {
    /// Seconds, as negotiated (0: off).
    pub interval: u16,
    ticker: Interval,
    /// Something went out since the last tick.
    sent: bool,
    /// Something came in since the last tick.
    received: bool,
    silent_ticks: u32,
}

impl Heartbeat {
    pub fn new(interval: u16) -> Heartbeat {
        let tick = Duration::from_millis(u64::from(interval.max(1)) * 500);
        let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Heartbeat {
            interval,
            ticker,
            sent: false,
            received: false,
            silent_ticks: 0,
        }
    }

    pub fn on(&self) -> bool {
        self.interval > 0
    }

    pub async fn tick(&mut self) {
        self.ticker.tick().await;
    }

    pub fn received(&mut self) {
        self.received = true;
    }

    pub fn sent(&mut self) {
        self.sent = true;
    }

    /// At a tick: write a heartbeat if nothing else went out, and say whether the peer
    /// has now been silent too long. `paused`: the connection is not being read.
    pub fn on_tick(&mut self, out: &mut OutBuf, paused: bool) -> bool {
        if !self.sent {
            frame::heartbeat(&mut out.buf);
        }
        self.silent_ticks = if self.received || paused {
            0
        } else {
            self.silent_ticks + 1
        };
        self.sent = false;
        self.received = false;
        self.silent_ticks >= 4
    }
}
