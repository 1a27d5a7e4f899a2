//! The broker seam: publication streams (fan-out, history, offsets, epochs)
//! and presence, shared by every node of a cluster.
//!
//! The embedded [`memory::MemoryBroker`] serves a single node; Redis and NATS
//! brokers implement the same trait for several. A broker never holds
//! node-local state (connections, sockets): it tells every node's
//! [`BrokerHandler`] what happened in a room, and each node delivers to its
//! own connections.
//!
//! # Contract
//!
//! Every implementation guarantees, per room:
//!
//! 1. **Order.** Publications get consecutive offsets (1, 2, 3, ... within an
//!    epoch) and every handler sees them in offset order, each once.
//! 2. **Atomic append and fan-out.** A publication is in history exactly when
//!    handlers are (or will be) told about it: no reader can see it in
//!    history and miss it live, or the reverse, except across a loss (3).
//! 3. **Loss is visible.** When a broker loses a room's history (restart,
//!    eviction, expiry of the stream's metadata) the room's epoch changes, so
//!    a client's old position can never be mistaken for a recoverable one. A
//!    broker that loses its connection to a shared backend says so through
//!    [`BrokerError::Unavailable`]; it never pretends success.
//! 4. **Bounded history.** At most `history_size` publications, none older
//!    than `history_ttl`.

pub mod memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::v1::{ClientInfo, Publication, StreamPosition};

/// A boxed future, so that brokers can be chosen at run time (`dyn Broker`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a room's stream is kept (from the room's namespace options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Publications kept; 0 keeps none and assigns no offsets.
    pub history_size: usize,
    /// How long each publication is kept.
    pub history_ttl: Duration,
}

/// The newest position of a room's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamTop {
    /// Offset of the newest publication; 0 when there has been none.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// A history read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Exclusive start: forward reads return offsets above it, reverse reads
    /// offsets below it. `None`: from the oldest (or newest, in reverse).
    pub since: Option<StreamPosition>,
    /// Most publications to return.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

/// The result of a history read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryPage {
    /// Publications in the requested order.
    pub publications: Vec<Publication>,
    /// The stream's newest position when read.
    pub top: StreamTop,
}

/// How many are in a room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections.
    pub clients: u32,
    /// Distinct users.
    pub users: u32,
}

/// How one publication is published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions<'a> {
    /// The client id that asked not to receive its own publication.
    pub exclude: Option<&'a str>,
    /// Deduplicates retries: the same key in the same room within `window`
    /// publishes once.
    pub idempotency_key: Option<&'a str>,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
}

/// What a connection ticket grants: the credentials a token would carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketGrant {
    /// User id.
    pub user: String,
    /// The `info` shown to others, as JSON text (or any bytes).
    pub info: bytes::Bytes,
    /// Room patterns the user may subscribe to.
    pub subscribe: Vec<String>,
    /// Room patterns the user may publish into.
    pub publish: Vec<String>,
    /// When the session expires, Unix seconds.
    pub expires_at: Option<u64>,
}

/// Why a ticket was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// No such ticket (never issued, or forgotten long after expiry).
    #[error("unknown ticket")]
    Unknown,
    /// The ticket was already used: tickets are single-use.
    #[error("ticket already used")]
    Used,
    /// The ticket's lifetime is over.
    #[error("ticket expired")]
    Expired,
}

/// A broker operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// `since` is not in the stream: another epoch, or older than what is
    /// kept. The client must resynchronise from the application.
    #[error("position is not in the room's history")]
    Unrecoverable,
    /// The broker cannot serve the request now. Temporary.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Where a broker delivers what happens in rooms, on every node.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A publication, in offset order per room. `exclude` is the client id
    /// that asked not to receive its own publication.
    fn handle_publication(&self, room: &str, publication: &Publication, exclude: Option<&str>);
    /// A connection joined a room.
    fn handle_join(&self, room: &str, client: &ClientInfo);
    /// A connection left a room.
    fn handle_leave(&self, room: &str, client: &ClientInfo);
}

/// Publication streams and presence, shared by all nodes (see the module
/// docs for the contract).
pub trait Broker: Send + Sync + 'static {
    /// Sets the handler that receives this node's deliveries. Called once,
    /// before any other method.
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>);

    /// Appends a publication to the room's stream (assigning its offset when
    /// the room keeps history) and delivers it to every node. With an
    /// idempotency key seen in the same room within its window, nothing is
    /// appended or delivered and the first publication's result is returned.
    fn publish<'a>(
        &'a self,
        room: &'a str,
        publication: Publication,
        options: StreamOptions,
        publish: PublishOptions<'a>,
    ) -> BoxFuture<'a, Result<StreamTop, BrokerError>>;

    /// Forgets a room's history: the next read or publication starts a new
    /// epoch.
    fn remove_history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stores a connection ticket for `ttl`.
    fn store_ticket<'a>(
        &'a self,
        ticket: &'a str,
        grant: TicketGrant,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Redeems a ticket: succeeds once per ticket, within its lifetime. A
    /// used ticket stays known (as used) until it would have expired, so the
    /// error can say which.
    fn redeem_ticket<'a>(
        &'a self,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<Result<TicketGrant, TicketError>, BrokerError>>;

    /// Tells every node that a connection joined a room.
    fn publish_join<'a>(
        &'a self,
        room: &'a str,
        client: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Tells every node that a connection left a room.
    fn publish_leave<'a>(
        &'a self,
        room: &'a str,
        client: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Reads a room's history.
    fn history<'a>(
        &'a self,
        room: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>>;

    /// Records a connection as present in a room.
    fn add_presence<'a>(
        &'a self,
        room: &'a str,
        client: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Removes a connection from a room's presence.
    fn remove_presence<'a>(
        &'a self,
        room: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Who is in a room, keyed by client id.
    fn presence<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, ClientInfo>, BrokerError>>;

    /// How many are in a room.
    fn presence_stats<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>>;

    /// Whether the broker can serve requests (readiness).
    fn health(&self) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Periodic chores (expiring local state), called every few seconds by
    /// the node. `in_use` says whether a room has subscribers on this node:
    /// a broker must not drop the stream of such a room, or its epoch would
    /// change under live subscribers. Default: nothing.
    fn housekeeping(&self, in_use: &dyn Fn(&str) -> bool) {
        let _ = in_use;
    }
}
