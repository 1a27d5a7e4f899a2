//! Test fixtures: a server on a free loopback port and a minimal protocol
//! client over real WebSocket connections.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use switchboard::codec::{self, DecodeLimits, Encoding};
use switchboard::config::Config;
use switchboard::server::Server;
use switchboard::wire::v1::{client_frame::Command, server_frame::Body, *};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";

/// A config for tests: loopback on a free port, a known secret.
pub fn config() -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..Config::default()
    };
    config.auth.hmac_secret = Some(SECRET.into());
    config
}

pub async fn start(config: Config) -> Server {
    Server::start(config).await.expect("server starts")
}

/// A token for `user` granting subscribe on `rooms` and publish on `publish`.
pub fn token(user: &str, rooms: &[&str], publish: &[&str]) -> String {
    token_expiring(user, rooms, publish, None)
}

pub fn token_expiring(user: &str, rooms: &[&str], publish: &[&str], exp: Option<u64>) -> String {
    let rooms: Vec<String> = rooms.iter().map(|s| s.to_string()).collect();
    let publish: Vec<String> = publish.iter().map(|s| s.to_string()).collect();
    let info = serde_json::json!({ "name": user });
    switchboard::auth::mint_hs256(SECRET, user, exp, &rooms, &publish, Some(&info)).expect("token")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw protocol client: sends commands, returns frames as they arrive.
pub struct Client {
    pub socket: Socket,
    pub encoding: Encoding,
    pending: std::collections::VecDeque<ServerFrame>,
    next_id: u32,
    limits: DecodeLimits,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

pub fn ws_url(server: &Server) -> String {
    format!(
        "ws://{}{}",
        server.addr(),
        server.node().config().websocket_path
    )
}

impl Client {
    /// Opens a WebSocket with the encoding's subprotocol (no connect yet).
    pub async fn open(server: &Server, encoding: Encoding) -> Self {
        Self::open_url(&ws_url(server), encoding).await
    }

    pub async fn open_url(url: &str, encoding: Encoding) -> Self {
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            encoding.subprotocol().parse().expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgrade");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(encoding.subprotocol())
        );
        let limits = DecodeLimits {
            max_frame_size: 16 << 20,
            max_frames_per_batch: 100_000,
        };
        Self {
            socket,
            encoding,
            pending: Default::default(),
            next_id: 0,
            limits,
        }
    }

    /// Opens and connects with a token; panics unless connected.
    pub async fn connect(
        server: &Server,
        encoding: Encoding,
        token: &str,
    ) -> (Self, ConnectResult) {
        let mut client = Self::open(server, encoding).await;
        let reply = client
            .request(Command::Connect(ConnectRequest {
                token: token.into(),
                ..Default::default()
            }))
            .await;
        match reply.body {
            Some(Body::Connect(result)) => (client, result),
            other => panic!("connect failed: {other:?}"),
        }
    }

    pub async fn send_frames(&mut self, frames: &[ClientFrame]) {
        let mut batch = BytesMut::new();
        for f in frames {
            codec::encode_into(f, self.encoding, &mut batch);
        }
        self.send_raw(batch.freeze()).await;
    }

    pub async fn send_raw(&mut self, bytes: Bytes) {
        let message = match self.encoding {
            Encoding::Json => {
                Message::Text(String::from_utf8(bytes.to_vec()).expect("UTF-8").into())
            }
            Encoding::Protobuf => Message::Binary(bytes),
        };
        self.socket.send(message).await.expect("send");
    }

    /// Sends a command with a fresh id and returns its id.
    pub async fn send(&mut self, command: Command) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        self.send_frames(&[ClientFrame {
            id,
            command: Some(command),
        }])
        .await;
        id
    }

    /// Sends a command and waits for its reply, keeping pushes that arrive
    /// meanwhile for [`Client::next`].
    pub async fn request(&mut self, command: Command) -> ServerFrame {
        let id = self.send(command).await;
        let mut skipped = Vec::new();
        loop {
            let frame = self
                .recv_frame()
                .await
                .unwrap_or_else(|closed| panic!("closed awaiting reply: {closed:?}"));
            if frame.id == id {
                for f in skipped.into_iter().rev() {
                    self.pending.push_front(f);
                }
                return frame;
            }
            skipped.push(frame);
        }
    }

    /// The next frame, or how the connection closed.
    pub async fn next(&mut self) -> Result<ServerFrame, Closed> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        self.recv_frame().await
    }

    /// Frames received and not yet read.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// The next push that is not a heartbeat (heartbeats are answered).
    pub async fn next_push(&mut self) -> ServerFrame {
        loop {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|c| panic!("closed: {c:?}"));
            if let Some(Body::Heartbeat(_)) = frame.body {
                self.send_frames(&[ClientFrame {
                    id: 0,
                    command: Some(Command::Pong(Pong {})),
                }])
                .await;
                continue;
            }
            return frame;
        }
    }

    async fn recv_frame(&mut self) -> Result<ServerFrame, Closed> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(frame);
            }
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame within 10 s");
            let bytes = match message {
                Some(Ok(Message::Text(t))) => Bytes::from(t.as_str().to_owned()),
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(
                        Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                        |f| Closed {
                            code: u16::from(f.code),
                            reason: f.reason.to_string(),
                        },
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(Closed {
                        code: 1006,
                        reason: e.to_string(),
                    });
                }
                None => {
                    return Err(Closed {
                        code: 1006,
                        reason: "eof".into(),
                    });
                }
            };
            for frame in codec::decode_batch::<ServerFrame>(&bytes, self.encoding, &self.limits) {
                self.pending.push_back(frame.expect("server frames decode"));
            }
        }
    }

    /// Reads until the connection closes; returns the close and the last
    /// `disconnect` push seen.
    pub async fn closed(&mut self) -> (Closed, Option<Disconnect>) {
        let mut disconnect = None;
        loop {
            match self.next().await {
                Ok(ServerFrame {
                    body: Some(Body::Disconnect(d)),
                    ..
                }) => disconnect = Some(d),
                Ok(_) => {}
                Err(closed) => return (closed, disconnect),
            }
        }
    }

    pub async fn subscribe(
        &mut self,
        room: &str,
        since: Option<StreamPosition>,
    ) -> SubscribeResult {
        let reply = self
            .request(Command::Subscribe(SubscribeRequest {
                room: room.into(),
                since,
                ..Default::default()
            }))
            .await;
        match reply.body {
            Some(Body::Subscribe(result)) => result,
            other => panic!("subscribe {room} failed: {other:?}"),
        }
    }

    pub async fn publish(&mut self, room: &str, data: &str) -> Result<PublishResult, Error> {
        let reply = self
            .request(Command::Publish(PublishRequest {
                room: room.into(),
                data: Bytes::from(data.to_owned()),
                ..Default::default()
            }))
            .await;
        match reply.body {
            Some(Body::Publish(result)) => Ok(result),
            Some(Body::Error(err)) => Err(err),
            other => panic!("unexpected publish reply {other:?}"),
        }
    }

    /// The next publication push (skipping join/leave and heartbeats).
    pub async fn next_publication(&mut self) -> Publication {
        loop {
            if let Some(Body::Publication(p)) = self.next_push().await.body {
                return p;
            }
        }
    }
}
