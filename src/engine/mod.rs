//! The transport-agnostic core: a node, its hub of rooms, one session per
//! connection.
//!
//! A transport hands a [`Session`] the bytes of each message it receives and
//! sends what the session's [`Outbox`] yields; the session does the rest
//! (spec/03-messages.md). This module never imports axum, hyper,
//! tokio-tungstenite or wtransport: if a transport type leaks in here, the
//! engine is no longer transport-agnostic. It uses tokio only for time and
//! for waking a transport's writer.

pub mod hub;
mod node;
mod operations;
pub mod outbox;
pub mod room;
mod session;

pub use node::{Node, NodeStats, OpenParams};
pub use operations::{MAX_BROADCAST_ROOMS, MAX_TICKET_TTL, NodeInfo, OpError};
pub use outbox::{Close, Outbox};
pub use session::{Control, Session};
