//! The generator's side of the wire: subscriber connections (many, cheap),
//! the publisher, the payload and the shared counters.
//!
//! Every payload carries its send time (nanoseconds since a process-wide
//! [`Instant`]; publisher and subscribers live in this process), so a
//! subscriber turns each delivery into a latency. Subscribers do the least a
//! client must: split a message into frames and read the timestamp; a frame
//! without one (a heartbeat) is decoded with the library codec and
//! answered. `--full-decode` decodes every frame instead.
//!
//! Subscribers speak WebSocket or WebTransport ([`Transport`]); the
//! publisher always speaks WebSocket. A WebTransport subscriber reads the
//! chunks of its one stream, cuts them into batches of whole frames
//! ([`StreamDecoder::next_delimited`]) and handles them as a WebSocket
//! message, and handles each datagram (one frame) the same way. Its QUIC
//! connections share a few client endpoints (UDP sockets), not one each.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use wtransport::endpoint::endpoint_side;
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use crate::codec::{self, DecodeLimits, Encoding, StreamDecoder};
use crate::wire::v1::client_frame::Command;
use crate::wire::v1::server_frame::Body;
use crate::wire::v1::{
    ClientFrame, ConnectRequest, Pong, PublishRequest, ServerFrame, SubscribeRequest,
};

type Socket = WebSocketStream<TcpStream>;

/// What the server under test speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// The Switchboard protocol in one framing.
    Switchboard(Encoding),
    /// No protocol: every message goes to every other connection.
    Broadcast,
}

impl Dialect {
    /// `json`, `protobuf` or `raw`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Switchboard(encoding) => encoding.name(),
            Dialect::Broadcast => "raw",
        }
    }
}

/// The transport subscribers use (the publisher always uses WebSocket).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket over TCP.
    #[value(name = "websocket", alias = "ws")]
    WebSocket,
    /// WebTransport (HTTP/3 over QUIC): one bidirectional stream, and QUIC
    /// datagrams for volatile rooms.
    #[value(name = "webtransport", alias = "wt")]
    WebTransport,
}

impl Transport {
    /// `websocket` or `webtransport`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::WebTransport => "webtransport",
        }
    }

    /// `ws` or `wt`.
    pub fn short(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::WebTransport => "wt",
        }
    }
}

/// How far a subscriber connection goes before it counts as open.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The WebSocket upgrade only.
    Upgrade,
    /// Upgraded and connected (authenticated).
    Connect,
    /// Connected and subscribed to the room.
    Subscribe,
}

/// What a connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber(Stage),
}

/// Where and how connections are opened.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The WebSocket URL.
    pub url: String,
    /// Its resolved address (loopback).
    pub addr: SocketAddr,
    /// HMAC secret for tokens (Switchboard).
    pub secret: String,
    /// The room subscribers join and the publisher publishes into.
    pub room: String,
    /// Client sockets are spread over 127.0.0.2 ..= 127.0.0.(1 + this).
    pub source_addrs: u8,
    /// Decode every frame with the library codec.
    pub full_decode: bool,
    /// The server's WebTransport endpoint, when it serves one.
    pub webtransport: Option<Arc<WebTransportTarget>>,
}

/// Where WebTransport subscribers connect, and the client endpoints they share.
pub struct WebTransportTarget {
    /// `https://127.0.0.1:<port>/connection/webtransport` (the `format` query is added).
    pub url: String,
    /// Client endpoints (one UDP socket each); connection `i` uses `i % len`.
    clients: Vec<wtransport::Endpoint<endpoint_side::Client>>,
    /// The receive buffer the kernel granted each client socket, in bytes.
    pub recv_buffer: Option<usize>,
    /// The server's UDP port.
    pub server_port: u16,
}

impl std::fmt::Debug for WebTransportTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebTransportTarget")
            .field("url", &self.url)
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// Client endpoints (UDP sockets) WebTransport subscribers are spread over:
/// a few, so that receiving is not one task's job, and far fewer sockets
/// than connections.
pub const WT_CLIENT_ENDPOINTS: usize = 4;
/// Socket buffers of the client endpoints (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`): a publication reaches every subscriber
/// of a socket in one burst of packets.
const WT_SOCKET_BUFFER: usize = 4 << 20;

impl WebTransportTarget {
    /// Client endpoints bound on `source` (loopback) trusting the
    /// self-signed certificate with this SHA-256 hash.
    pub fn new(url: String, sha256: [u8; 32], source: std::net::IpAddr) -> Result<Self, String> {
        let mut recv_buffer = None;
        let clients = (0..WT_CLIENT_ENDPOINTS)
            .map(|_| {
                let socket = std::net::UdpSocket::bind(SocketAddr::new(source, 0))
                    .map_err(|e| format!("cannot bind a UDP socket on {source}: {e}"))?;
                socket.set_nonblocking(true).map_err(|e| e.to_string())?;
                let state = wtransport::quinn::udp::UdpSocketState::new((&socket).into())
                    .map_err(|e| e.to_string())?;
                // Best effort: the kernel caps them.
                let _ = state.set_recv_buffer_size((&socket).into(), WT_SOCKET_BUFFER);
                let _ = state.set_send_buffer_size((&socket).into(), WT_SOCKET_BUFFER);
                recv_buffer = state.recv_buffer_size((&socket).into()).ok();
                let config = wtransport::ClientConfig::builder()
                    .with_bind_socket(socket)
                    .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(sha256)])
                    .build();
                wtransport::Endpoint::client(config)
                    .map_err(|e| format!("cannot start a WebTransport client endpoint: {e}"))
            })
            .collect::<Result<_, String>>()?;
        let server_port = url
            .parse::<tokio_tungstenite::tungstenite::http::Uri>()
            .ok()
            .and_then(|uri| uri.port_u16())
            .ok_or_else(|| format!("{url}: no port"))?;
        Ok(Self {
            url,
            clients,
            recv_buffer,
            server_port,
        })
    }

    /// UDP ports of the client endpoints.
    pub fn client_ports(&self) -> Vec<u16> {
        self.clients
            .iter()
            .filter_map(|c| c.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }
}

/// Frames the generator accepts from a server: generous, it trusts it.
const LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 16 << 20,
    max_frames_per_batch: 100_000,
};
/// Time to open one connection (handshake, connect, subscribe).
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections being opened at once.
const OPEN_CONCURRENCY: usize = 128;
/// Latency histograms; subscriber `i` records into shard `i % SHARDS`.
const SHARDS: usize = 16;

/// Nanoseconds since the process-wide epoch shared by publisher and subscribers.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

const MARKER: &[u8] = b"{\"t\":\"";

/// A JSON payload of `size` bytes (at least [`MIN_PAYLOAD`]) carrying `t`:
/// `{"t":"<20 digits>","p":"xxx…"}`.
pub fn payload(size: usize, t: u64) -> String {
    let mut text = format!("{{\"t\":\"{t:020}\",\"p\":\"");
    let pad = size.saturating_sub(text.len() + 2);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text
}

/// The smallest payload that holds a timestamp.
pub const MIN_PAYLOAD: usize = 35;

/// The timestamp in the first payload found in `bytes`.
fn timestamp(bytes: &[u8]) -> Option<u64> {
    static FINDER: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(MARKER));
    let at = FINDER.find(bytes)? + MARKER.len();
    let digits = bytes.get(at..at + 20)?;
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Calls `each` with the body of every frame of a Switchboard message,
/// without parsing it. Stops at a malformed length prefix.
fn split_frames(message: &[u8], encoding: Encoding, mut each: impl FnMut(&[u8])) {
    match encoding {
        Encoding::Json => {
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', message).chain([message.len()]) {
                if end > start {
                    each(&message[start..end]);
                }
                start = end + 1;
            }
        }
        Encoding::Protobuf => {
            let mut rest = message;
            while !rest.is_empty() {
                let Ok(len) = prost::decode_length_delimiter(&mut rest) else {
                    return;
                };
                let Some(body) = rest.get(..len) else { return };
                each(body);
                rest = &rest[len..];
            }
        }
    }
}

/// How many bytes at the start of a piece of a stream hold whole frames.
fn whole_frames(bytes: &[u8], encoding: Encoding) -> usize {
    match encoding {
        Encoding::Json => memchr::memrchr(b'\n', bytes).map_or(0, |at| at + 1),
        Encoding::Protobuf => {
            let mut used = 0;
            let mut rest = bytes;
            while !rest.is_empty() {
                let mut body = rest;
                let Ok(len) = prost::decode_length_delimiter(&mut body) else {
                    break;
                };
                let Some(next) = body.get(len..) else { break };
                used += rest.len() - next.len();
                rest = next;
            }
            used
        }
    }
}

fn ws_message(bytes: Bytes, encoding: Encoding) -> Result<Message, String> {
    match encoding {
        // The JSON encoder writes UTF-8 only; an error here is a codec bug.
        Encoding::Json => Utf8Bytes::try_from(bytes)
            .map(Message::Text)
            .map_err(|e| format!("JSON frame: {e}")),
        Encoding::Protobuf => Ok(Message::Binary(bytes)),
    }
}

fn pong_bytes(encoding: Encoding) -> Bytes {
    codec::encode(
        &ClientFrame {
            id: 0,
            command: Some(Command::Pong(Pong {})),
        },
        encoding,
    )
}

fn pong(encoding: Encoding) -> Result<Message, String> {
    ws_message(pong_bytes(encoding), encoding)
}

/// Counters shared by every connection of a run.
pub struct Stats {
    delivered: AtomicU64,
    /// Publications of those that arrived in QUIC datagrams.
    datagrams: AtomicU64,
    lost: AtomicU64,
    /// The publisher wants [`Stats::progress`] once `delivered` reaches this.
    wake_at: AtomicU64,
    progress: Notify,
    recording: AtomicBool,
    /// While recording, publications sent before this ([`now_ns`]) are not recorded.
    since: AtomicU64,
    /// Deliveries recorded.
    recorded: AtomicU64,
    latency: Box<[Mutex<Histogram<u64>>]>,
}

impl Stats {
    /// Fresh counters.
    pub fn new() -> Result<Self, String> {
        let histogram = || Histogram::new_with_bounds(1_000, 120_000_000_000, 3).map(Mutex::new);
        let latency = (0..SHARDS)
            .map(|_| histogram())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            delivered: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            progress: Notify::new(),
            recording: AtomicBool::new(false),
            since: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            latency,
        })
    }

    /// Publications received by all subscribers so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// Publications received in QUIC datagrams so far (counted in `delivered` too).
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::Acquire)
    }

    /// Subscriber connections the server closed.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    fn deliver(&self, shard: usize, stamps: &[u64]) {
        if stamps.is_empty() {
            return;
        }
        let n = stamps.len() as u64;
        if self.delivered.fetch_add(n, Ordering::AcqRel) + n >= self.wake_at.load(Ordering::Acquire)
        {
            self.progress.notify_one();
        }
        if self.recording.load(Ordering::Acquire) {
            let now = now_ns();
            let since = self.since.load(Ordering::Acquire);
            let mut histogram = self.latency[shard % SHARDS]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut recorded = 0;
            for &t in stamps.iter().filter(|&&t| t >= since) {
                histogram.saturating_record(now.saturating_sub(t));
                recorded += 1;
            }
            drop(histogram);
            self.recorded.fetch_add(recorded, Ordering::AcqRel);
        }
    }

    /// Clears the latency histograms and starts recording the deliveries
    /// of publications sent from now on (late ones of an earlier phase are
    /// not counted).
    pub fn start_recording(&self) {
        self.latency
            .iter()
            .for_each(|h| h.lock().unwrap_or_else(PoisonError::into_inner).reset());
        self.recorded.store(0, Ordering::Release);
        self.since.store(now_ns(), Ordering::Release);
        self.recording.store(true, Ordering::Release);
    }

    /// Deliveries recorded since [`Stats::start_recording`].
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Acquire)
    }

    /// Stops recording; returns the latencies (ns) recorded since the start.
    pub fn stop_recording(&self) -> Histogram<u64> {
        self.recording.store(false, Ordering::Release);
        let mut all = Histogram::new_from(
            &self.latency[0]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for shard in self.latency.iter() {
            // Same bounds everywhere: adding cannot fail.
            let _ = all.add(&*shard.lock().unwrap_or_else(PoisonError::into_inner));
        }
        all
    }
}

/// The batch a Switchboard connection starts with (`connect`, and
/// `subscribe` for a subscriber) and the id of the reply that completes it;
/// `None` when the stage needs no command.
fn hello(
    endpoint: &Endpoint,
    encoding: Encoding,
    index: usize,
    role: Role,
) -> Result<Option<(Bytes, u32)>, String> {
    let (publisher, stage) = match role {
        Role::Publisher => (true, Stage::Connect),
        Role::Subscriber(stage) => (false, stage),
    };
    if stage == Stage::Upgrade {
        return Ok(None);
    }
    let user = format!("bench-{}{index}", if publisher { "pub-" } else { "" });
    let rooms = [endpoint.room.clone()];
    let (subscribe, publish): (&[String], &[String]) = if publisher {
        (&[], &rooms)
    } else {
        (&rooms, &[])
    };
    let token = crate::auth::mint_hs256(&endpoint.secret, &user, None, subscribe, publish, None)
        .map_err(|e| format!("minting a token: {e}"))?;
    let mut batch = BytesMut::new();
    let connect = Command::Connect(ConnectRequest {
        token,
        ..Default::default()
    });
    codec::encode_into(
        &ClientFrame {
            id: 1,
            command: Some(connect),
        },
        encoding,
        &mut batch,
    );
    if stage == Stage::Subscribe {
        let subscribe = Command::Subscribe(SubscribeRequest {
            room: endpoint.room.clone(),
            ..Default::default()
        });
        codec::encode_into(
            &ClientFrame {
                id: 2,
                command: Some(subscribe),
            },
            encoding,
            &mut batch,
        );
    }
    let last = if stage == Stage::Subscribe { 2 } else { 1 };
    Ok(Some((batch.freeze(), last)))
}

/// Whether `frame` is the reply with id `last` (an error reply fails).
fn is_last_reply(frame: &ServerFrame, last: u32) -> Result<bool, String> {
    match &frame.body {
        Some(Body::Error(err)) => Err(format!("command {} refused: {}", frame.id, err.message)),
        _ => Ok(frame.id == last),
    }
}

/// Opens a WebSocket from source address number `index` and, for
/// Switchboard, takes it as far as `role` needs.
async fn open(
    endpoint: &Endpoint,
    dialect: Dialect,
    index: usize,
    role: Role,
) -> Result<Socket, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if endpoint.addr.ip().is_loopback() && endpoint.addr.is_ipv4() {
        let host = 2 + (index % usize::from(endpoint.source_addrs.max(1))) as u8;
        let source = SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0));
        socket
            .bind(source)
            .map_err(|e| format!("cannot bind {source}: {e}"))?;
    }
    let stream = socket
        .connect(endpoint.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut request = endpoint
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Dialect::Switchboard(encoding) = dialect {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    // tungstenite zero-fills the whole read buffer before every read: keep it small.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let Dialect::Switchboard(encoding) = dialect else {
        return Ok(ws);
    };
    let Some((batch, last)) = hello(endpoint, encoding, index, role)? else {
        return Ok(ws);
    };
    ws.send(ws_message(batch, encoding)?)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let bytes = match ws.next().await {
            Some(Ok(Message::Text(text))) => Bytes::from(text),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(close))) => {
                return Err(format!("closed by the server: {close:?}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err("closed by the server".into()),
        };
        for frame in codec::decode_batch::<ServerFrame>(&bytes, encoding, &LIMITS) {
            let frame = frame.map_err(|e| format!("undecodable reply: {e}"))?;
            if is_last_reply(&frame, last)? {
                return Ok(ws);
            }
        }
    }
}

/// Largest chunk a WebTransport subscriber reads from its stream at once.
const WT_READ_CHUNK: usize = 64 * 1024;

/// A WebTransport session: the QUIC connection (datagrams), its one
/// bidirectional stream, and the bytes of the stream not yet cut into frames.
struct WtSession {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: StreamDecoder,
}

/// Opens a WebTransport session over client endpoint `index % endpoints`,
/// opens its stream and takes it as far as `stage`.
async fn open_webtransport(
    endpoint: &Endpoint,
    encoding: Encoding,
    index: usize,
    stage: Stage,
) -> Result<WtSession, String> {
    let target = endpoint
        .webtransport
        .as_deref()
        .ok_or("the server has no WebTransport endpoint")?;
    let client = &target.clients[index % target.clients.len()];
    let url = format!("{}?format={}", target.url, encoding.name());
    let connection = client
        .connect(url)
        .await
        .map_err(|e| format!("WebTransport session: {e}"))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("opening the stream: {e}"))?
        .await
        .map_err(|e| format!("opening the stream: {e}"))?;
    let mut session = WtSession {
        connection,
        send,
        recv,
        decoder: StreamDecoder::new(encoding, LIMITS),
    };
    let Some((batch, last)) = hello(endpoint, encoding, index, Role::Subscriber(stage))? else {
        return Ok(session);
    };
    session
        .send
        .write_all(&batch)
        .await
        .map_err(|e| format!("writing on the stream: {e}"))?;
    loop {
        match session.decoder.next_frame::<ServerFrame>() {
            Ok(Some(frame)) => {
                if is_last_reply(&frame, last)? {
                    return Ok(session);
                }
            }
            Ok(None) => {
                let chunk = session
                    .recv
                    .quic_stream_mut()
                    .read_chunk(WT_READ_CHUNK, true)
                    .await
                    .map_err(|e| format!("reading the stream: {e}"))?
                    .ok_or("stream finished by the server")?;
                session.decoder.push(&chunk.bytes);
            }
            Err(err) => return Err(format!("undecodable reply: {err}")),
        }
    }
}

/// The payload of an HTTP datagram (RFC 9297): what follows the quarter
/// stream id (a QUIC varint) of the session.
fn http_datagram_payload(datagram: &[u8]) -> Option<&[u8]> {
    let len = 1 << (datagram.first()? >> 6);
    datagram.get(len..)
}

/// An open subscriber connection, over either transport.
enum Conn {
    WebSocket(Box<Socket>),
    WebTransport(Box<WtSession>),
}

/// Opens a subscriber over `transport`.
async fn open_subscriber(
    endpoint: &Endpoint,
    dialect: Dialect,
    transport: Transport,
    index: usize,
    stage: Stage,
) -> Result<Conn, String> {
    match (transport, dialect) {
        (Transport::WebSocket, _) => open(endpoint, dialect, index, Role::Subscriber(stage))
            .await
            .map(|ws| Conn::WebSocket(Box::new(ws))),
        (Transport::WebTransport, Dialect::Switchboard(encoding)) => {
            open_webtransport(endpoint, encoding, index, stage)
                .await
                .map(|wt| Conn::WebTransport(Box::new(wt)))
        }
        (Transport::WebTransport, Dialect::Broadcast) => {
            Err("the broadcast baseline speaks WebSocket only".into())
        }
    }
}

/// Subscriber connections, opened and closed in bulk. WebSocket subscriber
/// `i` binds source address `i % source_addrs`; WebTransport subscriber `i`
/// uses client endpoint `i % WT_CLIENT_ENDPOINTS`.
pub struct Pool {
    endpoint: Arc<Endpoint>,
    dialect: Dialect,
    transport: Transport,
    stage: Stage,
    stats: Arc<Stats>,
    conns: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Pool {
    /// An empty pool whose connections use `transport` and go as far as `stage`.
    pub fn new(
        endpoint: Arc<Endpoint>,
        dialect: Dialect,
        transport: Transport,
        stage: Stage,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            endpoint,
            dialect,
            transport,
            stage,
            stats,
            conns: Vec::new(),
        }
    }

    /// The server the pool connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Open subscribers.
    pub fn subscribers(&self) -> usize {
        self.conns.len()
    }

    /// Opens or closes subscribers until `n` are open (up to their stage).
    pub async fn resize(&mut self, n: usize) -> Result<(), String> {
        if n < self.conns.len() {
            let tasks: Vec<_> = self.conns.drain(n..).map(|(_stop, task)| task).collect();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                futures_util::future::join_all(tasks),
            )
            .await;
            return Ok(());
        }
        let (endpoint, dialect, transport, stage) =
            (&*self.endpoint, self.dialect, self.transport, self.stage);
        let mut opening = futures_util::stream::iter(self.conns.len()..n)
            .map(|i| async move {
                match tokio::time::timeout(
                    OPEN_TIMEOUT,
                    open_subscriber(endpoint, dialect, transport, i, stage),
                )
                .await
                {
                    Ok(Ok(conn)) => Ok((i, conn)),
                    Ok(Err(err)) => Err(format!("{} subscriber {i}: {err}", transport.name())),
                    Err(_) => Err(format!(
                        "{} subscriber {i}: not ready within {OPEN_TIMEOUT:?}",
                        transport.name()
                    )),
                }
            })
            .buffer_unordered(OPEN_CONCURRENCY);
        while let Some(opened) = opening.next().await {
            let (i, conn) = opened?;
            let (stop, stopped) = oneshot::channel();
            let subscriber = Subscriber {
                dialect,
                stats: self.stats.clone(),
                shard: i,
                full: endpoint.full_decode,
            };
            self.conns
                .push((stop, tokio::spawn(subscriber.run(conn, stopped))));
        }
        Ok(())
    }
}

struct Subscriber {
    dialect: Dialect,
    stats: Arc<Stats>,
    shard: usize,
    full: bool,
}

impl Subscriber {
    /// Receives until `stop` fires (or its sender drops) or the server closes.
    async fn run(self, conn: Conn, stop: oneshot::Receiver<()>) {
        let stopped = match conn {
            Conn::WebSocket(ws) => self.run_websocket(*ws, stop).await,
            Conn::WebTransport(wt) => self.run_webtransport(*wt, stop).await,
        };
        if !stopped {
            self.stats.lost.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Returns whether it stopped because it was told to.
    async fn run_websocket(&self, mut ws: Socket, mut stop: oneshot::Receiver<()>) -> bool {
        let mut stamps = Vec::new();
        loop {
            let message = tokio::select! {
                _ = &mut stop => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return true;
                }
                message = ws.next() => message,
            };
            let pong_due = match message {
                Some(Ok(Message::Text(text))) => self.handle(text.as_bytes(), &mut stamps),
                Some(Ok(Message::Binary(bytes))) => self.handle(&bytes, &mut stamps),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
                Some(Ok(_)) => false,
            };
            if let (true, Dialect::Switchboard(encoding)) = (pong_due, self.dialect) {
                let Ok(reply) = pong(encoding) else { continue };
                if ws.send(reply).await.is_err() {
                    return false;
                }
            }
        }
    }

    /// Returns whether it stopped because it was told to.
    async fn run_webtransport(&self, wt: WtSession, mut stop: oneshot::Receiver<()>) -> bool {
        let Dialect::Switchboard(encoding) = self.dialect else {
            return false;
        };
        let WtSession {
            connection,
            mut send,
            mut recv,
            mut decoder,
        } = wt;
        // Datagrams are read from the QUIC connection, not through
        // `Connection::receive_datagram`: wtransport 0.7 hands each one from
        // its connection driver task through a channel of one, a full turn of
        // the driver's loop (which polls every control stream) per datagram,
        // which made the generator, not the server, the limit. The driver
        // takes at most one datagram (during the warm-up) before its channel
        // is full and it stops reading them.
        let quic = connection.quic_connection().clone();
        let mut stamps = Vec::new();
        loop {
            let pong_due = tokio::select! {
                _ = &mut stop => {
                    connection.close(VarInt::from_u32(1000), b"benchmark done");
                    return true;
                }
                chunk = recv.quic_stream_mut().read_chunk(WT_READ_CHUNK, true) => {
                    let Ok(Some(chunk)) = chunk else { return false };
                    let mut pong_due = false;
                    if decoder.buffered() == 0 {
                        // Usually whole frames: handled in place, the rest kept.
                        let whole = whole_frames(&chunk.bytes, encoding);
                        if whole > 0 {
                            pong_due = self.handle(&chunk.bytes[..whole], &mut stamps);
                        }
                        decoder.push(&chunk.bytes[whole..]);
                    } else {
                        decoder.push(&chunk.bytes);
                        loop {
                            match decoder.next_delimited() {
                                Ok(Some(batch)) => pong_due |= self.handle(&batch, &mut stamps),
                                Ok(None) => break,
                                Err(_) => return false,
                            }
                        }
                    }
                    pong_due
                }
                datagram = quic.read_datagram() => {
                    let Ok(datagram) = datagram else { return false };
                    let Some(payload) = http_datagram_payload(&datagram) else {
                        return false;
                    };
                    let pong_due = self.handle(payload, &mut stamps);
                    self.stats
                        .datagrams
                        .fetch_add(stamps.len() as u64, Ordering::AcqRel);
                    pong_due
                }
            };
            if pong_due && send.write_all(&pong_bytes(encoding)).await.is_err() {
                return false;
            }
        }
    }

    /// Counts the publications in a batch of frames; returns whether a
    /// heartbeat asks for a pong.
    fn handle(&self, message: &[u8], stamps: &mut Vec<u64>) -> bool {
        stamps.clear();
        let Dialect::Switchboard(encoding) = self.dialect else {
            stamps.extend(timestamp(message));
            self.stats.deliver(self.shard, stamps);
            return false;
        };
        let mut other = self.full;
        if !self.full {
            split_frames(message, encoding, |frame| match timestamp(frame) {
                Some(t) => stamps.push(t),
                None => other = true,
            });
        }
        let mut pong_due = false;
        if other {
            for frame in
                codec::decode_batch::<ServerFrame>(message, encoding, &LIMITS).map_while(Result::ok)
            {
                match frame.body {
                    Some(Body::Publication(p)) if self.full => stamps.extend(timestamp(&p.data)),
                    Some(Body::Heartbeat(_)) => pong_due = true,
                    _ => {}
                }
            }
        }
        self.stats.deliver(self.shard, stamps);
        pong_due
    }
}

/// How the publisher paces itself.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as subscribers keep up: at most this many publications not
    /// yet delivered to every subscriber (on average).
    Window(u64),
    /// Open loop, this many publications per second.
    Rate(f64),
}

/// The one publishing connection.
pub struct Publisher {
    ws: Socket,
    dialect: Dialect,
    room: String,
    size: usize,
    next_id: u32,
}

impl Publisher {
    /// Opens (and for Switchboard connects) the publishing connection.
    pub async fn open(endpoint: &Endpoint, dialect: Dialect, size: usize) -> Result<Self, String> {
        let ws = tokio::time::timeout(OPEN_TIMEOUT, open(endpoint, dialect, 0, Role::Publisher))
            .await
            .map_err(|_| "publisher: not connected in time".to_owned())?
            .map_err(|e| format!("publisher: {e}"))?;
        Ok(Self {
            ws,
            dialect,
            room: endpoint.room.clone(),
            size,
            next_id: 1,
        })
    }

    /// Publishes for `duration` at `pace` to `subscribers`; returns how many
    /// publications were sent.
    pub async fn run(
        &mut self,
        pace: Pace,
        duration: Duration,
        subscribers: u64,
        stats: &Stats,
    ) -> Result<u64, String> {
        let start = tokio::time::Instant::now();
        let end = start + duration;
        let base = stats.delivered();
        let mut sent = 0u64;
        let result = loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                break Ok(sent);
            }
            let wait_until = match pace {
                Pace::Window(window) => {
                    let needed = base + (sent + 1).saturating_sub(window) * subscribers;
                    stats.wake_at.store(needed, Ordering::Release);
                    // Checked after publishing `needed`: a delivery in between still wakes us.
                    (stats.delivered() < needed).then_some(end)
                }
                Pace::Rate(rate) => Some(start + Duration::from_secs_f64(sent as f64 / rate))
                    .filter(|&due| due > now),
            };
            let Some(until) = wait_until else {
                if let Err(err) = self.publish().await {
                    break Err(err);
                }
                sent += 1;
                continue;
            };
            tokio::select! {
                () = stats.progress.notified(), if matches!(pace, Pace::Window(_)) => {}
                () = tokio::time::sleep_until(until) => {}
                message = self.ws.next() => if let Err(err) = self.handle(message).await {
                    break Err(err);
                },
            }
        };
        stats.wake_at.store(u64::MAX, Ordering::Release);
        result
    }

    /// Runs `work` (opening subscribers, a pause) while answering what the
    /// server sends: a publisher that reads nothing for longer than the
    /// server's pong timeout is disconnected.
    pub async fn meanwhile<T>(&mut self, work: impl Future<Output = T>) -> Result<T, String> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                message = self.ws.next() => self.handle(message).await?,
            }
        }
    }

    /// Reads replies until `done` or `limit` passes.
    pub async fn settle(&mut self, done: impl Fn() -> bool, limit: Duration) -> Result<(), String> {
        let end = tokio::time::Instant::now() + limit;
        while !done() && tokio::time::Instant::now() < end {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
                message = self.ws.next() => self.handle(message).await?,
            }
        }
        Ok(())
    }

    async fn publish(&mut self) -> Result<(), String> {
        let data = payload(self.size, now_ns());
        let message = match self.dialect {
            Dialect::Broadcast => Message::Text(data.into()),
            Dialect::Switchboard(encoding) => {
                let publish = PublishRequest {
                    room: self.room.clone(),
                    data: data.into(),
                    ..Default::default()
                };
                self.next_id = self.next_id.checked_add(1).unwrap_or(2);
                let frame = ClientFrame {
                    id: self.next_id,
                    command: Some(Command::Publish(publish)),
                };
                ws_message(codec::encode(&frame, encoding), encoding)?
            }
        };
        self.ws
            .send(message)
            .await
            .map_err(|e| format!("publisher: {e}"))
    }

    /// Handles what the server sent the publisher: acks, errors, heartbeats.
    async fn handle(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), String> {
        let bytes = match message {
            Some(Ok(Message::Text(text))) => Bytes::from(text),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(close))) => {
                return Err(format!("publisher closed by the server: {close:?}"));
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(err)) => return Err(format!("publisher: {err}")),
            None => return Err("publisher closed by the server".into()),
        };
        let Dialect::Switchboard(encoding) = self.dialect else {
            return Ok(());
        };
        for frame in codec::decode_batch::<ServerFrame>(&bytes, encoding, &LIMITS) {
            match frame
                .map_err(|e| format!("publisher: undecodable frame: {e}"))?
                .body
            {
                Some(Body::Error(err)) => {
                    return Err(format!("publish refused: {} ({})", err.message, err.code));
                }
                Some(Body::Heartbeat(_)) => self
                    .ws
                    .send(pong(encoding)?)
                    .await
                    .map_err(|e| e.to_string())?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_timestamp_in_both_framings() {
        let data = payload(200, 1_234_567);
        assert_eq!(data.len(), 200);
        assert_eq!(timestamp(data.as_bytes()), Some(1_234_567));
        assert_eq!(payload(MIN_PAYLOAD, u64::MAX).len(), MIN_PAYLOAD);
        for encoding in Encoding::ALL {
            let publication = crate::wire::v1::Publication {
                room: "bench:room".into(),
                data: Bytes::from(data.clone()),
                ..Default::default()
            };
            let frame = ServerFrame {
                id: 0,
                body: Some(Body::Publication(publication)),
            };
            let heartbeat = ServerFrame {
                id: 0,
                body: Some(Body::Heartbeat(Default::default())),
            };
            let mut batch = BytesMut::new();
            for f in [&frame, &heartbeat, &frame] {
                codec::encode_into(f, encoding, &mut batch);
            }
            let mut found = Vec::new();
            split_frames(&batch, encoding, |f| found.push(timestamp(f)));
            assert_eq!(whole_frames(&batch, encoding), batch.len());
            let two =
                codec::encode(&frame, encoding).len() + codec::encode(&heartbeat, encoding).len();
            assert_eq!(whole_frames(&batch[..batch.len() - 1], encoding), two);
            assert_eq!(whole_frames(&batch[..1], encoding), 0);
            assert_eq!(
                found,
                [Some(1_234_567), None, Some(1_234_567)],
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn http_datagrams_lose_their_quarter_stream_id() {
        assert_eq!(http_datagram_payload(&[0x01, b'x']), Some(&b"x"[..]));
        assert_eq!(http_datagram_payload(&[0x40, 0x41, b'y']), Some(&b"y"[..]));
        assert_eq!(http_datagram_payload(&[0x80, 0, 0, 1]), Some(&b""[..]));
        assert_eq!(http_datagram_payload(&[0xc0, 0]), None);
        assert_eq!(http_datagram_payload(&[]), None);
    }
}
