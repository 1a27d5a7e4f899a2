//! The Rust client (sans-IO machine + tokio driver) against a real server:
//! across cut connections and server restarts, the application sees exactly
//! the published sequence, or an explicit `recovered = false`.

use std::time::Duration;

use bytes::Bytes;
use switchboard::client::{Client, Config, Event};
use switchboard::codec::Encoding;
use switchboard::codes::CloseCode;
use switchboard::config::RoomOptions;
use switchboard::engine::Close;
use switchboard::server::Server;

use super::support::{self, token};

fn server_config(history_size: usize) -> switchboard::config::Config {
    let mut config = support::config();
    let options = RoomOptions {
        history_size,
        ..RoomOptions::default()
    };
    config.namespaces.insert("feed".into(), options);
    config
}

fn client(server: &Server, encoding: Encoding, user: &str) -> Client {
    let config = Config {
        token: token(user, &["feed:*"], &["feed:*"]),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..Config::default()
    };
    Client::websocket(support::ws_url(server), encoding, config)
}

/// What the application saw of one room, in order.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    payloads: Vec<String>,
    recovered: Vec<Option<bool>>,
}

/// Reads events until `done(seen)` holds (bounded by a timeout).
async fn watch(client: &mut Client, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(seen) {
        let event = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out; saw {seen:?}"))
            .expect("client running");
        match event {
            Event::Publication(p) => seen
                .payloads
                .push(String::from_utf8(p.data.to_vec()).unwrap()),
            Event::Subscribed { recovered, .. } => seen.recovered.push(recovered),
            Event::Disconnected {
                will_reconnect: false,
                code,
                reason,
            } if code != CloseCode::NORMAL => {
                panic!("gave up: {code} {reason}")
            }
            _ => {}
        }
    }
}

async fn publish_range(
    publisher: &mut support::Client,
    room: &str,
    range: std::ops::RangeInclusive<u32>,
) {
    for n in range {
        publisher.publish(room, &n.to_string()).await.unwrap();
    }
}

fn strings(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn cut_connections_lose_and_duplicate_nothing() {
    let server = support::start(server_config(100)).await;
    for encoding in Encoding::ALL {
        let room = format!("feed:cut-{}", encoding.name());
        let mut app = client(&server, encoding, "reader");
        app.subscribe(&room).await.unwrap();
        let mut seen = Seen::default();
        watch(&mut app, &mut seen, |s| !s.recovered.is_empty()).await;
        let (mut publisher, _) =
            support::Client::connect(&server, encoding, &token("p", &[], &["feed:*"])).await;
        for round in 0..4u32 {
            let from = round * 15 + 1;
            publish_range(&mut publisher, &room, from..=from + 9).await;
            // Cut the reader mid-stream; publications continue meanwhile.
            server.node().disconnect_user(
                "reader",
                &Close::new(CloseCode::FORCE_RECONNECT, "test cut"),
            );
            publish_range(&mut publisher, &room, from + 10..=from + 14).await;
        }
        watch(&mut app, &mut seen, |s| s.payloads.len() >= 60).await;
        assert_eq!(seen.payloads, strings(1..=60), "{encoding:?}");
        assert_eq!(seen.recovered[0], None);
        assert!(
            seen.recovered[1..].iter().all(|r| *r == Some(true)),
            "{:?}",
            seen.recovered
        );
        // Nothing extra arrives.
        publish_range(&mut publisher, &room, 61..=61).await;
        watch(&mut app, &mut seen, |s| s.payloads.len() >= 61).await;
        assert_eq!(seen.payloads.last().map(String::as_str), Some("61"));
        assert_eq!(seen.payloads.len(), 61);
    }
}

#[tokio::test]
async fn a_gap_beyond_the_history_window_is_announced() {
    let server = support::start(server_config(5)).await;
    for encoding in Encoding::ALL {
        let room = format!("feed:gap-{}", encoding.name());
        let mut app = client(&server, encoding, "reader");
        app.subscribe(&room).await.unwrap();
        let mut seen = Seen::default();
        watch(&mut app, &mut seen, |s| !s.recovered.is_empty()).await;
        let (mut publisher, _) =
            support::Client::connect(&server, encoding, &token("p", &[], &["feed:*"])).await;
        publish_range(&mut publisher, &room, 1..=3).await;
        watch(&mut app, &mut seen, |s| s.payloads.len() == 3).await;
        app.disconnect().await.unwrap();
        // Wait until the server has seen the reader go, then miss more than history keeps.
        while server.node().stats().users > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publish_range(&mut publisher, &room, 4..=12).await;
        app.reconnect().await.unwrap();
        watch(&mut app, &mut seen, |s| s.recovered.len() == 2).await;
        assert_eq!(
            seen.recovered,
            [None, Some(false)],
            "the gap is announced, not hidden"
        );
        publish_range(&mut publisher, &room, 13..=14).await;
        watch(&mut app, &mut seen, |s| s.payloads.len() == 5).await;
        assert_eq!(
            seen.payloads,
            ["1", "2", "3", "13", "14"],
            "nothing from the gap, no duplicates"
        );
    }
}

#[tokio::test]
async fn a_server_restart_changes_the_epoch_and_says_so() {
    for encoding in Encoding::ALL {
        let server = support::start(server_config(100)).await;
        let addr = server.addr();
        let room = "feed:restart";
        let mut app = client(&server, encoding, "reader");
        app.subscribe(room).await.unwrap();
        let mut seen = Seen::default();
        watch(&mut app, &mut seen, |s| !s.recovered.is_empty()).await;
        let (mut publisher, _) =
            support::Client::connect(&server, encoding, &token("p", &[], &["feed:*"])).await;
        publish_range(&mut publisher, room, 1..=5).await;
        watch(&mut app, &mut seen, |s| s.payloads.len() == 5).await;
        drop(publisher);
        assert_eq!(server.shutdown().await, 0);

        // Same address, new process state: the memory broker's history is gone.
        let mut config = server_config(100);
        config.listen = addr;
        let server = support::start(config).await;
        let (mut publisher, _) =
            support::Client::connect(&server, encoding, &token("p", &[], &["feed:*"])).await;
        watch(&mut app, &mut seen, |s| s.recovered.len() == 2).await;
        assert_eq!(
            seen.recovered[1],
            Some(false),
            "history was lost with the restart"
        );
        publish_range(&mut publisher, room, 1..=3).await;
        watch(&mut app, &mut seen, |s| s.payloads.len() == 8).await;
        assert_eq!(seen.payloads, ["1", "2", "3", "4", "5", "1", "2", "3"]);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn publishes_while_disconnected_are_sent_after_reconnect() {
    let server = support::start(server_config(100)).await;
    let mut app = client(&server, Encoding::Protobuf, "writer");
    app.subscribe("feed:q").await.unwrap();
    let mut seen = Seen::default();
    watch(&mut app, &mut seen, |s| !s.recovered.is_empty()).await;
    app.disconnect().await.unwrap();
    for n in 1..=3 {
        app.publish("feed:q", Bytes::from(n.to_string()))
            .await
            .unwrap()
            .unwrap();
    }
    app.reconnect().await.unwrap();
    watch(&mut app, &mut seen, |s| s.payloads.len() == 3).await;
    assert_eq!(seen.payloads, strings(1..=3));
}
