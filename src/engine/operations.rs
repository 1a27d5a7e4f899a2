//! What a backend can do to a node through the server API
//! (spec/10-server-api.md): publish, read presence and history, manage
//! users' connections, issue connection tickets.
//!
//! Each operation validates its input the way the client protocol does (room
//! names, namespaces) and fails with an [`OpError`] carrying the error code
//! the HTTP layer maps to a status. Operations on connections reach each
//! session through its control channel, so a session's state is only ever
//! changed by the session itself.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use super::node::Node;
use super::outbox::Close;
use super::room::RoomName;
use super::session::Control;
use crate::auth::RoomPattern;
use crate::broker::{
    BrokerError, HistoryPage, HistoryQuery, PresenceStats, PublishOptions, StreamOptions,
    StreamTop, TicketGrant,
};
use crate::codes::{CloseCode, ErrorCode, UnsubscribeCode};
use crate::wire::v1::{ClientInfo, Publication};

/// A failed operation: the code and message the caller is told.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({})", code.0)]
pub struct OpError {
    /// The error code (spec/05-codes.md).
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
    /// The broker could not serve the operation now (code 100, temporary).
    /// Kept apart from a server fault, so the HTTP layer can answer 503
    /// (retry elsewhere or later) rather than 500.
    pub unavailable: bool,
}

impl OpError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            unavailable: false,
        }
    }

    /// The broker cannot serve the operation now: code 100, temporary.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::INTERNAL,
            message: message.into(),
            unavailable: true,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BAD_REQUEST, message)
    }
}

impl From<BrokerError> for OpError {
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::Unrecoverable => {
                Self::new(ErrorCode::UNRECOVERABLE_POSITION, err.to_string())
            }
            BrokerError::Unavailable(_) => Self::unavailable(err.to_string()),
        }
    }
}

/// Who a node is and how busy, for `info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Server name and version.
    pub version: String,
    /// Node id.
    pub node: String,
    /// Open connections.
    pub connections: u64,
    /// Distinct users connected.
    pub users: u64,
    /// Rooms with members.
    pub rooms: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
}

/// Most rooms one `broadcast` may name.
pub const MAX_BROADCAST_ROOMS: usize = 1000;
/// Longest ticket lifetime a caller may ask for.
pub const MAX_TICKET_TTL: Duration = Duration::from_secs(3600);

impl Node {
    fn room_and_stream(&self, room: &str) -> Result<(RoomName, StreamOptions), OpError> {
        let name = RoomName::parse(room).map_err(|e| OpError::bad_request(e.to_string()))?;
        let (_, stream) = self.room_options(name.namespace()).ok_or_else(|| {
            OpError::new(
                ErrorCode::UNKNOWN_ROOM,
                format!("namespace {:?} is not configured", name.namespace()),
            )
        })?;
        Ok((name, stream))
    }

    /// Publishes a payload into a room as the server (no publisher info).
    pub async fn publish(
        &self,
        room: &str,
        data: Bytes,
        tags: BTreeMap<String, String>,
        idempotency_key: &str,
    ) -> Result<StreamTop, OpError> {
        let (name, stream) = self.room_and_stream(room)?;
        if data.len() > self.config.limits.max_frame_size {
            return Err(OpError::new(
                ErrorCode::LIMIT_EXCEEDED,
                format!(
                    "payload exceeds {} bytes",
                    self.config.limits.max_frame_size
                ),
            ));
        }
        let publication = Publication {
            room: name.to_string(),
            offset: 0,
            data,
            info: None,
            tags,
            time: i64::try_from(self.unix_time().as_millis()).unwrap_or(i64::MAX),
            delta: false,
        };
        let options = PublishOptions {
            exclude: None,
            idempotency_key: (!idempotency_key.is_empty()).then_some(idempotency_key),
            idempotency_window: self.config.api.idempotency_window,
        };
        let top = self
            .broker
            .publish(name.as_str(), publication, stream, options)
            .await?;
        crate::metrics::published();
        Ok(top)
    }

    /// Publishes the same payload into several rooms; one result per room.
    pub async fn broadcast(
        &self,
        rooms: &[String],
        data: Bytes,
        tags: BTreeMap<String, String>,
        idempotency_key: &str,
    ) -> Result<Vec<Result<StreamTop, OpError>>, OpError> {
        if rooms.len() > MAX_BROADCAST_ROOMS {
            return Err(OpError::new(
                ErrorCode::LIMIT_EXCEEDED,
                format!("at most {MAX_BROADCAST_ROOMS} rooms per broadcast"),
            ));
        }
        let mut results = Vec::with_capacity(rooms.len());
        for room in rooms {
            results.push(
                self.publish(room, data.clone(), tags.clone(), idempotency_key)
                    .await,
            );
        }
        Ok(results)
    }

    fn presence_room(&self, room: &str) -> Result<RoomName, OpError> {
        let (name, _) = self.room_and_stream(room)?;
        match self.room_options(name.namespace()) {
            Some((options, _)) if options.presence => Ok(name),
            _ => Err(OpError::new(
                ErrorCode::NOT_AVAILABLE,
                format!("presence is off for {name}"),
            )),
        }
    }

    /// Who is in a room.
    pub async fn presence(&self, room: &str) -> Result<BTreeMap<String, ClientInfo>, OpError> {
        let name = self.presence_room(room)?;
        Ok(self.broker.presence(name.as_str()).await?)
    }

    /// How many are in a room.
    pub async fn presence_stats(&self, room: &str) -> Result<PresenceStats, OpError> {
        let name = self.presence_room(room)?;
        Ok(self.broker.presence_stats(name.as_str()).await?)
    }

    /// Reads a room's history (at most `limits.max_history_reply`).
    pub async fn history(
        &self,
        room: &str,
        mut query: HistoryQuery,
    ) -> Result<HistoryPage, OpError> {
        let (name, stream) = self.room_and_stream(room)?;
        if stream.history_size == 0 {
            return Err(OpError::new(
                ErrorCode::NOT_AVAILABLE,
                format!("history is off for {name}"),
            ));
        }
        query.limit = query.limit.min(self.config.limits.max_history_reply);
        Ok(self.broker.history(name.as_str(), query, stream).await?)
    }

    /// Forgets a room's history. Local subscribers are told their stream
    /// state is gone (`unsubscribed` 2000), so they resubscribe into the new
    /// epoch and learn `recovered = false` rather than miss the change.
    pub async fn remove_history(&self, room: &str) -> Result<(), OpError> {
        let (name, _) = self.room_and_stream(room)?;
        self.broker.remove_history(name.as_str()).await?;
        let control =
            Control::Unsubscribe(name.clone(), UnsubscribeCode::STATE_LOST, "history removed");
        self.control_room(name.as_str(), &control);
        Ok(())
    }

    /// Subscribes a user's connections (or one of them) to a room. Returns
    /// how many connections were asked.
    pub fn subscribe_user(&self, user: &str, room: &str, client: &str) -> Result<u32, OpError> {
        let (name, _) = self.room_and_stream(room)?;
        non_empty(user, "user")?;
        Ok(self.control_user(user, client, &Control::Subscribe(name)))
    }

    /// Ends a room's subscription on a user's connections (`unsubscribed`
    /// 2500). Returns how many connections were asked.
    pub fn unsubscribe_user(&self, user: &str, room: &str, client: &str) -> Result<u32, OpError> {
        let name = RoomName::parse(room).map_err(|e| OpError::bad_request(e.to_string()))?;
        non_empty(user, "user")?;
        let control =
            Control::Unsubscribe(name, UnsubscribeCode::SERVER, "unsubscribed by the server");
        Ok(self.control_user(user, client, &control))
    }

    /// Closes a user's connections (or one) with `code` (3504 when 0).
    pub fn disconnect(
        &self,
        user: &str,
        client: &str,
        code: u32,
        reason: &str,
    ) -> Result<u32, OpError> {
        non_empty(user, "user")?;
        let code = match code {
            0 => CloseCode::FORCE_DISCONNECT,
            3008 | 3504 | 4000..=4999 => CloseCode(code as u16),
            other => {
                return Err(OpError::bad_request(format!(
                    "close code {other}: use 3504, 3008 or an application code in 4000-4999"
                )));
            }
        };
        let reason = if reason.is_empty() {
            "disconnected by the server"
        } else {
            reason
        };
        Ok(self.close_user(user, client, &Close::new(code, reason)))
    }

    /// Sets when a user's sessions expire (`None`: never). Returns how many
    /// connections were updated.
    pub fn refresh_user(
        &self,
        user: &str,
        client: &str,
        expire_at: Option<u64>,
    ) -> Result<u32, OpError> {
        non_empty(user, "user")?;
        Ok(self.control_user(user, client, &Control::Expire(expire_at)))
    }

    /// Rooms with local members whose names match `pattern` (empty: all),
    /// ordered by name, after `cursor`, at most `limit` (default 100, at
    /// most 1000). Returns the page and the cursor of the next one.
    pub fn rooms(
        &self,
        pattern: &str,
        limit: usize,
        cursor: &str,
    ) -> (Vec<(String, u32)>, Option<String>) {
        let limit = if limit == 0 { 100 } else { limit.min(1000) };
        let pattern = (!pattern.is_empty()).then(|| RoomPattern::new(pattern));
        let mut rooms: Vec<(String, u32)> = self
            .hub
            .room_list()
            .into_iter()
            .filter(|(name, _)| name.as_str() > cursor)
            .filter(|(name, _)| pattern.as_ref().is_none_or(|p| p.matches(name)))
            .collect();
        rooms.sort_unstable();
        let next = (rooms.len() > limit).then(|| rooms[limit - 1].0.clone());
        rooms.truncate(limit);
        (rooms, next)
    }

    /// Who this node is.
    pub fn info(&self) -> NodeInfo {
        let stats = self.stats();
        NodeInfo {
            version: concat!("switchboard/", env!("CARGO_PKG_VERSION")).into(),
            node: self.id().to_owned(),
            connections: stats.connections as u64,
            users: stats.users as u64,
            rooms: stats.rooms as u64,
            uptime_seconds: self.uptime().as_secs(),
        }
    }

    /// Issues a single-use connection ticket. Returns the ticket and how
    /// long it stays usable.
    pub async fn issue_ticket(
        &self,
        grant: TicketGrant,
        ttl: Duration,
    ) -> Result<(String, Duration), OpError> {
        non_empty(&grant.user, "user")?;
        for pattern in grant.subscribe.iter().chain(&grant.publish) {
            if pattern.is_empty() || pattern.len() > 255 {
                return Err(OpError::bad_request(format!(
                    "bad room pattern {pattern:?}"
                )));
            }
        }
        let ttl = if ttl.is_zero() {
            self.config.api.ticket_ttl
        } else {
            ttl.min(MAX_TICKET_TTL)
        };
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| {
            OpError::new(
                ErrorCode::INTERNAL,
                format!("no randomness for a ticket: {e}"),
            )
        })?;
        let ticket = format!(
            "tk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        self.broker.store_ticket(&ticket, grant, ttl).await?;
        Ok((ticket, ttl))
    }
}

fn non_empty(value: &str, what: &str) -> Result<(), OpError> {
    if value.is_empty() {
        Err(OpError::bad_request(format!("{what} is required")))
    } else {
        Ok(())
    }
}
