//! The client's WebTransport transport, and a connector that falls back to
//! WebSocket when QUIC is blocked (UDP filtered by a firewall or proxy).
//!
//! One bidirectional stream carries delimited frames both ways
//! (spec/02-framing.md, "WebTransport"); the stream is cut into batches at
//! frame boundaries, so the driver sees messages exactly as over WebSocket.
//! Datagrams (volatile publications) arrive as messages too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use wtransport::error::ConnectionError;
use wtransport::{ClientConfig, Connection, Endpoint, SendStream, VarInt};

use super::transport::{
    BoxFuture, Connector, Incoming, MAX_INCOMING_MESSAGE, MessageSink, Transport,
    WebSocketConnector, with_codecs,
};
use crate::codec::unit::{Codec, UnitStreamDecoder};
use crate::codec::{DecodeLimits, Encoding, StreamDecoder};
use crate::codes::CloseCode;

/// Connects over WebTransport.
#[derive(Clone, Debug)]
pub struct WebTransportConnector {
    /// `https://host:port/connection/webtransport` (the `format` query is
    /// added).
    pub url: String,
    /// The framing to ask for.
    pub encoding: Encoding,
    /// SHA-256 hashes of accepted self-signed certificates (a development
    /// server's, from `<path>/certificate`); empty: the system's CAs.
    pub certificate_hashes: Vec<[u8; 32]>,
    /// How long the QUIC and WebTransport handshakes may take.
    pub handshake_timeout: Duration,
    /// A compression codec to ask for (unit framing), or `None`.
    pub codec: Option<Codec>,
}

impl WebTransportConnector {
    /// A connector trusting the system's CAs.
    pub fn new(url: impl Into<String>, encoding: Encoding) -> Self {
        Self {
            url: url.into(),
            encoding,
            certificate_hashes: Vec::new(),
            handshake_timeout: Duration::from_secs(5),
            codec: None,
        }
    }

    /// Also accepts a self-signed certificate with this SHA-256 hash.
    pub fn with_certificate_hash(mut self, sha256: [u8; 32]) -> Self {
        self.certificate_hashes.push(sha256);
        self
    }

    fn session_url(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}format={}", self.url, self.encoding.name());
        with_codecs(&url, self.codec)
    }

    async fn connect(&self) -> Result<Connection, String> {
        let builder = ClientConfig::builder().with_bind_default();
        let config = if self.certificate_hashes.is_empty() {
            builder.with_native_certs().build()
        } else {
            builder
                .with_server_certificate_hashes(
                    self.certificate_hashes
                        .iter()
                        .map(|h| wtransport::tls::Sha256Digest::new(*h)),
                )
                .build()
        };
        let endpoint = Endpoint::client(config).map_err(|e| e.to_string())?;
        let url = self.session_url();
        let connecting = async {
            let connection = endpoint.connect(url).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(connection)
        };
        tokio::time::timeout(self.handshake_timeout, connecting)
            .await
            .map_err(|_| "WebTransport handshake timed out (is UDP blocked?)".to_owned())?
    }
}

/// How a session ended, from the QUIC close.
fn closed(error: ConnectionError) -> Incoming {
    match error {
        ConnectionError::ApplicationClosed(close) => Incoming::Closed {
            code: u16::try_from(close.code().into_inner())
                .map(CloseCode)
                .unwrap_or(CloseCode::ABNORMAL),
            reason: String::from_utf8_lossy(close.reason()).into_owned(),
        },
        ConnectionError::LocallyClosed => Incoming::Closed {
            code: CloseCode::NORMAL,
            reason: "closed by the client".into(),
        },
        other => Incoming::Closed {
            code: CloseCode::ABNORMAL,
            reason: other.to_string(),
        },
    }
}

struct WebTransportSink {
    send: SendStream,
    connection: Connection,
}

impl MessageSink for WebTransportSink {
    fn send(&mut self, message: Bytes) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.send
                .write_all(&message)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn close(&mut self, code: CloseCode, reason: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.send.finish().await;
            self.connection
                .close(VarInt::from_u32(code.0.into()), reason.as_bytes());
        })
    }
}

impl Connector for WebTransportConnector {
    fn open(&self) -> BoxFuture<'static, Result<Transport, String>> {
        let connector = self.clone();
        Box::pin(async move {
            let connection = connector.connect().await?;
            let opening = async {
                let opening = connection.open_bi().await.map_err(|e| e.to_string())?;
                opening.await.map_err(|e| e.to_string())
            };
            let (send, mut recv) = tokio::time::timeout(connector.handshake_timeout, opening)
                .await
                .map_err(|_| "WebTransport stream not opened in time".to_owned())??;
            let (tx, incoming) = mpsc::channel(16);
            let reader = connection.clone();
            let encoding = connector.encoding;
            let codec = connector.codec;
            tokio::spawn(async move {
                let limits = DecodeLimits {
                    max_frame_size: MAX_INCOMING_MESSAGE,
                    max_frames_per_batch: 1000,
                };
                let mut decoder = match codec {
                    None => StreamSplitter::Frames(StreamDecoder::new(encoding, limits)),
                    Some(codec) => {
                        StreamSplitter::Units(UnitStreamDecoder::new(codec, MAX_INCOMING_MESSAGE))
                    }
                };
                let mut stream_open = true;
                let end = loop {
                    tokio::select! {
                        chunk = recv.quic_stream_mut().read_chunk(64 * 1024, true), if stream_open => match chunk {
                            Ok(Some(chunk)) => {
                                decoder.push(&chunk.bytes);
                                loop {
                                    match decoder.next() {
                                        Ok(Some(batch)) => {
                                            if tx.send(Incoming::Batch(batch)).await.is_err() {
                                                return;
                                            }
                                        }
                                        Ok(None) => break,
                                        Err((code, reason)) => {
                                            reader.close(VarInt::from_u32(code.0.into()), reason.as_bytes());
                                            break;
                                        }
                                    }
                                }
                            }
                            // The server finished the stream: its close follows.
                            Ok(None) | Err(_) => stream_open = false,
                        },
                        datagram = reader.receive_datagram() => match datagram {
                            Ok(datagram) => {
                                if tx.send(Incoming::Message(datagram.payload())).await.is_err() {
                                    return;
                                }
                            }
                            Err(err) => break closed(err),
                        },
                    }
                };
                let _ = tx.send(end).await;
            });
            Ok(Transport {
                sink: Box::new(WebTransportSink { send, connection }),
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

/// Cuts a stream into batches of whole frames: directly, or (with unit
/// framing) by opening each unit.
enum StreamSplitter {
    Frames(StreamDecoder),
    Units(UnitStreamDecoder),
}

impl StreamSplitter {
    fn push(&mut self, bytes: &[u8]) {
        match self {
            Self::Frames(d) => d.push(bytes),
            Self::Units(d) => d.push(bytes),
        }
    }

    /// The next batch, or the close code and reason of a broken stream.
    fn next(&mut self) -> Result<Option<Bytes>, (CloseCode, String)> {
        match self {
            Self::Frames(d) => d
                .next_delimited()
                .map_err(|e| (e.close_code(), e.to_string())),
            Self::Units(d) => d.next_unit().map_err(|e| (e.close_code(), e.to_string())),
        }
    }
}

/// Tries WebTransport first and falls back to WebSocket when it cannot be
/// opened; after a failure, WebSocket is used for `retry_after` before
/// WebTransport is tried again.
pub struct FallbackConnector {
    /// The preferred transport.
    pub webtransport: WebTransportConnector,
    /// The fallback (same encoding).
    pub websocket: WebSocketConnector,
    /// How long to stay on WebSocket after WebTransport failed.
    pub retry_after: Duration,
    failed_at: Arc<Mutex<Option<Instant>>>,
    /// Which transport the last open used (for tests and diagnostics).
    last: Arc<Mutex<Option<&'static str>>>,
}

impl FallbackConnector {
    /// A connector preferring `webtransport`.
    pub fn new(webtransport: WebTransportConnector, websocket: WebSocketConnector) -> Self {
        Self {
            webtransport,
            websocket,
            retry_after: Duration::from_secs(300),
            failed_at: Arc::new(Mutex::new(None)),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// `"webtransport"` or `"websocket"`: what the last successful open used.
    pub fn last_transport(&self) -> Option<&'static str> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Connector for FallbackConnector {
    fn open(&self) -> BoxFuture<'static, Result<Transport, String>> {
        let recently_failed = self
            .failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < self.retry_after);
        let webtransport = (!recently_failed).then(|| self.webtransport.open());
        let websocket = self.websocket.open();
        let last = self.last.clone();
        let failed_at = self.failed_at.clone();
        let result = async move {
            if let Some(webtransport) = webtransport {
                match webtransport.await {
                    Ok(transport) => {
                        *last.lock().unwrap_or_else(|e| e.into_inner()) = Some("webtransport");
                        return Ok(transport);
                    }
                    Err(err) => {
                        tracing::info!(%err, "WebTransport unavailable, falling back to WebSocket");
                        *failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    }
                }
            }
            let transport = websocket.await?;
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some("websocket");
            Ok(transport)
        };
        Box::pin(result)
    }

    fn encoding(&self) -> Encoding {
        self.websocket.encoding
    }

    fn codec(&self) -> Option<Codec> {
        self.websocket.codec
    }
}
