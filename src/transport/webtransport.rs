//! The WebTransport endpoint (wtransport: HTTP/3 over QUIC), served by the
//! same engine as WebSocket (spec/02-framing.md, "WebTransport").
//!
//! A session URL is `https://<host>:<port><path>?format=json|protobuf`, with
//! the optional `token` and `codecs` parameters of the WebSocket URL. The
//! client opens one bidirectional stream; both directions carry delimited
//! frames back to back. Volatile publications go as QUIC datagrams when they
//! fit (spec/03-messages.md, "Volatile rooms").
//!
//! Certificates: production takes PEM files from the config; otherwise a
//! development certificate (ECDSA P-256, valid at most 14 days, the browser
//! limit for `serverCertificateHashes`) is generated, replaced before it
//! expires without dropping sessions, and its SHA-256 hash is served over
//! HTTP at `<path>/certificate` so that a page can connect without a CA.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::watch;
use wtransport::endpoint::{IncomingSession, endpoint_side};
use wtransport::quinn;
use wtransport::tls::self_signed::time;
use wtransport::{Connection, Identity, RecvStream, SendStream, ServerConfig, VarInt};

use super::CLOSE_GRACE;
use crate::codec::unit::UnitStreamDecoder;
use crate::codec::{Encoding, StreamDecoder};
use crate::codes::CloseCode;
use crate::config::{Config, WebTransportConfig};
use crate::engine::{Close, Node, OpenParams, Outbox, Session};
use crate::metrics as m;
use crate::wire::v1::ClientFrame;

/// The certificate a WebTransport endpoint presents, as a page needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// SHA-256 of the leaf certificate's DER encoding.
    pub sha256: [u8; 32],
    /// Unix milliseconds after which the certificate is invalid; 0 when
    /// unknown (a configured certificate).
    pub not_after_ms: u64,
    /// Whether it is a generated development certificate.
    pub development: bool,
}

impl CertificateInfo {
    /// The hash in lowercase hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebTransportError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on udp {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The certificate files could not be loaded, or one could not be made.
    #[error("webtransport certificate: {0}")]
    Certificate(String),
    /// The thread reading the UDP socket could not be started.
    #[error("cannot start the webtransport receive thread: {0}")]
    Thread(std::io::Error),
}

/// A running WebTransport endpoint.
pub struct WebTransport {
    endpoint: Arc<wtransport::Endpoint<endpoint_side::Server>>,
    certificate: Arc<RwLock<CertificateInfo>>,
    addr: SocketAddr,
    node: Arc<Node>,
    task: tokio::task::JoinHandle<()>,
    /// Runs while this lives.
    _receiver: ReceiveThread,
}

/// The thread that reads the endpoint's UDP socket.
///
/// quinn reads every packet of every session in one task (its endpoint
/// driver), which hands each to its connection's task. On the server's
/// runtime that task waits its turn behind thousands of session tasks and
/// reads for at most 50 µs per turn: under fan-out the socket's receive
/// buffer (8 MiB) overflowed and dropped 40-60 % of inbound packets, mostly
/// acknowledgements (`switchboard bench run`, 1000 subscribers, 2 cores).
/// On a thread of its own the kernel runs it as soon as packets arrive, and
/// none were dropped. Connection tasks stay on the server's runtime.
struct ReceiveThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the `WebTransport`: ends the thread, and the endpoint
    /// driver with it.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ReceiveThread {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("switchboard-quic-rx".into())
            .spawn(move || {
                // Runs the endpoint driver until the sender is dropped.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

fn read_lock<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn unix_ms(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Generates a development certificate for the endpoint's addresses.
fn development_identity(
    config: &WebTransportConfig,
    addr: SocketAddr,
) -> Result<(Identity, CertificateInfo), WebTransportError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
        names.push(addr.ip().to_string());
    }
    // A little slack before now for clocks that are slightly behind.
    let not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let validity = time::Duration::try_from(config.development_certificate_validity)
        .unwrap_or(time::Duration::days(10))
        .min(time::Duration::days(14));
    let not_after = not_before + validity;
    let identity = Identity::self_signed_builder()
        .subject_alt_names(&names)
        .not_before(not_before)
        .not_after(not_after)
        .build()
        .map_err(|e| WebTransportError::Certificate(e.to_string()))?;
    let info = CertificateInfo {
        sha256: leaf_hash(&identity)?,
        not_after_ms: unix_ms(not_after),
        development: true,
    };
    Ok((identity, info))
}

fn leaf_hash(identity: &Identity) -> Result<[u8; 32], WebTransportError> {
    identity
        .certificate_chain()
        .as_slice()
        .first()
        .map(|cert| *cert.hash().as_ref())
        .ok_or_else(|| WebTransportError::Certificate("empty certificate chain".into()))
}

async fn load_identity(
    config: &WebTransportConfig,
    addr: SocketAddr,
) -> Result<(Identity, CertificateInfo), WebTransportError> {
    match (&config.certificate, &config.private_key) {
        (Some(cert), Some(key)) => {
            let identity = Identity::load_pemfiles(cert, key).await.map_err(|e| {
                WebTransportError::Certificate(format!(
                    "{} / {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            let info = CertificateInfo {
                sha256: leaf_hash(&identity)?,
                not_after_ms: 0,
                development: false,
            };
            Ok((identity, info))
        }
        _ => development_identity(config, addr),
    }
}

/// QUIC settings bounded like the WebSocket ones: a peer cannot make the
/// server buffer more than about two messages per stream.
fn server_config(config: &Config, bind: Bind, identity: Identity) -> ServerConfig {
    let limits = &config.limits;
    let wt = &config.webtransport;
    let mut transport = quinn::TransportConfig::default();
    let window = u32::try_from(2 * limits.max_message_size).unwrap_or(u32::MAX);
    transport
        .stream_receive_window(window.into())
        .receive_window((2 * window).into())
        .send_window(limits.outbound_queue_bytes as u64)
        // The CONNECT stream and ours; HTTP/3 control, QPACK streams.
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(8u32.into())
        // Datagrams from clients are not used; a small buffer keeps them
        // negotiable (browsers require it) and cheap.
        .datagram_receive_buffer_size(Some(4 * 1024))
        // Volatile data is latest-wins: a short queue drops stale datagrams
        // (oldest first) instead of delaying fresh ones.
        .datagram_send_buffer_size(16 * 1024)
        .keep_alive_interval(Some(wt.keep_alive));
    let idle = limits.ping_interval + limits.pong_timeout + Duration::from_secs(5);
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        transport.max_idle_timeout(Some(idle));
    }
    let builder = match bind {
        Bind::Socket(socket) => ServerConfig::builder().with_bind_socket(socket),
        Bind::Address(addr) => ServerConfig::builder().with_bind_address(addr),
    };
    builder.with_custom_transport(identity, transport).build()
}

/// Where a server config binds: a new endpoint takes a socket; a reloaded
/// config keeps the endpoint's socket and ignores its address.
enum Bind {
    Socket(UdpSocket),
    Address(SocketAddr),
}

/// Kernel buffer asked for the endpoint's UDP socket, each direction.
const UDP_BUFFER: usize = 8 << 20;

/// Binds the UDP socket of the endpoint. `tcp` is the address the HTTP
/// listener got: by default WebTransport takes the same IP and port.
pub fn bind_udp(config: &Config, tcp: SocketAddr) -> Result<UdpSocket, WebTransportError> {
    let addr = config.webtransport.listen.unwrap_or(tcp);
    let socket =
        UdpSocket::bind(addr).map_err(|source| WebTransportError::Bind { addr, source })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| WebTransportError::Bind { addr, source })?;
    // One socket carries every session's packets: the kernel default
    // (about 208 KiB) drops acknowledgements under fan-out, which QUIC
    // takes for congestion. Best effort: the kernel caps it (rmem_max).
    if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
        let _ = state.set_recv_buffer_size((&socket).into(), UDP_BUFFER);
        let _ = state.set_send_buffer_size((&socket).into(), UDP_BUFFER);
    }
    Ok(socket)
}

impl WebTransport {
    /// Starts serving sessions on `socket` until `stopped` turns true.
    pub async fn start(
        node: Arc<Node>,
        socket: UdpSocket,
        stopped: watch::Receiver<bool>,
    ) -> Result<Self, WebTransportError> {
        let addr = socket
            .local_addr()
            .map_err(|source| WebTransportError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let config = node.config();
        let (identity, info) = load_identity(&config.webtransport, addr).await?;
        let receiver = ReceiveThread::start().map_err(WebTransportError::Thread)?;
        let endpoint = {
            // quinn spawns its endpoint driver, and registers the socket,
            // where the endpoint is made.
            let _on_receiver = receiver.handle.enter();
            wtransport::Endpoint::server(server_config(config, Bind::Socket(socket), identity))
                .map_err(|source| WebTransportError::Bind { addr, source })?
        };
        let endpoint = Arc::new(endpoint);
        let certificate = Arc::new(RwLock::new(info));
        let task = tokio::spawn(run(
            endpoint.clone(),
            node.clone(),
            certificate.clone(),
            addr,
            stopped,
        ));
        Ok(Self {
            endpoint,
            certificate,
            addr,
            node,
            task,
            _receiver: receiver,
        })
    }

    /// The UDP address sessions connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate presented now.
    pub fn certificate(&self) -> CertificateInfo {
        read_lock(&self.certificate)
    }

    /// The shared certificate state, for the HTTP route that serves it.
    pub fn certificate_state(&self) -> Arc<RwLock<CertificateInfo>> {
        self.certificate.clone()
    }

    /// Replaces a development certificate now (it is also replaced on
    /// schedule). Open sessions keep the certificate they started with.
    pub fn renew_certificate(&self) -> Result<CertificateInfo, WebTransportError> {
        renew(&self.endpoint, &self.node, &self.certificate, self.addr)
    }

    /// Stops accepting sessions and closes the endpoint (after the node's
    /// shutdown has closed the sessions gracefully).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.endpoint.close(
            VarInt::from_u32(CloseCode::SHUTDOWN.0.into()),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        // The socket is released by quinn's driver task once the last handle
        // is gone; wait for that, so a restart can bind the same port.
        drop(self.endpoint);
        for _ in 0..100 {
            if UdpSocket::bind(self.addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Dropping `self._receiver` ends the receive thread.
    }
}

fn renew(
    endpoint: &wtransport::Endpoint<endpoint_side::Server>,
    node: &Node,
    certificate: &RwLock<CertificateInfo>,
    addr: SocketAddr,
) -> Result<CertificateInfo, WebTransportError> {
    let config = node.config();
    let (identity, info) = development_identity(&config.webtransport, addr)?;
    // `rebind: false` keeps the socket; existing connections keep their keys.
    endpoint
        .reload_config(server_config(config, Bind::Address(addr), identity), false)
        .map_err(|source| WebTransportError::Bind { addr, source })?;
    *certificate
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = info.clone();
    tracing::info!(sha256 = %info.sha256_hex(), "webtransport development certificate renewed");
    Ok(info)
}

async fn run(
    endpoint: Arc<wtransport::Endpoint<endpoint_side::Server>>,
    node: Arc<Node>,
    certificate: Arc<RwLock<CertificateInfo>>,
    addr: SocketAddr,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let info = read_lock(&certificate);
        let renew_in = if info.development {
            let renew_at = info.not_after_ms.saturating_sub(
                node.config()
                    .webtransport
                    .development_certificate_renewal
                    .as_millis() as u64,
            );
            let now = unix_ms(time::OffsetDateTime::now_utc());
            Duration::from_millis(renew_at.saturating_sub(now))
        } else {
            Duration::MAX
        };
        let renewal = async {
            if renew_in == Duration::MAX {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(renew_in).await;
        };
        let renew_now = tokio::select! {
            incoming = endpoint.accept() => {
                tokio::spawn(session(node.clone(), incoming));
                false
            }
            () = renewal => true,
            // Stop accepting; sessions are closed by the node's shutdown,
            // then the endpoint by `WebTransport::stop`.
            _ = stopped.wait_for(|s| *s) => return,
        };
        if renew_now {
            let failed = renew(&endpoint, &node, &certificate, addr)
                .map_err(|err| tracing::error!(%err, "webtransport certificate renewal failed"))
                .is_err();
            if failed {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

/// Query parameters of a session URL.
#[derive(Debug, Default, serde::Deserialize)]
struct SessionQuery {
    format: Option<String>,
    token: Option<String>,
    codecs: Option<String>,
}

/// Closes a QUIC connection with our close code and reason.
fn close_connection(connection: &Connection, close: &Close) {
    connection.close(
        VarInt::from_u32(u32::from(close.code.0)),
        close.reason.as_bytes(),
    );
}

async fn session(node: Arc<Node>, incoming: IncomingSession) {
    let request = match incoming.await {
        Ok(request) => request,
        Err(err) => {
            tracing::debug!(%err, "webtransport handshake failed");
            return;
        }
    };
    let config = node.config();
    let (path, query) = request
        .path()
        .split_once('?')
        .unwrap_or((request.path(), ""));
    if path != config.webtransport.path {
        request.not_found().await;
        return;
    }
    if !super::websocket::origin_allowed_str(config, request.origin(), Some(request.authority())) {
        m::rejected("origin");
        request.forbidden().await;
        return;
    }
    let query: SessionQuery = serde_urlencoded_query(query);
    let connection = match request.accept().await {
        Ok(connection) => connection,
        Err(err) => {
            tracing::debug!(%err, "webtransport session not established");
            return;
        }
    };
    let Some(encoding) = query.format.as_deref().and_then(Encoding::from_name) else {
        m::rejected("subprotocol");
        let close = Close::new(
            CloseCode::UNSUPPORTED,
            "add ?format=json or ?format=protobuf to the WebTransport URL",
        );
        close_connection(&connection, &close);
        return;
    };
    let codec = match super::negotiate_codec(config, query.codecs.as_deref()) {
        Ok(codec) => codec,
        Err(reason) => {
            close_connection(&connection, &Close::new(CloseCode::UNSUPPORTED, reason));
            return;
        }
    };
    let url_token = query.token.filter(|_| config.auth.allow_token_in_url);
    // The client opens its stream right away; the connect timeout bounds it.
    let stream = tokio::time::timeout(config.limits.connect_timeout, connection.accept_bi()).await;
    let (send, recv) = match stream {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%err, "webtransport session ended before its stream");
            return;
        }
        Err(_) => {
            let close = Close::new(CloseCode::CONNECT_TIMEOUT, "no stream opened in time");
            close_connection(&connection, &close);
            return;
        }
    };
    let datagram_limit = connection.max_datagram_size();
    let mut session = match node.open(OpenParams {
        encoding,
        url_token,
        datagrams: datagram_limit,
        codec,
    }) {
        Ok(session) => session,
        Err(close) => {
            m::disconnected(close.code);
            close_connection(&connection, &close);
            return;
        }
    };
    let outbox = session.outbox().clone();
    let reader = read_loop(&mut session, recv, encoding);
    let writer = write_loop(send, &connection, &outbox);
    let ((), close) = tokio::join!(reader, writer);
    m::disconnected(close.code);
    tracing::debug!(client = session.id(), code = %close.code, reason = %close.reason, "webtransport session closed");
    // The peer has acknowledged the disconnect push, but a browser discards
    // stream data its page has not read yet when the connection closes: give
    // the client a moment to read it and close the session itself.
    session.finish().await;
    let _ = tokio::time::timeout(CLOSE_GRACE, connection.closed()).await;
    close_connection(&connection, &close);
}

/// The query string of a session URL; unknown or malformed parameters are
/// ignored (the format check reports what matters).
fn serde_urlencoded_query(query: &str) -> SessionQuery {
    axum::extract::Query::<SessionQuery>::try_from_uri(
        &format!("/?{query}").parse().unwrap_or_default(),
    )
    .map(|q| q.0)
    .unwrap_or_default()
}

/// Takes a stream apart: delimited frames, or units holding batches.
enum Decoder {
    Frames(StreamDecoder),
    Units(UnitStreamDecoder),
}

async fn read_loop(session: &mut Session, mut recv: RecvStream, encoding: Encoding) {
    let outbox = session.outbox().clone();
    let limits = session.decode_limits();
    let max_read = limits.max_frame_size.max(1024);
    let mut decoder = match outbox.framing().codec {
        None => Decoder::Frames(StreamDecoder::new(encoding, limits)),
        Some(codec) => Decoder::Units(UnitStreamDecoder::new(codec, session.max_message_size())),
    };
    loop {
        let deadline = session.deadline();
        let outcome = tokio::select! {
            chunk = recv.quic_stream_mut().read_chunk(max_read, true) => match chunk {
                Ok(Some(chunk)) => {
                    m::bytes_in(chunk.bytes.len());
                    drain(session, &mut decoder, &chunk.bytes).await
                }
                Ok(None) => {
                    outbox.close(Close::new(CloseCode::NORMAL, "closed by the client"));
                    return;
                }
                Err(err) => Err(read_error(&err)),
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

/// Feeds a chunk to the decoder and handles everything complete.
async fn drain(session: &mut Session, decoder: &mut Decoder, chunk: &[u8]) -> Result<(), Close> {
    match decoder {
        Decoder::Frames(frames) => {
            frames.push(chunk);
            loop {
                match frames.next_frame::<ClientFrame>() {
                    Ok(Some(frame)) => session.handle_frame(frame).await?,
                    Ok(None) => return Ok(()),
                    Err(err) => {
                        m::decode_error(err.kind());
                        return Err(Close::new(err.close_code(), err.to_string()));
                    }
                }
            }
        }
        Decoder::Units(units) => {
            units.push(chunk);
            loop {
                match units.next_unit() {
                    Ok(Some(batch)) => session.handle_batch(&batch).await?,
                    Ok(None) => return Ok(()),
                    Err(err) => {
                        m::decode_error(err.kind());
                        return Err(Close::new(err.close_code(), err.to_string()));
                    }
                }
            }
        }
    }
}

fn read_error(err: &quinn::ReadError) -> Close {
    match err {
        quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(_))
        | quinn::ReadError::Reset(_) => Close::new(CloseCode::NORMAL, "closed by the client"),
        other => Close::new(
            CloseCode::ABNORMAL,
            format!("webtransport read failed: {other}"),
        ),
    }
}

/// Sends what the outbox yields on the stream (frames) and as datagrams,
/// until the outbox closes or the session fails. Returns the close.
async fn write_loop(mut send: SendStream, connection: &Connection, outbox: &Outbox) -> Close {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut datagrams: Vec<Bytes> = Vec::new();
    loop {
        frames.clear();
        datagrams.clear();
        let closing = outbox.next_output(&mut frames, &mut datagrams).await;
        for datagram in datagrams.drain(..) {
            m::bytes_out(datagram.len());
            // Best effort by definition: a datagram that no longer fits (the
            // path shrank) or finds the buffer full is dropped.
            if let Err(err) = connection.send_datagram(&datagram) {
                tracing::trace!(%err, "datagram not sent");
            }
        }
        let sending = async {
            let size: usize = frames.iter().map(Bytes::len).sum();
            m::bytes_out(size);
            send.quic_stream_mut().write_all_chunks(&mut frames).await
        };
        if let Err(close) = super::write_or_give_up(outbox, sending, "webtransport write").await {
            return close;
        }
        if let Some(close) = closing {
            // The disconnect push went out with the last batch: finish the
            // stream and give the peer a moment to receive it before the
            // connection close discards anything unacknowledged.
            let _ = send.quic_stream_mut().finish();
            let _ = tokio::time::timeout(CLOSE_GRACE, send.quic_stream_mut().stopped()).await;
            return close;
        }
    }
}

/// The JSON body of `GET <path>/certificate`.
fn certificate_body(info: &CertificateInfo, url: &str) -> String {
    serde_json::json!({
        "url": url,
        "sha256": info.sha256_hex(),
        "notAfter": (info.not_after_ms > 0).then_some(info.not_after_ms),
        "development": info.development,
    })
    .to_string()
}

#[derive(Clone)]
struct CertificateRoute {
    state: Arc<RwLock<CertificateInfo>>,
    port: u16,
    path: String,
}

async fn certificate(State(route): State<CertificateRoute>, headers: HeaderMap) -> Response {
    // The URL a page should use: the host it reached us by, the UDP port.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| match h.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => h,
        })
        .unwrap_or("127.0.0.1");
    let url = format!("https://{host}:{}{}", route.port, route.path);
    let info = read_lock(&route.state);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        certificate_body(&info, &url),
    )
        .into_response()
}

/// The HTTP route serving the certificate hash: `GET <path>/certificate`.
pub fn certificate_router(webtransport: &WebTransport, path: &str) -> Router {
    let route = CertificateRoute {
        state: webtransport.certificate_state(),
        port: webtransport.addr().port(),
        path: path.to_owned(),
    };
    Router::new()
        .route(&format!("{path}/certificate"), get(certificate))
        .with_state(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_certificates_fit_the_browser_limit() {
        let config = WebTransportConfig::default();
        let (identity, info) =
            development_identity(&config, SocketAddr::from(([127, 0, 0, 1], 8000))).unwrap();
        assert!(info.development);
        let now = unix_ms(time::OffsetDateTime::now_utc());
        assert!(info.not_after_ms > now);
        assert!(info.not_after_ms - now <= 14 * 86_400_000);
        assert_eq!(info.sha256, leaf_hash(&identity).unwrap());
        assert_eq!(info.sha256_hex().len(), 64);
    }

    #[test]
    fn query() {
        let q = serde_urlencoded_query("format=json&token=a%20b&x=1");
        assert_eq!(q.format.as_deref(), Some("json"));
        assert_eq!(q.token.as_deref(), Some("a b"));
        assert!(serde_urlencoded_query("%%%").format.is_none());
    }
}
