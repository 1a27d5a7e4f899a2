//! One connection's protocol session: authentication, commands, timers.
//!
//! The session owns everything spec/03-messages.md says about one
//! connection. It is driven by its transport: [`Session::handle_message`] for
//! each message received, [`Session::handle_deadline`] when
//! [`Session::deadline`] passes, and [`Session::finish`] when the connection
//! is gone. It never touches a socket: replies and pushes go to its
//! [`Outbox`]; a returned [`Close`] tells the transport to end the connection.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::hub::ConnId;
use super::node::{Node, OpenParams};
use super::outbox::{Close, Outbox};
use super::room::RoomName;
use crate::auth::{AuthError, Credentials, RoomPattern};
use crate::broker::{BrokerError, HistoryQuery, PublishOptions, StreamOptions, TicketGrant};
use crate::codec::{self, DecodeLimits, unit};
use crate::codes::{CloseCode, ErrorCode, UnsubscribeCode};
use crate::config::RoomOptions;
use crate::metrics as m;
use crate::wire::v1::{
    ClientFrame, ClientInfo, ConnectRequest, ConnectResult, Error, HistoryRequest, HistoryResult,
    PingResult, PresenceResult, PresenceStatsResult, Publication, PublishRequest, PublishResult,
    RefreshRequest, RefreshResult, ServerFrame, SubscribeRequest, SubscribeResult, Subscribed,
    UnsubscribeResult, Unsubscribed, client_frame::Command, server_frame::Body,
};

/// A reply's body, or the error sent instead.
type Reply = Result<Body, Error>;

fn error(code: ErrorCode, message: impl Into<String>) -> Error {
    Error {
        code: code.0,
        message: message.into(),
        temporary: code.temporary(),
    }
}

fn broker_error(err: BrokerError) -> Error {
    match err {
        BrokerError::Unrecoverable => error(ErrorCode::UNRECOVERABLE_POSITION, err.to_string()),
        other => error(ErrorCode::INTERNAL, other.to_string()),
    }
}

enum Phase {
    /// Waiting for `connect` until the deadline.
    AwaitingConnect { deadline: Instant },
    /// Authenticated.
    Connected(Box<Connected>),
}

struct Connected {
    credentials: Credentials,
    /// This connection as others see it.
    info: ClientInfo,
    /// When the session ends unless refreshed (expiry + grace).
    expires: Option<Instant>,
    next_heartbeat: Instant,
    pong_deadline: Option<Instant>,
}

struct Subscription {
    options: RoomOptions,
}

/// A request from the node to a session (server API): the session applies
/// it itself, so its state has one owner.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Control {
    /// Subscribe to a room (server-side subscription: a `subscribed` push).
    Subscribe(RoomName),
    /// End a subscription (an `unsubscribed` push with the code and reason).
    Unsubscribe(RoomName, UnsubscribeCode, &'static str),
    /// Set when the session expires (Unix seconds; `None`: never).
    Expire(Option<u64>),
}

/// The protocol state of one connection.
pub struct Session {
    node: Arc<Node>,
    id: ConnId,
    outbox: Arc<Outbox>,
    limits: DecodeLimits,
    url_token: Option<String>,
    phase: Phase,
    subscriptions: HashMap<RoomName, Subscription>,
    limiter: DefaultDirectRateLimiter,
    registered_user: Option<String>,
}

impl Session {
    pub(super) fn new(
        node: Arc<Node>,
        id: ConnId,
        outbox: Arc<Outbox>,
        params: OpenParams,
    ) -> Self {
        let limits = &node.config.limits;
        let rate = NonZeroU32::new(limits.command_rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.command_burst).unwrap_or(rate);
        let deadline = Instant::now() + limits.connect_timeout;
        Self {
            limits: limits.decode_limits(),
            url_token: params.url_token,
            phase: Phase::AwaitingConnect { deadline },
            subscriptions: HashMap::new(),
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            registered_user: None,
            node,
            id,
            outbox,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The queue the transport sends from.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The next control from the node. Cancel-safe: use it in `select!`.
    pub async fn next_control(&self) -> Control {
        self.outbox.next_control().await
    }

    /// Applies a control from the node.
    pub async fn handle_control(&mut self, control: Control) {
        if self.connected().is_none() {
            return;
        }
        match control {
            Control::Subscribe(room) => {
                if !self.subscriptions.contains_key(&room) {
                    self.subscribe_server_side(room).await;
                }
            }
            Control::Unsubscribe(room, code, reason) => {
                let Some(subscription) = self.subscriptions.remove(&room) else {
                    return;
                };
                self.leave_room(&room, &subscription).await;
                let push = ServerFrame {
                    id: 0,
                    body: Some(Body::Unsubscribed(Unsubscribed {
                        room: room.to_string(),
                        code: code.0,
                        reason: reason.to_owned(),
                    })),
                };
                let _ = self.outbox.push_frame(&push);
            }
            Control::Expire(expires_at) => {
                let node = self.node.clone();
                if let Phase::Connected(c) = &mut self.phase {
                    c.expires = expires_at
                        .map(|exp| node.instant_of_unix(exp) + node.config.auth.expiry_grace);
                    c.credentials.expires_at = expires_at;
                }
            }
        }
    }

    /// The next time [`Session::handle_deadline`] must run.
    pub fn deadline(&self) -> Instant {
        match &self.phase {
            Phase::AwaitingConnect { deadline } => *deadline,
            Phase::Connected(c) => {
                let mut next = c.next_heartbeat;
                if let Some(pong) = c.pong_deadline {
                    next = next.min(pong);
                }
                if let Some(expires) = c.expires {
                    next = next.min(expires);
                }
                next
            }
        }
    }

    /// Runs the timers that are due: connect timeout, heartbeat, pong
    /// timeout, session expiry.
    pub fn handle_deadline(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let limits = &self.node.config.limits;
        match &mut self.phase {
            Phase::AwaitingConnect { deadline } if now >= *deadline => Err(Close::new(
                CloseCode::CONNECT_TIMEOUT,
                "no connect command in time",
            )),
            Phase::AwaitingConnect { .. } => Ok(()),
            Phase::Connected(c) => {
                if c.expires.is_some_and(|e| now >= e) {
                    return Err(Close::new(
                        CloseCode::EXPIRED,
                        "session expired: token not refreshed",
                    ));
                }
                if c.pong_deadline.is_some_and(|d| now >= d) {
                    return Err(Close::new(
                        CloseCode::NO_PONG,
                        "no pong to the server's heartbeat",
                    ));
                }
                if now >= c.next_heartbeat {
                    c.next_heartbeat = now + limits.ping_interval;
                    if c.pong_deadline.is_none() {
                        c.pong_deadline = Some(now + limits.pong_timeout);
                    }
                    let heartbeat = ServerFrame {
                        id: 0,
                        body: Some(Body::Heartbeat(Default::default())),
                    };
                    let _ = self.outbox.push_frame(&heartbeat);
                }
                Ok(())
            }
        }
    }

    /// Handles one transport message: a batch of frames, or with unit
    /// framing one or more units each holding a batch.
    pub async fn handle_message(&mut self, message: Bytes) -> Result<(), Close> {
        m::bytes_in(message.len());
        match self.outbox.framing().codec {
            None => self.handle_batch(&message).await,
            Some(codec) => {
                // Identity units are slices of `message`: no copy.
                let max = self.max_message_size();
                for batch in unit::units(&message, codec, max) {
                    let batch = batch.map_err(|e| {
                        m::decode_error(e.kind());
                        Close::new(e.close_code(), e.to_string())
                    })?;
                    self.handle_batch(&batch).await?;
                }
                Ok(())
            }
        }
    }

    /// Handles one batch of delimited frames (a message's content, or a
    /// unit's payload).
    pub async fn handle_batch(&mut self, batch: &[u8]) -> Result<(), Close> {
        let frames: Vec<_> =
            codec::decode_batch::<ClientFrame>(batch, self.outbox.encoding(), &self.limits)
                .collect();
        for frame in frames {
            let frame = frame.map_err(|e| {
                m::decode_error(e.kind());
                Close::new(e.close_code(), e.to_string())
            })?;
            self.handle_frame(frame).await?;
        }
        Ok(())
    }

    /// The most bytes a client message (or a unit's decompressed batch)
    /// may hold.
    pub fn max_message_size(&self) -> usize {
        self.node.config.limits.max_message_size
    }

    /// The decoder limits of this session's connection.
    pub fn decode_limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Handles one decoded frame (stream transports decode frames
    /// themselves).
    pub async fn handle_frame(&mut self, frame: ClientFrame) -> Result<(), Close> {
        let ClientFrame { id, command } = frame;
        if let Some(Command::Pong(_)) = command {
            if let Phase::Connected(c) = &mut self.phase {
                c.pong_deadline = None;
            }
            return Ok(());
        }
        if self.limiter.check().is_err() {
            m::rejected("rate_limit");
            return Err(Close::new(
                CloseCode::TOO_MANY_REQUESTS,
                "command rate limit exceeded",
            ));
        }
        if id == 0 {
            return Err(Close::new(
                CloseCode::BAD_REQUEST,
                "command without a request id",
            ));
        }
        let started = std::time::Instant::now();
        let kind = command.as_ref().map_or("unknown", command_name);
        let reply = match (command, &self.phase) {
            (Some(Command::Connect(req)), Phase::AwaitingConnect { .. }) => {
                self.connect(req).await?
            }
            (Some(Command::Connect(_)), Phase::Connected(_)) => {
                return Err(Close::new(CloseCode::BAD_REQUEST, "connect sent twice"));
            }
            (_, Phase::AwaitingConnect { .. }) => {
                return Err(Close::new(
                    CloseCode::BAD_REQUEST,
                    "the first command must be connect",
                ));
            }
            (None, _) => Err(error(ErrorCode::UNKNOWN_COMMAND, "unknown command")),
            (Some(Command::Subscribe(req)), _) => self.subscribe(id, req).await,
            (Some(Command::Unsubscribe(req)), _) => self.unsubscribe(&req.room).await,
            (Some(Command::Publish(req)), _) => self.publish(req).await,
            (Some(Command::Presence(req)), _) => self.presence(&req.room, false).await,
            (Some(Command::PresenceStats(req)), _) => self.presence(&req.room, true).await,
            (Some(Command::History(req)), _) => self.history(req).await,
            (Some(Command::Refresh(req)), _) => self.refresh(req)?,
            (Some(Command::Ping(_)), _) => Ok(Body::Ping(PingResult {})),
            (Some(Command::Pong(_)), _) => return Ok(()),
        };
        m::command(kind, started.elapsed(), reply.is_ok());
        // The subscribe reply, when successful, was queued by `subscribe`
        // itself: it must precede the room's first live frame.
        if let Ok(Body::Subscribe(_)) = &reply {
            return Ok(());
        }
        let connected_now = matches!(reply, Ok(Body::Connect(_)));
        let body = match reply {
            Ok(body) => body,
            Err(err) => Body::Error(err),
        };
        let _ = self.outbox.push_frame(&ServerFrame {
            id,
            body: Some(body),
        });
        if connected_now {
            self.subscribe_personal().await;
        }
        Ok(())
    }

    fn connected(&self) -> Option<&Connected> {
        match &self.phase {
            Phase::Connected(c) => Some(c),
            Phase::AwaitingConnect { .. } => None,
        }
    }

    async fn connect(&mut self, req: ConnectRequest) -> Result<Reply, Close> {
        let node = self.node.clone();
        let config = &node.config;
        let now_unix = node.unix_time().as_secs();
        // A token in `connect` first, then a ticket, then a token on the URL.
        let token = if !req.token.is_empty() {
            Some(req.token.as_str())
        } else if req.ticket.is_empty() {
            self.url_token.as_deref()
        } else {
            None
        };
        let credentials = match token {
            Some(token) => node.verifier.verify(token, now_unix).map_err(|err| {
                m::auth_failure(&err);
                match err {
                    AuthError::Expired => Close::new(CloseCode::EXPIRED, "token expired"),
                    other => Close::new(CloseCode::INVALID_TOKEN, other.to_string()),
                }
            })?,
            None if !req.ticket.is_empty() => self.redeem(&req.ticket, now_unix).await?,
            None if config.auth.allow_anonymous => Credentials::anonymous(),
            None => {
                m::rejected("no_token");
                return Err(Close::new(
                    CloseCode::UNAUTHORIZED,
                    "no token: send one in the connect command (anonymous connections are not allowed)",
                ));
            }
        };
        self.url_token = None;
        if !credentials.user.is_empty() {
            node.register_user(&credentials.user, &self.id)?;
            self.registered_user = Some(credentials.user.clone());
        }
        let limits = &config.limits;
        let now = Instant::now();
        let expires_in = credentials
            .expires_at
            .map(|exp| exp.saturating_sub(now_unix));
        let info = ClientInfo {
            user: credentials.user.clone(),
            client: self.id.to_string(),
            info: credentials.info.clone(),
        };
        let user = credentials.user.clone();
        self.phase = Phase::Connected(Box::new(Connected {
            expires: credentials
                .expires_at
                .map(|exp| node.instant_of_unix(exp) + config.auth.expiry_grace),
            credentials,
            info,
            next_heartbeat: now + limits.ping_interval,
            pong_deadline: None,
        }));
        let result = ConnectResult {
            client: self.id.to_string(),
            user: user.clone(),
            version: concat!("switchboard/", env!("CARGO_PKG_VERSION")).into(),
            expires_in_seconds: expires_in
                .map_or(0, |s| u32::try_from(s).unwrap_or(u32::MAX).max(1)),
            ping_interval_ms: millis(limits.ping_interval),
            pong_timeout_ms: millis(limits.pong_timeout),
            codec: self
                .outbox
                .framing()
                .codec
                .map_or("identity", |c| c.name())
                .into(),
        };
        Ok(Ok(Body::Connect(result)))
    }

    /// Redeems a connection ticket into credentials.
    async fn redeem(&self, ticket: &str, now_unix: u64) -> Result<Credentials, Close> {
        let grant: TicketGrant = match self.node.broker.redeem_ticket(ticket).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(err)) => {
                m::rejected("ticket");
                return Err(Close::new(
                    CloseCode::INVALID_TICKET,
                    format!("invalid ticket: {err}"),
                ));
            }
            Err(err) => return Err(Close::new(CloseCode::INTERNAL, err.to_string())),
        };
        if grant.expires_at.is_some_and(|exp| exp <= now_unix) {
            return Err(Close::new(
                CloseCode::EXPIRED,
                "the ticket's session has expired",
            ));
        }
        Ok(Credentials {
            user: grant.user,
            expires_at: grant.expires_at,
            info: grant.info,
            subscribe: grant.subscribe.into_iter().map(RoomPattern::new).collect(),
            publish: grant.publish.into_iter().map(RoomPattern::new).collect(),
        })
    }

    /// Subscribes a freshly connected user to its personal room, when the
    /// server is configured to (a `subscribed` push after the connect reply).
    async fn subscribe_personal(&mut self) {
        let (Some(namespace), Some(c)) = (&self.node.config.personal_namespace, self.connected())
        else {
            return;
        };
        if c.credentials.user.is_empty() {
            return;
        }
        let Ok(room) = RoomName::personal(namespace, &c.credentials.user) else {
            return;
        };
        self.subscribe_server_side(room).await;
    }

    /// Subscribes the connection to a room on the server's initiative (no
    /// permission check: the server decided), announced by a `subscribed`
    /// push.
    async fn subscribe_server_side(&mut self, room: RoomName) {
        let node = self.node.clone();
        let Some((options, stream)) = node.room_options(room.namespace()) else {
            return;
        };
        if self.subscriptions.len() >= node.config.limits.max_rooms_per_connection {
            tracing::warn!(client = %self.id, %room, "server-side subscription over the room limit");
            return;
        }
        let room_text = room.to_string();
        let result = self
            .join_room(room, options.clone(), stream, None, false, move |r| {
                ServerFrame {
                    id: 0,
                    body: Some(Body::Subscribed(Subscribed {
                        room: room_text,
                        epoch: r.epoch,
                        offset: r.offset,
                        recoverable: r.recoverable,
                    })),
                }
            })
            .await;
        if let Err(err) = result {
            tracing::warn!(client = %self.id, error = %err.message, "server-side subscription failed");
        }
    }

    fn parse_room(name: &str) -> Result<RoomName, Error> {
        RoomName::parse(name).map_err(|e| error(ErrorCode::BAD_REQUEST, e.to_string()))
    }

    fn room_options(&self, room: &RoomName) -> Result<(RoomOptions, StreamOptions), Error> {
        self.node
            .room_options(room.namespace())
            .map(|(o, s)| (o.clone(), s))
            .ok_or_else(|| {
                error(
                    ErrorCode::UNKNOWN_ROOM,
                    format!("namespace {:?} is not configured", room.namespace()),
                )
            })
    }

    /// Whether this connection may read `room` (subscribe, presence, history).
    fn may_read(&self, room: &RoomName, options: &RoomOptions, token: &str) -> Result<(), Error> {
        let Some(c) = self.connected() else {
            return Err(error(ErrorCode::UNAUTHORIZED, "connect first"));
        };
        let user = c.credentials.user.as_str();
        if let Some(mut users) = room.allowed_users() {
            return if !user.is_empty() && users.any(|u| u == user) {
                Ok(())
            } else {
                Err(error(
                    ErrorCode::PERMISSION_DENIED,
                    format!("{room} is limited to the users it names"),
                ))
            };
        }
        if user.is_empty() {
            return if options.public && options.anonymous {
                Ok(())
            } else {
                Err(error(
                    ErrorCode::PERMISSION_DENIED,
                    format!("anonymous connections may not read {room}"),
                ))
            };
        }
        if options.public || c.credentials.may_subscribe(room.as_str()) {
            return Ok(());
        }
        if !token.is_empty() {
            let now = self.node.unix_time().as_secs();
            return match self.node.verifier.verify(token, now) {
                Err(AuthError::Expired) => Err(error(
                    ErrorCode::TOKEN_EXPIRED,
                    "subscription token expired",
                )),
                Err(err) => Err(error(
                    ErrorCode::INVALID_TOKEN,
                    format!("subscription {err}"),
                )),
                Ok(sub) if sub.user == user && sub.may_subscribe(room.as_str()) => Ok(()),
                Ok(_) => Err(error(
                    ErrorCode::PERMISSION_DENIED,
                    format!("the subscription token does not grant {room} to this user"),
                )),
            };
        }
        Err(error(
            ErrorCode::PERMISSION_DENIED,
            format!(
                "not allowed to read {room}: no subscribe claim matches it and namespace {:?} is not public",
                room.namespace()
            ),
        ))
    }

    async fn subscribe(&mut self, id: u32, req: SubscribeRequest) -> Reply {
        let room = Self::parse_room(&req.room)?;
        if self.subscriptions.contains_key(&room) {
            return Err(error(
                ErrorCode::ALREADY_SUBSCRIBED,
                format!("already subscribed to {room}"),
            ));
        }
        let max = self.node.config.limits.max_rooms_per_connection;
        if self.subscriptions.len() >= max {
            return Err(error(
                ErrorCode::LIMIT_EXCEEDED,
                format!("at most {max} rooms per connection"),
            ));
        }
        let (options, stream) = self.room_options(&room)?;
        self.may_read(&room, &options, &req.token)?;
        let delta = req.delta && options.delta;
        self.join_room(room, options, stream, req.since, delta, move |result| {
            ServerFrame {
                id,
                body: Some(Body::Subscribe(result)),
            }
        })
        .await?;
        Ok(Body::Subscribe(SubscribeResult::default()))
    }

    /// Adds the connection to a room: registers it as pending in the hub,
    /// reads the stream (recovering from `since`), queues `reply`, then
    /// releases the live frames that arrived meanwhile, without duplicates.
    async fn join_room(
        &mut self,
        room: RoomName,
        options: RoomOptions,
        stream: StreamOptions,
        since: Option<crate::wire::v1::StreamPosition>,
        delta: bool,
        reply: impl FnOnce(SubscribeResult) -> ServerFrame,
    ) -> Result<(), Error> {
        let node = self.node.clone();
        let (members, _) =
            node.hub
                .add_pending(room.as_arc(), &self.id, self.outbox.clone(), delta);
        if options.max_members > 0 && members > options.max_members {
            node.hub.remove(room.as_str(), &self.id);
            return Err(error(ErrorCode::ROOM_FULL, format!("{room} is full")));
        }
        let result = self.read_stream(&room, stream, since).await;
        let result = match result {
            Ok(result) => result,
            Err(err) => {
                node.hub.remove(room.as_str(), &self.id);
                return Err(err);
            }
        };
        let info = self.connected().map(|c| c.info.clone()).unwrap_or_default();
        if options.presence {
            if let Err(err) = node.broker.add_presence(room.as_str(), info.clone()).await {
                node.hub.remove(room.as_str(), &self.id);
                return Err(broker_error(err));
            }
        }
        let top = result.offset;
        let _ = self.outbox.push_frame(&reply(result));
        node.hub.activate(room.as_str(), &self.id, top);
        if options.join_leave {
            let _ = node.broker.publish_join(room.as_str(), info).await;
        }
        m::subscribed(1);
        self.subscriptions.insert(room, Subscription { options });
        Ok(())
    }

    /// The subscribe result: the stream's position, and the missed
    /// publications when recovering (all of them, or `recovered = false`).
    async fn read_stream(
        &self,
        room: &RoomName,
        stream: StreamOptions,
        since: Option<crate::wire::v1::StreamPosition>,
    ) -> Result<SubscribeResult, Error> {
        let broker = &self.node.broker;
        let recoverable = stream.history_size > 0;
        if !recoverable {
            return Ok(SubscribeResult {
                recoverable,
                ..Default::default()
            });
        }
        let max = self.node.config.limits.max_history_reply;
        let top_only = HistoryQuery {
            since: None,
            limit: 0,
            reverse: false,
        };
        let Some(since) = since else {
            let page = broker
                .history(room.as_str(), top_only, stream)
                .await
                .map_err(broker_error)?;
            return Ok(SubscribeResult {
                epoch: page.top.epoch,
                offset: page.top.offset,
                recoverable,
                ..Default::default()
            });
        };
        let query = HistoryQuery {
            since: Some(since),
            limit: max + 1,
            reverse: false,
        };
        match broker.history(room.as_str(), query, stream).await {
            // Everything missed fits in one reply: recovered.
            Ok(page)
                if page.publications.len() <= max && self.fits_in_one_reply(&page.publications) =>
            {
                Ok(SubscribeResult {
                    epoch: page.top.epoch,
                    offset: page.top.offset,
                    recoverable,
                    recovered: true,
                    publications: page.publications,
                })
            }
            Ok(page) => {
                m::recovery(false);
                Ok(SubscribeResult {
                    epoch: page.top.epoch,
                    offset: page.top.offset,
                    recoverable,
                    ..Default::default()
                })
            }
            Err(BrokerError::Unrecoverable) => {
                m::recovery(false);
                let page = broker
                    .history(room.as_str(), top_only, stream)
                    .await
                    .map_err(broker_error)?;
                Ok(SubscribeResult {
                    epoch: page.top.epoch,
                    offset: page.top.offset,
                    recoverable,
                    ..Default::default()
                })
            }
            Err(err) => Err(broker_error(err)),
        }
    }

    /// Whether publications fit in one reply without filling more than half
    /// of the connection's queue (a reply the queue cannot hold would close
    /// the connection as slow). JSON is counted at twice the protobuf size.
    fn fits_in_one_reply(&self, publications: &[Publication]) -> bool {
        self.reply_prefix(publications) == publications.len()
    }

    /// How many of `publications`, from the first, fit in one reply.
    fn reply_prefix(&self, publications: &[Publication]) -> usize {
        use prost::Message as _;
        let factor = if self.outbox.encoding().is_text() {
            2
        } else {
            1
        };
        let budget = self.outbox.capacity() / 2;
        let mut used = 0;
        publications
            .iter()
            .take_while(|p| {
                used += (p.encoded_len() + 4) * factor;
                used <= budget
            })
            .count()
    }

    async fn unsubscribe(&mut self, room: &str) -> Reply {
        let room = Self::parse_room(room)?;
        let Some(subscription) = self.subscriptions.remove(&room) else {
            return Err(error(
                ErrorCode::NOT_SUBSCRIBED,
                format!("not subscribed to {room}"),
            ));
        };
        self.leave_room(&room, &subscription).await;
        Ok(Body::Unsubscribe(UnsubscribeResult {}))
    }

    async fn leave_room(&self, room: &RoomName, subscription: &Subscription) {
        let node = &self.node;
        node.hub.remove(room.as_str(), &self.id);
        if subscription.options.presence {
            let _ = node.broker.remove_presence(room.as_str(), &self.id).await;
        }
        if subscription.options.join_leave {
            let info = self.connected().map(|c| c.info.clone()).unwrap_or_default();
            let _ = node.broker.publish_leave(room.as_str(), info).await;
        }
        m::subscribed(-1);
    }

    async fn publish(&mut self, req: PublishRequest) -> Reply {
        let room = Self::parse_room(&req.room)?;
        let (options, stream) = self.room_options(&room)?;
        let Some(c) = self.connected() else {
            return Err(error(ErrorCode::UNAUTHORIZED, "connect first"));
        };
        let subscribed = self.subscriptions.contains_key(&room);
        if !(c.credentials.may_publish(room.as_str()) || (options.allow_publish && subscribed)) {
            let why = if options.allow_publish {
                "subscribe to it first, or get a publish claim matching it"
            } else {
                "no publish claim matches it and its namespace does not allow client publishing"
            };
            return Err(error(
                ErrorCode::PERMISSION_DENIED,
                format!("not allowed to publish into {room}: {why}"),
            ));
        }
        let publication = Publication {
            room: req.room,
            offset: 0,
            data: req.data,
            info: Some(c.info.clone()),
            tags: req.tags,
            time: i64::try_from(self.node.unix_time().as_millis()).unwrap_or(i64::MAX),
            delta: false,
        };
        let options = PublishOptions {
            exclude: req.exclude_self.then_some(&*self.id),
            ..PublishOptions::default()
        };
        let top = self
            .node
            .broker
            .publish(room.as_str(), publication, stream, options)
            .await
            .map_err(broker_error)?;
        m::published();
        Ok(Body::Publish(PublishResult {
            offset: top.offset,
            epoch: top.epoch,
        }))
    }

    async fn presence(&self, room: &str, stats: bool) -> Reply {
        let room = Self::parse_room(room)?;
        let (options, _) = self.room_options(&room)?;
        if !self.subscriptions.contains_key(&room) {
            self.may_read(&room, &options, "")?;
        }
        if !options.presence {
            return Err(error(
                ErrorCode::NOT_AVAILABLE,
                format!("presence is off for {room}"),
            ));
        }
        let broker = &self.node.broker;
        if stats {
            let s = broker
                .presence_stats(room.as_str())
                .await
                .map_err(broker_error)?;
            Ok(Body::PresenceStats(PresenceStatsResult {
                clients: s.clients,
                users: s.users,
            }))
        } else {
            let clients = broker.presence(room.as_str()).await.map_err(broker_error)?;
            Ok(Body::Presence(PresenceResult { clients }))
        }
    }

    async fn history(&self, req: HistoryRequest) -> Reply {
        let room = Self::parse_room(&req.room)?;
        let (options, stream) = self.room_options(&room)?;
        if !self.subscriptions.contains_key(&room) {
            self.may_read(&room, &options, "")?;
        }
        if stream.history_size == 0 {
            return Err(error(
                ErrorCode::NOT_AVAILABLE,
                format!("history is off for {room}"),
            ));
        }
        let limit = (req.limit as usize).min(self.node.config.limits.max_history_reply);
        let query = HistoryQuery {
            since: req.since,
            limit,
            reverse: req.reverse,
        };
        let mut page = self
            .node
            .broker
            .history(room.as_str(), query, stream)
            .await
            .map_err(broker_error)?;
        // Large payloads: return what fits; the client pages on from the last offset.
        page.publications
            .truncate(self.reply_prefix(&page.publications));
        Ok(Body::History(HistoryResult {
            publications: page.publications,
            epoch: page.top.epoch,
            offset: page.top.offset,
        }))
    }

    fn refresh(&mut self, req: RefreshRequest) -> Result<Reply, Close> {
        let node = self.node.clone();
        let now_unix = node.unix_time().as_secs();
        let Phase::Connected(c) = &mut self.phase else {
            return Err(Close::new(
                CloseCode::BAD_REQUEST,
                "the first command must be connect",
            ));
        };
        if c.credentials.user.is_empty() {
            return Ok(Err(error(
                ErrorCode::BAD_REQUEST,
                "anonymous connections have nothing to refresh",
            )));
        }
        let fresh = match node.verifier.verify(&req.token, now_unix) {
            Ok(fresh) => fresh,
            Err(AuthError::Expired) => {
                return Ok(Err(error(ErrorCode::TOKEN_EXPIRED, "token expired")));
            }
            Err(err) => return Ok(Err(error(ErrorCode::INVALID_TOKEN, err.to_string()))),
        };
        if fresh.user != c.credentials.user {
            return Ok(Err(error(
                ErrorCode::INVALID_TOKEN,
                "the token is for another user",
            )));
        }
        c.expires = fresh
            .expires_at
            .map(|exp| node.instant_of_unix(exp) + node.config.auth.expiry_grace);
        let expires_in = fresh.expires_at.map_or(0, |exp| {
            u32::try_from(exp.saturating_sub(now_unix)).unwrap_or(u32::MAX)
        });
        c.credentials = fresh;
        Ok(Ok(Body::Refresh(RefreshResult {
            expires_in_seconds: expires_in,
        })))
    }

    /// Cleans up after the connection is gone: leaves every room (presence,
    /// leave pushes) and unregisters.
    pub async fn finish(mut self) {
        let subscriptions: Vec<_> = self.subscriptions.drain().collect();
        for (room, subscription) in &subscriptions {
            self.leave_room(room, subscription).await;
        }
        self.node
            .unregister(&self.id, self.registered_user.as_deref());
        m::connection_closed();
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Connect(_) => "connect",
        Command::Subscribe(_) => "subscribe",
        Command::Unsubscribe(_) => "unsubscribe",
        Command::Publish(_) => "publish",
        Command::Presence(_) => "presence",
        Command::PresenceStats(_) => "presence_stats",
        Command::History(_) => "history",
        Command::Refresh(_) => "refresh",
        Command::Ping(_) => "ping",
        Command::Pong(_) => "pong",
    }
}
