//! WebTransport: the same engine over HTTP/3. A raw session (one stream, the
//! datagrams, the QUIC close) and the Rust client with its WebSocket fallback.

use std::time::Duration;

use bytes::Bytes;
use switchboard::client::webtransport::{FallbackConnector, WebTransportConnector};
use switchboard::client::{Client, Config as ClientConfig, Event, transport::WebSocketConnector};
use switchboard::codec::{self, DecodeLimits, Encoding, StreamDecoder};
use switchboard::codes::CloseCode;
use switchboard::config::{Config, RoomOptions};
use switchboard::engine::Close;
use switchboard::server::Server;
use switchboard::wire::v1::{client_frame::Command, server_frame::Body, *};
use wtransport::error::ConnectionError;
use wtransport::{ClientConfig as WtConfig, Endpoint};

use super::support::{self, token};

fn config() -> Config {
    let mut config = support::config();
    config.namespaces.insert(
        "feed".into(),
        RoomOptions {
            history_size: 100,
            ..RoomOptions::default()
        },
    );
    config.namespaces.insert(
        "cursor".into(),
        RoomOptions {
            volatile: true,
            ..RoomOptions::default()
        },
    );
    config
}

fn wt_url(server: &Server) -> String {
    let wt = server.webtransport().expect("webtransport enabled");
    format!(
        "https://127.0.0.1:{}{}",
        wt.addr().port(),
        server.node().config().webtransport.path
    )
}

fn connector(server: &Server, encoding: Encoding) -> WebTransportConnector {
    let hash = server.webtransport().unwrap().certificate().sha256;
    WebTransportConnector::new(wt_url(server), encoding).with_certificate_hash(hash)
}

/// A raw session: frames on one stream, datagrams, and how it closed.
struct Raw {
    connection: wtransport::Connection,
    send: wtransport::SendStream,
    recv: wtransport::RecvStream,
    decoder: StreamDecoder,
    encoding: Encoding,
    next_id: u32,
}

impl Raw {
    async fn open(server: &Server, encoding: Encoding, query: &str) -> Self {
        Self::open_with_hash(
            server,
            encoding,
            query,
            server.webtransport().unwrap().certificate().sha256,
        )
        .await
        .expect("session")
    }

    async fn open_with_hash(
        server: &Server,
        encoding: Encoding,
        query: &str,
        hash: [u8; 32],
    ) -> Result<Self, String> {
        let config = WtConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
            .build();
        let endpoint = Endpoint::client(config).unwrap();
        let url = format!("{}?format={}{query}", wt_url(server), encoding.name());
        let connection = endpoint.connect(url).await.map_err(|e| e.to_string())?;
        let (send, recv) = connection.open_bi().await.unwrap().await.unwrap();
        Ok(Self {
            connection,
            send,
            recv,
            decoder: StreamDecoder::new(encoding, DecodeLimits::default()),
            encoding,
            next_id: 1,
        })
    }

    async fn send(&mut self, command: Command) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = ClientFrame {
            id,
            command: Some(command),
        };
        self.send
            .write_all(&codec::encode(&frame, self.encoding))
            .await
            .unwrap();
        id
    }

    /// The next frame on the stream, `None` at its end.
    async fn next(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(frame) = self.decoder.next_frame::<ServerFrame>().unwrap() {
                return Some(frame);
            }
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(10), self.recv.read(&mut buf))
                .await
                .expect("a frame in time");
            match read {
                Ok(Some(n)) => self.decoder.push(&buf[..n]),
                _ => return None,
            }
        }
    }

    /// The reply to `id`, skipping pushes.
    async fn reply(&mut self, id: u32) -> Body {
        loop {
            let frame = self.next().await.expect("reply before the end");
            if frame.id == id {
                return frame.body.expect("body");
            }
        }
    }

    async fn connect(&mut self, token: &str) {
        let id = self
            .send(Command::Connect(ConnectRequest {
                token: token.into(),
                ..Default::default()
            }))
            .await;
        assert!(matches!(self.reply(id).await, Body::Connect(_)));
    }

    async fn subscribe(&mut self, room: &str) {
        let id = self
            .send(Command::Subscribe(SubscribeRequest {
                room: room.into(),
                ..Default::default()
            }))
            .await;
        let reply = self.reply(id).await;
        assert!(matches!(reply, Body::Subscribe(_)), "{reply:?}");
    }

    async fn datagram(&mut self) -> ServerFrame {
        let datagram =
            tokio::time::timeout(Duration::from_secs(10), self.connection.receive_datagram())
                .await
                .expect("a datagram in time")
                .expect("session open");
        let (payload, limits) = (datagram.payload(), DecodeLimits::default());
        let mut frames = codec::decode_batch::<ServerFrame>(&payload, self.encoding, &limits);
        let frame = frames.next().expect("one frame").expect("valid");
        assert!(frames.next().is_none());
        frame
    }

    /// The close code and reason of the QUIC connection close.
    async fn closed(&self) -> (u16, String) {
        match tokio::time::timeout(Duration::from_secs(10), self.connection.closed())
            .await
            .expect("closed in time")
        {
            ConnectionError::ApplicationClosed(close) => (
                close.code().into_inner() as u16,
                String::from_utf8_lossy(close.reason()).into_owned(),
            ),
            other => panic!("not an application close: {other}"),
        }
    }
}

fn publication(body: Body) -> Publication {
    match body {
        Body::Publication(p) => p,
        other => panic!("not a publication: {other:?}"),
    }
}

async fn publish(server: &Server, room: &str, data: &str) {
    server
        .node()
        .publish(room, Bytes::from(data.to_owned()), Default::default(), "")
        .await
        .expect("published");
}

#[tokio::test]
async fn raw_session_subscribes_publishes_and_receives() {
    let server = support::start(config()).await;
    for encoding in Encoding::ALL {
        let room = format!("feed:raw-{}", encoding.name());
        let mut session = Raw::open(&server, encoding, "").await;
        session.connect(&token("u", &["feed:*"], &["feed:*"])).await;
        session.subscribe(&room).await;
        let id = session
            .send(Command::Publish(PublishRequest {
                room: room.clone(),
                data: Bytes::from_static(b"{\"n\":1}"),
                ..Default::default()
            }))
            .await;
        // Our own publication arrives as a push; the reply may come first.
        let mut pushed = None;
        let mut replied = false;
        while pushed.is_none() || !replied {
            let frame = session.next().await.expect("frame");
            match frame.body {
                Some(Body::Publish(_)) if frame.id == id => replied = true,
                Some(Body::Publication(p)) => pushed = Some(p),
                other => panic!("unexpected {other:?}"),
            }
        }
        let pushed = pushed.unwrap();
        assert_eq!((pushed.offset, &pushed.data[..]), (1, &b"{\"n\":1}"[..]));
        publish(&server, &room, "{\"n\":2}").await;
        let p = publication(session.next().await.unwrap().body.unwrap());
        assert_eq!((p.offset, &p.data[..]), (2, &b"{\"n\":2}"[..]));
    }
}

#[tokio::test]
async fn volatile_publications_go_as_datagrams_and_large_ones_on_the_stream() {
    let server = support::start(config()).await;
    let mut session = Raw::open(&server, Encoding::Json, "").await;
    session
        .connect(&token("u", &["cursor:*", "feed:*"], &[]))
        .await;
    session.subscribe("cursor:doc").await;
    publish(&server, "cursor:doc", "{\"x\":1,\"y\":2}").await;
    let frame = session.datagram().await;
    let p = publication(frame.body.unwrap());
    assert_eq!(&p.data[..], b"{\"x\":1,\"y\":2}");
    assert_eq!(p.offset, 0, "volatile publications have no offset");
    // Larger than a datagram can be: the stream carries it.
    let big = format!("{{\"blob\":\"{}\"}}", "a".repeat(4000));
    publish(&server, "cursor:doc", &big).await;
    let p = publication(session.next().await.unwrap().body.unwrap());
    assert_eq!(p.data.len(), big.len());
    // Never in history: the room keeps none.
    let history = server
        .node()
        .history("cursor:doc", Default::default())
        .await;
    assert!(history.is_err());
}

#[tokio::test]
async fn close_codes_travel_in_band_and_in_the_quic_close() {
    let server = support::start(config()).await;
    let mut session = Raw::open(&server, Encoding::Protobuf, "").await;
    session.connect(&token("kicked", &["feed:*"], &[])).await;
    server.node().disconnect_user(
        "kicked",
        &Close::new(CloseCode::FORCE_DISCONNECT, "banned by a moderator"),
    );
    let frame = session.next().await.expect("disconnect push");
    match frame.body {
        Some(Body::Disconnect(d)) => {
            assert_eq!(d.code, 3504);
            assert_eq!(d.reason, "banned by a moderator");
            assert!(!d.reconnect);
        }
        other => panic!("expected a disconnect push, got {other:?}"),
    }
    assert_eq!(
        session.closed().await,
        (3504, "banned by a moderator".to_owned())
    );

    // A bad token: the documented code, not a bare transport error.
    let mut session = Raw::open(&server, Encoding::Json, "").await;
    session
        .send(Command::Connect(ConnectRequest {
            token: "not-a-jwt".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(session.closed().await.0, CloseCode::INVALID_TOKEN.0);

    // No format: refused with 3506 and a reason saying what to add.
    let config = WtConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(
            server.webtransport().unwrap().certificate().sha256,
        )])
        .build();
    // The close may already arrive during the session handshake.
    let close = match Endpoint::client(config)
        .unwrap()
        .connect(wt_url(&server))
        .await
    {
        Ok(connection) => connection.closed().await,
        Err(wtransport::error::ConnectingError::ConnectionError(err)) => err,
        Err(other) => panic!("{other}"),
    };
    match close {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.code().into_inner(), 3506);
            assert!(String::from_utf8_lossy(close.reason()).contains("format=json"));
        }
        other => panic!("{other}"),
    }

    // Malformed frames: 3501, and the server goes on serving others.
    let mut bad = Raw::open(&server, Encoding::Json, "").await;
    bad.send.write_all(b"{not json}\n").await.unwrap();
    assert_eq!(bad.closed().await.0, CloseCode::BAD_REQUEST.0);
    let mut good = Raw::open(&server, Encoding::Json, "").await;
    good.connect(&token("fine", &["feed:*"], &[])).await;
}

fn client_config(user: &str) -> ClientConfig {
    ClientConfig {
        token: token(user, &["feed:*", "cursor:*"], &["feed:*"]),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

/// Publications seen by a client until `count` arrived (bounded in time).
async fn collect(client: &mut Client, count: usize) -> (Vec<String>, Vec<Option<bool>>) {
    let (mut payloads, mut recovered) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while payloads.len() < count {
        match tokio::time::timeout_at(deadline, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out with {payloads:?}"))
            .expect("running")
        {
            Event::Publication(p) => payloads.push(String::from_utf8(p.data.to_vec()).unwrap()),
            Event::Subscribed { recovered: r, .. } => recovered.push(r),
            _ => {}
        }
    }
    (payloads, recovered)
}

async fn wait_subscribed(client: &mut Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .expect("subscribed in time")
            .expect("running");
        if let Event::Subscribed { .. } = event {
            return;
        }
    }
}

#[tokio::test]
async fn rust_client_over_webtransport_fans_out_and_recovers_after_a_cut() {
    let server = support::start(config()).await;
    for encoding in Encoding::ALL {
        let room = format!("feed:client-{}", encoding.name());
        let mut readers = Vec::new();
        for i in 0..3 {
            let mut reader = Client::start(
                std::sync::Arc::new(connector(&server, encoding)),
                client_config(&format!("reader{i}")),
            );
            reader.subscribe(&room).await.unwrap();
            wait_subscribed(&mut reader).await;
            readers.push(reader);
        }
        let mut publisher = Client::start(
            std::sync::Arc::new(connector(&server, encoding)),
            client_config("writer"),
        );
        for n in 1..=5 {
            let sent = publisher
                .publish(&room, Bytes::from(n.to_string()))
                .await
                .unwrap();
            assert!(sent.is_ok());
        }
        // Acknowledged before the server's own publications below.
        let mut acked = 0;
        while acked < 5 {
            let event = tokio::time::timeout(Duration::from_secs(10), publisher.next_event())
                .await
                .expect("acknowledged in time")
                .expect("running");
            if let Event::Published { .. } = event {
                acked += 1;
            }
        }
        // Cut one reader while publications continue: it recovers them.
        server.node().disconnect_user(
            "reader0",
            &Close::new(CloseCode::FORCE_RECONNECT, "test cut"),
        );
        for n in 6..=10 {
            publish(&server, &room, &n.to_string()).await;
        }
        let expected: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
        for (i, reader) in readers.iter_mut().enumerate() {
            let (payloads, recovered) = collect(reader, 10).await;
            assert_eq!(payloads, expected, "reader {i} {encoding:?}");
            if i == 0 {
                assert_eq!(recovered, vec![Some(true)], "{encoding:?}");
            }
        }
    }
}

#[tokio::test]
async fn rust_client_receives_datagrams() {
    let server = support::start(config()).await;
    let mut client = Client::start(
        std::sync::Arc::new(connector(&server, Encoding::Protobuf)),
        client_config("cursor"),
    );
    client.subscribe("cursor:board").await.unwrap();
    wait_subscribed(&mut client).await;
    publish(&server, "cursor:board", "{\"x\":3}").await;
    let (payloads, _) = collect(&mut client, 1).await;
    assert_eq!(payloads, ["{\"x\":3}"]);
}

#[tokio::test]
async fn fallback_to_websocket_when_quic_is_blocked() {
    let server = support::start(config()).await;
    // A UDP port where nothing answers: the handshake times out.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut blocked = connector(&server, Encoding::Json);
    blocked.url = format!(
        "https://127.0.0.1:{}/connection/webtransport",
        blackhole.local_addr().unwrap().port()
    );
    blocked.handshake_timeout = Duration::from_millis(500);
    let fallback = std::sync::Arc::new(FallbackConnector::new(
        blocked,
        WebSocketConnector::new(support::ws_url(&server), Encoding::Json),
    ));
    let mut client = Client::start(fallback.clone(), client_config("fallback"));
    client.subscribe("feed:fallback").await.unwrap();
    wait_subscribed(&mut client).await;
    assert_eq!(fallback.last_transport(), Some("websocket"));
    publish(&server, "feed:fallback", "via websocket").await;
    assert_eq!(collect(&mut client, 1).await.0, ["via websocket"]);

    // And the preferred transport is used when it works.
    let preferred = std::sync::Arc::new(FallbackConnector::new(
        connector(&server, Encoding::Json),
        WebSocketConnector::new(support::ws_url(&server), Encoding::Json),
    ));
    let mut client = Client::start(preferred.clone(), client_config("preferred"));
    client.subscribe("feed:fallback").await.unwrap();
    wait_subscribed(&mut client).await;
    assert_eq!(preferred.last_transport(), Some("webtransport"));
}

#[tokio::test]
async fn development_certificate_renewal_keeps_sessions() {
    let server = support::start(config()).await;
    let wt = server.webtransport().unwrap();
    let old = wt.certificate();
    let mut session = Raw::open(&server, Encoding::Json, "").await;
    session.connect(&token("u", &["feed:*"], &[])).await;
    session.subscribe("feed:renew").await;

    let new = wt.renew_certificate().expect("renewed");
    assert_ne!(new.sha256, old.sha256);
    // The HTTP endpoint serves the new hash.
    let body = http_get(server.addr(), "/connection/webtransport/certificate").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["sha256"], new.sha256_hex());
    assert!(
        json["url"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    assert!(json["notAfter"].as_u64().unwrap() > support::unix_now() * 1000);

    // The open session goes on.
    publish(&server, "feed:renew", "after renewal").await;
    let p = publication(session.next().await.unwrap().body.unwrap());
    assert_eq!(&p.data[..], b"after renewal");
    // New sessions need the new hash.
    assert!(
        Raw::open_with_hash(&server, Encoding::Json, "", old.sha256)
            .await
            .is_err()
    );
    Raw::open_with_hash(&server, Encoding::Json, "", new.sha256)
        .await
        .expect("new hash works");
}

/// A GET over plain HTTP/1.1, returning the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: *")
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap()
}
