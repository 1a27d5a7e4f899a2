//! The WebSocket endpoint (axum, tokio-tungstenite underneath).
//!
//! Negotiation (spec/02-framing.md): the client offers subprotocols
//! `switchboard.v1.json` and/or `switchboard.v1.protobuf`; the first one it
//! offers that the server knows is chosen. Without a `Sec-WebSocket-Protocol`
//! header, `?format=json|protobuf` may choose instead. Anything else is
//! refused before the upgrade with HTTP 400 and a body that names the
//! accepted subprotocols. Every tungstenite limit is set from
//! [`crate::config::Limits`]: the library defaults (64 MiB messages,
//! unlimited write buffer, 128 KiB read buffer) are unsafe for a public server.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::CLOSE_GRACE;
use crate::codec::Encoding;
use crate::codec::unit::MAX_UNITS_PER_MESSAGE;
use crate::codes::CloseCode;
use crate::config::Config;
use crate::engine::{Close, Node, OpenParams, Outbox};
use crate::metrics as m;

/// Query parameters of the WebSocket URL.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    /// `json` or `protobuf`, for clients that cannot set a subprotocol.
    format: Option<String>,
    /// A token, for apps that cannot send one in `connect`.
    token: Option<String>,
    /// Codecs for unit framing, most preferred first (spec/11-compression.md).
    codecs: Option<String>,
}

/// The body of a refused upgrade: says exactly what to offer.
pub fn unsupported_subprotocol_body() -> String {
    format!(
        "unsupported or missing WebSocket subprotocol; offer one of: {}\n",
        Encoding::SUBPROTOCOLS.join(", ")
    )
}

fn refuse(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Whether a browser `Origin` may open a socket (CSWSH protection).
fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    origin_allowed_str(config, text(header::ORIGIN), text(header::HOST))
}

/// Whether a browser `Origin` may open a session: listed in
/// `allowed_origins`, or the same origin as the `host` the page used.
/// Without an `Origin` the peer is not a browser: nothing to protect.
pub(crate) fn origin_allowed_str(
    config: &Config,
    origin: Option<&str>,
    host: Option<&str>,
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same origin: the Origin's authority equals the Host the page used.
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// The handler of the WebSocket path.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(query): Query<ConnectQuery>,
    mut ws: WebSocketUpgrade,
) -> Response {
    let config = node.config();
    if !origin_allowed(config, &headers) {
        m::rejected("origin");
        return refuse(
            StatusCode::FORBIDDEN,
            "origin not allowed: add it to allowed_origins in the server config\n".into(),
        );
    }
    // In the client's order of preference (axum's own list is sorted).
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let chosen = offered.iter().find_map(|p| Encoding::from_subprotocol(p));
    let encoding = match (chosen, offered.is_empty(), query.format.as_deref()) {
        (Some(encoding), _, _) => {
            ws.set_selected_protocol(HeaderValue::from_static(encoding.subprotocol()));
            encoding
        }
        (None, true, Some(format)) => match Encoding::from_name(format) {
            Some(encoding) => encoding,
            None => return refuse(StatusCode::BAD_REQUEST, unsupported_subprotocol_body()),
        },
        _ => {
            m::rejected("subprotocol");
            return refuse(StatusCode::BAD_REQUEST, unsupported_subprotocol_body());
        }
    };
    let codec = match super::negotiate_codec(config, query.codecs.as_deref()) {
        Ok(codec) => codec,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    };
    let limits = &config.limits;
    let url_token = if config.auth.allow_token_in_url {
        query.token
    } else {
        None
    };
    let max_message = limits.max_message_size;
    ws.max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(limits.websocket_read_buffer)
        .write_buffer_size(limits.websocket_write_buffer)
        // Past the write buffer, tungstenite only buffers while the socket
        // refuses writes; one drained outbox is the most we ever hand it.
        .max_write_buffer_size(
            limits.websocket_write_buffer + limits.outbound_queue_bytes + max_message,
        )
        .accept_unmasked_frames(false)
        .on_upgrade(move |socket| {
            serve(
                node,
                socket,
                OpenParams {
                    encoding,
                    url_token,
                    datagrams: None,
                    codec,
                },
            )
        })
}

/// Runs one connection to its end.
async fn serve(node: Arc<Node>, socket: WebSocket, params: OpenParams) {
    let (mut sink, stream) = socket.split();
    let encoding = params.encoding;
    let mut session = match node.open(params) {
        Ok(session) => session,
        Err(close) => {
            m::disconnected(close.code);
            let _ = sink.send(close_message(&close)).await;
            return;
        }
    };
    let outbox = session.outbox().clone();
    let max_message = node.config().limits.max_message_size;
    let units = outbox.framing().codec.is_some();
    let reader = read_loop(&mut session, stream, encoding, units);
    let writer = write_loop(&mut sink, &outbox, encoding, units, max_message);
    let ((), close) = tokio::join!(reader, writer);
    m::disconnected(close.code);
    tracing::debug!(client = session.id(), code = %close.code, reason = %close.reason, "connection closed");
    session.finish().await;
}

async fn read_loop(
    session: &mut crate::engine::Session,
    mut stream: SplitStream<WebSocket>,
    encoding: Encoding,
    units: bool,
) {
    let outbox = session.outbox().clone();
    loop {
        let deadline = session.deadline();
        let outcome = tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) if encoding == Encoding::Json && !units => {
                    session.handle_message(Bytes::from(text)).await
                }
                Some(Ok(Message::Binary(bytes))) if encoding == Encoding::Protobuf || units => {
                    session.handle_message(bytes).await
                }
                Some(Ok(Message::Text(_) | Message::Binary(_))) => Err(Close::new(
                    CloseCode::BAD_REQUEST,
                    format!("{} connections send {} messages", encoding.name(), if encoding.is_text() && !units { "text" } else { "binary (units)" }),
                )),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                Some(Ok(Message::Close(_))) | None => {
                    outbox.close(Close::new(CloseCode::NORMAL, "closed by the client"));
                    return;
                }
                Some(Err(err)) => Err(transport_error(&err)),
            },
            () = tokio::time::sleep_until(deadline) => session.handle_deadline(),
            control = session.next_control() => {
                session.handle_control(control).await;
                Ok(())
            }
            _ = outbox.closed() => return,
        };
        if let Err(close) = outcome {
            outbox.close(close);
            return;
        }
    }
}

/// The close code for a failed read.
fn transport_error(err: &axum::Error) -> Close {
    // axum wraps tungstenite's error; its message is the only stable handle.
    let text = err.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("too big")
    {
        Close::new(
            CloseCode::MESSAGE_TOO_BIG,
            "message exceeds the maximum message size",
        )
    } else {
        Close::new(
            CloseCode::BAD_REQUEST,
            format!("WebSocket protocol error: {text}"),
        )
    }
}

fn close_message(close: &Close) -> Message {
    Message::Close(Some(CloseFrame {
        code: close.code.0,
        reason: Utf8Bytes::from(close.reason.as_str()),
    }))
}

/// Sends what the outbox yields, batching frames into messages of at most
/// `max_message` bytes, until the outbox closes or the socket fails.
/// Returns the close that ended the connection.
async fn write_loop(
    sink: &mut SplitSink<WebSocket, Message>,
    outbox: &Outbox,
    encoding: Encoding,
    units: bool,
    max_message: usize,
) -> Close {
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        frames.clear();
        if let Some(close) = outbox.next_batch(&mut frames).await {
            // Best effort: a peer that stopped reading may never take it.
            let send = sink.send(close_message(&close));
            let _ = tokio::time::timeout(CLOSE_GRACE, send).await;
            return close;
        }
        let text = encoding.is_text() && !units;
        let sending = send_batch(sink, &frames, text, max_message);
        if let Err(close) = super::write_or_give_up(outbox, sending, "write").await {
            return close;
        }
    }
}

async fn send_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    frames: &[Bytes],
    text: bool,
    max_message: usize,
) -> Result<(), axum::Error> {
    let mut i = 0;
    while i < frames.len() {
        // One frame alone is sent as is (no copy); consecutive small frames
        // are joined into one message.
        let mut end = i + 1;
        let mut size = frames[i].len();
        // At most 100 frames (or units) per message (spec/02-framing.md,
        // spec/11-compression.md): receivers reject more units than that.
        while end < frames.len()
            && end - i < MAX_UNITS_PER_MESSAGE
            && size + frames[end].len() <= max_message
        {
            size += frames[end].len();
            end += 1;
        }
        let payload = if end == i + 1 {
            frames[i].clone()
        } else {
            let mut joined = BytesMut::with_capacity(size);
            frames[i..end]
                .iter()
                .for_each(|f| joined.extend_from_slice(f));
            joined.freeze()
        };
        m::bytes_out(payload.len());
        let message = if text {
            match Utf8Bytes::try_from(payload) {
                Ok(text) => Message::Text(text),
                // Cannot happen: the JSON encoder writes UTF-8 only.
                Err(_) => return Err(axum::Error::new("non-UTF-8 JSON frame")),
            }
        } else {
            Message::Binary(payload)
        };
        sink.feed(message).await?;
        i = end;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn origins() {
        let mut config = Config::default();
        assert!(origin_allowed(&config, &headers(&[("host", "a.example")])));
        assert!(origin_allowed(
            &config,
            &headers(&[("host", "a.example"), ("origin", "https://a.example")])
        ));
        assert!(!origin_allowed(
            &config,
            &headers(&[("host", "a.example"), ("origin", "https://evil.example")])
        ));
        config.allowed_origins = vec!["https://evil.example".into()];
        assert!(origin_allowed(
            &config,
            &headers(&[("host", "a.example"), ("origin", "https://evil.example")])
        ));
    }
}
