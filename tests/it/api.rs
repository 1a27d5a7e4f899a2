//! The server API over real HTTP (spec/10-server-api.md): every method in
//! both body formats, API keys, error statuses and bodies, idempotency,
//! tickets, server-side subscriptions and disconnects reaching WebSocket
//! clients, a separate API listener, the CLI; and ticket expiry under
//! simulated time at the engine level.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard::api::http::Format;
use switchboard::api::http::client::{self, Response};
use switchboard::broker::TicketGrant;
use switchboard::broker::memory::MemoryBroker;
use switchboard::codec::{self, Encoding};
use switchboard::config::{Config, RoomOptions};
use switchboard::engine::{Node, OpenParams};
use switchboard::server::Server;
use switchboard::wire::api;
use switchboard::wire::api::{api_call::Method as Call, api_reply::Result as Reply};
use switchboard::wire::v1::{client_frame::Command, server_frame::Body, *};

use super::support::*;

const KEY: &str = "test-key";
const FORMATS: [Format; 2] = [Format::Json, Format::Protobuf];

fn api_config() -> Config {
    let mut config = config();
    config.api.keys = vec![KEY.into()];
    config.namespaces.insert(
        "chat".into(),
        RoomOptions {
            allow_publish: true,
            history_size: 100,
            ..RoomOptions::default()
        },
    );
    config.namespaces.insert(
        "quiet".into(),
        RoomOptions {
            presence: false,
            history_size: 0,
            ..RoomOptions::default()
        },
    );
    config
}

fn base(server: &Server) -> String {
    format!("http://{}", server.api_addr())
}

/// A raw request to the API's address.
async fn http(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    client::request(&base(server), method, path, headers, body)
        .await
        .expect("an HTTP reply")
}

/// `POST /api/v1/<method>` with the test key and a body in `format`.
async fn post(server: &Server, method: &str, format: Format, body: &[u8]) -> Response {
    let headers = [("X-API-Key", KEY), ("Content-Type", format.content_type())];
    http(server, "POST", &format!("/api/v1/{method}"), &headers, body).await
}

fn decode<M: prost::Message + Default + DeserializeOwned>(format: Format, body: &[u8]) -> M {
    match format {
        Format::Json => serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body))),
        Format::Protobuf => M::decode(body).expect("protobuf reply"),
    }
}

/// Calls a method with a typed request in `format`; the reply is decoded
/// from the same format, as the result or as the `Error` with its status.
async fn call<Req, Res>(
    server: &Server,
    method: &str,
    format: Format,
    request: &Req,
) -> Result<Res, (u16, api::Error)>
where
    Req: prost::Message + Serialize,
    Res: prost::Message + Default + DeserializeOwned,
{
    let body = match format {
        Format::Json => serde_json::to_vec(request).expect("JSON request"),
        Format::Protobuf => request.encode_to_vec(),
    };
    let reply = post(server, method, format, &body).await;
    assert_eq!(
        reply.header("content-type"),
        Some(format.content_type()),
        "{method}: {}",
        reply.text()
    );
    if reply.is_success() {
        Ok(decode(format, &reply.body))
    } else {
        Err((reply.status, decode(format, &reply.body)))
    }
}

async fn ok<Req, Res>(server: &Server, method: &str, format: Format, request: &Req) -> Res
where
    Req: prost::Message + Serialize,
    Res: prost::Message + Default + DeserializeOwned,
{
    call(server, method, format, request)
        .await
        .unwrap_or_else(|(status, err)| panic!("{method} ({format:?}): {status} {err:?}"))
}

async fn fails<Req>(server: &Server, method: &str, format: Format, request: &Req) -> (u16, u32)
where
    Req: prost::Message + Serialize,
{
    // The success type is irrelevant: the call must fail.
    match call::<Req, api::HistoryRemoveResult>(server, method, format, request).await {
        Ok(_) => panic!("{method} ({format:?}) succeeded"),
        Err((status, err)) => (status, err.code),
    }
}

fn publish_request(room: &str, data: &'static [u8]) -> api::PublishRequest {
    api::PublishRequest {
        room: room.into(),
        data: Bytes::from_static(data),
        ..Default::default()
    }
}

async fn subscriber(server: &Server, user: &str, rooms: &[&str]) -> Client {
    let (mut client, _) = Client::connect(server, Encoding::Json, &token(user, &["*"], &[])).await;
    for room in rooms {
        client.subscribe(room, None).await;
    }
    client
}

#[tokio::test]
async fn publish_and_broadcast_in_both_formats() {
    let server = start(api_config()).await;
    for format in FORMATS {
        let room = format!("chat:pub-{format:?}");
        let other = format!("chat:other-{format:?}");
        let mut alice = subscriber(&server, "alice", &[&room, &other]).await;

        let mut request = publish_request(&room, br#"{"n":1}"#);
        request.tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let result: api::PublishResult = ok(&server, "publish", format, &request).await;
        assert_eq!(result.offset, 1);
        assert!(!result.epoch.is_empty());
        let p = alice.next_publication().await;
        assert_eq!((p.room.as_str(), p.offset), (room.as_str(), 1));
        assert_eq!(&p.data[..], br#"{"n":1}"#);
        assert_eq!(p.tags.get("k").map(String::as_str), Some("v"));
        assert!(p.info.is_none(), "the server publishes as nobody");

        // Bytes that are not JSON travel as base64 in JSON and arrive as sent.
        let result: api::PublishResult = ok(
            &server,
            "publish",
            format,
            &publish_request(&room, b"\x00\x01bin"),
        )
        .await;
        assert_eq!(result.offset, 2);
        assert_eq!(&alice.next_publication().await.data[..], b"\x00\x01bin");

        let request = api::BroadcastRequest {
            rooms: vec![room.clone(), other.clone(), "bad room".into()],
            data: Bytes::from_static(b"[2]"),
            ..Default::default()
        };
        let result: api::BroadcastResult = ok(&server, "broadcast", format, &request).await;
        let outcomes: Vec<_> = result
            .results
            .iter()
            .map(|o| {
                (
                    o.room.as_str(),
                    o.publish.as_ref().map(|p| p.offset),
                    o.error.as_ref().map(|e| e.code),
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                (room.as_str(), Some(3), None),
                (other.as_str(), Some(1), None),
                ("bad room", None, Some(107)),
            ]
        );
        let mut got = vec![];
        for _ in 0..2 {
            let p = alice.next_publication().await;
            got.push((p.room, p.offset));
        }
        got.sort();
        assert_eq!(got, [(other.clone(), 1), (room.clone(), 3)]);
    }
}

#[tokio::test]
async fn presence_and_presence_stats_in_both_formats() {
    let server = start(api_config()).await;
    let (mut alice, connected) =
        Client::connect(&server, Encoding::Protobuf, &token("alice", &["*"], &[])).await;
    alice.subscribe("chat:p", None).await;
    let _bob = subscriber(&server, "bob", &["chat:p"]).await;
    for format in FORMATS {
        let room = api::PresenceRequest {
            room: "chat:p".into(),
        };
        let result: api::PresenceResult = ok(&server, "presence", format, &room).await;
        assert_eq!(result.clients.len(), 2);
        let info = &result.clients[&connected.client];
        assert_eq!(
            (info.user.as_str(), &info.info[..]),
            ("alice", &br#"{"name":"alice"}"#[..])
        );

        let stats = api::PresenceStatsRequest {
            room: "chat:p".into(),
        };
        let result: api::PresenceStatsResult = ok(&server, "presence_stats", format, &stats).await;
        assert_eq!((result.clients, result.users), (2, 2));

        let quiet = api::PresenceRequest {
            room: "quiet:x".into(),
        };
        assert_eq!(fails(&server, "presence", format, &quiet).await, (409, 108));
        let quiet = api::PresenceStatsRequest {
            room: "quiet:x".into(),
        };
        assert_eq!(
            fails(&server, "presence_stats", format, &quiet).await,
            (409, 108)
        );
    }
}

#[tokio::test]
async fn history_and_history_remove_in_both_formats() {
    let server = start(api_config()).await;
    for format in FORMATS {
        let room = format!("chat:h-{format:?}");
        let mut alice = subscriber(&server, "alice", &[&room]).await;
        for data in [&b"1"[..], b"2", b"3"] {
            let request = api::PublishRequest {
                room: room.clone(),
                data: Bytes::copy_from_slice(data),
                ..Default::default()
            };
            let _: api::PublishResult = ok(&server, "publish", format, &request).await;
        }
        let all: api::HistoryResult = ok(
            &server,
            "history",
            format,
            &api::HistoryRequest {
                room: room.clone(),
                limit: 10,
                ..Default::default()
            },
        )
        .await;
        let offsets: Vec<u64> = all.publications.iter().map(|p| p.offset).collect();
        assert_eq!((offsets, all.offset), (vec![1, 2, 3], 3));
        assert_eq!(&all.publications[1].data[..], b"2");

        let since = StreamPosition {
            offset: 1,
            epoch: all.epoch.clone(),
        };
        let after: api::HistoryResult = ok(
            &server,
            "history",
            format,
            &api::HistoryRequest {
                room: room.clone(),
                limit: 10,
                since: Some(since),
                reverse: false,
            },
        )
        .await;
        assert_eq!(
            after
                .publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        let newest: api::HistoryResult = ok(
            &server,
            "history",
            format,
            &api::HistoryRequest {
                room: room.clone(),
                limit: 1,
                reverse: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            newest
                .publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            [3]
        );

        let elsewhere = api::HistoryRequest {
            room: room.clone(),
            limit: 10,
            since: Some(StreamPosition {
                offset: 1,
                epoch: "another-epoch".into(),
            }),
            reverse: false,
        };
        assert_eq!(
            fails(&server, "history", format, &elsewhere).await,
            (409, 113)
        );
        let quiet = api::HistoryRequest {
            room: "quiet:x".into(),
            ..Default::default()
        };
        assert_eq!(fails(&server, "history", format, &quiet).await, (409, 108));

        let _: api::HistoryRemoveResult = ok(
            &server,
            "history_remove",
            format,
            &api::HistoryRemoveRequest { room: room.clone() },
        )
        .await;
        for offset in 1..=3 {
            assert_eq!(alice.next_publication().await.offset, offset);
        }
        let push = alice.next_push().await;
        match push.body {
            Some(Body::Unsubscribed(u)) => assert_eq!((u.room, u.code), (room.clone(), 2000)),
            other => panic!("expected unsubscribed 2000, got {other:?}"),
        }
        let fresh: api::HistoryResult = ok(
            &server,
            "history",
            format,
            &api::HistoryRequest {
                room: room.clone(),
                limit: 10,
                ..Default::default()
            },
        )
        .await;
        assert!(fresh.publications.is_empty());
        assert_eq!(fresh.offset, 0);
        assert_ne!(fresh.epoch, all.epoch, "a new epoch after removal");
    }
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe_reach_the_client() {
    let server = start(api_config()).await;
    for format in FORMATS {
        let room = format!("chat:s-{format:?}");
        let user = format!("alice-{format:?}");
        let (mut alice, connected) =
            Client::connect(&server, Encoding::Json, &token(&user, &[], &[])).await;
        let request = api::SubscribeRequest {
            user: user.clone(),
            room: room.clone(),
            client: connected.client.clone(),
        };
        let result: api::SubscribeResult = ok(&server, "subscribe", format, &request).await;
        assert_eq!(result.connections, 1);
        match alice.next_push().await.body {
            Some(Body::Subscribed(s)) => {
                assert_eq!(s.room, room);
                assert!(s.recoverable);
            }
            other => panic!("expected subscribed, got {other:?}"),
        }
        for data in [&b"1"[..], b"2"] {
            let request = api::PublishRequest {
                room: room.clone(),
                data: Bytes::copy_from_slice(data),
                ..Default::default()
            };
            let _: api::PublishResult = ok(&server, "publish", format, &request).await;
        }
        assert_eq!(alice.next_publication().await.offset, 1);
        assert_eq!(alice.next_publication().await.offset, 2);

        let request = api::UnsubscribeRequest {
            user: user.clone(),
            room: room.clone(),
            client: String::new(),
        };
        let result: api::UnsubscribeResult = ok(&server, "unsubscribe", format, &request).await;
        assert_eq!(result.connections, 1);
        match alice.next_push().await.body {
            Some(Body::Unsubscribed(u)) => assert_eq!((u.room, u.code), (room.clone(), 2500)),
            other => panic!("expected unsubscribed 2500, got {other:?}"),
        }

        // Nobody by that name, or not that connection: nothing happens.
        let nobody = api::SubscribeRequest {
            user: "nobody".into(),
            room: room.clone(),
            client: String::new(),
        };
        let result: api::SubscribeResult = ok(&server, "subscribe", format, &nobody).await;
        assert_eq!(result.connections, 0);
        let elsewhere = api::SubscribeRequest {
            user: user.clone(),
            room: room.clone(),
            client: "not-a-connection".into(),
        };
        let result: api::SubscribeResult = ok(&server, "subscribe", format, &elsewhere).await;
        assert_eq!(result.connections, 0);
        let anonymous = api::SubscribeRequest {
            room: room.clone(),
            ..Default::default()
        };
        assert_eq!(
            fails(&server, "subscribe", format, &anonymous).await,
            (400, 107)
        );
    }
}

#[tokio::test]
async fn disconnect_closes_with_the_code_and_reason() {
    let server = start(api_config()).await;
    for format in FORMATS {
        let (alice_id, bob_id) = (format!("alice-{format:?}"), format!("bob-{format:?}"));
        let (mut alice, _) =
            Client::connect(&server, Encoding::Json, &token(&alice_id, &[], &[])).await;
        let request = api::DisconnectRequest {
            user: alice_id.clone(),
            code: 4000,
            reason: "go away for now".into(),
            client: String::new(),
        };
        let result: api::DisconnectResult = ok(&server, "disconnect", format, &request).await;
        assert_eq!(result.connections, 1);
        let (closed, disconnect) = alice.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4000, "go away for now")
        );
        let disconnect = disconnect.expect("a disconnect push");
        assert_eq!(disconnect.code, 4000);
        assert!(disconnect.reconnect);

        let (mut bob, _) =
            Client::connect(&server, Encoding::Protobuf, &token(&bob_id, &[], &[])).await;
        let request = api::DisconnectRequest {
            user: bob_id.clone(),
            ..Default::default()
        };
        let result: api::DisconnectResult = ok(&server, "disconnect", format, &request).await;
        assert_eq!(result.connections, 1);
        let (closed, _) = bob.closed().await;
        assert_eq!(closed.code, 3504, "force_disconnect by default");

        let bad = api::DisconnectRequest {
            user: bob_id.clone(),
            code: 1000,
            ..Default::default()
        };
        assert_eq!(fails(&server, "disconnect", format, &bad).await, (400, 107));
    }
}

#[tokio::test]
async fn refresh_sets_when_sessions_expire() {
    let mut config = api_config();
    config.auth.expiry_grace = Duration::ZERO;
    let server = start(config).await;
    for format in FORMATS {
        let user = format!("alice-{format:?}");
        let (mut alice, connected) =
            Client::connect(&server, Encoding::Json, &token(&user, &[], &[])).await;
        assert_eq!(connected.expires_in_seconds, 0);
        // Removing an expiry that is not there changes nothing.
        let request = api::RefreshRequest {
            user: user.clone(),
            expire_at: 0,
            client: String::new(),
        };
        let result: api::RefreshResult = ok(&server, "refresh", format, &request).await;
        assert_eq!(result.connections, 1);
        let reply = alice.request(Command::Ping(PingRequest {})).await;
        assert!(matches!(reply.body, Some(Body::Ping(_))));

        let past = i64::try_from(unix_now()).unwrap() - 1;
        let request = api::RefreshRequest {
            user: user.clone(),
            expire_at: past,
            client: connected.client.clone(),
        };
        let result: api::RefreshResult = ok(&server, "refresh", format, &request).await;
        assert_eq!(result.connections, 1);
        let (closed, _) = alice.closed().await;
        assert_eq!(closed.code, 3002, "{closed:?}");

        let negative = api::RefreshRequest {
            user: user.clone(),
            expire_at: -5,
            client: String::new(),
        };
        assert_eq!(
            fails(&server, "refresh", format, &negative).await,
            (400, 107)
        );
    }
}

#[tokio::test]
async fn rooms_pages_by_pattern_in_both_formats() {
    let server = start(api_config()).await;
    let _alice = subscriber(
        &server,
        "alice",
        &["chat:r1", "chat:r2", "chat:r3", "other:x"],
    )
    .await;
    let _bob = subscriber(&server, "bob", &["chat:r2"]).await;
    for format in FORMATS {
        let first: api::RoomsResult = ok(
            &server,
            "rooms",
            format,
            &api::RoomsRequest {
                pattern: "chat:*".into(),
                limit: 2,
                cursor: String::new(),
            },
        )
        .await;
        let page: Vec<(&str, u32)> = first
            .rooms
            .iter()
            .map(|r| (r.name.as_str(), r.members))
            .collect();
        assert_eq!(page, [("chat:r1", 1), ("chat:r2", 2)]);
        assert_eq!(first.next_cursor, "chat:r2");
        let second: api::RoomsResult = ok(
            &server,
            "rooms",
            format,
            &api::RoomsRequest {
                pattern: "chat:*".into(),
                limit: 2,
                cursor: first.next_cursor.clone(),
            },
        )
        .await;
        let page: Vec<&str> = second.rooms.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(page, ["chat:r3"]);
        assert_eq!(second.next_cursor, "");
        let all: api::RoomsResult =
            ok(&server, "rooms", format, &api::RoomsRequest::default()).await;
        assert_eq!(all.rooms.len(), 4);
    }
}

#[tokio::test]
async fn info_in_both_formats() {
    let server = start(api_config()).await;
    let _alice = subscriber(&server, "alice", &["chat:i"]).await;
    for format in FORMATS {
        let info: api::InfoResult = ok(&server, "info", format, &api::InfoRequest {}).await;
        assert_eq!(
            info.version,
            concat!("switchboard/", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(info.node, server.node().id());
        assert_eq!((info.connections, info.users, info.rooms), (1, 1, 1));
    }
    // An empty body is `{}`.
    let reply = post(&server, "info", Format::Json, b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = post(&server, "info", Format::Protobuf, b"").await;
    assert_eq!(reply.status, 200);
}

async fn connect_with_ticket(
    server: &Server,
    ticket: &str,
) -> Result<(Client, ConnectResult), Closed> {
    let mut client = Client::open(server, Encoding::Json).await;
    client
        .send(Command::Connect(ConnectRequest {
            ticket: ticket.into(),
            ..Default::default()
        }))
        .await;
    match client.next().await? {
        ServerFrame {
            body: Some(Body::Connect(result)),
            ..
        } => Ok((client, result)),
        ServerFrame {
            body: Some(Body::Disconnect(_)),
            ..
        } => Err(client.closed().await.0),
        other => panic!("unexpected reply to connect: {other:?}"),
    }
}

#[tokio::test]
async fn tickets_are_single_use_connection_credentials() {
    let server = start(api_config()).await;
    for format in FORMATS {
        let request = api::TicketRequest {
            user: "tina".into(),
            info: Bytes::from_static(br#"{"name":"Tina"}"#),
            subscribe: vec!["chat:*".into()],
            publish: vec!["chat:t".into()],
            ttl_seconds: 0,
            expire_at: 0,
        };
        let issued: api::TicketResult = ok(&server, "tickets", format, &request).await;
        assert!(issued.ticket.starts_with("tk_"), "{}", issued.ticket);
        assert_eq!(issued.expires_in_seconds, 60, "the default ticket_ttl");

        let (mut tina, connected) = connect_with_ticket(&server, &issued.ticket)
            .await
            .expect("the ticket connects");
        assert_eq!(connected.user, "tina");
        tina.subscribe("chat:t", None).await;
        tina.publish("chat:t", "1")
            .await
            .expect("publish granted by the ticket");
        let p = tina.next_publication().await;
        assert_eq!(
            p.info.map(|i| i.info),
            Some(Bytes::from_static(br#"{"name":"Tina"}"#))
        );

        let closed = connect_with_ticket(&server, &issued.ticket)
            .await
            .err()
            .expect("a used ticket is refused");
        assert_eq!(closed.code, 3503);
        assert!(closed.reason.contains("already used"), "{}", closed.reason);

        let closed = connect_with_ticket(&server, "tk_never-issued")
            .await
            .err()
            .expect("an unknown ticket is refused");
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (3503, "invalid ticket: unknown ticket")
        );

        let long = api::TicketRequest {
            user: "tina".into(),
            ttl_seconds: 7200,
            ..Default::default()
        };
        let issued: api::TicketResult = ok(&server, "tickets", format, &long).await;
        assert_eq!(issued.expires_in_seconds, 3600, "at most an hour");

        let expired_session = api::TicketRequest {
            user: "tina".into(),
            expire_at: 1,
            ..Default::default()
        };
        let issued: api::TicketResult = ok(&server, "tickets", format, &expired_session).await;
        let closed = connect_with_ticket(&server, &issued.ticket)
            .await
            .err()
            .expect("refused");
        assert_eq!(closed.code, 3002);

        let nobody = api::TicketRequest::default();
        assert_eq!(fails(&server, "tickets", format, &nobody).await, (400, 107));
    }
}

fn engine_node() -> Arc<Node> {
    Node::new(api_config(), Arc::new(MemoryBroker::new())).expect("node")
}

/// Opens a session on `node` and sends `connect` with a ticket: the close,
/// if the session refused it.
async fn engine_connect(node: &Arc<Node>, ticket: &str) -> Result<(), switchboard::engine::Close> {
    let mut session = node
        .open(OpenParams::new(Encoding::Protobuf))
        .expect("open");
    let frame = ClientFrame {
        id: 1,
        command: Some(Command::Connect(ConnectRequest {
            ticket: ticket.into(),
            ..Default::default()
        })),
    };
    session
        .handle_message(codec::encode(&frame, Encoding::Protobuf))
        .await
}

#[tokio::test(start_paused = true)]
async fn tickets_expire_after_their_ttl() {
    let node = engine_node();
    let grant = || TicketGrant {
        user: "tina".into(),
        ..Default::default()
    };
    let (early, ttl) = node
        .issue_ticket(grant(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ttl, Duration::from_secs(60));
    let (late, _) = node
        .issue_ticket(grant(), Duration::from_secs(60))
        .await
        .unwrap();
    let (default_ttl, ttl) = node.issue_ticket(grant(), Duration::ZERO).await.unwrap();
    assert_eq!(ttl, node.config().api.ticket_ttl);

    tokio::time::advance(Duration::from_secs(59)).await;
    engine_connect(&node, &early)
        .await
        .expect("usable within its TTL");
    let close = engine_connect(&node, &early).await.expect_err("used");
    assert_eq!(close.code.0, 3503);
    assert_eq!(close.reason, "invalid ticket: ticket already used");

    tokio::time::advance(Duration::from_secs(2)).await;
    for ticket in [&late, &default_ttl] {
        let close = engine_connect(&node, ticket).await.expect_err("expired");
        assert_eq!(close.code.0, 3503);
        assert_eq!(close.reason, "invalid ticket: ticket expired");
    }
    let close = engine_connect(&node, "tk_unknown")
        .await
        .expect_err("unknown");
    assert_eq!(close.reason, "invalid ticket: unknown ticket");
}

#[tokio::test]
async fn batch_runs_calls_in_order_with_an_error_per_call() {
    let server = start(api_config()).await;
    for format in FORMATS {
        let room = format!("chat:b-{format:?}");
        let calls = vec![
            Call::Publish(publish_request(&room, b"1")),
            Call::Publish(publish_request(&room, b"2")),
            Call::History(api::HistoryRequest {
                room: room.clone(),
                limit: 10,
                ..Default::default()
            }),
            Call::Presence(api::PresenceRequest {
                room: "quiet:x".into(),
            }),
            Call::Publish(publish_request("", b"3")),
            Call::Info(api::InfoRequest {}),
        ];
        let mut request = api::BatchRequest {
            calls: calls
                .into_iter()
                .map(|c| api::ApiCall { method: Some(c) })
                .collect(),
        };
        request.calls.push(api::ApiCall { method: None });
        let result: api::BatchResult = ok(&server, "batch", format, &request).await;
        let replies: Vec<Reply> = result
            .replies
            .into_iter()
            .map(|r| r.result.expect("a result"))
            .collect();
        assert_eq!(replies.len(), 7);
        assert!(
            matches!(&replies[0], Reply::Publish(p) if p.offset == 1),
            "{:?}",
            replies[0]
        );
        assert!(matches!(&replies[1], Reply::Publish(p) if p.offset == 2));
        assert!(
            matches!(&replies[2], Reply::History(h) if h.publications.len() == 2 && h.offset == 2)
        );
        assert!(matches!(&replies[3], Reply::Error(e) if e.code == 108));
        assert!(matches!(&replies[4], Reply::Error(e) if e.code == 107));
        assert!(matches!(&replies[5], Reply::Info(i) if i.version.starts_with("switchboard/")));
        assert!(matches!(&replies[6], Reply::Error(e) if e.code == 107));

        let too_many = api::BatchRequest {
            calls: vec![
                api::ApiCall {
                    method: Some(Call::Info(api::InfoRequest {})),
                };
                1001
            ],
        };
        assert_eq!(fails(&server, "batch", format, &too_many).await, (422, 106));
    }
}

#[tokio::test]
async fn an_idempotent_publish_retried_is_stored_and_delivered_once() {
    let server = start(api_config()).await;
    let mut alice = subscriber(&server, "alice", &["chat:idem", "chat:idem2"]).await;
    let mut request = publish_request("chat:idem", br#"{"order":42}"#);
    request.idempotency_key = "order-42".into();
    let mut results = vec![];
    for format in [Format::Json, Format::Protobuf, Format::Json] {
        let result: api::PublishResult = ok(&server, "publish", format, &request).await;
        results.push((result.offset, result.epoch));
    }
    assert_eq!(results[0].0, 1);
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    // The same key in another room is another publication.
    let mut elsewhere = request.clone();
    elsewhere.room = "chat:idem2".into();
    let result: api::PublishResult = ok(&server, "publish", Format::Json, &elsewhere).await;
    assert_eq!(result.offset, 1);
    let result: api::PublishResult = ok(
        &server,
        "publish",
        Format::Json,
        &publish_request("chat:idem", b"2"),
    )
    .await;
    assert_eq!(result.offset, 2);

    let mut seen = vec![];
    for _ in 0..3 {
        let p = alice.next_publication().await;
        seen.push((p.room, p.offset));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("chat:idem".to_owned(), 1),
            ("chat:idem".to_owned(), 2),
            ("chat:idem2".to_owned(), 1)
        ]
    );
    let history: api::HistoryResult = ok(
        &server,
        "history",
        Format::Json,
        &api::HistoryRequest {
            room: "chat:idem".into(),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(history.publications.len(), 2, "stored once");
    let reply = alice.request(Command::Ping(PingRequest {})).await;
    assert!(matches!(reply.body, Some(Body::Ping(_))));
    assert_eq!(alice.buffered(), 0, "no duplicate delivery");
}

#[tokio::test]
async fn api_publications_reach_subscribers_in_order_with_the_returned_offsets() {
    let server = start(api_config()).await;
    let mut json = subscriber(&server, "alice", &["chat:order"]).await;
    let (mut proto, _) =
        Client::connect(&server, Encoding::Protobuf, &token("bob", &["*"], &[])).await;
    proto.subscribe("chat:order", None).await;
    let mut returned = vec![];
    for n in 0..30u32 {
        let format = FORMATS[n as usize % 2];
        let request = api::PublishRequest {
            room: "chat:order".into(),
            data: Bytes::from(format!(r#"{{"n":{n}}}"#)),
            ..Default::default()
        };
        let result: api::PublishResult = ok(&server, "publish", format, &request).await;
        returned.push((result.offset, request.data));
    }
    assert_eq!(
        returned.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<u64>>()
    );
    for client in [&mut json, &mut proto] {
        for (offset, data) in &returned {
            let p = client.next_publication().await;
            assert_eq!((p.offset, &p.data), (*offset, data));
        }
    }
}

#[tokio::test]
async fn an_api_key_is_required() {
    let server = start(api_config()).await;
    let path = "/api/v1/info";
    let json = ("Content-Type", "application/json");
    let check_401 = |reply: Response, says: &str| {
        assert_eq!(reply.status, 401, "{}", reply.text());
        assert!(reply.header("www-authenticate").is_some());
        let err: api::Error = serde_json::from_slice(&reply.body).expect("an Error body");
        assert_eq!(err.code, 101);
        assert!(err.message.contains(says), "{}", err.message);
    };
    let none = http(&server, "POST", path, &[json], b"{}").await;
    check_401(none, "X-API-Key: <key>");
    let wrong = http(
        &server,
        "POST",
        path,
        &[json, ("X-API-Key", "test-kez")],
        b"{}",
    )
    .await;
    check_401(wrong, "not valid");
    let longer = http(
        &server,
        "POST",
        path,
        &[json, ("X-API-Key", "test-key2")],
        b"{}",
    )
    .await;
    check_401(longer, "not valid");
    let bearer = http(
        &server,
        "POST",
        path,
        &[json, ("Authorization", "Bearer test-key")],
        b"{}",
    )
    .await;
    check_401(bearer, "apikey");
    let dev = http(
        &server,
        "POST",
        path,
        &[
            json,
            ("X-API-Key", switchboard::config::DEVELOPMENT_API_KEY),
        ],
        b"{}",
    )
    .await;
    check_401(dev, "not valid");

    for header in [
        ("X-API-Key", KEY),
        ("Authorization", "apikey test-key"),
        ("authorization", "APIKEY test-key"),
    ] {
        let reply = http(&server, "POST", path, &[json, header], b"{}").await;
        assert_eq!(reply.status, 200, "{header:?}: {}", reply.text());
    }
    // Protobuf requests get a protobuf Error.
    let reply = http(
        &server,
        "POST",
        path,
        &[("Content-Type", "application/x-protobuf")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 401);
    let err = api::Error::decode(&reply.body[..]).expect("a protobuf Error");
    assert_eq!(err.code, 101);
}

#[tokio::test]
async fn the_api_is_closed_without_keys_except_in_development() {
    let server = start(config()).await;
    let reply = http(
        &server,
        "POST",
        "/api/v1/info",
        &[("X-API-Key", "anything")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 401);
    let err: api::Error = serde_json::from_slice(&reply.body).unwrap();
    assert!(err.message.contains("api.keys"), "{}", err.message);

    let mut development = config();
    development.auth.hmac_secret = None;
    let server = start(development).await;
    let key = switchboard::config::DEVELOPMENT_API_KEY;
    let reply = http(&server, "POST", "/api/v1/info", &[("X-API-Key", key)], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn errors_have_their_status_and_an_error_body_and_the_server_keeps_working() {
    let mut config = api_config();
    config.strict_namespaces = true;
    let server = start(config).await;
    let key = ("X-API-Key", KEY);
    let error = |reply: &Response| -> api::Error {
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{}",
            reply.text()
        );
        serde_json::from_slice(&reply.body).expect("an Error body")
    };

    let reply = http(&server, "POST", "/api/v1/publishh", &[key], b"{}").await;
    assert_eq!(reply.status, 404);
    let err = error(&reply);
    assert_eq!(err.code, 104);
    for method in [
        "publish",
        "presence_stats",
        "history_remove",
        "tickets",
        "batch",
    ] {
        assert!(err.message.contains(method), "{}", err.message);
    }
    let reply = http(&server, "POST", "/api/v2/publish", &[key], b"{}").await;
    assert_eq!((reply.status, error(&reply).code), (404, 104));
    let reply = http(&server, "POST", "/api/v1/publish/extra", &[key], b"{}").await;
    assert_eq!((reply.status, error(&reply).code), (404, 104));

    for method in ["GET", "PUT", "DELETE"] {
        let reply = http(&server, method, "/api/v1/publish", &[key], b"").await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("POST"));
        assert_eq!(error(&reply).code, 107);
    }

    let mut small = api_config();
    small.api.max_body_size = 1000;
    let small = start(small).await;
    let reply = http(&small, "POST", "/api/v1/info", &[key], &[b' '; 1000]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = http(&small, "POST", "/api/v1/info", &[key], &[b' '; 1001]).await;
    assert_eq!(reply.status, 413);
    assert!(error(&reply).message.contains("api.max_body_size"));

    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let reply = http(
            &server,
            "POST",
            "/api/v1/info",
            &[key, ("Content-Type", content_type)],
            b"{}",
        )
        .await;
        assert_eq!(reply.status, 415, "{content_type}");
        assert!(error(&reply).message.contains("application/x-protobuf"));
    }

    let json = ("Content-Type", "application/json");
    for body in [
        &b"{"[..],
        b"{\"room\":",
        b"[1,2]",
        b"null",
        b"{\"room\":42}",
        b"{\"room\":\"chat:x\",\"data\":1,\"dataBase64\":\"AA==\"}",
        b"{\"room\":\"chat:x\",\"dataBase64\":\"***\"}",
        b"{\"room\":\"chat:x\",\"data\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
        b"\xff\xfe",
        b"{\"room\":\"chat:x\"} trailing",
    ] {
        let reply = http(&server, "POST", "/api/v1/publish", &[key, json], body).await;
        assert_eq!(reply.status, 400, "{}: {}", String::from_utf8_lossy(body), reply.text());
        assert_eq!(error(&reply).code, 107);
    }
    let deep = format!("{}{}", "[".repeat(100_000 - 20), "]".repeat(10));
    let reply = http(
        &server,
        "POST",
        "/api/v1/batch",
        &[key, json],
        deep.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400);

    let protobuf = ("Content-Type", "application/x-protobuf");
    for body in [
        &[0x0a, 0x05, b'a'][..],
        &[0xff; 16],
        &[0x0a, 0x02, 0xff, 0xfe],
        &[0x08],
    ] {
        let reply = http(&server, "POST", "/api/v1/publish", &[key, protobuf], body).await;
        assert_eq!(reply.status, 400, "{body:?}");
        let err = api::Error::decode(&reply.body[..]).expect("a protobuf Error");
        assert_eq!(err.code, 107);
    }

    // Engine errors by code.
    let unknown = publish_request("nowhere:x", b"1");
    assert_eq!(
        fails(&server, "publish", Format::Json, &unknown).await,
        (404, 102)
    );
    let too_big = api::PublishRequest {
        room: "chat:x".into(),
        data: Bytes::from(vec![b'1'; 65 * 1024]),
        ..Default::default()
    };
    assert_eq!(
        fails(&server, "publish", Format::Protobuf, &too_big).await,
        (422, 106)
    );
    let wide = api::BroadcastRequest {
        rooms: (0..1001).map(|i| format!("chat:{i}")).collect(),
        data: Bytes::from_static(b"1"),
        ..Default::default()
    };
    assert_eq!(
        fails(&server, "broadcast", Format::Protobuf, &wide).await,
        (422, 106)
    );
    let empty_room = publish_request("", b"1");
    assert_eq!(
        fails(&server, "publish", Format::Json, &empty_room).await,
        (400, 107)
    );

    // Still serving.
    let result: api::PublishResult = ok(
        &server,
        "publish",
        Format::Json,
        &publish_request("chat:x", b"1"),
    )
    .await;
    assert_eq!(result.offset, 1);
    let health = http(&server, "GET", "/health", &[], b"").await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn a_separate_api_listener_serves_the_api_and_the_main_one_does_not() {
    let mut config = api_config();
    config.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start(config).await;
    assert_ne!(server.api_addr(), server.addr());
    let info: api::InfoResult = ok(&server, "info", Format::Json, &api::InfoRequest {}).await;
    assert!(info.version.starts_with("switchboard/"));
    let main = format!("http://{}", server.addr());
    let headers = [("X-API-Key", KEY)];
    let reply = client::request(&main, "POST", "/api/v1/info", &headers, b"{}")
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    let reply = client::request(&main, "GET", "/api/v1/openapi.json", &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    // The public endpoint still serves clients.
    let (mut alice, _) =
        Client::connect(&server, Encoding::Json, &token("alice", &["*"], &[])).await;
    alice.subscribe("chat:sep", None).await;
    let _: api::PublishResult = ok(
        &server,
        "publish",
        Format::Json,
        &publish_request("chat:sep", b"1"),
    )
    .await;
    assert_eq!(alice.next_publication().await.offset, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_key() {
    let server = start(api_config()).await;
    let reply = http(&server, "GET", "/api/v1/openapi.json", &[], b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let served: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(served, switchboard::api::openapi::document());
    let reply = http(
        &server,
        "POST",
        "/api/v1/openapi.json",
        &[("X-API-Key", KEY)],
        b"",
    )
    .await;
    assert_eq!((reply.status, reply.header("allow")), (405, Some("GET")));
}

#[tokio::test]
async fn api_calls_are_counted_by_method_and_status() {
    let server = start(api_config()).await;
    let _: api::InfoResult = ok(&server, "info", Format::Json, &api::InfoRequest {}).await;
    let _ = http(&server, "POST", "/api/v1/info", &[], b"").await;
    let _ = http(&server, "POST", "/api/v1/what", &[], b"").await;
    let metrics = http(&server, "GET", "/metrics", &[], b"").await.text();
    let line = |method: &str, status: &str| {
        metrics.lines().any(|l| {
            l.starts_with("switchboard_api_calls_total{")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
    };
    assert!(line("info", "200"), "{metrics}");
    assert!(line("info", "401"), "{metrics}");
    assert!(line("unknown", "404"), "{metrics}");
}

/// Runs the `switchboard` binary; returns (success, stdout, stderr).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&args)
            .env_remove("SWITCHBOARD_API_KEY")
            .env_remove("SWITCHBOARD_API_URL")
            .output()
            .expect("the binary runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_publishes_and_calls_methods() {
    let server = start(api_config()).await;
    let mut alice = subscriber(&server, "alice", &["chat:cli"]).await;
    let target = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend([
            "--api-url".into(),
            base(&server),
            "--api-key".into(),
            KEY.into(),
        ]);
        all
    };
    for _ in 0..2 {
        let (success, stdout, stderr) = cli(target(&[
            "publish",
            "chat:cli",
            r#"{"x":1}"#,
            "--idempotency-key",
            "k",
        ]))
        .await;
        assert!(success, "{stderr}");
        let result: api::PublishResult = serde_json::from_str(&stdout).expect("JSON result");
        assert_eq!(result.offset, 1, "{stdout}");
    }
    let p = alice.next_publication().await;
    assert_eq!((&p.data[..], p.offset), (&br#"{"x":1}"#[..], 1));

    let (success, stdout, stderr) =
        cli(target(&["api", "presence_stats", r#"{"room":"chat:cli"}"#])).await;
    assert!(success, "{stderr}");
    let stats: api::PresenceStatsResult = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stats.clients, 1);

    let (success, stdout, stderr) = cli(target(&["api", "nope", "{}"])).await;
    assert!(!success);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("404") && stderr.contains("publish"),
        "{stderr}"
    );

    let (success, _, stderr) = cli(vec![
        "api".into(),
        "info".into(),
        "--api-url".into(),
        base(&server),
    ])
    .await;
    assert!(!success, "the development key is not valid here");
    assert!(stderr.contains("401"), "{stderr}");
}
