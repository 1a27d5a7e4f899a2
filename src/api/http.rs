//! The server API over HTTP (spec/10-server-api.md): `POST /api/v1/<method>`
//! with the method's request message of `proto/switchboard/v1/api.proto` as
//! the body, in JSON (the proto3 mapping, payloads as JSON values) or
//! protobuf, and the method's result message, in the same format, as the
//! reply.
//!
//! This module owns the HTTP edge of the API: routing, API keys, body
//! formats and size, and the one total function from an error code to the
//! HTTP status a caller gets ([`status`]). What each method does belongs to
//! the engine (`src/engine/operations.rs`); this module only translates
//! between messages and [`Node`] operations ([`call`], [`batch`]). It must
//! never panic or answer 5xx for anything a caller sends: a malformed request
//! ends in a 4xx reply with an `Error` body.
//!
//! [`client`] is the minimal HTTP/1.1 client behind `switchboard publish` and
//! `switchboard api`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::broker::{HistoryQuery, StreamTop, TicketGrant};
use crate::codes::ErrorCode;
use crate::config::Config;
use crate::engine::{Node, OpError};
use crate::wire::api;
use crate::wire::api::api_call::Method as Call;
use crate::wire::api::api_reply::Result as Reply;

/// The path of every method: `POST /api/v1/<method>`.
pub const PREFIX: &str = "/api/v1/";
/// Where the OpenAPI document of the JSON API is served (`GET`, no key).
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// The media type of JSON bodies (also the default without `Content-Type`).
pub const JSON: &str = "application/json";
/// The media type of protobuf bodies (`application/protobuf` is accepted
/// too).
pub const PROTOBUF: &str = "application/x-protobuf";
/// Most calls one `batch` may carry; more is error 106 (HTTP 422).
pub const MAX_BATCH_CALLS: usize = 1000;

/// A method of the server API: the last segment of its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiMethod {
    /// `publish`: one payload into one room.
    Publish,
    /// `broadcast`: one payload into several rooms.
    Broadcast,
    /// `presence`: who is in a room.
    Presence,
    /// `presence_stats`: how many are in a room.
    PresenceStats,
    /// `history`: a room's kept publications.
    History,
    /// `history_remove`: forget a room's history.
    HistoryRemove,
    /// `subscribe`: server-side subscription of a user's connections.
    Subscribe,
    /// `unsubscribe`: end a subscription on a user's connections.
    Unsubscribe,
    /// `disconnect`: close a user's connections.
    Disconnect,
    /// `refresh`: set when a user's sessions expire.
    Refresh,
    /// `rooms`: rooms with members, a page at a time.
    Rooms,
    /// `info`: who this node is and how busy.
    Info,
    /// `tickets`: a single-use connection ticket.
    Tickets,
    /// `batch`: several calls in one request.
    Batch,
}

impl ApiMethod {
    /// Every method, in the order of `ApiCall`'s oneof, then `batch`.
    pub const ALL: [Self; 14] = [
        Self::Publish,
        Self::Broadcast,
        Self::Presence,
        Self::PresenceStats,
        Self::History,
        Self::HistoryRemove,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::Disconnect,
        Self::Refresh,
        Self::Rooms,
        Self::Info,
        Self::Tickets,
        Self::Batch,
    ];

    /// The method's name, as in its path.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Broadcast => "broadcast",
            Self::Presence => "presence",
            Self::PresenceStats => "presence_stats",
            Self::History => "history",
            Self::HistoryRemove => "history_remove",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Disconnect => "disconnect",
            Self::Refresh => "refresh",
            Self::Rooms => "rooms",
            Self::Info => "info",
            Self::Tickets => "tickets",
            Self::Batch => "batch",
        }
    }

    /// The method with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The body format of a request and its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The proto3 JSON mapping (`application/json`, or no `Content-Type`).
    Json,
    /// The protobuf encoding (`application/x-protobuf`).
    Protobuf,
}

impl Format {
    /// The format a request's `Content-Type` names: none or
    /// `application/json` is JSON, `application/x-protobuf` (or
    /// `application/protobuf`) is protobuf; parameters such as `charset` are
    /// ignored. Anything else is [`ApiError::UnsupportedMediaType`].
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(header::CONTENT_TYPE) else {
            return Ok(Self::Json);
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let essence = text.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case(JSON) {
            Ok(Self::Json)
        } else if essence.eq_ignore_ascii_case(PROTOBUF)
            || essence.eq_ignore_ascii_case("application/protobuf")
        {
            Ok(Self::Protobuf)
        } else {
            Err(ApiError::UnsupportedMediaType(shorten(&text, 100)))
        }
    }

    /// The `Content-Type` of bodies in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::Protobuf => PROTOBUF,
        }
    }

    /// Decodes a request message. An empty (or, in JSON, all-whitespace)
    /// body is the message with every field at its default, like `{}`.
    pub fn decode<M>(self, body: &[u8]) -> Result<M, ApiError>
    where
        M: prost::Message + Default + DeserializeOwned,
    {
        match self {
            Self::Json if body.trim_ascii().is_empty() => Ok(M::default()),
            Self::Json => serde_json::from_slice(body)
                .map_err(|e| ApiError::Malformed(format!("invalid JSON request: {e}"))),
            Self::Protobuf => M::decode(body)
                .map_err(|e| ApiError::Malformed(format!("invalid protobuf request: {e}"))),
        }
    }

    /// Encodes a reply message.
    pub fn encode<M>(self, message: &M) -> Result<Bytes, ApiError>
    where
        M: prost::Message + Serialize,
    {
        match self {
            Self::Json => serde_json::to_vec(message).map(Bytes::from).map_err(|e| {
                ApiError::Op(OpError::new(
                    ErrorCode::INTERNAL,
                    format!("cannot encode the reply: {e}"),
                ))
            }),
            Self::Protobuf => Ok(Bytes::from(message.encode_to_vec())),
        }
    }
}

/// Why a request failed: what the caller is told, and with which status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No API key, a wrong one, or the API is closed (no key configured).
    /// HTTP 401, code 101.
    #[error("{0}")]
    Unauthorized(String),
    /// The path names no method. HTTP 404, code 104.
    #[error("unknown method {0:?}: the methods are {methods}", methods = method_list())]
    UnknownMethod(String),
    /// The HTTP method is not the one the path takes. HTTP 405, code 107.
    #[error("HTTP method {method} is not allowed here: use {allow}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The method to use (the `Allow` header).
        allow: &'static str,
    },
    /// The body exceeds `api.max_body_size`. HTTP 413, code 107.
    #[error("the body exceeds api.max_body_size ({limit} bytes)")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The `Content-Type` names no format the API speaks. HTTP 415, code 107.
    #[error(
        "unsupported Content-Type {0:?}: send application/json (or no Content-Type) or \
         application/x-protobuf"
    )]
    UnsupportedMediaType(String),
    /// The body is not the method's request message. HTTP 400, code 107.
    #[error("{0}")]
    Malformed(String),
    /// The node cannot serve now (shutting down). HTTP 503, code 100,
    /// temporary.
    #[error("{0}")]
    Unavailable(String),
    /// The operation failed; the status follows from its code ([`status`]),
    /// or is 503 when the broker was unavailable.
    #[error(transparent)]
    Op(#[from] OpError),
}

impl ApiError {
    /// The error code of the `Error` body.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized(_) => ErrorCode::UNAUTHORIZED,
            Self::UnknownMethod(_) => ErrorCode::UNKNOWN_COMMAND,
            Self::MethodNotAllowed { .. }
            | Self::BodyTooLarge { .. }
            | Self::UnsupportedMediaType(_)
            | Self::Malformed(_) => ErrorCode::BAD_REQUEST,
            Self::Unavailable(_) => ErrorCode::INTERNAL,
            Self::Op(op) => op.code,
        }
    }

    /// The HTTP status of the reply.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::UnknownMethod(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Op(op) if op.unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Op(op) => status(op.code),
        }
    }

    /// The `Error` message a caller receives (the body of a non-2xx reply,
    /// or a batch reply's `error`).
    pub fn to_wire(&self) -> api::Error {
        let message = match self {
            Self::Op(op) => op.message.clone(),
            other => other.to_string(),
        };
        api::Error {
            code: self.code().0,
            message,
            temporary: self.code().temporary(),
        }
    }
}

/// The HTTP status of a failed call with this error code (spec/10-server-api.md,
/// "Statuses"). Total: codes this version does not define map to 500 when in
/// the server's range (100–999) and to 400 when an application's (1000 and
/// up), so only the server's own faults are ever 5xx.
pub const fn status(code: ErrorCode) -> StatusCode {
    match code.0 {
        100 => StatusCode::INTERNAL_SERVER_ERROR,
        101 => StatusCode::UNAUTHORIZED,
        102 | 104 => StatusCode::NOT_FOUND,
        103 => StatusCode::FORBIDDEN,
        105 | 108 | 110 | 112 | 113 => StatusCode::CONFLICT,
        106 => StatusCode::UNPROCESSABLE_ENTITY,
        107 | 109 | 115 => StatusCode::BAD_REQUEST,
        111 | 114 => StatusCode::TOO_MANY_REQUESTS,
        1000.. => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn method_list() -> String {
    ApiMethod::ALL.map(ApiMethod::name).join(", ")
}

/// At most `max` characters of a caller-supplied string, for messages that
/// echo it.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The API's routes: `/api/v1/<method>` and the OpenAPI document. Any other
/// path under `/api/` is an unknown method (404 listing the methods).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/v1/{method}", any(handle))
        .route("/api/{*rest}", any(unknown_path))
        .with_state(node)
}

/// One request to `/api/v1/<name>`: routing, key, body, call, reply; and
/// the metrics of it.
async fn handle(
    State(node): State<Arc<Node>>,
    name: Result<Path<String>, PathRejection>,
    method: HttpMethod,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let name = name.map(|Path(name)| name).unwrap_or_default();
    let api_method = ApiMethod::from_name(&name);
    let response = match serve(&node, &name, api_method, &method, &headers, body).await {
        Ok(response) => response,
        Err(err) => error_response(Format::from_headers(&headers).unwrap_or(Format::Json), &err),
    };
    let label = match api_method {
        Some(m) => m.name(),
        None if name == "openapi.json" => "openapi",
        None => "unknown",
    };
    crate::metrics::api_call(label, response.status().as_u16(), started.elapsed());
    response
}

async fn unknown_path(Path(rest): Path<String>) -> Response {
    crate::metrics::api_call("unknown", 404, Duration::ZERO);
    error_response(Format::Json, &ApiError::UnknownMethod(shorten(&rest, 64)))
}

async fn serve(
    node: &Node,
    name: &str,
    api_method: Option<ApiMethod>,
    http_method: &HttpMethod,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if name == "openapi.json" {
        return openapi(http_method);
    }
    let method = api_method.ok_or_else(|| ApiError::UnknownMethod(shorten(name, 64)))?;
    if http_method != HttpMethod::POST {
        return Err(ApiError::MethodNotAllowed {
            method: http_method.to_string(),
            allow: "POST",
        });
    }
    authorize(node.config(), headers)?;
    if node.is_shutting_down() {
        return Err(ApiError::Unavailable(
            "the node is shutting down: retry on another node".into(),
        ));
    }
    let format = Format::from_headers(headers)?;
    let body = read_body(body, headers, node.config().api.max_body_size).await?;
    let reply = match method {
        ApiMethod::Batch => format.encode(&batch(node, format.decode(&body)?).await?)?,
        method => encode_reply(
            format,
            call(node, decode_call(method, format, &body)?).await?,
        )?,
    };
    Ok(with_content_type(StatusCode::OK, format, reply))
}

/// `GET /api/v1/openapi.json`: the OpenAPI document, no key needed.
fn openapi(method: &HttpMethod) -> Result<Response, ApiError> {
    if method != HttpMethod::GET && method != HttpMethod::HEAD {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: "GET",
        });
    }
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        // Serializing a `serde_json::Value` cannot fail: its keys are strings.
        Bytes::from(serde_json::to_vec(&crate::api::openapi::document()).unwrap_or_default())
    });
    Ok(with_content_type(
        StatusCode::OK,
        Format::Json,
        document.clone(),
    ))
}

fn with_content_type(status: StatusCode, format: Format, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        body,
    )
        .into_response()
}

/// The reply to a failed request: its status, and an `Error` body in the
/// request's format (JSON when the format is unknown).
fn error_response(format: Format, err: &ApiError) -> Response {
    // Encoding an `Error` (two strings and a number) cannot fail.
    let body = format.encode(&err.to_wire()).unwrap_or_default();
    let mut response = with_content_type(err.status(), format, body);
    match err {
        ApiError::MethodNotAllowed { allow, .. } => {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        ApiError::Unauthorized(_) => {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("apikey realm=\"switchboard\""),
            );
        }
        _ => {}
    }
    response
}

/// Checks the request's API key against every key in force
/// ([`Config::api_keys`]).
fn authorize(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let keys = config.api_keys();
    if keys.is_empty() {
        return Err(ApiError::Unauthorized(
            "the server API is closed: no API key is configured; set api.keys in the \
             server's config"
                .into(),
        ));
    }
    let presented = presented_key(headers)?;
    if key_matches(&keys, presented) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "the API key is not valid (it must be one of the server's api.keys)".into(),
        ))
    }
}

/// The key a request carries: `X-API-Key: <key>`, else
/// `Authorization: apikey <key>` (the scheme is case-insensitive).
fn presented_key(headers: &HeaderMap) -> Result<&[u8], ApiError> {
    const HOW: &str = "send `Authorization: apikey <key>` or `X-API-Key: <key>`";
    let key = if let Some(value) = headers.get("x-api-key") {
        value.as_bytes().trim_ascii()
    } else if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.as_bytes().trim_ascii();
        let (scheme, key) = match value.iter().position(|&b| b == b' ') {
            Some(space) => (&value[..space], value[space..].trim_ascii()),
            None => (value, &[][..]),
        };
        if !scheme.eq_ignore_ascii_case(b"apikey") {
            return Err(ApiError::Unauthorized(format!(
                "the Authorization header must use the apikey scheme: {HOW}"
            )));
        }
        key
    } else {
        return Err(ApiError::Unauthorized(format!("no API key: {HOW}")));
    };
    if key.is_empty() {
        return Err(ApiError::Unauthorized(format!("empty API key: {HOW}")));
    }
    Ok(key)
}

/// Whether `presented` equals one of `keys`, in time that does not depend on
/// where a key and the presented one differ: every key is compared in full,
/// with no early exit (only the lengths of keys can be learnt from timing).
fn key_matches(keys: &[&str], presented: &[u8]) -> bool {
    let mut matched = 0u8;
    for key in keys {
        // An empty key would match an empty presentation; it is never valid.
        matched |= u8::from(!key.is_empty() && constant_time_eq(key.as_bytes(), presented));
    }
    matched == 1
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keeps the compiler from turning the loop into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// Reads the body, refusing more than `limit` bytes: at once when
/// `Content-Length` says so, else as soon as the bytes received pass it.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut buffer = BytesMut::with_capacity(capacity);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::Malformed(format!("cannot read the request body: {e}")))?;
        if buffer.len().saturating_add(chunk.len()) > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// Decodes the body of a method other than `batch` into the call it makes.
fn decode_call(method: ApiMethod, format: Format, body: &[u8]) -> Result<Call, ApiError> {
    Ok(match method {
        ApiMethod::Publish => Call::Publish(format.decode(body)?),
        ApiMethod::Broadcast => Call::Broadcast(format.decode(body)?),
        ApiMethod::Presence => Call::Presence(format.decode(body)?),
        ApiMethod::PresenceStats => Call::PresenceStats(format.decode(body)?),
        ApiMethod::History => Call::History(format.decode(body)?),
        ApiMethod::HistoryRemove => Call::HistoryRemove(format.decode(body)?),
        ApiMethod::Subscribe => Call::Subscribe(format.decode(body)?),
        ApiMethod::Unsubscribe => Call::Unsubscribe(format.decode(body)?),
        ApiMethod::Disconnect => Call::Disconnect(format.decode(body)?),
        ApiMethod::Refresh => Call::Refresh(format.decode(body)?),
        ApiMethod::Rooms => Call::Rooms(format.decode(body)?),
        ApiMethod::Info => Call::Info(format.decode(body)?),
        ApiMethod::Tickets => Call::Ticket(format.decode(body)?),
        ApiMethod::Batch => {
            return Err(ApiError::Malformed(
                "a batch cannot be a call of a batch".into(),
            ));
        }
    })
}

/// Encodes the result of one call as its own message.
fn encode_reply(format: Format, reply: Reply) -> Result<Bytes, ApiError> {
    match reply {
        Reply::Error(r) => format.encode(&r),
        Reply::Publish(r) => format.encode(&r),
        Reply::Broadcast(r) => format.encode(&r),
        Reply::Presence(r) => format.encode(&r),
        Reply::PresenceStats(r) => format.encode(&r),
        Reply::History(r) => format.encode(&r),
        Reply::HistoryRemove(r) => format.encode(&r),
        Reply::Subscribe(r) => format.encode(&r),
        Reply::Unsubscribe(r) => format.encode(&r),
        Reply::Disconnect(r) => format.encode(&r),
        Reply::Refresh(r) => format.encode(&r),
        Reply::Rooms(r) => format.encode(&r),
        Reply::Info(r) => format.encode(&r),
        Reply::Ticket(r) => format.encode(&r),
    }
}

/// Runs one call on a node: the engine operation behind each method. On
/// success the reply is never [`Reply::Error`].
pub async fn call(node: &Node, call: Call) -> Result<Reply, ApiError> {
    Ok(match call {
        Call::Publish(r) => {
            let top = node
                .publish(&r.room, r.data, r.tags, &r.idempotency_key)
                .await?;
            Reply::Publish(publish_result(top))
        }
        Call::Broadcast(r) => {
            let outcomes = node
                .broadcast(&r.rooms, r.data, r.tags, &r.idempotency_key)
                .await?;
            let results = r
                .rooms
                .into_iter()
                .zip(outcomes)
                .map(|(room, outcome)| match outcome {
                    Ok(top) => api::BroadcastOutcome {
                        room,
                        publish: Some(publish_result(top)),
                        error: None,
                    },
                    Err(err) => api::BroadcastOutcome {
                        room,
                        publish: None,
                        error: Some(ApiError::Op(err).to_wire()),
                    },
                })
                .collect();
            Reply::Broadcast(api::BroadcastResult { results })
        }
        Call::Presence(r) => Reply::Presence(api::PresenceResult {
            clients: node.presence(&r.room).await?,
        }),
        Call::PresenceStats(r) => {
            let stats = node.presence_stats(&r.room).await?;
            Reply::PresenceStats(api::PresenceStatsResult {
                clients: stats.clients,
                users: stats.users,
            })
        }
        Call::History(r) => {
            let query = HistoryQuery {
                since: r.since,
                limit: usize::try_from(r.limit).unwrap_or(usize::MAX),
                reverse: r.reverse,
            };
            let page = node.history(&r.room, query).await?;
            Reply::History(api::HistoryResult {
                publications: page.publications,
                epoch: page.top.epoch,
                offset: page.top.offset,
            })
        }
        Call::HistoryRemove(r) => {
            node.remove_history(&r.room).await?;
            Reply::HistoryRemove(api::HistoryRemoveResult {})
        }
        Call::Subscribe(r) => Reply::Subscribe(api::SubscribeResult {
            connections: node.subscribe_user(&r.user, &r.room, &r.client)?,
        }),
        Call::Unsubscribe(r) => Reply::Unsubscribe(api::UnsubscribeResult {
            connections: node.unsubscribe_user(&r.user, &r.room, &r.client)?,
        }),
        Call::Disconnect(r) => Reply::Disconnect(api::DisconnectResult {
            connections: node.disconnect(&r.user, &r.client, r.code, &r.reason)?,
        }),
        Call::Refresh(r) => {
            let expire_at = unix_seconds(r.expire_at)?;
            Reply::Refresh(api::RefreshResult {
                connections: node.refresh_user(&r.user, &r.client, expire_at)?,
            })
        }
        Call::Rooms(r) => {
            let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
            let (rooms, next) = node.rooms(&r.pattern, limit, &r.cursor);
            Reply::Rooms(api::RoomsResult {
                rooms: rooms
                    .into_iter()
                    .map(|(name, members)| api::RoomInfo { name, members })
                    .collect(),
                next_cursor: next.unwrap_or_default(),
            })
        }
        Call::Info(_) => {
            let info = node.info();
            Reply::Info(api::InfoResult {
                version: info.version,
                node: info.node,
                connections: info.connections,
                users: info.users,
                rooms: info.rooms,
                uptime_seconds: info.uptime_seconds,
            })
        }
        Call::Ticket(r) => {
            let grant = TicketGrant {
                user: r.user,
                info: r.info,
                subscribe: r.subscribe,
                publish: r.publish,
                expires_at: unix_seconds(r.expire_at)?,
            };
            let ttl = Duration::from_secs(u64::from(r.ttl_seconds));
            let (ticket, ttl) = node.issue_ticket(grant, ttl).await?;
            Reply::Ticket(api::TicketResult {
                ticket,
                expires_in_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            })
        }
    })
}

/// Runs a batch: each call in order, one reply each (a failed call's reply
/// is its `error`; the batch goes on). Fails as a whole only when it has
/// more than [`MAX_BATCH_CALLS`] calls.
pub async fn batch(node: &Node, request: api::BatchRequest) -> Result<api::BatchResult, ApiError> {
    if request.calls.len() > MAX_BATCH_CALLS {
        return Err(ApiError::Op(OpError::new(
            ErrorCode::LIMIT_EXCEEDED,
            format!(
                "a batch has at most {MAX_BATCH_CALLS} calls, this one has {}",
                request.calls.len()
            ),
        )));
    }
    let mut replies = Vec::with_capacity(request.calls.len());
    for one in request.calls {
        let outcome = match one.method {
            Some(method) => call(node, method).await,
            None => Err(ApiError::Malformed(
                "a call of the batch names no method (or one this server does not know)".into(),
            )),
        };
        let result = outcome.unwrap_or_else(|err| Reply::Error(err.to_wire()));
        replies.push(api::ApiReply {
            result: Some(result),
        });
    }
    Ok(api::BatchResult { replies })
}

fn publish_result(top: StreamTop) -> api::PublishResult {
    api::PublishResult {
        offset: top.offset,
        epoch: top.epoch,
    }
}

/// An `expire_at` field: Unix seconds, 0 for none; negative is invalid.
fn unix_seconds(value: i64) -> Result<Option<u64>, ApiError> {
    match u64::try_from(value) {
        Ok(0) => Ok(None),
        Ok(seconds) => Ok(Some(seconds)),
        Err(_) => Err(ApiError::Op(OpError::new(
            ErrorCode::BAD_REQUEST,
            format!("expire_at {value}: Unix seconds, or 0 for none"),
        ))),
    }
}

pub mod client {
    //! A minimal HTTP/1.1 client for the command line (`switchboard
    //! publish`, `switchboard api`) and the integration tests: one request
    //! per TCP connection (`Connection: close`), `http://` URLs only — no
    //! TLS. Keep the API on a private address, or call it with curl through
    //! a TLS-terminating proxy. Not a general-purpose client: it reads the
    //! whole reply (at most [`MAX_RESPONSE`] bytes) within [`TIMEOUT`].

    use std::time::Duration;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::{JSON, PREFIX};
    use crate::wire::api;

    /// How long one exchange may take, connecting included.
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    /// The largest reply read.
    pub const MAX_RESPONSE: usize = 64 << 20;

    /// Where the server API is, and the key to call it with.
    #[derive(Clone, Debug)]
    pub struct Target {
        /// Base URL, e.g. `http://127.0.0.1:8000` (a path prefix is kept).
        pub url: String,
        /// The API key (sent as `X-API-Key`).
        pub key: String,
    }

    /// An HTTP reply.
    #[derive(Clone, Debug)]
    pub struct Response {
        /// The status code.
        pub status: u16,
        /// Header names (lowercase) and values, in order.
        pub headers: Vec<(String, String)>,
        /// The body (de-chunked).
        pub body: Bytes,
    }

    impl Response {
        /// The first value of a header (name in any case).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// Whether the status is 2xx.
        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.status)
        }

        /// The body as text (invalid UTF-8 replaced).
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Why an exchange failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum ClientError {
        /// The URL is not `http://host[:port][/path]`.
        #[error("invalid URL {url:?}: {why}")]
        Url {
            /// The URL.
            url: String,
            /// What is wrong with it.
            why: &'static str,
        },
        /// A request part would break the request (a line break in a
        /// header, a method name with a space...).
        #[error("invalid request: {0}")]
        Request(String),
        /// Connecting, writing or reading failed.
        #[error("{addr}: {source}")]
        Io {
            /// `host:port`.
            addr: String,
            /// The error.
            source: std::io::Error,
        },
        /// No complete reply within [`TIMEOUT`].
        #[error("{0}: no reply within {TIMEOUT:?}")]
        Timeout(String),
        /// The reply is not HTTP/1.x as this client understands it, or is
        /// larger than [`MAX_RESPONSE`].
        #[error("malformed HTTP reply: {0}")]
        Response(&'static str),
    }

    /// An `http://` URL split for a request.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Url {
        /// `host:port` to connect to (brackets kept for IPv6).
        authority: String,
        /// The path prefix, without a trailing `/` (may be empty).
        base: String,
    }

    fn parse_url(url: &str) -> Result<Url, ClientError> {
        let invalid = |why| ClientError::Url {
            url: url.to_owned(),
            why,
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(invalid(
                "https is not supported by this client: use http:// on a private address, or curl",
            ));
        } else {
            return Err(invalid("must start with http://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid("needs a host (and no user info)"));
        }
        if path.contains(['?', '#']) || !is_token_text(path) {
            return Err(invalid(
                "the path must be plain (no query, spaces or line breaks)",
            ));
        }
        let has_port = match authority.rfind(':') {
            Some(colon) => !authority[colon..].contains(']'),
            None => false,
        };
        if !is_token_text(authority) {
            return Err(invalid("the host has spaces or line breaks"));
        }
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            base: path.trim_end_matches('/').to_owned(),
        })
    }

    /// Visible ASCII only: safe inside a request line or header.
    fn is_token_text(text: &str) -> bool {
        text.bytes().all(|b| b.is_ascii_graphic())
    }

    /// Sends one request (`path` is appended to the URL's path) and reads
    /// the whole reply.
    pub async fn request(
        url: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, ClientError> {
        let url = parse_url(url)?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ClientError::Request(format!("HTTP method {method:?}")));
        }
        if !path.starts_with('/') || !is_token_text(path) {
            return Err(ClientError::Request(format!("path {path:?}")));
        }
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            url.base,
            url.authority,
            body.len()
        );
        for (name, value) in headers {
            if !is_token_text(name) || name.contains(':') || value.contains(['\r', '\n']) {
                return Err(ClientError::Request(format!("header {name:?}")));
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let addr = url.authority.clone();
        let io = |source| ClientError::Io {
            addr: addr.clone(),
            source,
        };
        let exchange = async {
            let mut stream = TcpStream::connect(url.authority.as_str())
                .await
                .map_err(io)?;
            stream.write_all(head.as_bytes()).await.map_err(io)?;
            stream.write_all(body).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            let mut raw = Vec::new();
            let limit = u64::try_from(MAX_RESPONSE).unwrap_or(u64::MAX) + 1;
            (&mut stream)
                .take(limit)
                .read_to_end(&mut raw)
                .await
                .map_err(io)?;
            if raw.len() > MAX_RESPONSE {
                return Err(ClientError::Response("larger than MAX_RESPONSE"));
            }
            parse_response(&raw)
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout(url.authority.clone()))?
    }

    /// Parses a complete HTTP/1.x reply (read until the server closed).
    fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
        let mut raw = raw;
        loop {
            let end = find(raw, b"\r\n\r\n").ok_or(ClientError::Response("no end of headers"))?;
            let head = std::str::from_utf8(&raw[..end])
                .map_err(|_| ClientError::Response("headers are not UTF-8"))?;
            let rest = &raw[end + 4..];
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let mut parts = status_line.splitn(3, ' ');
            if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
                return Err(ClientError::Response("not HTTP/1.x"));
            }
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(ClientError::Response("no status code"))?;
            let mut headers = Vec::new();
            for line in lines {
                let (name, value) = line
                    .split_once(':')
                    .ok_or(ClientError::Response("a header line without ':'"))?;
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
            if (100..200).contains(&status) {
                // An interim reply (100 Continue): the real one follows.
                raw = rest;
                continue;
            }
            let mut response = Response {
                status,
                headers,
                body: Bytes::new(),
            };
            let chunked = response
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            response.body = if chunked {
                Bytes::from(dechunk(rest)?)
            } else if let Some(length) = response.header("content-length") {
                let length: usize = length
                    .parse()
                    .map_err(|_| ClientError::Response("invalid Content-Length"))?;
                let body = rest
                    .get(..length)
                    .ok_or(ClientError::Response("shorter than its Content-Length"))?;
                Bytes::copy_from_slice(body)
            } else {
                Bytes::copy_from_slice(rest)
            };
            return Ok(response);
        }
    }

    /// Decodes a chunked body (trailers are ignored).
    fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        loop {
            let line_end = find(data, b"\r\n").ok_or(ClientError::Response("truncated chunk"))?;
            let size = std::str::from_utf8(&data[..line_end])
                .ok()
                .and_then(|line| line.split(';').next())
                .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
                .ok_or(ClientError::Response("invalid chunk size"))?;
            data = &data[line_end + 2..];
            if size == 0 {
                return Ok(out);
            }
            let chunk = data
                .get(..size)
                .ok_or(ClientError::Response("truncated chunk"))?;
            out.extend_from_slice(chunk);
            data = data
                .get(size..)
                .and_then(|d| d.strip_prefix(b"\r\n"))
                .ok_or(ClientError::Response("a chunk without its line break"))?;
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// `POST /api/v1/<method>` with the target's key and a body of the
    /// given media type.
    pub async fn call(
        target: &Target,
        method: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, ClientError> {
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(ClientError::Request(format!("method name {method:?}")));
        }
        let path = format!("{PREFIX}{method}");
        let headers = [
            ("X-API-Key", target.key.as_str()),
            ("Content-Type", content_type),
            ("Accept", content_type),
        ];
        request(&target.url, "POST", &path, &headers, body).await
    }

    /// `switchboard publish`: publishes `data` into `room` and prints the
    /// result as JSON. The data is sent as given: as a JSON value when it is
    /// JSON text, as base64 otherwise (spec/03-messages.md, "Payloads").
    pub async fn run_publish(
        target: &Target,
        room: String,
        data: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> Result<(), String> {
        let request = api::PublishRequest {
            room,
            data: data.into(),
            tags: Default::default(),
            idempotency_key: idempotency_key.unwrap_or_default(),
        };
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        print_reply(call(target, "publish", JSON, &body).await)
    }

    /// `switchboard api`: posts JSON to a method and prints the reply.
    pub async fn run_call(target: &Target, method: &str, json: &str) -> Result<(), String> {
        print_reply(call(target, method, JSON, json.as_bytes()).await)
    }

    /// Prints a 2xx reply's body on stdout; anything else is an error
    /// carrying the status and body (printed on stderr by the CLI, which
    /// exits 1).
    fn print_reply(response: Result<Response, ClientError>) -> Result<(), String> {
        let response = response.map_err(|e| e.to_string())?;
        let text = response.text();
        if response.is_success() {
            println!("{}", text.trim_end());
            Ok(())
        } else {
            Err(format!("HTTP {}: {}", response.status, text.trim_end()))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn urls() {
            let url = parse_url("http://127.0.0.1:8000").unwrap();
            assert_eq!(
                (url.authority.as_str(), url.base.as_str()),
                ("127.0.0.1:8000", "")
            );
            let url = parse_url("http://example.com/prefix/").unwrap();
            assert_eq!(
                (url.authority.as_str(), url.base.as_str()),
                ("example.com:80", "/prefix")
            );
            let url = parse_url("http://[::1]:9000").unwrap();
            assert_eq!(url.authority, "[::1]:9000");
            assert_eq!(parse_url("http://[::1]").unwrap().authority, "[::1]:80");
            for bad in [
                "https://x",
                "ftp://x",
                "http://",
                "http://a b",
                "http://x/?q",
                "http://u@x",
            ] {
                assert!(parse_url(bad).is_err(), "{bad}");
            }
        }

        #[test]
        fn replies() {
            let raw =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            let r = parse_response(raw).unwrap();
            assert_eq!((r.status, &r.body[..]), (200, &b"{}"[..]));
            assert_eq!(r.header("Content-Type"), Some("application/json"));

            let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
            let r = parse_response(raw).unwrap();
            assert_eq!((r.status, &r.body[..]), (404, &b"abcde"[..]));

            let r = parse_response(b"HTTP/1.0 500 Oops\r\n\r\nuntil eof").unwrap();
            assert_eq!((r.status, &r.body[..]), (500, &b"until eof"[..]));

            for bad in [
                &b"HTTP/1.1 200 OK\r\n"[..],
                b"SMTP 200\r\n\r\n",
                b"HTTP/1.1 abc\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            ] {
                assert!(
                    parse_response(bad).is_err(),
                    "{}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_error_code_has_a_client_status_except_internal() {
        for code in 101..=115 {
            let status = status(ErrorCode(code));
            assert!(status.is_client_error(), "{code}: {status}");
        }
        assert_eq!(
            status(ErrorCode::INTERNAL),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(status(ErrorCode::BAD_REQUEST), StatusCode::BAD_REQUEST);
        assert_eq!(status(ErrorCode::UNKNOWN_ROOM), StatusCode::NOT_FOUND);
        assert_eq!(status(ErrorCode::PERMISSION_DENIED), StatusCode::FORBIDDEN);
        assert_eq!(status(ErrorCode::NOT_AVAILABLE), StatusCode::CONFLICT);
        assert_eq!(
            status(ErrorCode::UNRECOVERABLE_POSITION),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(ErrorCode::LIMIT_EXCEEDED),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(ErrorCode::TOO_MANY_REQUESTS),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(status(ErrorCode::ROOM_FULL), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(ErrorCode(4242)), StatusCode::BAD_REQUEST);
        assert_eq!(status(ErrorCode(999)), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn broker_unavailable_is_503_and_temporary() {
        let err = ApiError::from(OpError::from(crate::broker::BrokerError::Unavailable(
            "down".into(),
        )));
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.to_wire().temporary);
        assert_eq!(err.to_wire().code, 100);
    }

    #[test]
    fn content_types() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            Format::from_headers(&headers)
        };
        assert_eq!(
            Format::from_headers(&HeaderMap::new()).unwrap(),
            Format::Json
        );
        assert_eq!(
            with("application/json; charset=utf-8").unwrap(),
            Format::Json
        );
        assert_eq!(with("Application/JSON").unwrap(), Format::Json);
        assert_eq!(with("application/x-protobuf").unwrap(), Format::Protobuf);
        assert_eq!(with("application/protobuf").unwrap(), Format::Protobuf);
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "application/jsonx",
        ] {
            assert!(
                matches!(with(bad), Err(ApiError::UnsupportedMediaType(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_compare_in_full() {
        assert!(key_matches(&["a", "secret"], b"secret"));
        assert!(key_matches(&["secret", "other"], b"secret"));
        assert!(!key_matches(&["secret"], b"secreT"));
        assert!(!key_matches(&["secret"], b"secre"));
        assert!(!key_matches(&["secret"], b"secrets"));
        assert!(!key_matches(&[""], b""));
        assert!(!key_matches(&[], b"secret"));
        // The same key configured twice still matches.
        assert!(key_matches(&["k", "k"], b"k"));
    }

    #[test]
    fn presented_keys() {
        let with = |name: &'static str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(value).unwrap());
            presented_key(&headers).map(<[u8]>::to_vec)
        };
        assert_eq!(with("x-api-key", "k1").unwrap(), b"k1");
        assert_eq!(with("authorization", "apikey k2").unwrap(), b"k2");
        assert_eq!(with("authorization", "ApiKey   k3 ").unwrap(), b"k3");
        assert!(with("authorization", "Bearer k").is_err());
        assert!(with("authorization", "apikey").is_err());
        assert!(with("x-api-key", "").is_err());
        assert!(presented_key(&HeaderMap::new()).is_err());
    }

    #[test]
    fn method_names_round_trip_and_match_the_openapi_document() {
        for method in ApiMethod::ALL {
            assert_eq!(ApiMethod::from_name(method.name()), Some(method));
        }
        assert_eq!(ApiMethod::from_name("nope"), None);
        let documented: Vec<&str> = crate::api::openapi::METHODS
            .iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(documented, ApiMethod::ALL.map(ApiMethod::name));
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in [&b"{"[..], b"[]", b"null", b"{\"room\":5}", b"\xff"] {
            let err = Format::Json
                .decode::<api::PresenceRequest>(body)
                .unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
        }
        let err = Format::Protobuf
            .decode::<api::PresenceRequest>(&[0x0a, 0x05, b'a'])
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let empty: api::PresenceRequest = Format::Json.decode(b" \n").unwrap();
        assert_eq!(empty, api::PresenceRequest::default());
    }

    #[test]
    fn shorten_cuts_on_character_boundaries() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("ééé", 2), "éé...");
    }
}
