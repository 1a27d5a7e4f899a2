//! The WebSocket server over real sockets, in both framings
//! (spec/03-messages.md, spec/05-codes.md).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use switchboard::codec::Encoding;
use switchboard::config::RoomOptions;
use switchboard::wire::v1::{client_frame::Command, server_frame::Body, *};

use super::support::*;

fn chat_options() -> RoomOptions {
    RoomOptions {
        allow_publish: true,
        join_leave: true,
        history_size: 10,
        ..RoomOptions::default()
    }
}

fn chat_config() -> switchboard::config::Config {
    let mut config = config();
    config.namespaces.insert("chat".into(), chat_options());
    config
}

#[tokio::test]
async fn connect_reports_identity_and_timers() {
    let server = start(config()).await;
    for encoding in Encoding::ALL {
        let exp = unix_now() + 3600;
        let (_client, result) = Client::connect(
            &server,
            encoding,
            &token_expiring("alice", &[], &[], Some(exp)),
        )
        .await;
        assert_eq!(result.user, "alice");
        assert_eq!(result.client.len(), 16);
        assert_eq!(result.ping_interval_ms, 25_000);
        assert!(
            (3590..=3600).contains(&result.expires_in_seconds),
            "{}",
            result.expires_in_seconds
        );
        assert_eq!(result.codec, "identity");
    }
}

async fn connect_closes_with(
    server: &switchboard::server::Server,
    request: ConnectRequest,
) -> (Closed, Disconnect) {
    let mut client = Client::open(server, Encoding::Json).await;
    client.send(Command::Connect(request)).await;
    let (closed, disconnect) = client.closed().await;
    (
        closed,
        disconnect.expect("a disconnect push before the close"),
    )
}

#[tokio::test]
async fn bad_expired_and_missing_tokens_close_with_a_clear_code() {
    let server = start(config()).await;
    let forged = switchboard::auth::mint_hs256("wrong", "alice", None, &[], &[], None).unwrap();
    let (closed, disconnect) = connect_closes_with(
        &server,
        ConnectRequest {
            token: forged,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(closed.code, 3500);
    assert_eq!(closed.reason, "invalid token: signature does not match");
    assert!(!disconnect.reconnect);

    let expired = token_expiring("alice", &[], &[], Some(unix_now() - 10));
    let (closed, disconnect) = connect_closes_with(
        &server,
        ConnectRequest {
            token: expired,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3002, "token expired")
    );
    assert!(disconnect.reconnect, "expired: refresh and reconnect");

    let (closed, _) = connect_closes_with(&server, ConnectRequest::default()).await;
    assert_eq!(closed.code, 3502);
    assert!(closed.reason.contains("no token"), "{}", closed.reason);

    let (closed, _) = connect_closes_with(
        &server,
        ConnectRequest {
            token: "garbage".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(closed.code, 3500);
    assert!(
        closed.reason.starts_with("invalid token: malformed"),
        "{}",
        closed.reason
    );
}

#[tokio::test]
async fn anonymous_connections_only_when_configured() {
    let mut config = config();
    config.auth.allow_anonymous = true;
    config.namespaces.insert(
        "open".into(),
        RoomOptions {
            public: true,
            anonymous: true,
            ..RoomOptions::default()
        },
    );
    let server = start(config).await;
    let (mut client, result) = Client::connect(&server, Encoding::Protobuf, "").await;
    assert_eq!(result.user, "");
    client.subscribe("open:news", None).await;
    let reply = client
        .request(Command::Subscribe(SubscribeRequest {
            room: "chat:x".into(),
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(reply.body, Some(Body::Error(Error { code: 103, .. }))),
        "{reply:?}"
    );
}

#[tokio::test]
async fn token_in_url_is_accepted() {
    let server = start(config()).await;
    let url = format!("{}?token={}", ws_url(&server), token("alice", &[], &[]));
    let mut client = Client::open_url(&url, Encoding::Json).await;
    let reply = client
        .request(Command::Connect(ConnectRequest::default()))
        .await;
    assert!(
        matches!(reply.body, Some(Body::Connect(ConnectResult { ref user, .. })) if user == "alice")
    );
}

#[tokio::test]
async fn fan_out_to_100_clients_in_3_rooms_exactly_once_in_order() {
    let server = start(chat_config()).await;
    let rooms = ["chat:a", "chat:b", "chat:c"];
    let mut subscribers = Vec::new();
    for i in 0..100 {
        let encoding = if i % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::Protobuf
        };
        let (mut client, _) = Client::connect(
            &server,
            encoding,
            &token(&format!("u{i}"), &["chat:*"], &[]),
        )
        .await;
        let room = rooms[i % 3];
        client.subscribe(room, None).await;
        subscribers.push((client, room));
    }
    let (mut publisher, _) =
        Client::connect(&server, Encoding::Protobuf, &token("pub", &[], &["chat:*"])).await;
    const N: u64 = 20;
    for n in 1..=N {
        for room in rooms {
            let result = publisher
                .publish(room, &format!("{{\"n\":{n}}}"))
                .await
                .unwrap();
            assert_eq!(result.offset, n);
        }
    }
    for (client, room) in &mut subscribers {
        for n in 1..=N {
            let p = client.next_publication().await;
            assert_eq!((p.room.as_str(), p.offset), (*room, n));
            assert_eq!(p.data, Bytes::from(format!("{{\"n\":{n}}}")));
            assert_eq!(p.info.as_ref().map(|i| i.user.as_str()), Some("pub"));
        }
    }
    // Nothing more: anything queued before a ping's reply would arrive before it.
    for (client, _) in &mut subscribers {
        let reply = client.request(Command::Ping(PingRequest {})).await;
        assert!(matches!(reply.body, Some(Body::Ping(_))));
        assert_eq!(client.buffered(), 0, "no extra publication");
    }
}

#[tokio::test]
async fn publish_permissions_and_exclude_self() {
    let server = start(chat_config()).await;
    let (mut alice, _) =
        Client::connect(&server, Encoding::Json, &token("alice", &["chat:*"], &[])).await;
    let err = alice.publish("chat:a", "1").await.unwrap_err();
    assert_eq!(err.code, 103, "not subscribed yet: {err:?}");
    alice.subscribe("chat:a", None).await;
    alice.publish("chat:a", "1").await.unwrap();
    assert_eq!(alice.next_publication().await.data, Bytes::from("1"));
    let reply = alice
        .request(Command::Publish(PublishRequest {
            room: "chat:a".into(),
            data: Bytes::from("2"),
            exclude_self: true,
            ..Default::default()
        }))
        .await;
    assert!(matches!(
        reply.body,
        Some(Body::Publish(PublishResult { offset: 2, .. }))
    ));
    alice.publish("chat:a", "3").await.unwrap();
    assert_eq!(
        alice.next_publication().await.offset,
        3,
        "offset 2 was excluded"
    );

    let (mut bob, _) = Client::connect(&server, Encoding::Json, &token("bob", &[], &[])).await;
    let reply = bob
        .request(Command::Subscribe(SubscribeRequest {
            room: "chat:a".into(),
            ..Default::default()
        }))
        .await;
    let Some(Body::Error(err)) = reply.body else {
        panic!("{reply:?}")
    };
    assert_eq!(err.code, 103);
    assert!(
        err.message.contains("no subscribe claim"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn presence_and_join_leave() {
    let server = start(chat_config()).await;
    let (mut alice, a) =
        Client::connect(&server, Encoding::Json, &token("alice", &["chat:*"], &[])).await;
    alice.subscribe("chat:p", None).await;
    let (mut bob, b) =
        Client::connect(&server, Encoding::Protobuf, &token("bob", &["chat:*"], &[])).await;
    bob.subscribe("chat:p", None).await;
    // Alice sees Bob join (her own join came first).
    let mut joined = Vec::new();
    while joined.len() < 2 {
        if let Some(Body::Join(j)) = alice.next_push().await.body {
            joined.push(j.client.unwrap().user);
        }
    }
    assert_eq!(joined, ["alice", "bob"]);
    let reply = alice
        .request(Command::Presence(PresenceRequest {
            room: "chat:p".into(),
        }))
        .await;
    let Some(Body::Presence(presence)) = reply.body else {
        panic!("{reply:?}")
    };
    let users: BTreeMap<String, String> = presence
        .clients
        .into_iter()
        .map(|(k, v)| (k, v.user))
        .collect();
    assert_eq!(
        users,
        BTreeMap::from([
            (a.client.clone(), "alice".into()),
            (b.client.clone(), "bob".into())
        ])
    );
    assert_eq!(&presence_info(&mut alice).await[..], br#"{"name":"alice"}"#);
    let reply = alice
        .request(Command::PresenceStats(PresenceStatsRequest {
            room: "chat:p".into(),
        }))
        .await;
    assert!(matches!(
        reply.body,
        Some(Body::PresenceStats(PresenceStatsResult {
            clients: 2,
            users: 2
        }))
    ));
    drop(bob);
    loop {
        if let Some(Body::Leave(l)) = alice.next_push().await.body {
            assert_eq!(l.client.unwrap().client, b.client);
            break;
        }
    }
    let reply = alice
        .request(Command::PresenceStats(PresenceStatsRequest {
            room: "chat:p".into(),
        }))
        .await;
    assert!(matches!(
        reply.body,
        Some(Body::PresenceStats(PresenceStatsResult {
            clients: 1,
            users: 1
        }))
    ));
}

async fn presence_info(client: &mut Client) -> Bytes {
    let reply = client
        .request(Command::Presence(PresenceRequest {
            room: "chat:p".into(),
        }))
        .await;
    let Some(Body::Presence(presence)) = reply.body else {
        panic!("{reply:?}")
    };
    presence
        .clients
        .into_values()
        .find(|c| c.user == "alice")
        .unwrap()
        .info
}

#[tokio::test]
async fn history_queries() {
    let server = start(chat_config()).await;
    let (mut c, _) = Client::connect(
        &server,
        Encoding::Json,
        &token("alice", &["chat:*"], &["chat:*"]),
    )
    .await;
    for n in 1..=15 {
        c.publish("chat:h", &n.to_string()).await.unwrap();
    }
    let history = |limit, since: Option<u64>, reverse, epoch: &str| {
        Command::History(HistoryRequest {
            room: "chat:h".into(),
            limit,
            since: since.map(|offset| StreamPosition {
                offset,
                epoch: epoch.to_owned(),
            }),
            reverse,
        })
    };
    let offsets = |frame: ServerFrame| match frame.body {
        Some(Body::History(h)) => (
            h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            h.epoch,
            h.offset,
        ),
        other => panic!("{other:?}"),
    };
    let (all, epoch, top) = offsets(c.request(history(100, None, false, "")).await);
    assert_eq!(
        all,
        (6..=15).collect::<Vec<_>>(),
        "history keeps the last 10"
    );
    assert_eq!(top, 15);
    assert_eq!(
        offsets(c.request(history(3, None, true, "")).await).0,
        [15, 14, 13]
    );
    assert_eq!(
        offsets(c.request(history(2, Some(10), false, &epoch)).await).0,
        [11, 12]
    );
    assert_eq!(
        offsets(c.request(history(2, Some(10), true, &epoch)).await).0,
        [9, 8]
    );
    let reply = c.request(history(2, Some(2), false, &epoch)).await;
    assert!(
        matches!(reply.body, Some(Body::Error(Error { code: 113, .. }))),
        "{reply:?}"
    );
    let reply = c.request(history(2, Some(10), false, "other")).await;
    assert!(
        matches!(reply.body, Some(Body::Error(Error { code: 113, .. }))),
        "{reply:?}"
    );
}

#[tokio::test]
async fn reconnect_with_a_position_recovers_exactly_the_missed_publications() {
    let server = start(chat_config()).await;
    for encoding in Encoding::ALL {
        let room = format!("chat:r-{}", encoding.name());
        let (mut publisher, _) =
            Client::connect(&server, encoding, &token("p", &[], &["chat:*"])).await;
        let (mut reader, _) =
            Client::connect(&server, encoding, &token("r", &["chat:*"], &[])).await;
        let first = reader.subscribe(&room, None).await;
        assert!(first.recoverable && first.offset == 0);
        for n in 1..=3 {
            publisher.publish(&room, &n.to_string()).await.unwrap();
        }
        let mut last = 0;
        for _ in 0..3 {
            last = reader.next_publication().await.offset;
        }
        drop(reader);
        for n in 4..=8 {
            publisher.publish(&room, &n.to_string()).await.unwrap();
        }
        let (mut reader, _) =
            Client::connect(&server, encoding, &token("r", &["chat:*"], &[])).await;
        let since = StreamPosition {
            offset: last,
            epoch: first.epoch.clone(),
        };
        let result = reader.subscribe(&room, Some(since)).await;
        assert!(result.recovered);
        let offsets: Vec<u64> = result.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [4, 5, 6, 7, 8]);
        assert_eq!(result.offset, 8);
        publisher.publish(&room, "9").await.unwrap();
        assert_eq!(
            reader.next_publication().await.offset,
            9,
            "live after recovery, no duplicates"
        );

        // Past the history window (10): recovery is impossible and says so.
        for n in 10..=25 {
            publisher.publish(&room, &n.to_string()).await.unwrap();
        }
        let (mut late, _) = Client::connect(&server, encoding, &token("r", &["chat:*"], &[])).await;
        let since = StreamPosition {
            offset: 9,
            epoch: first.epoch.clone(),
        };
        let result = late.subscribe(&room, Some(since)).await;
        assert!(!result.recovered && result.publications.is_empty());
        assert_eq!((result.offset, result.epoch), (25, first.epoch.clone()));
    }
}

#[tokio::test]
async fn recovery_racing_live_publications_loses_and_duplicates_nothing() {
    let server = start(chat_config()).await;
    let room = "chat:race";
    let (mut publisher, _) =
        Client::connect(&server, Encoding::Protobuf, &token("p", &[], &["chat:*"])).await;
    let (mut first, _) =
        Client::connect(&server, Encoding::Protobuf, &token("r", &["chat:*"], &[])).await;
    let epoch = first.subscribe(room, None).await.epoch;
    drop(first);
    // Publish continuously while a reader recovers from offset 0.
    let publishing = tokio::spawn(async move {
        for n in 1..=60 {
            publisher.publish(room, &n.to_string()).await.unwrap();
        }
        publisher
    });
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (mut reader, _) =
        Client::connect(&server, Encoding::Protobuf, &token("r", &["chat:*"], &[])).await;
    let mut seen: Vec<u64> = Vec::new();
    // History is 10: recovery from 0 may fail; then the reader starts at the reply's offset.
    let result = reader
        .subscribe(room, Some(StreamPosition { offset: 0, epoch }))
        .await;
    let start = if result.recovered {
        seen.extend(result.publications.iter().map(|p| p.offset));
        0
    } else {
        result.offset
    };
    let _publisher = publishing.await.unwrap();
    while seen.last().copied().unwrap_or(start) < 60 {
        seen.push(reader.next_publication().await.offset);
    }
    let expected: Vec<u64> = (start + 1..=60).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_slow_reader_is_closed_and_the_others_keep_receiving() {
    let mut config = chat_config();
    config.limits.outbound_queue_bytes = 64 * 1024;
    config.limits.command_rate = 100_000;
    config.namespaces.get_mut("chat").unwrap().history_size = 0;
    let server = start(config).await;
    let (mut fast, _) =
        Client::connect(&server, Encoding::Protobuf, &token("f", &["chat:*"], &[])).await;
    fast.subscribe("chat:s", None).await;
    // The slow client subscribes, then never reads again.
    let (mut slow, _) =
        Client::connect(&server, Encoding::Protobuf, &token("s", &["chat:*"], &[])).await;
    slow.subscribe("chat:s", None).await;
    let (mut publisher, _) =
        Client::connect(&server, Encoding::Protobuf, &token("p", &[], &["chat:*"])).await;
    let payload = format!("\"{}\"", "x".repeat(32_000));
    // Loopback socket buffers hold megabytes: 32 MB is well beyond them and
    // the 64 KiB queue. The fast client reads each publication.
    for _ in 0..1000 {
        publisher.publish("chat:s", &payload).await.unwrap();
        assert_eq!(fast.next_publication().await.data.len(), payload.len());
    }
    // The server gives up on the slow client (after a short close grace).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.node().stats().connections == 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow client was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The fast client and the publisher are unaffected.
    publisher.publish("chat:s", "1").await.unwrap();
    assert_eq!(fast.next_publication().await.data, Bytes::from("1"));
    let (closed, disconnect) = slow.closed().await;
    // The close frame may be lost behind the unread megabytes; when it
    // arrives it says "slow".
    if closed.code != 1006 {
        assert_eq!(closed.code, 3003, "{closed:?}");
        assert!(disconnect.is_some_and(|d| d.code == 3003 && d.reconnect));
    }
    assert_eq!(server.node().stats().connections, 2);
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let mut config = config();
    config.limits.max_message_size = 1024;
    config.limits.max_frame_size = 1024;
    config.limits.outbound_queue_bytes = 64 * 1024;
    let server = start(config).await;
    let (mut client, _) = Client::connect(&server, Encoding::Json, &token("a", &[], &[])).await;
    client
        .send_raw(Bytes::from(format!(
            "{{\"id\":5,\"ping\":{{}},\"x\":\"{}\"}}",
            "y".repeat(2000)
        )))
        .await;
    let (closed, _) = client.closed().await;
    assert_eq!(closed.code, 1009, "{closed:?}");
    // The server still serves everyone else.
    Client::connect(&server, Encoding::Json, &token("b", &[], &[])).await;
}

#[tokio::test]
async fn malformed_frames_close_3501_and_harm_nobody_else() {
    let server = start(chat_config()).await;
    let (mut bystander, _) = Client::connect(
        &server,
        Encoding::Json,
        &token("b", &["chat:*"], &["chat:*"]),
    )
    .await;
    bystander.subscribe("chat:m", None).await;
    for (encoding, garbage) in [
        (Encoding::Json, Bytes::from_static(b"{\"id\":1,")),
        (Encoding::Json, Bytes::from_static(b"[1,2,3]")),
        (Encoding::Protobuf, Bytes::from_static(&[0x05, 0x08, 0x01])),
        (Encoding::Protobuf, Bytes::from_static(&[0xff; 12])),
    ] {
        let (mut client, _) = Client::connect(&server, encoding, &token("m", &[], &[])).await;
        client.send_raw(garbage).await;
        let (closed, disconnect) = client.closed().await;
        assert_eq!(closed.code, 3501, "{closed:?}");
        assert!(disconnect.is_some_and(|d| !d.reconnect));
    }
    // A command before connect is a protocol violation too.
    let mut early = Client::open(&server, Encoding::Json).await;
    early.send(Command::Ping(PingRequest {})).await;
    assert_eq!(
        early.closed().await.0,
        Closed {
            code: 3501,
            reason: "the first command must be connect".into()
        }
    );
    // An unknown command is an error reply; the connection stays.
    let (mut client, _) = Client::connect(&server, Encoding::Json, &token("m", &[], &[])).await;
    client
        .send_raw(Bytes::from_static(b"{\"id\":9,\"teleport\":{}}"))
        .await;
    let reply = client.next().await.unwrap();
    assert_eq!(reply.id, 9);
    assert!(matches!(
        reply.body,
        Some(Body::Error(Error { code: 104, .. }))
    ));
    bystander.publish("chat:m", "1").await.unwrap();
    assert_eq!(bystander.next_publication().await.offset, 1);
}

#[tokio::test]
async fn command_rate_limit_closes_3006() {
    let mut config = config();
    config.limits.command_rate = 5;
    config.limits.command_burst = 10;
    let server = start(config).await;
    let (mut client, _) = Client::connect(&server, Encoding::Protobuf, &token("a", &[], &[])).await;
    let pings: Vec<ClientFrame> = (1..=50)
        .map(|id| ClientFrame {
            id,
            command: Some(Command::Ping(PingRequest {})),
        })
        .collect();
    client.send_frames(&pings).await;
    let (closed, _) = client.closed().await;
    assert_eq!(closed.code, 3006);
}

#[tokio::test]
async fn upgrades_are_checked_origin_and_subprotocol() {
    let server = start(config()).await;
    let url = ws_url(&server);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let attempt = |headers: Vec<(&'static str, &'static str)>| {
        let mut request = url.clone().into_client_request().unwrap();
        for (k, v) in headers {
            request.headers_mut().insert(k, v.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    let err = attempt(vec![
        ("origin", "https://evil.example"),
        ("sec-websocket-protocol", "switchboard.v1.json"),
    ])
    .await
    .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("{err}")
    };
    assert_eq!(response.status(), 403);

    let err = attempt(vec![("sec-websocket-protocol", "graphql-ws")])
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("{err}")
    };
    assert_eq!(response.status(), 400);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert!(
        body.contains("switchboard.v1.json, switchboard.v1.protobuf"),
        "{body}"
    );

    // The client's first known subprotocol wins.
    let (_, response) = attempt(vec![(
        "sec-websocket-protocol",
        "x, switchboard.v1.protobuf, switchboard.v1.json",
    )])
    .await
    .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "switchboard.v1.protobuf"
    );
    // Without subprotocols, ?format= chooses.
    let format_url = format!("{url}?format=json");
    tokio_tungstenite::connect_async(format_url).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_sends_the_shutdown_code() {
    let server = start(config()).await;
    let mut clients = Vec::new();
    for encoding in Encoding::ALL {
        clients.push(
            Client::connect(&server, encoding, &token("a", &[], &[]))
                .await
                .0,
        );
    }
    let shutdown = tokio::spawn(server.shutdown());
    for client in &mut clients {
        let (closed, disconnect) = client.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (3000, "server shutting down")
        );
        assert!(disconnect.unwrap().reconnect);
    }
    assert_eq!(
        shutdown.await.unwrap(),
        0,
        "every connection closed in time"
    );
}

#[tokio::test]
async fn user_limited_rooms_and_personal_subscription() {
    let mut config = config();
    config.personal_namespace = Some("personal".into());
    let server = start(config).await;
    // Two devices of alice are subscribed to her personal room on connect.
    let mut devices = Vec::new();
    for encoding in Encoding::ALL {
        let (mut device, _) = Client::connect(&server, encoding, &token("alice", &[], &[])).await;
        let push = device.next_push().await;
        assert!(
            matches!(push.body, Some(Body::Subscribed(ref s)) if s.room == "personal:#alice"),
            "{push:?}"
        );
        devices.push(device);
    }
    // Bob may not read alice's room, even with a wildcard claim.
    let (mut bob, _) =
        Client::connect(&server, Encoding::Json, &token("bob", &["*"], &["*"])).await;
    let reply = bob
        .request(Command::Subscribe(SubscribeRequest {
            room: "personal:#alice".into(),
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(reply.body, Some(Body::Error(Error { code: 103, .. }))),
        "{reply:?}"
    );
    // A backend-style publish (here: a client with a publish claim) reaches every device.
    bob.publish("personal:#alice", "{\"sync\":1}")
        .await
        .unwrap();
    for device in &mut devices {
        assert_eq!(
            device.next_publication().await.data,
            Bytes::from("{\"sync\":1}")
        );
    }
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let server = start(chat_config()).await;
    let (mut client, _) = Client::connect(
        &server,
        Encoding::Json,
        &token("a", &["chat:*"], &["chat:*"]),
    )
    .await;
    client.subscribe("chat:x", None).await;
    client.publish("chat:x", "1").await.unwrap();
    client.next_publication().await;
    let get = |path: &'static str| {
        let addr = server.addr();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        }
    };
    let health = get("/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains("\"connections\":1") && health.contains("\"rooms\":1"),
        "{health}"
    );
    let metrics = get("/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "switchboard_connections_total",
        "switchboard_publications_total",
        "switchboard_command_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn history_replies_never_exceed_half_the_outbound_queue() {
    let mut config = chat_config();
    config.limits.outbound_queue_bytes = 256 * 1024;
    config.namespaces.get_mut("chat").unwrap().history_size = 100;
    let server = start(config).await;
    let (mut c, _) = Client::connect(
        &server,
        Encoding::Protobuf,
        &token("a", &["chat:*"], &["chat:*"]),
    )
    .await;
    let big = format!("\"{}\"", "x".repeat(30_000));
    for _ in 0..20 {
        c.publish("chat:big", &big).await.unwrap();
    }
    let reply = c
        .request(Command::History(HistoryRequest {
            room: "chat:big".into(),
            limit: 100,
            ..Default::default()
        }))
        .await;
    let Some(Body::History(history)) = reply.body else {
        panic!("{reply:?}")
    };
    assert!(
        (1..20).contains(&history.publications.len()),
        "{}",
        history.publications.len()
    );
    assert_eq!(history.publications[0].offset, 1);
    // Recovering across more than fits is refused explicitly, not by closing the client.
    let since = StreamPosition {
        offset: 0,
        epoch: history.epoch,
    };
    let result = c.subscribe("chat:big", Some(since)).await;
    assert!(!result.recovered && result.offset == 20);
    c.request(Command::Ping(PingRequest {})).await;
}
