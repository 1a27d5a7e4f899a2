//! Compression end to end (spec/11-compression.md): unit framing negotiated
//! with `codecs`, compressed once per publication, identical payloads for
//! compressed and plain subscribers, decompression bombs closed with 1009.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use switchboard::client::transport::WebSocketConnector;
use switchboard::client::webtransport::WebTransportConnector;
use switchboard::client::{Client, Config as ClientConfig, Event};
use switchboard::codec::unit::{self, Codec};
use switchboard::codec::{self, DecodeLimits, Encoding};
use switchboard::config::{Config, RoomOptions};
use switchboard::server::Server;
use switchboard::wire::v1::{client_frame::Command, server_frame::Body, *};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::support::{self, token};

fn config() -> Config {
    let mut config = support::config();
    config.namespaces.insert(
        "doc".into(),
        RoomOptions {
            history_size: 100,
            ..RoomOptions::default()
        },
    );
    config
}

fn client_config(user: &str) -> ClientConfig {
    ClientConfig {
        token: token(user, &["doc:*", "state:*"], &["doc:*"]),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

/// A realistic state document of about 2 KiB.
fn document(step: u32) -> String {
    let tasks: Vec<String> = (0..24)
        .map(|i| {
            format!(
                "{{\"id\":\"task-{i}\",\"title\":\"Compile crate {i}\",\"state\":\"{}\",\"progress\":{}}}",
                if i < step { "done" } else { "queued" },
                if i < step { 100 } else { 0 }
            )
        })
        .collect();
    format!(
        "{{\"build\":\"b-7731\",\"step\":{step},\"tasks\":[{}]}}",
        tasks.join(",")
    )
}

async fn payloads(client: &mut Client, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < count {
        let event = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} payloads", seen.len()))
            .expect("running");
        if let Event::Publication(p) = event {
            seen.push(String::from_utf8(p.data.to_vec()).unwrap());
        }
    }
    seen
}

async fn subscribed(client: &mut Client) {
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

async fn publish_all(server: &Server, room: &str) -> Vec<String> {
    let mut sent = Vec::new();
    for step in 0..6 {
        // Large (compressed) and small (identity units) publications interleaved.
        for data in [document(step), format!("{{\"tick\":{step}}}")] {
            server
                .node()
                .publish(room, Bytes::from(data.clone()), Default::default(), "")
                .await
                .unwrap();
            sent.push(data);
        }
    }
    sent
}

#[tokio::test]
async fn compressed_and_plain_subscribers_receive_identical_payloads() {
    let server = support::start(config()).await;
    let wt = server.webtransport().unwrap();
    let wt_url = format!(
        "https://127.0.0.1:{}/connection/webtransport",
        wt.addr().port()
    );
    for encoding in Encoding::ALL {
        let room = format!("doc:same-{}", encoding.name());
        let mut clients = Vec::new();
        for (i, codec) in [
            None,
            Some(Codec::DeflateRaw),
            Some(Codec::Zstd),
            Some(Codec::Identity),
        ]
        .into_iter()
        .enumerate()
        {
            let ws = WebSocketConnector {
                codec,
                ..WebSocketConnector::new(support::ws_url(&server), encoding)
            };
            let mut quic = WebTransportConnector::new(&wt_url, encoding)
                .with_certificate_hash(wt.certificate().sha256);
            quic.codec = codec;
            for (j, connector) in [
                Arc::new(ws) as Arc<dyn switchboard::client::transport::Connector>,
                Arc::new(quic),
            ]
            .into_iter()
            .enumerate()
            {
                let mut client = Client::start(connector, client_config(&format!("u{i}{j}")));
                client.subscribe(&room).await.unwrap();
                subscribed(&mut client).await;
                clients.push((codec, j, client));
            }
        }
        let sent = publish_all(&server, &room).await;
        for (codec, transport, client) in &mut clients {
            let got = payloads(client, sent.len()).await;
            assert_eq!(got, sent, "{encoding:?} {codec:?} transport {transport}");
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_socket(server: &Server, query: &str) -> Result<Socket, u16> {
    let url = format!("{}?{query}", support::ws_url(server));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        Encoding::Json.subprotocol().parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("{other}"),
    }
}

fn identity_unit(frame: &ClientFrame) -> Bytes {
    let mut out = BytesMut::new();
    unit::write_unit(
        Codec::Identity,
        &codec::encode(frame, Encoding::Json),
        &mut out,
    );
    out.freeze()
}

/// Frames in a binary message of units.
fn open(message: &Bytes, codec: Codec) -> Vec<(u8, ServerFrame)> {
    let limits = DecodeLimits::default();
    let mut out = Vec::new();
    let mut rest = message.clone();
    while !rest.is_empty() {
        let marker = rest[0];
        // One unit at a time, to see each marker.
        let (len, used) = {
            let mut len = 0u64;
            let mut i = 1;
            loop {
                let b = rest[i];
                len |= u64::from(b & 0x7f) << (7 * (i - 1));
                i += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
            (len as usize, i)
        };
        let one = rest.split_to(used + len);
        for batch in unit::open_message(&one, codec, 1 << 20).unwrap() {
            for frame in codec::decode_batch::<ServerFrame>(&batch, Encoding::Json, &limits) {
                out.push((marker, frame.unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn raw_units_on_the_wire() {
    let server = support::start(config()).await;
    let mut socket = raw_socket(&server, "codecs=deflate-raw").await.unwrap();
    let connect = ClientFrame {
        id: 1,
        command: Some(Command::Connect(ConnectRequest {
            token: token("raw", &["doc:*"], &[]),
            ..Default::default()
        })),
    };
    socket
        .send(Message::Binary(identity_unit(&connect)))
        .await
        .unwrap();
    let subscribe = ClientFrame {
        id: 2,
        command: Some(Command::Subscribe(SubscribeRequest {
            room: "doc:raw".into(),
            ..Default::default()
        })),
    };
    socket
        .send(Message::Binary(identity_unit(&subscribe)))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match socket.next().await.unwrap().unwrap() {
            Message::Binary(bytes) => frames.extend(open(&bytes, Codec::DeflateRaw)),
            other => panic!("unit framing sends binary messages only, got {other:?}"),
        }
    }
    match &frames[0].1.body {
        Some(Body::Connect(result)) => assert_eq!(result.codec, "deflate-raw"),
        other => panic!("{other:?}"),
    }
    let large = document(3);
    server
        .node()
        .publish(
            "doc:raw",
            Bytes::from(large.clone()),
            Default::default(),
            "",
        )
        .await
        .unwrap();
    let message = match socket.next().await.unwrap().unwrap() {
        Message::Binary(bytes) => bytes,
        other => panic!("{other:?}"),
    };
    let units = open(&message, Codec::DeflateRaw);
    assert_eq!(
        units[0].0,
        Codec::DeflateRaw.marker(),
        "large frames are compressed"
    );
    assert!(
        message.len() * 3 < large.len(),
        "{} bytes on the wire for a {} byte document",
        message.len(),
        large.len()
    );
    match &units[0].1.body {
        Some(Body::Publication(p)) => assert_eq!(p.data, large.as_bytes()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_codec_lists_and_bombs_are_refused() {
    let server = support::start(config()).await;
    assert_eq!(raw_socket(&server, "codecs=").await.err(), Some(400));
    // Unknown codecs are skipped: identity.
    assert!(raw_socket(&server, "codecs=brotli").await.is_ok());

    // A decompression bomb: 16 MiB of spaces deflated to a few KiB.
    let mut socket = raw_socket(&server, "codecs=deflate-raw").await.unwrap();
    let zeros = vec![b' '; 16 << 20];
    let mut bomb = BytesMut::new();
    unit::seal_into(
        Codec::DeflateRaw,
        &zeros,
        0,
        unit::Levels::default(),
        &mut bomb,
    );
    assert!(bomb.len() < 64 * 1024);
    socket.send(Message::Binary(bomb.freeze())).await.unwrap();
    let code = loop {
        match socket.next().await {
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(code, 1009);
    // The server goes on serving.
    let mut other = raw_socket(&server, "codecs=zstd").await.unwrap();
    let ping = ClientFrame {
        id: 1,
        command: Some(Command::Connect(ConnectRequest {
            token: token("after", &[], &[]),
            ..Default::default()
        })),
    };
    other
        .send(Message::Binary(identity_unit(&ping)))
        .await
        .unwrap();
    match other.next().await.unwrap().unwrap() {
        Message::Binary(bytes) => {
            let frames = open(&bytes, Codec::Zstd);
            match &frames[0].1.body {
                Some(Body::Connect(result)) => assert_eq!(result.codec, "zstd"),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
}

fn delta_config() -> Config {
    let mut config = config();
    config.namespaces.insert(
        "state".into(),
        RoomOptions {
            history_size: 100,
            delta: true,
            ..RoomOptions::default()
        },
    );
    config
}

#[tokio::test]
async fn delta_publications_on_the_wire() {
    let server = support::start(delta_config()).await;
    let mut socket = raw_socket(&server, "codecs=identity").await.unwrap();
    let frames = [
        ClientFrame {
            id: 1,
            command: Some(Command::Connect(ConnectRequest {
                token: token("raw", &["state:*"], &[]),
                ..Default::default()
            })),
        },
        ClientFrame {
            id: 2,
            command: Some(Command::Subscribe(SubscribeRequest {
                room: "state:build".into(),
                delta: true,
                ..Default::default()
            })),
        },
    ];
    for frame in &frames {
        socket
            .send(Message::Binary(identity_unit(frame)))
            .await
            .unwrap();
    }
    // Wait for the subscribe reply before publishing.
    let mut replied = false;
    while !replied {
        let bytes = match socket.next().await.unwrap().unwrap() {
            Message::Binary(bytes) => bytes,
            other => panic!("binary units expected, got {other:?}"),
        };
        replied = open(&bytes, Codec::Identity)
            .iter()
            .any(|(_, f)| matches!(f.body, Some(Body::Subscribe(_))));
    }
    let mut publications = Vec::new();
    let mut sent = Vec::new();
    for step in 0..4 {
        let data = document(step);
        server
            .node()
            .publish(
                "state:build",
                Bytes::from(data.clone()),
                Default::default(),
                "",
            )
            .await
            .unwrap();
        sent.push(data);
    }
    while publications.len() < 4 {
        let bytes = match socket.next().await.unwrap().unwrap() {
            Message::Binary(bytes) => bytes,
            other => panic!("binary units expected, got {other:?}"),
        };
        for (_, frame) in open(&bytes, Codec::Identity) {
            if let Some(Body::Publication(p)) = frame.body {
                publications.push(p);
            }
        }
    }
    // The first is full; each later one is a small delta against the one before.
    assert!(!publications[0].delta);
    assert_eq!(publications[0].data, sent[0].as_bytes());
    let mut value = publications[0].data.to_vec();
    for (p, expected) in publications[1..].iter().zip(&sent[1..]) {
        assert!(p.delta, "offset {}", p.offset);
        assert!(
            p.data.len() * 10 < expected.len(),
            "a {} byte delta for a {} byte document",
            p.data.len(),
            expected.len()
        );
        value = switchboard::codec::delta::apply(&value, &p.data, 1 << 20).unwrap();
        assert_eq!(value, expected.as_bytes());
    }
    // History and recovery carry full values.
    let page = server
        .node()
        .history(
            "state:build",
            switchboard::broker::HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(page.publications.iter().all(|p| !p.delta));
    assert_eq!(page.publications[3].data, sent[3].as_bytes());
}

#[tokio::test]
async fn delta_subscribers_see_full_values_across_cuts() {
    let server = support::start(delta_config()).await;
    let room = "state:cut";
    let mut clients = Vec::new();
    for (i, (encoding, codec, delta)) in [
        (Encoding::Json, None, true),
        (Encoding::Protobuf, Some(Codec::DeflateRaw), true),
        (Encoding::Json, Some(Codec::Zstd), false),
    ]
    .into_iter()
    .enumerate()
    {
        let connector = WebSocketConnector {
            codec,
            ..WebSocketConnector::new(support::ws_url(&server), encoding)
        };
        let config = ClientConfig {
            delta,
            ..client_config(&format!("d{i}"))
        };
        let mut client = Client::start(Arc::new(connector), config);
        client.subscribe(room).await.unwrap();
        subscribed(&mut client).await;
        clients.push(client);
    }
    let mut sent = Vec::new();
    for step in 0..12 {
        if step == 5 {
            // Cut a delta subscriber: it recovers full values, then deltas
            // resume against what it really has.
            server.node().disconnect_user(
                "d0",
                &switchboard::engine::Close::new(
                    switchboard::codes::CloseCode::FORCE_RECONNECT,
                    "test cut",
                ),
            );
        }
        let data = document(step % 24);
        server
            .node()
            .publish(room, Bytes::from(data.clone()), Default::default(), "")
            .await
            .unwrap();
        sent.push(data);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(payloads(client, sent.len()).await, sent, "client {i}");
    }
}

#[tokio::test]
async fn bursts_of_small_publications_fit_the_unit_limit() {
    // Many small publications queue up between two writes: the writer must
    // cut them into messages of at most 100 units, which receivers accept.
    let server = support::start(config()).await;
    let connector = WebSocketConnector {
        codec: Some(Codec::DeflateRaw),
        ..WebSocketConnector::new(support::ws_url(&server), Encoding::Protobuf)
    };
    let mut client = Client::start(Arc::new(connector), client_config("burst"));
    client.subscribe("doc:burst").await.unwrap();
    subscribed(&mut client).await;
    let mut sent = Vec::new();
    for n in 0..600 {
        let data = format!("{{\"n\":{n}}}");
        server
            .node()
            .publish(
                "doc:burst",
                Bytes::from(data.clone()),
                Default::default(),
                "",
            )
            .await
            .unwrap();
        sent.push(data);
    }
    assert_eq!(payloads(&mut client, sent.len()).await, sent);
}
