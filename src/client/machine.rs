//! The client's reconnection state machine, sans-IO (spec/08-client.md).
//!
//! [`Machine`] owns every decision a Switchboard client makes: when to open a
//! transport and when to give up on one, what to send on it, how long to wait
//! before trying again, and which publications the application sees, in what
//! order. It owns no socket, no clock, no thread and no source of randomness:
//! inputs are method calls that carry `now`, outputs are drained with
//! [`Machine::poll_action`] and [`Machine::poll_timeout`]. The same inputs give
//! the same outputs, which is what lets the tests (and the fuzz target, through
//! [`super::sim`]) run it through hours of simulated failures in milliseconds.
//! The driver around it (tokio + WebSocket) only moves frames and sleeps.
//!
//! It must never panic on anything a server sends, never keep a queue a server
//! can fill, and never hand the application a publication twice, out of order,
//! or after a gap without saying so.
//!
//! # Driver contract
//!
//! - After **every** input (`connect`, `handle_*`, ...) drain
//!   [`poll_action`](Machine::poll_action) until it returns `None`, performing
//!   the actions in order, then sleep until [`poll_timeout`](Machine::poll_timeout)
//!   and call [`handle_timeout`](Machine::handle_timeout). Each input adds a
//!   bounded number of actions (see spec/08-client.md, "Bounds"), so a driver
//!   that drains after each input holds a bounded queue.
//! - [`Action::OpenTransport`] starts one transport; report its outcome with
//!   [`handle_transport_open`](Machine::handle_transport_open) or
//!   [`handle_transport_closed`](Machine::handle_transport_closed).
//! - After [`Action::CloseTransport`] the machine has already moved on: close
//!   the transport and report **nothing** more from it (no frames, no close).
//!   The machine has at most one transport at a time and cannot tell an old
//!   transport's late events from the new one's.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::delta;
use crate::codes::{CloseCode, ErrorCode, UnsubscribeCode};
use crate::wire::v1::{
    self, ClientFrame, ConnectResult, Join, Leave, Publication, ServerFrame, StreamPosition,
    SubscribeResult, client_frame::Command, server_frame::Body,
};

#[cfg(test)]
mod tests;

/// The largest payload a delta may produce (the server's own payload limit
/// is far lower by default).
const MAX_DELTA_RESULT: usize = 16 << 20;

/// How the machine behaves. Every default is chosen for a browser-or-phone
/// client talking to a public server; the reasons are on each field.
#[derive(Clone, Debug)]
pub struct Config {
    /// The JWT sent in `connect` (spec/04-auth.md). Default empty: an anonymous
    /// connection, for servers that allow them. Replace it later with
    /// [`Machine::set_token`].
    pub token: String,
    /// Client library name sent in `connect`. Default `"switchboard-rust"`, so
    /// server logs tell library versions apart when a bug report comes in.
    pub name: String,
    /// Client library version sent in `connect`. Default: this crate's version.
    pub version: String,
    /// Base of the reconnect backoff. Default 500 ms: long enough that a fleet
    /// of clients dropped together (a server restart) spreads over half a second
    /// on the first retry, short enough that a single network blip is invisible.
    pub min_backoff: Duration,
    /// Ceiling of the reconnect backoff. Default 20 s: after a long outage a
    /// client is back within 20 s of the server, and a fleet of N clients
    /// retries at about N / 20 s per second at worst.
    pub max_backoff: Duration,
    /// Most publishes awaiting their outcome: queued while there is no
    /// connection plus sent and awaiting the server's reply. Default 100:
    /// enough for what a user types during a reconnect; with the default 64 KiB
    /// frame limit it holds at most about 6.4 MiB of payloads. When full,
    /// [`Machine::publish`] returns [`PublishError::QueueFull`]; nothing is
    /// dropped silently. 0 disables publishing.
    pub max_queued_publishes: usize,
    /// How long past the server's heartbeat interval the machine waits before
    /// it declares the connection dead. Default 10 s: a heartbeat can be late by
    /// a busy server, a congested mobile link or a proxy's buffering, none of
    /// which scale with the interval; 10 s covers them without leaving a dead
    /// connection unnoticed for long (25 s interval + 10 s = 35 s).
    pub ping_margin: Duration,
    /// How long a transport may take to open and the server to answer
    /// `connect`. Default 10 s: a TLS + WebSocket handshake over a poor mobile
    /// link plus token verification; past that, a fresh attempt is more likely
    /// to succeed than waiting.
    pub connect_timeout: Duration,
    /// How long before the session expires the machine asks the application
    /// for a fresh token ([`Event::NeedToken`]). Default 30 s: time for the
    /// application to call its backend, and once more if that fails. Capped at
    /// half the session's lifetime so a short-lived session is not refreshed at
    /// once.
    pub token_refresh_lead: Duration,
    /// How long the machine waits for [`Machine::set_token`] after asking for
    /// a token because the old one expired, before it gives up for good.
    /// Default 60 s: an application that cannot produce a token within a
    /// minute is not going to, and a client left waiting would look connected
    /// to its user.
    pub token_timeout: Duration,
    /// Most rooms the server may subscribe the connection to on its own
    /// (server-side subscriptions, the `subscribed` push). Default 1024:
    /// above any sensible per-connection limit on the server, and it caps the
    /// state a misbehaving server can make the client keep.
    pub max_server_rooms: usize,
    /// Seed of the jitter generator. Default: different in every process (from
    /// the standard library's hash seed), so a fleet of clients does not
    /// reconnect in step. Tests set it to get the same delays every run.
    pub jitter_seed: u64,
    /// Ask for delta publications (spec/12-delta.md) in rooms that send
    /// them; the machine applies each delta to the previous payload, so the
    /// application always sees full values. Default false.
    pub delta: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token: String::new(),
            name: "switchboard-rust".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            max_queued_publishes: 100,
            ping_margin: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            token_refresh_lead: Duration::from_secs(30),
            token_timeout: Duration::from_secs(60),
            max_server_rooms: 1024,
            jitter_seed: process_seed(),
            delta: false,
        }
    }
}

/// A seed that differs between processes and between calls, without the
/// machine itself touching the OS: the standard library seeds `RandomState`
/// once per thread and varies it per instance.
fn process_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The machine's state, as the application may observe it.
///
/// ```text
///                   connect()                         ConnectResult
///  ┌──────────────┐ ────────▶ ┌────────────┐ ───────────────────────────▶ ┌───────────┐
///  │ Disconnected │           │ Connecting │                              │ Connected │
///  └──────────────┘           └────────────┘                              └───────────┘
///          ▲                     │      ▲                                        │
///          │    transport lost,  │      │  backoff elapsed                       │ transport lost,
///          │    connect timeout, │      │  (after an expired token:              │ nothing heard,
///          │    temporary error  │      │   and set_token() called)              │ disconnect push
///          │    (reconnect code) ▼      │                                        │ (reconnect code)
///          │                ┌────────────────────┐                               │
///          │                │ WaitingToReconnect │ ◀─────────────────────────────┘
///          │                └────────────────────┘
///          │                          │ expired token and no set_token()
///          │                          ▼ within token_timeout
///          │   terminal close code, ┌────────┐
///          │   non-temporary connect│ Closed │  terminal: nothing leaves it,
///          │   error, second expiry │        │  nothing opens a transport again
///          │   ───────────────────▶ └────────┘  (from Connecting or Connected)
///          │
///   disconnect() from Connecting, Connected or WaitingToReconnect
/// ```
///
/// The normative table (every state × every input) is spec/08-client.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Not connected and not trying: before [`Machine::connect`] and after
    /// [`Machine::disconnect`]. Subscriptions and queued publishes are kept.
    Disconnected,
    /// A transport is opening, or `connect` was sent and its reply is awaited.
    Connecting,
    /// The server accepted `connect`: commands flow.
    Connected,
    /// The last transport was lost; a timer (and, after an expired token, the
    /// application's [`Machine::set_token`]) stands between the machine and the
    /// next attempt.
    WaitingToReconnect,
    /// Stopped for good: a terminal close code, a non-temporary connect error,
    /// or a token that could not be renewed. See [`Machine::closed_reason`].
    Closed,
}

/// What the driver must do, in the order returned.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Open a new transport (WebSocket, WebTransport) to the server. Report the
    /// outcome with [`Machine::handle_transport_open`] or
    /// [`Machine::handle_transport_closed`].
    OpenTransport,
    /// Encode this frame and send it on the open transport.
    Send(ClientFrame),
    /// Close the transport with this code and reason, and report nothing more
    /// from it.
    CloseTransport {
        /// Close code to send: 1000 (normal), or 3501 when the server broke
        /// the protocol.
        code: CloseCode,
        /// Why, for the server's logs.
        reason: String,
    },
    /// Hand this event to the application.
    Emit(Event),
}

/// What the application is told. Events arrive in the order things happened;
/// publications of a room arrive in offset order, at most once.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A transport is being opened (first attempt or a reconnect).
    Connecting,
    /// The server accepted the connection.
    Connected {
        /// Connection id assigned by the server.
        client: String,
        /// The user the connection is authenticated as; empty when anonymous.
        user: String,
        /// The server's name and version.
        server_version: String,
    },
    /// The transport was lost or closed.
    Disconnected {
        /// The close code: the server's (from its `disconnect` push or the
        /// transport close), 1006 when the machine gave up on a silent
        /// transport, 1000 after [`Machine::disconnect`], or the code a
        /// rejected `connect` maps to (spec/08-client.md).
        code: CloseCode,
        /// Why, in words.
        reason: String,
        /// Whether the machine will try again by itself.
        will_reconnect: bool,
    },
    /// The machine needs a fresh token: answer with [`Machine::set_token`].
    /// Asked before the session expires, and once after a token was found
    /// expired.
    NeedToken,
    /// A room's subscription is (again) in place.
    Subscribed {
        /// The room.
        room: String,
        /// `None`: the first subscription, nothing to recover. `Some(true)`:
        /// a resubscription that lost nothing; the missed publications follow
        /// this event. `Some(false)`: publications may have been missed (history
        /// too short, epoch changed, room keeps no history); delivery continues
        /// from `position`.
        recovered: Option<bool>,
        /// Where delivery continues: the next publication delivered for this
        /// room has offset `position.offset + 1` in `position.epoch` (rooms
        /// with a stream). Keep it to resume from after a restart of the app.
        position: StreamPosition,
    },
    /// A subscription ended and will not be renewed by the machine.
    Unsubscribed {
        /// The room.
        room: String,
        /// The server's code (spec/05-codes.md), or `None` when the
        /// application called [`Machine::unsubscribe`].
        code: Option<UnsubscribeCode>,
        /// Why, in words.
        reason: String,
    },
    /// A publication in a subscribed room.
    Publication(Publication),
    /// Someone joined a subscribed room.
    Join(Join),
    /// Someone left a subscribed room.
    Leave(Leave),
    /// A message the server's application sent to this connection.
    Message(Bytes),
    /// The server accepted a publish.
    Published {
        /// What [`Machine::publish`] returned.
        id: PublishId,
        /// The room.
        room: String,
        /// Offset the publication got; 0 when the room keeps no stream.
        offset: u64,
        /// Epoch of the room's stream.
        epoch: String,
    },
    /// A publish will not be retried by the machine.
    PublishFailed {
        /// What [`Machine::publish`] returned.
        id: PublishId,
        /// The room.
        room: String,
        /// What is known about its fate.
        failure: PublishFailure,
    },
    /// A command failed.
    Error {
        /// Which command.
        command: CommandKind,
        /// The room, for subscribe errors.
        room: Option<String>,
        /// The server's error code (spec/05-codes.md).
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Whether the machine retries. A `Subscribe` error that is not
        /// temporary drops the room; a temporary one is retried after a backoff.
        temporary: bool,
    },
}

/// The command an [`Event::Error`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommandKind {
    /// `connect`: the `Disconnected` event that follows says what happens next.
    Connect,
    /// `subscribe` (or a server-side subscription the machine refused).
    Subscribe,
    /// `refresh`: the session keeps its old token and expiry.
    Refresh,
}

/// Identifies one [`Machine::publish`] call in the events about its outcome.
/// Increasing in call order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishId(u64);

impl PublishId {
    /// The number, for logs.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PublishId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "publish #{}", self.0)
    }
}

/// What is known about a publish that failed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PublishFailure {
    /// The server refused it: not published.
    Rejected {
        /// The server's error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Whether publishing again later may succeed.
        temporary: bool,
    },
    /// It was sent and the connection was lost before the reply: it may or may
    /// not have been published. The machine does not resend it, because a
    /// publish is not idempotent.
    OutcomeUnknown,
    /// It was never sent: [`Machine::disconnect`] was called or the machine
    /// closed for good. Not published.
    NotSent,
}

/// Why [`Machine::publish`] refused a payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// [`Config::max_queued_publishes`] publishes already await their outcome.
    /// Try again after some `Published` / `PublishFailed` events.
    #[error("{limit} publishes already await a connection or a reply")]
    QueueFull {
        /// The limit in force.
        limit: usize,
    },
    /// The machine is [`State::Closed`]; nothing will be sent again.
    #[error("the client is closed for good")]
    Closed,
}

/// The client's reconnection state machine. See the module documentation and
/// spec/08-client.md.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    phase: Phase,
    rng: SplitMix64,
    /// Reconnect attempts since the last successful `connect`: the backoff
    /// exponent.
    attempt: u32,
    token: String,
    /// Incremented by every [`Machine::set_token`]; the config's token is 0.
    token_generation: u64,
    /// The generation of the token the server last judged: sent in `connect`,
    /// or accepted by `refresh`. A newer generation is a token the server has
    /// not seen yet.
    session_token_generation: u64,
    /// The newest generation sent in a `refresh`, so a refused token is not
    /// sent again.
    refresh_sent_generation: u64,
    /// An expired token already cost one refresh-and-retry since the last
    /// successful `connect`; the next expiry is final.
    expiry_retry_used: bool,
    /// Every room the machine knows: wanted by the app, or subscribed by the
    /// server. Ordered, so resubscriptions go out in a reproducible order.
    rooms: BTreeMap<String, Room>,
    /// Commands awaiting their reply, by request id. At most: one `connect`,
    /// one `refresh`, one `subscribe` per room, and the publishes counted in
    /// `publishes_in_flight`.
    pending: BTreeMap<u32, Pending>,
    publishes_in_flight: usize,
    /// Publishes waiting for a connection, oldest first.
    queue: VecDeque<QueuedPublish>,
    next_request_id: u32,
    next_publish_id: u64,
    actions: VecDeque<Action>,
}

/// [`State`] with the data each state needs.
#[derive(Debug)]
enum Phase {
    Disconnected,
    Connecting {
        /// The transport reported open and `connect` was sent.
        opened: bool,
        /// When to give up on this attempt (`None`: never, for a timeout too
        /// large to represent).
        deadline: Option<Instant>,
    },
    Connected(Connection),
    WaitingToReconnect {
        /// When the backoff elapses.
        at: Option<Instant>,
        /// Set while waiting for [`Machine::set_token`] after an expired token:
        /// when to give up.
        token_deadline: Option<Instant>,
        /// Waiting for a token at all (a deadline may be unrepresentable).
        awaiting_token: bool,
    },
    Closed {
        code: CloseCode,
        reason: String,
    },
}

/// The state of an accepted connection.
#[derive(Debug)]
struct Connection {
    /// Heartbeat interval plus margin; `None` when the server sends none.
    silence_limit: Option<Duration>,
    /// When the connection is declared dead unless a frame arrives.
    dead_at: Option<Instant>,
    /// When to ask the application for a fresh token.
    refresh_at: Option<Instant>,
    /// A `refresh` is awaiting its reply.
    refresh_in_flight: bool,
    /// Temporary `refresh` failures in a row: the backoff exponent of the next
    /// token request.
    refresh_attempt: u32,
}

/// A command awaiting its reply.
#[derive(Debug)]
enum Pending {
    Connect,
    Subscribe { room: String },
    Publish { id: PublishId, room: String },
    Refresh { generation: u64 },
}

#[derive(Debug)]
struct QueuedPublish {
    id: PublishId,
    room: String,
    data: Bytes,
}

/// Who wants a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// [`Machine::subscribe`]: the machine subscribes it on every connection.
    App,
    /// The server's `subscribed` push: the server subscribes it on every
    /// connection; the machine only tracks its position.
    Server,
}

#[derive(Debug)]
struct Room {
    origin: Origin,
    status: RoomStatus,
    /// The last publication delivered to the application, or the position a
    /// subscription started from: the next one delivered is `offset + 1`.
    position: Option<StreamPosition>,
    /// The server said the room keeps history, so `position` can be recovered.
    recoverable: bool,
    /// A `Subscribed` event was emitted for this room: the next one reports
    /// `recovered: Some(_)`.
    subscribed_before: bool,
    /// Temporary subscribe failures in a row: the backoff exponent.
    retry_attempt: u32,
    /// The payload of the last publication delivered, the base of the next
    /// delta (kept only when deltas are asked for).
    delta_base: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RoomStatus {
    /// Waiting for a connection (app rooms) or the server's push (server rooms).
    Idle,
    /// A temporary error: subscribe again at this time.
    RetryAt(Option<Instant>),
    /// `subscribe` sent with this id, recovering from `since`.
    Subscribing {
        id: u32,
        since: Option<StreamPosition>,
        /// An `unsubscribed` push (resubscribe code) arrived meanwhile. It may
        /// be about the subscription being made (a push may overtake a
        /// reply), so the subscription is remade once this one is answered.
        remake: bool,
    },
    /// Publications flow.
    Subscribed,
}

/// What happens after a transport is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Reconnect,
    /// Ask for a token, then reconnect.
    TokenThenReconnect,
    Close,
}

impl Machine {
    /// A machine in [`State::Disconnected`]. It takes no `now`: nothing is
    /// scheduled until [`connect`](Self::connect).
    pub fn new(config: Config) -> Self {
        Self {
            rng: SplitMix64(config.jitter_seed),
            token: config.token.clone(),
            config,
            phase: Phase::Disconnected,
            attempt: 0,
            token_generation: 0,
            session_token_generation: 0,
            refresh_sent_generation: 0,
            expiry_retry_used: false,
            rooms: BTreeMap::new(),
            pending: BTreeMap::new(),
            publishes_in_flight: 0,
            queue: VecDeque::new(),
            next_request_id: 1,
            next_publish_id: 1,
            actions: VecDeque::new(),
        }
    }

    // ----------------------------------------------------------------------
    // Outputs
    // ----------------------------------------------------------------------

    /// The next thing the driver must do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if ever.
    /// Changes after every input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Disconnected | Phase::Closed { .. } => None,
            Phase::Connecting { deadline, .. } => *deadline,
            Phase::WaitingToReconnect {
                at,
                token_deadline,
                awaiting_token,
            } => {
                if *awaiting_token {
                    *token_deadline
                } else {
                    *at
                }
            }
            Phase::Connected(connection) => {
                let retries = self.rooms.values().filter_map(|room| match room.status {
                    RoomStatus::RetryAt(at) => at,
                    _ => None,
                });
                [connection.dead_at, connection.refresh_at]
                    .into_iter()
                    .flatten()
                    .chain(retries)
                    .min()
            }
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Disconnected => State::Disconnected,
            Phase::Connecting { .. } => State::Connecting,
            Phase::Connected(_) => State::Connected,
            Phase::WaitingToReconnect { .. } => State::WaitingToReconnect,
            Phase::Closed { .. } => State::Closed,
        }
    }

    /// Why the machine closed for good, once [`State::Closed`].
    pub fn closed_reason(&self) -> Option<(CloseCode, &str)> {
        match &self.phase {
            Phase::Closed { code, reason } => Some((*code, reason)),
            _ => None,
        }
    }

    /// When the next reconnect attempt is due, while
    /// [`State::WaitingToReconnect`] (for a "reconnecting in 3 s" display).
    /// `None` while waiting for a token.
    pub fn reconnect_at(&self) -> Option<Instant> {
        match &self.phase {
            Phase::WaitingToReconnect {
                at,
                awaiting_token: false,
                ..
            } => *at,
            _ => None,
        }
    }

    /// Publishes awaiting their outcome: queued plus sent without a reply.
    /// Never more than [`Config::max_queued_publishes`].
    pub fn pending_publishes(&self) -> usize {
        self.queue.len() + self.publishes_in_flight
    }

    /// The position delivery of `room` continues from (see
    /// [`Event::Subscribed`]), if the room is known and has one.
    pub fn position(&self, room: &str) -> Option<&StreamPosition> {
        self.rooms.get(room)?.position.as_ref()
    }

    // ----------------------------------------------------------------------
    // Application calls
    // ----------------------------------------------------------------------

    /// Start connecting. From [`State::Disconnected`] it opens a transport at
    /// once; from [`State::WaitingToReconnect`] it skips the rest of the
    /// backoff (a "retry now" button), unless the machine is waiting for a
    /// token. Otherwise nothing happens; in particular [`State::Closed`] is
    /// final.
    pub fn connect(&mut self, now: Instant) {
        match self.phase {
            Phase::Disconnected => {
                self.attempt = 0;
                self.expiry_retry_used = false;
                self.start_connecting(now);
            }
            Phase::WaitingToReconnect {
                awaiting_token: false,
                ..
            } => self.start_connecting(now),
            _ => {}
        }
    }

    /// Stop: close the transport if there is one, stop reconnecting, and fail
    /// every publish that awaits an outcome (a publish queued for one session
    /// must not leak into the next, which may be another user's). Rooms and
    /// their positions are kept: [`connect`](Self::connect) resumes them.
    pub fn disconnect(&mut self, now: Instant) {
        let _ = now;
        match self.phase {
            Phase::Connecting { .. } | Phase::Connected(_) => {
                self.actions.push_back(Action::CloseTransport {
                    code: CloseCode::NORMAL,
                    reason: "client disconnected".to_owned(),
                });
            }
            Phase::WaitingToReconnect { .. } => {}
            Phase::Disconnected | Phase::Closed { .. } => return,
        }
        let lost = self.end_connection();
        self.phase = Phase::Disconnected;
        self.emit(Event::Disconnected {
            code: CloseCode::NORMAL,
            reason: "disconnect() called".to_owned(),
            will_reconnect: false,
        });
        self.fail_publishes(lost, PublishFailure::OutcomeUnknown);
        self.fail_queue();
    }

    /// Subscribe to `room` now (when connected) and on every connection after.
    /// Nothing happens if the room is already known or the machine is closed.
    pub fn subscribe(&mut self, room: &str, now: Instant) {
        let _ = now;
        if matches!(self.phase, Phase::Closed { .. }) || self.rooms.contains_key(room) {
            return;
        }
        self.rooms.insert(
            room.to_owned(),
            Room {
                origin: Origin::App,
                status: RoomStatus::Idle,
                position: None,
                recoverable: false,
                subscribed_before: false,
                retry_attempt: 0,
                delta_base: None,
            },
        );
        if matches!(self.phase, Phase::Connected(_)) {
            self.send_subscribe(room, None);
        }
    }

    /// Leave `room`: forget it and its position, tell the server when
    /// connected, and emit [`Event::Unsubscribed`] with no code. Publications
    /// of the room that arrive later are dropped.
    pub fn unsubscribe(&mut self, room: &str, now: Instant) {
        let _ = now;
        let Some(state) = self.rooms.remove(room) else {
            return;
        };
        if let RoomStatus::Subscribing { id, .. } = state.status {
            self.pending.remove(&id);
        }
        let on_server = matches!(
            state.status,
            RoomStatus::Subscribing { .. } | RoomStatus::Subscribed
        );
        if on_server && matches!(self.phase, Phase::Connected(_)) {
            self.send_unsubscribe(room);
        }
        self.emit(Event::Unsubscribed {
            room: room.to_owned(),
            code: None,
            reason: "unsubscribe() called".to_owned(),
        });
    }

    /// Publish `data` into `room`: sent now when connected, else queued and
    /// sent in call order right after the next successful `connect`. The
    /// outcome arrives as [`Event::Published`] or [`Event::PublishFailed`]
    /// with the returned id. Publishing does not need a subscription.
    pub fn publish(
        &mut self,
        room: &str,
        data: Bytes,
        now: Instant,
    ) -> Result<PublishId, PublishError> {
        let _ = now;
        if matches!(self.phase, Phase::Closed { .. }) {
            return Err(PublishError::Closed);
        }
        if self.pending_publishes() >= self.config.max_queued_publishes {
            return Err(PublishError::QueueFull {
                limit: self.config.max_queued_publishes,
            });
        }
        let id = PublishId(self.next_publish_id);
        self.next_publish_id += 1;
        let publish = QueuedPublish {
            id,
            room: room.to_owned(),
            data,
        };
        if matches!(self.phase, Phase::Connected(_)) {
            self.send_publish(publish);
        } else {
            self.queue.push_back(publish);
        }
        Ok(id)
    }

    /// A fresh token, usually the answer to [`Event::NeedToken`]. When
    /// connected it is sent in a `refresh` command; otherwise the next
    /// `connect` uses it, and a machine waiting for a token reconnects as soon
    /// as its backoff allows.
    pub fn set_token(&mut self, token: String, now: Instant) {
        if matches!(self.phase, Phase::Closed { .. }) {
            return;
        }
        self.token = token;
        self.token_generation += 1;
        match &mut self.phase {
            Phase::Connected(_) => self.refresh_if_newer(),
            Phase::WaitingToReconnect {
                at,
                token_deadline,
                awaiting_token,
            } if *awaiting_token => {
                *awaiting_token = false;
                *token_deadline = None;
                if at.is_some_and(|at| at <= now) {
                    self.start_connecting(now);
                }
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------------------
    // Transport events
    // ----------------------------------------------------------------------

    /// The transport asked for by [`Action::OpenTransport`] is open: the
    /// machine sends `connect`. Ignored in any other situation (a stale event).
    pub fn handle_transport_open(&mut self, now: Instant) {
        let _ = now;
        let Phase::Connecting { opened, .. } = &mut self.phase else {
            return;
        };
        if *opened {
            return;
        }
        *opened = true;
        let id = self.next_request_id();
        self.pending.insert(id, Pending::Connect);
        self.session_token_generation = self.token_generation;
        self.send(
            id,
            Command::Connect(v1::ConnectRequest {
                token: self.token.clone(),
                name: self.config.name.clone(),
                version: self.config.version.clone(),
                ..Default::default()
            }),
        );
    }

    /// The transport closed (or failed to open) without the machine asking.
    /// Whether to reconnect follows from `code`'s range (spec/05-codes.md).
    /// Ignored when the machine has no transport, e.g. after a `disconnect`
    /// push already ended it.
    pub fn handle_transport_closed(&mut self, code: CloseCode, reason: &str, now: Instant) {
        if matches!(self.phase, Phase::Connecting { .. } | Phase::Connected(_)) {
            self.transport_gone(code, reason.to_owned(), now);
        }
    }

    /// A frame from the server, decoded. Ignored when the machine has no open
    /// transport.
    pub fn handle_frame(&mut self, frame: ServerFrame, now: Instant) {
        let connected = match &mut self.phase {
            Phase::Connecting { opened: true, .. } => false,
            Phase::Connected(connection) => {
                connection.dead_at = connection
                    .silence_limit
                    .and_then(|limit| now.checked_add(limit));
                true
            }
            _ => return,
        };
        // A body this version does not know (a newer server): ignored, as the
        // schema's evolution rules require.
        let Some(body) = frame.body else {
            return;
        };
        match body {
            Body::Disconnect(push) => self.handle_disconnect_push(push, now),
            Body::Error(_)
            | Body::Connect(_)
            | Body::Subscribe(_)
            | Body::Unsubscribe(_)
            | Body::Publish(_)
            | Body::Presence(_)
            | Body::PresenceStats(_)
            | Body::History(_)
            | Body::Refresh(_)
            | Body::Ping(_) => self.handle_reply(frame.id, body, now),
            push if connected => self.handle_push(push, now),
            // Pushes before `connect` is answered: the server must not send
            // them; nothing to route them to yet.
            _ => {}
        }
    }

    /// Time passed: fire whatever is due at `now` (connect timeout, dead
    /// connection, token refresh, subscribe retries, reconnect). Calling it
    /// early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Connecting {
                deadline: Some(deadline),
                ..
            } if *deadline <= now => {
                let reason = format!("no connect reply within {:?}", self.config.connect_timeout);
                self.close_transport(CloseCode::ABNORMAL, reason, now);
            }
            Phase::Connected(connection) => {
                if connection.dead_at.is_some_and(|at| at <= now) {
                    let reason = format!(
                        "nothing heard from the server within {:?}",
                        connection.silence_limit.unwrap_or_default()
                    );
                    self.close_transport(CloseCode::ABNORMAL, reason, now);
                    return;
                }
                if connection.refresh_at.is_some_and(|at| at <= now) {
                    connection.refresh_at = None;
                    self.emit(Event::NeedToken);
                }
                let due: Vec<String> = self
                    .rooms
                    .iter()
                    .filter(|(_, room)| {
                        matches!(room.status, RoomStatus::RetryAt(Some(at)) if at <= now)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for room in due {
                    let since = self.recovery_position(&room);
                    self.send_subscribe(&room, since);
                }
            }
            Phase::WaitingToReconnect {
                at,
                token_deadline,
                awaiting_token,
            } => {
                if *awaiting_token {
                    if token_deadline.is_some_and(|deadline| deadline <= now) {
                        let reason = format!(
                            "the token expired and no new one was set within {:?}",
                            self.config.token_timeout
                        );
                        self.emit(Event::Disconnected {
                            code: CloseCode::EXPIRED,
                            reason: reason.clone(),
                            will_reconnect: false,
                        });
                        self.close_for_good(CloseCode::EXPIRED, reason);
                    }
                } else if at.is_some_and(|at| at <= now) {
                    self.start_connecting(now);
                }
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------------------
    // Frames
    // ----------------------------------------------------------------------

    fn handle_reply(&mut self, id: u32, body: Body, now: Instant) {
        // Replies to commands the machine does not track (unsubscribe), to
        // commands of a room since left, and with id 0 end here.
        let Some(pending) = self.take_pending(id) else {
            return;
        };
        match (pending, body) {
            (Pending::Connect, Body::Connect(result)) => self.handle_connect_result(result, now),
            (Pending::Connect, Body::Error(error)) => {
                let temporary = error.temporary;
                self.emit(Event::Error {
                    command: CommandKind::Connect,
                    room: None,
                    code: ErrorCode(error.code),
                    message: error.message.clone(),
                    temporary,
                });
                let code = close_code_for_connect_error(ErrorCode(error.code), temporary);
                let reason = format!("connect refused: {} {}", error.code, error.message);
                self.close_transport(code, reason, now);
            }
            (Pending::Subscribe { room }, Body::Subscribe(result)) => {
                self.handle_subscribe_result(room, id, result);
            }
            (Pending::Subscribe { room }, Body::Error(error)) => {
                self.handle_subscribe_error(room, id, error, now);
            }
            (Pending::Publish { id, room }, Body::Publish(result)) => {
                self.emit(Event::Published {
                    id,
                    room,
                    offset: result.offset,
                    epoch: result.epoch,
                });
            }
            (Pending::Publish { id, room }, Body::Error(error)) => {
                let temporary = error.temporary;
                self.emit(Event::PublishFailed {
                    id,
                    room,
                    failure: PublishFailure::Rejected {
                        code: ErrorCode(error.code),
                        message: error.message,
                        temporary,
                    },
                });
            }
            (Pending::Refresh { generation }, Body::Refresh(result)) => {
                self.session_token_generation = generation;
                if let Phase::Connected(connection) = &mut self.phase {
                    connection.refresh_in_flight = false;
                    connection.refresh_attempt = 0;
                    connection.refresh_at = refresh_deadline(
                        now,
                        result.expires_in_seconds,
                        self.config.token_refresh_lead,
                    );
                }
                self.refresh_if_newer();
            }
            (Pending::Refresh { .. }, Body::Error(error)) => {
                let temporary = error.temporary;
                if let Phase::Connected(connection) = &mut self.phase {
                    connection.refresh_in_flight = false;
                    if temporary {
                        // Ask the application again after a backoff; it may
                        // hand back the same token, which is then resent.
                        let delay =
                            backoff_delay(&mut self.rng, &self.config, connection.refresh_attempt);
                        connection.refresh_attempt = connection.refresh_attempt.saturating_add(1);
                        connection.refresh_at = now.checked_add(delay);
                        self.refresh_sent_generation = self.session_token_generation;
                    }
                }
                self.emit(Event::Error {
                    command: CommandKind::Refresh,
                    room: None,
                    code: ErrorCode(error.code),
                    message: error.message,
                    temporary,
                });
            }
            (pending, body) => {
                let reason = format!(
                    "server answered {} with {}",
                    pending.name(),
                    body_name(&body)
                );
                if let Pending::Publish { id, room } = pending {
                    self.emit(Event::PublishFailed {
                        id,
                        room,
                        failure: PublishFailure::OutcomeUnknown,
                    });
                }
                // spec/05-codes.md: 3501 is also the client's code for a
                // peer that broke the protocol ("a message of the wrong
                // type"). Terminal: a server that answers `subscribe` with a
                // publish result will do it again.
                self.close_transport(CloseCode::BAD_REQUEST, reason, now);
            }
        }
    }

    fn handle_connect_result(&mut self, result: ConnectResult, now: Instant) {
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return;
        }
        let silence_limit = (result.ping_interval_ms > 0).then(|| {
            Duration::from_millis(u64::from(result.ping_interval_ms))
                .saturating_add(self.config.ping_margin)
        });
        self.phase = Phase::Connected(Connection {
            silence_limit,
            dead_at: silence_limit.and_then(|limit| now.checked_add(limit)),
            refresh_at: refresh_deadline(
                now,
                result.expires_in_seconds,
                self.config.token_refresh_lead,
            ),
            refresh_in_flight: false,
            refresh_attempt: 0,
        });
        self.attempt = 0;
        self.expiry_retry_used = false;
        self.emit(Event::Connected {
            client: result.client,
            user: result.user,
            server_version: result.version,
        });
        // A token set while connecting is newer than the one the session has.
        self.refresh_if_newer();
        let rooms: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, room)| room.origin == Origin::App)
            .map(|(name, _)| name.clone())
            .collect();
        for room in rooms {
            let since = self.recovery_position(&room);
            self.send_subscribe(&room, since);
        }
        while let Some(publish) = self.queue.pop_front() {
            self.send_publish(publish);
        }
    }

    fn handle_subscribe_result(&mut self, name: String, id: u32, result: SubscribeResult) {
        let Some(room) = self.rooms.get_mut(&name) else {
            return;
        };
        let (since, remake) = match &room.status {
            RoomStatus::Subscribing {
                id: current,
                since,
                remake,
            } if *current == id => (since.clone(), *remake),
            _ => return,
        };
        let current = StreamPosition {
            offset: result.offset,
            epoch: result.epoch.clone(),
        };
        room.recoverable = result.recoverable;
        let (recovered, position, missed) = match since {
            Some(since) => match recovered_run(&since, result) {
                Some(missed) => (Some(true), since, missed),
                None => (Some(false), current.clone(), Vec::new()),
            },
            None if room.subscribed_before => {
                // No recovery was possible (or asked for); nothing was missed
                // only if the stream did not move.
                let unmoved = current.offset > 0 && room.position.as_ref() == Some(&current);
                (Some(unmoved), current.clone(), Vec::new())
            }
            None => (None, current.clone(), Vec::new()),
        };
        room.status = RoomStatus::Subscribed;
        room.subscribed_before = true;
        room.retry_attempt = 0;
        room.position = Some(current);
        // A new subscription starts a new chain of deltas.
        room.delta_base = None;
        self.emit(Event::Subscribed {
            room: name.clone(),
            recovered,
            position,
        });
        for mut publication in missed {
            if publication.room.is_empty() {
                publication.room.clone_from(&name);
            }
            if self.config.delta {
                if let Some(room) = self.rooms.get_mut(&name) {
                    room.delta_base = Some(publication.data.clone());
                }
            }
            self.emit(Event::Publication(publication));
        }
        if remake {
            self.remake_subscription(&name);
        }
    }

    fn handle_subscribe_error(&mut self, name: String, id: u32, error: v1::Error, now: Instant) {
        let Some(room) = self.rooms.get_mut(&name) else {
            return;
        };
        let since = match &room.status {
            RoomStatus::Subscribing {
                id: current, since, ..
            } if *current == id => since.clone(),
            _ => return,
        };
        let code = ErrorCode(error.code);
        let temporary = error.temporary || code.temporary();
        if code == ErrorCode::UNRECOVERABLE_POSITION && since.is_some() {
            // The server's way of saying `recovered = false`: subscribe from
            // now; the Subscribed event reports the gap.
            self.send_subscribe(&name, None);
            return;
        }
        if temporary {
            let delay = backoff_delay(&mut self.rng, &self.config, room.retry_attempt);
            room.retry_attempt = room.retry_attempt.saturating_add(1);
            room.status = RoomStatus::RetryAt(now.checked_add(delay));
        } else {
            self.rooms.remove(&name);
        }
        self.emit(Event::Error {
            command: CommandKind::Subscribe,
            room: Some(name),
            code,
            message: error.message,
            temporary,
        });
    }

    fn handle_push(&mut self, body: Body, now: Instant) {
        match body {
            Body::Publication(publication) => self.handle_publication(publication, now),
            Body::Join(join) if self.is_subscribed(&join.room) => self.emit(Event::Join(join)),
            Body::Leave(leave) if self.is_subscribed(&leave.room) => {
                self.emit(Event::Leave(leave));
            }
            Body::Message(message) => self.emit(Event::Message(message.data)),
            Body::Heartbeat(_) => self.send(0, Command::Pong(v1::Pong {})),
            Body::Unsubscribed(push) => self.handle_unsubscribed_push(push),
            Body::Subscribed(push) => self.handle_subscribed_push(push),
            _ => {}
        }
    }

    /// Delivers a live publication at most once and in offset order; a jump
    /// past the next offset is a gap, repaired by resubscribing from the last
    /// delivered position (spec/08-client.md, "Delivery").
    fn handle_publication(&mut self, mut publication: Publication, now: Instant) {
        let _ = now;
        let track = self.config.delta;
        let Some(room) = self.rooms.get_mut(&publication.room) else {
            return;
        };
        // Publications of a room whose subscription is being (re)made are
        // dropped: the subscribe reply's position or recovered publications
        // cover them, and anything later shows up as a gap.
        if room.status != RoomStatus::Subscribed {
            return;
        }
        if publication.delta {
            let applied = room
                .delta_base
                .as_ref()
                .and_then(|base| delta::apply(base, &publication.data, MAX_DELTA_RESULT).ok());
            match applied {
                Some(data) => {
                    publication.data = Bytes::from(data);
                    publication.delta = false;
                }
                None => {
                    // No base, or one that does not match: never guess. A
                    // fresh subscription recovers full values.
                    room.delta_base = None;
                    if room.origin == Origin::App {
                        self.remake_subscription(&publication.room);
                    }
                    return;
                }
            }
        }
        if track {
            room.delta_base = Some(publication.data.clone());
        }
        if publication.offset == 0 {
            // A room without a stream: no order to check.
            self.emit(Event::Publication(publication));
            return;
        }
        let position = room.position.get_or_insert_with(StreamPosition::default);
        if publication.offset <= position.offset {
            // Already delivered (or covered by the position a subscription
            // started from).
            return;
        }
        if position.offset.checked_add(1) == Some(publication.offset) {
            position.offset = publication.offset;
            self.emit(Event::Publication(publication));
            return;
        }
        // A gap.
        if room.origin == Origin::App {
            // Resubscribe from the last delivered position: the reply carries
            // the missing publications, or says they are gone.
            self.remake_subscription(&publication.room);
        } else {
            // The server owns this subscription and the client cannot remake
            // it: say that publications were missed, then continue from here.
            let epoch = position.epoch.clone();
            position.offset = publication.offset;
            self.emit(Event::Subscribed {
                room: publication.room.clone(),
                recovered: Some(false),
                position: StreamPosition {
                    offset: publication.offset - 1,
                    epoch,
                },
            });
            self.emit(Event::Publication(publication));
        }
    }

    fn handle_unsubscribed_push(&mut self, push: v1::Unsubscribed) {
        let Some(room) = self.rooms.get_mut(&push.room) else {
            return;
        };
        let code = UnsubscribeCode(push.code);
        if room.origin == Origin::App && code.resubscribe() {
            match &mut room.status {
                RoomStatus::Subscribed => self.remake_subscription(&push.room),
                // The push may be about the subscription being made, or the
                // one before it: remake it once the reply is in.
                RoomStatus::Subscribing { remake, .. } => *remake = true,
                // Nothing on the server to renew; the next connection or
                // retry subscribes anyway.
                RoomStatus::Idle | RoomStatus::RetryAt(_) => {}
            }
            return;
        }
        // Final: the server's application wants the connection out of the
        // room, whichever subscription the push is about.
        let Some(room) = self.rooms.remove(&push.room) else {
            return;
        };
        if let RoomStatus::Subscribing { id, .. } = room.status {
            self.pending.remove(&id);
            // The subscription being made may succeed: undo it.
            self.send_unsubscribe(&push.room);
        }
        self.emit(Event::Unsubscribed {
            room: push.room,
            code: Some(code),
            reason: push.reason,
        });
    }

    fn handle_subscribed_push(&mut self, push: v1::Subscribed) {
        let current = StreamPosition {
            offset: push.offset,
            epoch: push.epoch,
        };
        let recovered = match self.rooms.get_mut(&push.room) {
            // The application's own subscription: the server says it is in
            // place, which the machine already tracks.
            Some(room) if room.origin == Origin::App => return,
            Some(room) => {
                let unmoved = current.offset > 0 && room.position.as_ref() == Some(&current);
                room.status = RoomStatus::Subscribed;
                room.recoverable = push.recoverable;
                room.position = Some(current.clone());
                Some(unmoved)
            }
            None => {
                let server_rooms = self
                    .rooms
                    .values()
                    .filter(|room| room.origin == Origin::Server)
                    .count();
                if server_rooms >= self.config.max_server_rooms {
                    self.emit(Event::Error {
                        command: CommandKind::Subscribe,
                        room: Some(push.room),
                        code: ErrorCode::LIMIT_EXCEEDED,
                        message: format!(
                            "more than {} server-side subscriptions; ignored",
                            self.config.max_server_rooms
                        ),
                        temporary: false,
                    });
                    return;
                }
                self.rooms.insert(
                    push.room.clone(),
                    Room {
                        origin: Origin::Server,
                        status: RoomStatus::Subscribed,
                        position: Some(current.clone()),
                        recoverable: push.recoverable,
                        subscribed_before: true,
                        retry_attempt: 0,
                        delta_base: None,
                    },
                );
                None
            }
        };
        self.emit(Event::Subscribed {
            room: push.room,
            recovered,
            position: current,
        });
    }

    fn handle_disconnect_push(&mut self, push: v1::Disconnect, now: Instant) {
        // A code above u16 is not a close code; treat it as a failed transport.
        let code = u16::try_from(push.code).map_or(CloseCode::ABNORMAL, CloseCode);
        self.actions.push_back(Action::CloseTransport {
            code: CloseCode::NORMAL,
            reason: "server sent disconnect".to_owned(),
        });
        self.transport_gone(code, push.reason, now);
    }

    // ----------------------------------------------------------------------
    // Transitions
    // ----------------------------------------------------------------------

    fn start_connecting(&mut self, now: Instant) {
        self.phase = Phase::Connecting {
            opened: false,
            deadline: now.checked_add(self.config.connect_timeout),
        };
        self.emit(Event::Connecting);
        self.actions.push_back(Action::OpenTransport);
    }

    /// The machine gives up on the transport: tells the driver to close it,
    /// then handles the loss like any other.
    fn close_transport(&mut self, code: CloseCode, reason: String, now: Instant) {
        let sent = if code == CloseCode::BAD_REQUEST {
            CloseCode::BAD_REQUEST
        } else {
            CloseCode::NORMAL
        };
        self.actions.push_back(Action::CloseTransport {
            code: sent,
            reason: reason.clone(),
        });
        self.transport_gone(code, reason, now);
    }

    /// The transport is gone, with this code. Whether to reconnect follows
    /// from the code's range alone (spec/05-codes.md), also for a `disconnect`
    /// push, whose `reconnect` flag always equals that rule.
    fn transport_gone(&mut self, code: CloseCode, mut reason: String, now: Instant) {
        let lost = self.end_connection();
        let next = if !code.reconnect() {
            Next::Close
        } else if code == CloseCode::EXPIRED {
            if self.expiry_retry_used {
                reason.push_str(" (expired again after a token refresh)");
                Next::Close
            } else {
                self.expiry_retry_used = true;
                if self.token_generation > self.session_token_generation {
                    // The application already gave a token the server has
                    // not seen: that is the refresh.
                    Next::Reconnect
                } else {
                    Next::TokenThenReconnect
                }
            }
        } else {
            Next::Reconnect
        };
        self.emit(Event::Disconnected {
            code,
            reason: reason.clone(),
            will_reconnect: next != Next::Close,
        });
        self.fail_publishes(lost, PublishFailure::OutcomeUnknown);
        match next {
            Next::Close => self.close_for_good(code, reason),
            Next::Reconnect | Next::TokenThenReconnect => {
                let delay = backoff_delay(&mut self.rng, &self.config, self.attempt);
                self.attempt = self.attempt.saturating_add(1);
                let awaiting_token = next == Next::TokenThenReconnect;
                self.phase = Phase::WaitingToReconnect {
                    at: now.checked_add(delay),
                    token_deadline: if awaiting_token {
                        now.checked_add(self.config.token_timeout)
                    } else {
                        None
                    },
                    awaiting_token,
                };
                if awaiting_token {
                    self.emit(Event::NeedToken);
                }
            }
        }
    }

    /// Forgets everything tied to the transport; returns the publishes that
    /// were sent and had no reply, oldest first.
    fn end_connection(&mut self) -> Vec<(PublishId, String)> {
        let mut lost: Vec<(PublishId, String)> = std::mem::take(&mut self.pending)
            .into_values()
            .filter_map(|pending| match pending {
                Pending::Publish { id, room } => Some((id, room)),
                _ => None,
            })
            .collect();
        lost.sort_unstable_by_key(|(id, _)| *id);
        self.publishes_in_flight = 0;
        for room in self.rooms.values_mut() {
            room.status = RoomStatus::Idle;
        }
        lost
    }

    fn close_for_good(&mut self, code: CloseCode, reason: String) {
        self.fail_queue();
        self.rooms.clear();
        self.phase = Phase::Closed { code, reason };
    }

    fn fail_publishes(&mut self, lost: Vec<(PublishId, String)>, failure: PublishFailure) {
        for (id, room) in lost {
            self.emit(Event::PublishFailed {
                id,
                room,
                failure: failure.clone(),
            });
        }
    }

    fn fail_queue(&mut self) {
        while let Some(publish) = self.queue.pop_front() {
            self.emit(Event::PublishFailed {
                id: publish.id,
                room: publish.room,
                failure: PublishFailure::NotSent,
            });
        }
    }

    // ----------------------------------------------------------------------
    // Commands
    // ----------------------------------------------------------------------

    fn send(&mut self, id: u32, command: Command) {
        self.actions.push_back(Action::Send(ClientFrame {
            id,
            command: Some(command),
        }));
    }

    /// The next request id: non-zero, increasing, wrapping past `u32::MAX`
    /// to 1, and never one still awaiting a reply.
    fn next_request_id(&mut self) -> u32 {
        loop {
            let id = self.next_request_id;
            self.next_request_id = id.checked_add(1).unwrap_or(1);
            if id != 0 && !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    fn take_pending(&mut self, id: u32) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        if matches!(pending, Pending::Publish { .. }) {
            self.publishes_in_flight -= 1;
        }
        Some(pending)
    }

    /// Where a resubscription recovers from: the last delivered position, when
    /// the room keeps history.
    fn recovery_position(&self, room: &str) -> Option<StreamPosition> {
        let room = self.rooms.get(room)?;
        room.position.clone().filter(|_| room.recoverable)
    }

    fn send_subscribe(&mut self, name: &str, since: Option<StreamPosition>) {
        let id = self.next_request_id();
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if let RoomStatus::Subscribing { id: old, .. } = room.status {
            self.pending.remove(&old);
        }
        room.status = RoomStatus::Subscribing {
            id,
            since: since.clone(),
            remake: false,
        };
        self.pending.insert(
            id,
            Pending::Subscribe {
                room: name.to_owned(),
            },
        );
        self.send(
            id,
            Command::Subscribe(v1::SubscribeRequest {
                room: name.to_owned(),
                since,
                token: String::new(),
                delta: self.config.delta,
            }),
        );
    }

    /// Unsubscribes and subscribes again, recovering from the last delivered
    /// position. Used to repair a gap and to renew a subscription the server
    /// ended: sending both makes it correct whether or not the server still
    /// holds a subscription (a `subscribe` alone would fail with 105 if it
    /// does), at the cost of an `unsubscribe` answered with 112 if it does not.
    fn remake_subscription(&mut self, room: &str) {
        if !matches!(self.phase, Phase::Connected(_)) {
            return;
        }
        let since = self.recovery_position(room);
        self.send_unsubscribe(room);
        self.send_subscribe(room, since);
    }

    /// Unsubscribe replies are not tracked: there is nothing to do with one,
    /// and an untracked id cannot make `pending` grow.
    fn send_unsubscribe(&mut self, room: &str) {
        let id = self.next_request_id();
        self.send(
            id,
            Command::Unsubscribe(v1::UnsubscribeRequest {
                room: room.to_owned(),
            }),
        );
    }

    fn send_publish(&mut self, publish: QueuedPublish) {
        let id = self.next_request_id();
        self.pending.insert(
            id,
            Pending::Publish {
                id: publish.id,
                room: publish.room.clone(),
            },
        );
        self.publishes_in_flight += 1;
        self.send(
            id,
            Command::Publish(v1::PublishRequest {
                room: publish.room,
                data: publish.data,
                ..Default::default()
            }),
        );
    }

    /// Sends `refresh` when connected, none is in flight, and the application
    /// gave a token newer than any the server has seen.
    fn refresh_if_newer(&mut self) {
        let Phase::Connected(connection) = &mut self.phase else {
            return;
        };
        let seen = self
            .session_token_generation
            .max(self.refresh_sent_generation);
        if connection.refresh_in_flight || self.token_generation <= seen {
            return;
        }
        connection.refresh_in_flight = true;
        self.refresh_sent_generation = self.token_generation;
        let id = self.next_request_id();
        self.pending.insert(
            id,
            Pending::Refresh {
                generation: self.token_generation,
            },
        );
        self.send(
            id,
            Command::Refresh(v1::RefreshRequest {
                token: self.token.clone(),
            }),
        );
    }

    fn is_subscribed(&self, room: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|room| room.status == RoomStatus::Subscribed)
    }

    fn emit(&mut self, event: Event) {
        self.actions.push_back(Action::Emit(event));
    }
}

impl Pending {
    fn name(&self) -> &'static str {
        match self {
            Pending::Connect => "connect",
            Pending::Subscribe { .. } => "subscribe",
            Pending::Publish { .. } => "publish",
            Pending::Refresh { .. } => "refresh",
        }
    }
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Error(_) => "error",
        Body::Connect(_) => "a connect result",
        Body::Subscribe(_) => "a subscribe result",
        Body::Unsubscribe(_) => "an unsubscribe result",
        Body::Publish(_) => "a publish result",
        Body::Presence(_) => "a presence result",
        Body::PresenceStats(_) => "a presence_stats result",
        Body::History(_) => "a history result",
        Body::Refresh(_) => "a refresh result",
        Body::Ping(_) => "a ping result",
        _ => "a push",
    }
}

/// The publications of a `recovered = true` reply, checked: after `since`,
/// contiguous, ending at the stream's offset, in `since`'s epoch. `None` when
/// the reply does not hold all of them, which the machine reports as
/// `recovered = false` rather than deliver a gap.
fn recovered_run(since: &StreamPosition, result: SubscribeResult) -> Option<Vec<Publication>> {
    if !result.recovered || result.epoch != since.epoch {
        return None;
    }
    let mut last = since.offset;
    let mut run = Vec::with_capacity(result.publications.len());
    for publication in result.publications {
        if publication.offset <= last {
            continue;
        }
        if last.checked_add(1) != Some(publication.offset) {
            return None;
        }
        last = publication.offset;
        run.push(publication);
    }
    (last == result.offset).then_some(run)
}

/// The close code a refused `connect` counts as, so that one rule (the code's
/// range, spec/05-codes.md) decides whether to reconnect.
fn close_code_for_connect_error(code: ErrorCode, temporary: bool) -> CloseCode {
    match code {
        ErrorCode::TOKEN_EXPIRED => CloseCode::EXPIRED,
        ErrorCode::INVALID_TOKEN => CloseCode::INVALID_TOKEN,
        ErrorCode::UNAUTHORIZED => CloseCode::UNAUTHORIZED,
        ErrorCode::TOO_MANY_REQUESTS => CloseCode::TOO_MANY_REQUESTS,
        _ if temporary => CloseCode::INTERNAL,
        _ => CloseCode::BAD_REQUEST,
    }
}

/// When to ask for a fresh token: `lead` before the session expires, but no
/// earlier than half its lifetime. `None` when it never expires.
fn refresh_deadline(now: Instant, expires_in_seconds: u32, lead: Duration) -> Option<Instant> {
    if expires_in_seconds == 0 {
        return None;
    }
    let lifetime = Duration::from_secs(u64::from(expires_in_seconds));
    now.checked_add(lifetime - lead.min(lifetime / 2))
}

/// The ceiling of the `attempt`-th backoff delay (0-based):
/// `min(max, min_backoff * 2^attempt)`.
pub fn backoff_ceiling(min: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.min(31);
    min.checked_mul(factor).map_or(max, |delay| delay.min(max))
}

/// A full-jitter delay: uniform in `[0, ceiling]`. No floor: a floor shifts
/// every client by the same amount, bringing back the lockstep that jitter
/// removes; an early retry costs one failed attempt, and the ceiling doubles
/// after every failure.
fn backoff_delay(rng: &mut SplitMix64, config: &Config, attempt: u32) -> Duration {
    let ceiling = backoff_ceiling(config.min_backoff, config.max_backoff, attempt);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.at_most(nanos))
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for
/// jitter. Not for anything an attacker should not predict.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]` (Lemire's multiply-shift; the bias is below
    /// 2^-64 per value, far under what jitter can notice).
    fn at_most(&mut self, max: u64) -> u64 {
        let range = u128::from(max) + 1;
        // The product is below 2^64 * range, so the shifted value is below
        // `range` and fits in u64.
        ((u128::from(self.next_u64()) * range) >> 64) as u64
    }
}
