//! What the operator interfaces share: typed answers to "what is there", built once and
//! rendered by both `warrenctl` (`control`, rabbitmqctl's tables) and the management
//! API (`management`, rabbitmq_management's JSON), so the two cannot disagree.

pub mod channels;
pub mod consumers;
pub mod queues;
