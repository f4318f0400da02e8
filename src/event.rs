//! What queues, the broker and the control surfaces tell a connection: the events of
//! its mailbox, one unbounded channel per connection. They sit below every layer that
//! sends them (queues, the broker, management and `warrenctl`) and the connection that
//! reads them, so none of those imports another to talk to a connection.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::AmqpError;
use crate::message::Message;

/// What queues (and the broker) send to a connection. One unbounded channel per
/// connection, so a queue never waits on a slow client; ordering per sender is kept,
/// which is what makes cancel-ok arrive after the deliveries that preceded it.
#[derive(Debug)]
pub enum ConnEvent {
    Deliveries(Vec<Delivery>),
    /// The queue went away under a consumer: send basic.cancel (consumer_cancel_notify).
    ConsumerCancelled {
        channel_uid: u64,
        consumer_tag: Arc<str>,
    },
    /// The queue has removed a consumer the client cancelled: send cancel-ok now.
    CancelOk {
        channel_uid: u64,
        consumer_tag: Arc<str>,
        nowait: bool,
    },
    /// Close the connection (broker shutdown, management action). The rare events'
    /// errors are boxed: every connection's event channel allocates its first block of
    /// slots up front, sized by the largest variant.
    Close(Box<AmqpError>),
    /// Close one channel with this error (a consumer timeout in RabbitMQ's mode).
    CloseChannel {
        channel_uid: u64,
        error: Box<AmqpError>,
    },
    /// A consumer timeout requeued this delivery: the channel forgets it, and a late
    /// ack or reject of its tag is accepted and ignored.
    DeliveryTimedOut {
        channel_uid: u64,
        queue_id: u64,
        msg_id: u64,
    },
    /// warrenctl list_channels: the connection describes its open channels. Asked of
    /// the connection task, their owner, so nothing on the message path keeps
    /// statistics for it.
    ListChannels(oneshot::Sender<Vec<ChannelInfo>>),
}

pub type EventTx = mpsc::UnboundedSender<ConnEvent>;

#[derive(Debug)]
pub struct Delivery {
    pub channel_uid: u64,
    pub channel: u16,
    pub consumer_tag: Arc<str>,
    pub queue_id: u64,
    /// The queue's id for this message, echoed back on ack/reject.
    pub msg_id: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

/// One channel as listings show it (rabbitmqctl list_channels), taken by its
/// connection task when asked.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub number: u16,
    pub consumer_count: usize,
    pub messages_unacknowledged: usize,
    /// basic.qos global=false: the prefetch new consumers get.
    pub prefetch_count: u32,
    /// basic.qos global=true: the prefetch shared by the channel's consumers.
    pub global_prefetch_count: u32,
    pub confirm: bool,
    pub transactional: bool,
    pub messages_unconfirmed: u64,
    pub messages_uncommitted: usize,
    pub acks_uncommitted: usize,
}
