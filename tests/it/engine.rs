//! Session timers under simulated time: the engine driven directly, without
//! sockets (connect timeout, heartbeat and pong timeout, expiry and refresh).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard::broker::memory::MemoryBroker;
use switchboard::codec::{self, DecodeLimits, Encoding};
use switchboard::engine::{Close, Node, OpenParams, Session};
use switchboard::wire::v1::{client_frame::Command, server_frame::Body, *};

use super::support::{config, token_expiring};

fn node(configure: impl FnOnce(&mut switchboard::config::Config)) -> Arc<Node> {
    let mut config = config();
    configure(&mut config);
    Node::new(config, Arc::new(MemoryBroker::new())).expect("node")
}

fn open(node: &Arc<Node>) -> Session {
    node.open(OpenParams::new(Encoding::Protobuf))
        .expect("open")
}

async fn send(session: &mut Session, id: u32, command: Command) -> Result<(), Close> {
    let bytes = codec::encode(
        &ClientFrame {
            id,
            command: Some(command),
        },
        Encoding::Protobuf,
    );
    session.handle_message(bytes).await
}

/// Frames queued for the client so far.
async fn drain(session: &Session) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    let mut frames = Vec::<Bytes>::new();
    while session.outbox().queued_bytes() > 0 {
        session.outbox().next_batch(&mut frames).await;
    }
    let limits = DecodeLimits::default();
    for bytes in frames {
        for frame in codec::decode_batch::<ServerFrame>(&bytes, Encoding::Protobuf, &limits) {
            out.push(frame.expect("decodes"));
        }
    }
    out
}

/// Advances simulated time to `at` running the session's timers as a
/// transport would; returns the close if one happened.
async fn run_until(session: &mut Session, at: tokio::time::Instant) -> Option<Close> {
    loop {
        let next = session.deadline();
        if next > at {
            tokio::time::advance(at.saturating_duration_since(tokio::time::Instant::now())).await;
            return None;
        }
        tokio::time::advance(next.saturating_duration_since(tokio::time::Instant::now())).await;
        if let Err(close) = session.handle_deadline() {
            return Some(close);
        }
    }
}

fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_the_connect_timeout() {
    let node = node(|c| c.limits.connect_timeout = Duration::from_secs(3));
    let mut session = open(&node);
    assert_eq!(
        run_until(&mut session, now() + Duration::from_secs(2)).await,
        None
    );
    let close = run_until(&mut session, now() + Duration::from_secs(2))
        .await
        .expect("closed");
    assert_eq!(close.code.0, 3005);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_sent_and_a_missing_pong_closes_3004() {
    let node = node(|c| {
        c.limits.ping_interval = Duration::from_secs(25);
        c.limits.pong_timeout = Duration::from_secs(10);
    });
    let mut session = open(&node);
    let token = token_expiring("alice", &[], &[], None);
    send(
        &mut session,
        1,
        Command::Connect(ConnectRequest {
            token,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    drain(&session).await;
    // Answered heartbeats keep the connection alive for minutes.
    for _ in 0..10 {
        assert_eq!(
            run_until(&mut session, now() + Duration::from_secs(25)).await,
            None
        );
        let frames = drain(&session).await;
        assert!(
            matches!(
                frames.as_slice(),
                [ServerFrame {
                    id: 0,
                    body: Some(Body::Heartbeat(_))
                }]
            ),
            "{frames:?}"
        );
        send(&mut session, 0, Command::Pong(Pong {})).await.unwrap();
    }
    // An unanswered one closes it, pong_timeout after it was sent.
    run_until(&mut session, now() + Duration::from_secs(25)).await;
    let close = run_until(&mut session, now() + Duration::from_secs(11))
        .await
        .expect("closed");
    assert_eq!(close.code.0, 3004);
}

#[tokio::test(start_paused = true)]
async fn an_unrefreshed_session_expires_and_a_refreshed_one_does_not() {
    let node = node(|c| {
        c.auth.expiry_grace = Duration::from_secs(5);
        c.limits.ping_interval = Duration::from_secs(3600);
    });
    let ttl = 60;
    let unix = || node.unix_time().as_secs();
    let mut session = open(&node);
    let token = token_expiring("alice", &[], &[], Some(unix() + ttl));
    send(
        &mut session,
        1,
        Command::Connect(ConnectRequest {
            token,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let frames = drain(&session).await;
    let Some(Body::Connect(result)) = &frames[0].body else {
        panic!("{frames:?}")
    };
    assert_eq!(u64::from(result.expires_in_seconds), ttl);

    // Refresh before expiry: the session lives on past the first token.
    assert_eq!(
        run_until(&mut session, now() + Duration::from_secs(50)).await,
        None
    );
    let fresh = token_expiring("alice", &[], &[], Some(unix() + ttl));
    send(
        &mut session,
        2,
        Command::Refresh(RefreshRequest { token: fresh }),
    )
    .await
    .unwrap();
    let frames = drain(&session).await;
    assert!(
        matches!(
            frames[0].body,
            Some(Body::Refresh(RefreshResult {
                expires_in_seconds: 60
            }))
        ),
        "{frames:?}"
    );
    assert_eq!(
        run_until(&mut session, now() + Duration::from_secs(60)).await,
        None
    );

    // A token for someone else is refused; an expired one too.
    let other = token_expiring("mallory", &[], &[], Some(unix() + ttl));
    send(
        &mut session,
        3,
        Command::Refresh(RefreshRequest { token: other }),
    )
    .await
    .unwrap();
    let stale = token_expiring("alice", &[], &[], Some(unix() - 1));
    send(
        &mut session,
        4,
        Command::Refresh(RefreshRequest { token: stale }),
    )
    .await
    .unwrap();
    let codes: Vec<u32> = drain(&session)
        .await
        .into_iter()
        .filter_map(|f| match f.body {
            Some(Body::Error(e)) => Some(e.code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, [115, 109]);

    // No refresh: closed with "expired" after expiry + grace, not before.
    let close = run_until(&mut session, now() + Duration::from_secs(10))
        .await
        .expect("expired");
    assert_eq!(close.code.0, 3002);
    assert!(close.code.reconnect());
}
