//! The seam between the client driver and a transport, and its WebSocket
//! implementation. A transport carries whole messages (batches of frames,
//! spec/02-framing.md) both ways and reports how it closed; WebTransport
//! plugs in by implementing [`Connector`].

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::codec::Encoding;
use crate::codec::unit::Codec;
use crate::codes::CloseCode;

/// A boxed future, so connectors can be chosen at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest message the client accepts from a server. Replies carrying history
/// can be far larger than what a client may send; the server bounds them by
/// its outbound queue (1 MiB by default), this bounds them on our side.
pub const MAX_INCOMING_MESSAGE: usize = 16 << 20;

/// What arrives from a transport.
#[derive(Debug)]
pub enum Incoming {
    /// One message: a batch of delimited frames, or with unit framing one
    /// or more units.
    Message(Bytes),
    /// A batch of delimited frames the transport already took out of its
    /// unit (stream transports open units as they cut the stream).
    Batch(Bytes),
    /// The transport closed (or failed: code 1006).
    Closed {
        /// The close code the server sent, or 1006.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
}

/// The sending half of an open transport.
pub trait MessageSink: Send {
    /// Sends one message.
    fn send(&mut self, message: Bytes) -> BoxFuture<'_, Result<(), String>>;
    /// Closes the transport with a code and reason.
    fn close(&mut self, code: CloseCode, reason: String) -> BoxFuture<'_, ()>;
}

/// An open transport: a sink for messages and a bounded stream of what
/// arrives. The stream ends with [`Incoming::Closed`].
pub struct Transport {
    /// Sends messages.
    pub sink: Box<dyn MessageSink>,
    /// Messages received, then how the transport closed.
    pub incoming: mpsc::Receiver<Incoming>,
}

/// Opens transports to one server.
pub trait Connector: Send + Sync + 'static {
    /// Opens a new transport.
    fn open(&self) -> BoxFuture<'static, Result<Transport, String>>;
    /// The encoding the transports speak.
    fn encoding(&self) -> Encoding;
    /// The codec the transports ask for with unit framing
    /// (spec/11-compression.md); `None`: no unit framing.
    fn codec(&self) -> Option<Codec> {
        None
    }
}

/// Adds the `codecs` parameter to a URL when a codec is asked for.
pub(crate) fn with_codecs(url: &str, codec: Option<Codec>) -> String {
    match codec {
        None => url.to_owned(),
        Some(codec) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}codecs={}", codec.name())
        }
    }
}

/// Connects over WebSocket with the encoding's subprotocol.
#[derive(Clone, Debug)]
pub struct WebSocketConnector {
    /// `ws://host:port/connection/websocket`.
    pub url: String,
    /// The framing to ask for.
    pub encoding: Encoding,
    /// A compression codec to ask for (unit framing), or `None`.
    pub codec: Option<Codec>,
}

impl WebSocketConnector {
    /// A connector without compression.
    pub fn new(url: impl Into<String>, encoding: Encoding) -> Self {
        Self {
            url: url.into(),
            encoding,
            codec: None,
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sink and whether it sends text (JSON without unit framing).
struct WebSocketSink(SplitSink<Socket, Message>, bool);

impl MessageSink for WebSocketSink {
    fn send(&mut self, message: Bytes) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let message = if self.1 {
                match String::from_utf8(message.to_vec()) {
                    Ok(text) => Message::Text(text.into()),
                    Err(_) => return Err("non-UTF-8 JSON message".to_owned()),
                }
            } else {
                Message::Binary(message)
            };
            self.0.send(message).await.map_err(|e| e.to_string())
        })
    }

    fn close(&mut self, code: CloseCode, reason: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let frame = CloseFrame {
                code: WsCloseCode::from(code.0),
                reason: reason.into(),
            };
            let _ = self.0.send(Message::Close(Some(frame))).await;
            let _ = self.0.close().await;
        })
    }
}

impl Connector for WebSocketConnector {
    fn open(&self) -> BoxFuture<'static, Result<Transport, String>> {
        let (url, encoding) = (with_codecs(&self.url, self.codec), self.encoding);
        let text = encoding.is_text() && self.codec.is_none();
        Box::pin(async move {
            let mut request = url
                .as_str()
                .into_client_request()
                .map_err(|e| e.to_string())?;
            let protocol = encoding
                .subprotocol()
                .parse()
                .map_err(|_| "invalid subprotocol".to_owned())?;
            request
                .headers_mut()
                .insert("sec-websocket-protocol", protocol);
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_INCOMING_MESSAGE))
                .max_frame_size(Some(MAX_INCOMING_MESSAGE));
            let (socket, _) =
                tokio_tungstenite::connect_async_with_config(request, Some(config), false)
                    .await
                    .map_err(|e| match e {
                        tokio_tungstenite::tungstenite::Error::Http(response) => {
                            let body = response
                                .body()
                                .as_deref()
                                .map(String::from_utf8_lossy)
                                .unwrap_or_default();
                            format!("HTTP {}: {}", response.status(), body.trim())
                        }
                        other => other.to_string(),
                    })?;
            let (sink, mut stream) = socket.split();
            // Bounded: a slow application slows reading, and the server sees a
            // slow client, rather than this side buffering without end.
            let (tx, incoming) = mpsc::channel(16);
            tokio::spawn(async move {
                let closed = loop {
                    let item = match stream.next().await {
                        Some(Ok(Message::Text(text))) => Incoming::Message(Bytes::from(text)),
                        Some(Ok(Message::Binary(bytes))) => Incoming::Message(bytes),
                        Some(Ok(Message::Close(frame))) => {
                            break frame.map_or(
                                Incoming::Closed {
                                    code: CloseCode(1005),
                                    reason: String::new(),
                                },
                                |f| Incoming::Closed {
                                    code: CloseCode(f.code.into()),
                                    reason: f.reason.to_string(),
                                },
                            );
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            break Incoming::Closed {
                                code: CloseCode::ABNORMAL,
                                reason: e.to_string(),
                            };
                        }
                        None => {
                            break Incoming::Closed {
                                code: CloseCode::ABNORMAL,
                                reason: "connection lost".into(),
                            };
                        }
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                };
                let _ = tx.send(closed).await;
            });
            Ok(Transport {
                sink: Box::new(WebSocketSink(sink, text)),
                incoming,
            })
        })
    }

    fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn codec(&self) -> Option<Codec> {
        self.codec
    }
}
