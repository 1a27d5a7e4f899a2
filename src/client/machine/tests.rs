//! Transitions of spec/08-client.md with simulated time (one `Instant::now()`
//! as a base, then base + durations), and property tests that run the machine
//! against the simulated server of [`crate::client::sim`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::client::sim::{self, Mode, Sim, Step};

// --------------------------------------------------------------------------
// Helpers
// --------------------------------------------------------------------------

fn config() -> Config {
    Config {
        token: "tok".to_owned(),
        jitter_seed: 7,
        ..Config::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain(machine: &mut Machine) -> Vec<Action> {
    std::iter::from_fn(|| machine.poll_action()).collect()
}

fn events(actions: &[Action]) -> Vec<Event> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Emit(event) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn sent(actions: &[Action]) -> Vec<ClientFrame> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send(frame) => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

fn frame(id: u32, body: Body) -> ServerFrame {
    ServerFrame {
        id,
        body: Some(body),
    }
}

fn push(body: Body) -> ServerFrame {
    frame(0, body)
}

fn publication(room: &str, offset: u64) -> Publication {
    Publication {
        room: room.to_owned(),
        offset,
        data: Bytes::from(format!("{room}/{offset}")),
        ..Default::default()
    }
}

fn position(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    }
}

fn delivered(actions: &[Action]) -> Vec<u64> {
    events(actions)
        .into_iter()
        .filter_map(|event| match event {
            Event::Publication(publication) => Some(publication.offset),
            _ => None,
        })
        .collect()
}

fn subscribe_requests(actions: &[Action]) -> Vec<(u32, v1::SubscribeRequest)> {
    sent(actions)
        .into_iter()
        .filter_map(|frame| match frame.command {
            Some(Command::Subscribe(request)) => Some((frame.id, request)),
            _ => None,
        })
        .collect()
}

fn connect_result(ping_interval_ms: u32, expires_in_seconds: u32) -> Body {
    Body::Connect(v1::ConnectResult {
        client: "c1".to_owned(),
        user: "u1".to_owned(),
        version: "switchboard/test".to_owned(),
        expires_in_seconds,
        ping_interval_ms,
        ..Default::default()
    })
}

/// Opens the transport and answers `connect`; returns the actions after the
/// connect result.
fn accept(machine: &mut Machine, now: Instant, ping_ms: u32, expires_s: u32) -> Vec<Action> {
    machine.handle_transport_open(now);
    let actions = drain(machine);
    let id = sent(&actions)
        .into_iter()
        .find(|frame| matches!(frame.command, Some(Command::Connect(_))))
        .map(|frame| frame.id)
        .expect("connect sent");
    machine.handle_frame(frame(id, connect_result(ping_ms, expires_s)), now);
    drain(machine)
}

/// A connected machine with the given rooms subscribed (each at offset 10,
/// epoch "e1", recoverable), at `base`.
fn connected(rooms: &[&str]) -> (Machine, Instant) {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    for room in rooms {
        machine.subscribe(room, base);
    }
    machine.connect(base);
    drain(&mut machine);
    let actions = accept(&mut machine, base, 25_000, 0);
    for (id, request) in subscribe_requests(&actions) {
        machine.handle_frame(
            frame(
                id,
                Body::Subscribe(v1::SubscribeResult {
                    epoch: "e1".to_owned(),
                    offset: 10,
                    recoverable: true,
                    ..Default::default()
                }),
            ),
            base,
        );
        let _ = request;
    }
    drain(&mut machine);
    (machine, base)
}

fn lose_transport(machine: &mut Machine, now: Instant) -> Vec<Action> {
    machine.handle_transport_closed(CloseCode::ABNORMAL, "reset", now);
    drain(machine)
}

/// Runs the reconnect timer and accepts the new transport.
fn reconnect(machine: &mut Machine) -> (Instant, Vec<Action>) {
    let at = machine.reconnect_at().expect("a reconnect is scheduled");
    machine.handle_timeout(at);
    let actions = drain(machine);
    assert!(actions.contains(&Action::OpenTransport));
    (at, accept(machine, at, 25_000, 0))
}

// --------------------------------------------------------------------------
// Connecting
// --------------------------------------------------------------------------

#[test]
fn connect_opens_a_transport_and_sends_connect_once_open() {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    assert_eq!(machine.state(), State::Disconnected);
    assert_eq!(machine.poll_timeout(), None);
    machine.connect(base);
    assert_eq!(
        drain(&mut machine),
        vec![Action::Emit(Event::Connecting), Action::OpenTransport]
    );
    assert_eq!(machine.state(), State::Connecting);
    assert_eq!(machine.poll_timeout(), Some(base + Duration::from_secs(10)));
    // A second connect() while connecting does nothing.
    machine.connect(base);
    assert!(drain(&mut machine).is_empty());

    machine.handle_transport_open(base + ms(30));
    let frames = sent(&drain(&mut machine));
    assert_eq!(frames.len(), 1);
    assert_ne!(frames[0].id, 0);
    let Some(Command::Connect(request)) = &frames[0].command else {
        panic!("expected connect, got {frames:?}");
    };
    assert_eq!(request.token, "tok");
    assert_eq!(request.name, "switchboard-rust");
    assert_eq!(request.version, env!("CARGO_PKG_VERSION"));
    // A stale second open is ignored.
    machine.handle_transport_open(base + ms(31));
    assert!(drain(&mut machine).is_empty());
}

#[test]
fn connect_result_subscribes_every_room_then_flushes_publishes_in_order() {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    machine.subscribe("b", base);
    machine.subscribe("a", base);
    let first = machine
        .publish("a", Bytes::from_static(b"1"), base)
        .unwrap();
    let second = machine
        .publish("b", Bytes::from_static(b"2"), base)
        .unwrap();
    assert!(first < second);
    assert_eq!(machine.pending_publishes(), 2);
    machine.connect(base);
    drain(&mut machine);
    let actions = accept(&mut machine, base, 25_000, 0);
    assert_eq!(machine.state(), State::Connected);
    assert_eq!(
        events(&actions)[0],
        Event::Connected {
            client: "c1".to_owned(),
            user: "u1".to_owned(),
            server_version: "switchboard/test".to_owned()
        }
    );
    let frames = sent(&actions);
    let commands: Vec<String> = frames
        .iter()
        .map(|frame| match &frame.command {
            Some(Command::Subscribe(request)) => format!("sub {}", request.room),
            Some(Command::Publish(request)) => {
                format!(
                    "pub {} {}",
                    request.room,
                    String::from_utf8_lossy(&request.data)
                )
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(commands, ["sub a", "sub b", "pub a 1", "pub b 2"]);
    // First subscriptions recover nothing.
    assert!(
        subscribe_requests(&actions)
            .iter()
            .all(|(_, request)| request.since.is_none())
    );
    // Ids are non-zero, distinct and increasing.
    let ids: Vec<u32> = frames.iter().map(|frame| frame.id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]) && ids[0] > 0);
    assert_eq!(machine.pending_publishes(), 2);

    // Replies route to the publishes.
    machine.handle_frame(
        frame(
            ids[2],
            Body::Publish(v1::PublishResult {
                offset: 4,
                epoch: "e".to_owned(),
            }),
        ),
        base,
    );
    assert_eq!(
        events(&drain(&mut machine)),
        vec![Event::Published {
            id: first,
            room: "a".to_owned(),
            offset: 4,
            epoch: "e".to_owned()
        }]
    );
    assert_eq!(machine.pending_publishes(), 1);
}

#[test]
fn request_ids_wrap_past_the_maximum_skipping_zero_and_ids_in_flight() {
    let (mut machine, base) = connected(&[]);
    machine.next_request_id = u32::MAX;
    machine.pending.insert(1, Pending::Connect);
    machine.subscribe("x", base);
    machine.subscribe("y", base);
    let ids: Vec<u32> = sent(&drain(&mut machine))
        .iter()
        .map(|frame| frame.id)
        .collect();
    assert_eq!(ids, [u32::MAX, 2]);
}

#[test]
fn connect_timeout_closes_and_reconnects() {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    machine.connect(base);
    drain(&mut machine);
    machine.handle_timeout(base + Duration::from_secs(9));
    assert!(drain(&mut machine).is_empty(), "early timeouts do nothing");
    machine.handle_timeout(base + Duration::from_secs(10));
    let actions = drain(&mut machine);
    assert!(matches!(
        actions[0],
        Action::CloseTransport {
            code: CloseCode::NORMAL,
            ..
        }
    ));
    assert!(matches!(
        events(&actions)[0],
        Event::Disconnected {
            code: CloseCode::ABNORMAL,
            will_reconnect: true,
            ..
        }
    ));
    assert_eq!(machine.state(), State::WaitingToReconnect);
}

// --------------------------------------------------------------------------
// Reconnecting
// --------------------------------------------------------------------------

#[test]
fn a_reconnect_code_waits_a_jittered_backoff_then_opens_again() {
    let (mut machine, base) = connected(&["a"]);
    machine.handle_transport_closed(CloseCode::SHUTDOWN, "restart", base);
    let actions = drain(&mut machine);
    assert_eq!(
        events(&actions),
        vec![Event::Disconnected {
            code: CloseCode::SHUTDOWN,
            reason: "restart".to_owned(),
            will_reconnect: true
        }]
    );
    assert_eq!(machine.state(), State::WaitingToReconnect);
    let at = machine.reconnect_at().unwrap();
    assert!(at <= base + ms(500), "first delay within [0, min_backoff]");
    assert_eq!(machine.poll_timeout(), Some(at));
    // Late events of the dead transport are ignored.
    machine.handle_transport_closed(CloseCode::ABNORMAL, "late", base);
    machine.handle_frame(push(Body::Heartbeat(v1::Heartbeat {})), base);
    assert!(drain(&mut machine).is_empty());

    machine.handle_timeout(at);
    assert_eq!(
        drain(&mut machine),
        vec![Action::Emit(Event::Connecting), Action::OpenTransport]
    );
}

#[test]
fn backoff_doubles_up_to_the_maximum_and_resets_after_a_connect() {
    let base = Instant::now();
    let cfg = config();
    let mut machine = Machine::new(cfg.clone());
    machine.connect(base);
    drain(&mut machine);
    let mut now = base;
    let mut delays = Vec::new();
    for attempt in 0..12u32 {
        machine.handle_transport_closed(CloseCode::ABNORMAL, "refused", now);
        drain(&mut machine);
        let at = machine.reconnect_at().unwrap();
        let delay = at - now;
        assert!(delay <= backoff_ceiling(cfg.min_backoff, cfg.max_backoff, attempt));
        assert!(delay <= cfg.max_backoff);
        delays.push(delay);
        now = at;
        machine.handle_timeout(now);
        drain(&mut machine);
    }
    assert!(delays.windows(2).any(|pair| pair[0] != pair[1]), "jittered");
    assert_eq!(
        backoff_ceiling(cfg.min_backoff, cfg.max_backoff, 3),
        Duration::from_secs(4)
    );
    assert_eq!(
        backoff_ceiling(cfg.min_backoff, cfg.max_backoff, 200),
        cfg.max_backoff
    );
    // A successful connect resets the exponent.
    accept(&mut machine, now, 0, 0);
    assert_eq!(machine.attempt, 0);
    lose_transport(&mut machine, now);
    assert!(machine.reconnect_at().unwrap() <= now + cfg.min_backoff);
}

#[test]
fn connect_during_the_backoff_retries_at_once() {
    let (mut machine, base) = connected(&[]);
    lose_transport(&mut machine, base);
    machine.connect(base);
    assert_eq!(
        drain(&mut machine),
        vec![Action::Emit(Event::Connecting), Action::OpenTransport]
    );
}

#[test]
fn a_terminal_code_closes_for_good_and_says_why() {
    let (mut machine, base) = connected(&["a"]);
    machine
        .publish("a", Bytes::from_static(b"in flight"), base)
        .unwrap();
    drain(&mut machine);
    machine.handle_transport_closed(CloseCode::INVALID_TOKEN, "bad signature", base);
    let actions = drain(&mut machine);
    let events = events(&actions);
    assert_eq!(
        events[0],
        Event::Disconnected {
            code: CloseCode::INVALID_TOKEN,
            reason: "bad signature".to_owned(),
            will_reconnect: false
        }
    );
    assert!(matches!(
        events[1],
        Event::PublishFailed {
            failure: PublishFailure::OutcomeUnknown,
            ..
        }
    ));
    assert_eq!(machine.state(), State::Closed);
    assert_eq!(
        machine.closed_reason(),
        Some((CloseCode::INVALID_TOKEN, "bad signature"))
    );
    assert_eq!(machine.poll_timeout(), None);
    // Nothing reopens it.
    machine.connect(base);
    machine.handle_timeout(base + Duration::from_secs(3600));
    machine.subscribe("b", base);
    machine.set_token("new".to_owned(), base);
    assert!(drain(&mut machine).is_empty());
    assert_eq!(
        machine.publish("a", Bytes::new(), base),
        Err(PublishError::Closed)
    );
}

#[test]
fn the_disconnect_push_decides_before_the_transport_closes() {
    // A terminal code closes for good at once.
    let (mut machine, base) = connected(&[]);
    machine.handle_frame(
        push(Body::Disconnect(v1::Disconnect {
            code: 3504,
            reason: "banned".to_owned(),
            reconnect: false,
        })),
        base,
    );
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::CloseTransport { .. }));
    assert_eq!(machine.state(), State::Closed);
    assert_eq!(
        machine.closed_reason(),
        Some((CloseCode::FORCE_DISCONNECT, "banned"))
    );
    // The transport close that follows is not reported again.
    machine.handle_transport_closed(CloseCode::ABNORMAL, "", base);
    assert!(drain(&mut machine).is_empty());

    // The code decides, not the flag (spec/05-codes.md): a terminal code
    // with `reconnect = true` is still terminal...
    let (mut machine, base) = connected(&[]);
    machine.handle_frame(
        push(Body::Disconnect(v1::Disconnect {
            code: 3500,
            reason: "invalid token".to_owned(),
            reconnect: true,
        })),
        base,
    );
    drain(&mut machine);
    assert_eq!(machine.state(), State::Closed);

    // ...and a reconnecting code reconnects without waiting for the close.
    let (mut machine, base) = connected(&[]);
    machine.handle_frame(
        push(Body::Disconnect(v1::Disconnect {
            code: 3008,
            reason: "rebalance".to_owned(),
            reconnect: true,
        })),
        base,
    );
    let actions = drain(&mut machine);
    assert!(events(&actions).contains(&Event::Disconnected {
        code: CloseCode::FORCE_RECONNECT,
        reason: "rebalance".to_owned(),
        will_reconnect: true
    }));
    assert_eq!(machine.state(), State::WaitingToReconnect);
}

#[test]
fn connect_errors_map_to_close_codes() {
    for (code, temporary, expected_state) in [
        (100, true, State::WaitingToReconnect),
        (111, false, State::WaitingToReconnect),
        (103, false, State::Closed),
        (115, false, State::Closed),
        (999, true, State::WaitingToReconnect),
        (999, false, State::Closed),
    ] {
        let base = Instant::now();
        let mut machine = Machine::new(config());
        machine.connect(base);
        drain(&mut machine);
        machine.handle_transport_open(base);
        let id = sent(&drain(&mut machine))[0].id;
        machine.handle_frame(
            frame(
                id,
                Body::Error(v1::Error {
                    code,
                    message: "no".to_owned(),
                    temporary,
                }),
            ),
            base,
        );
        let actions = drain(&mut machine);
        assert!(matches!(
            events(&actions)[0],
            Event::Error {
                command: CommandKind::Connect,
                ..
            }
        ));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::CloseTransport { .. }))
        );
        assert_eq!(machine.state(), expected_state, "error {code}");
    }
}

#[test]
fn a_reply_that_does_not_match_its_command_is_a_protocol_error() {
    let (mut machine, base) = connected(&[]);
    machine.subscribe("a", base);
    let id = sent(&drain(&mut machine))[0].id;
    machine.handle_frame(
        frame(
            id,
            Body::Publish(v1::PublishResult {
                offset: 1,
                epoch: String::new(),
            }),
        ),
        base,
    );
    let actions = drain(&mut machine);
    assert_eq!(
        actions[0],
        Action::CloseTransport {
            code: CloseCode::BAD_REQUEST,
            reason: "server answered subscribe with a publish result".to_owned()
        }
    );
    assert_eq!(machine.state(), State::Closed);
}

#[test]
fn unknown_bodies_and_unknown_ids_are_ignored() {
    let (mut machine, base) = connected(&["a"]);
    machine.handle_frame(ServerFrame { id: 0, body: None }, base);
    machine.handle_frame(frame(9999, Body::Ping(v1::PingResult {})), base);
    machine.handle_frame(frame(0, connect_result(1, 1)), base);
    assert!(drain(&mut machine).is_empty());
    assert_eq!(machine.state(), State::Connected);
}

#[test]
fn disconnect_stops_and_fails_what_is_pending() {
    let (mut machine, base) = connected(&["a"]);
    let sent_one = machine
        .publish("a", Bytes::from_static(b"x"), base)
        .unwrap();
    drain(&mut machine);
    machine.disconnect(base);
    let actions = drain(&mut machine);
    assert_eq!(
        actions[0],
        Action::CloseTransport {
            code: CloseCode::NORMAL,
            reason: "client disconnected".to_owned()
        }
    );
    assert_eq!(machine.state(), State::Disconnected);
    assert!(events(&actions).contains(&Event::PublishFailed {
        id: sent_one,
        room: "a".to_owned(),
        failure: PublishFailure::OutcomeUnknown
    }));
    // Queued while disconnected, then failed by the next disconnect... no:
    // disconnect() from Disconnected is a no-op, the queue waits for connect().
    let queued = machine
        .publish("a", Bytes::from_static(b"y"), base)
        .unwrap();
    machine.disconnect(base);
    assert!(drain(&mut machine).is_empty());
    // From WaitingToReconnect it fails the queue.
    machine.connect(base);
    drain(&mut machine);
    lose_transport(&mut machine, base);
    machine.disconnect(base);
    let actions = drain(&mut machine);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CloseTransport { .. }))
    );
    assert!(events(&actions).contains(&Event::PublishFailed {
        id: queued,
        room: "a".to_owned(),
        failure: PublishFailure::NotSent
    }));
    assert_eq!(machine.pending_publishes(), 0);
    // Rooms survive: the next connect resubscribes with recovery.
    machine.connect(base);
    drain(&mut machine);
    let actions = accept(&mut machine, base, 0, 0);
    let requests = subscribe_requests(&actions);
    assert_eq!(requests[0].1.since, Some(position(10, "e1")));
}

// --------------------------------------------------------------------------
// Heartbeats
// --------------------------------------------------------------------------

#[test]
fn heartbeats_are_answered_and_silence_means_a_dead_server() {
    let (mut machine, base) = connected(&[]);
    // connected() used a 25 s interval; the default margin is 10 s.
    assert_eq!(machine.poll_timeout(), Some(base + Duration::from_secs(35)));
    let t = base + Duration::from_secs(20);
    machine.handle_frame(push(Body::Heartbeat(v1::Heartbeat {})), t);
    assert_eq!(
        drain(&mut machine),
        vec![Action::Send(ClientFrame {
            id: 0,
            command: Some(Command::Pong(v1::Pong {}))
        })]
    );
    // Any frame pushes the deadline back.
    assert_eq!(machine.poll_timeout(), Some(t + Duration::from_secs(35)));
    machine.handle_timeout(t + Duration::from_secs(34));
    assert!(drain(&mut machine).is_empty());
    machine.handle_timeout(t + Duration::from_secs(35));
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::CloseTransport { .. }));
    assert!(matches!(
        &events(&actions)[0],
        Event::Disconnected { code: CloseCode::ABNORMAL, will_reconnect: true, reason }
            if reason.contains("nothing heard")
    ));
}

#[test]
fn no_heartbeat_interval_means_no_dead_server_timer() {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    machine.connect(base);
    drain(&mut machine);
    accept(&mut machine, base, 0, 0);
    assert_eq!(machine.poll_timeout(), None);
}

// --------------------------------------------------------------------------
// Tokens
// --------------------------------------------------------------------------

#[test]
fn the_token_is_refreshed_before_the_session_expires() {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    machine.connect(base);
    drain(&mut machine);
    accept(&mut machine, base, 0, 120);
    // 120 s session, 30 s lead.
    assert_eq!(machine.poll_timeout(), Some(base + Duration::from_secs(90)));
    machine.handle_timeout(base + Duration::from_secs(90));
    assert_eq!(drain(&mut machine), vec![Action::Emit(Event::NeedToken)]);
    assert_eq!(machine.poll_timeout(), None, "asked once");
    let t = base + Duration::from_secs(95);
    machine.set_token("fresh".to_owned(), t);
    let frames = sent(&drain(&mut machine));
    let Some(Command::Refresh(request)) = &frames[0].command else {
        panic!("expected refresh, got {frames:?}");
    };
    assert_eq!(request.token, "fresh");
    // Another token while the refresh is in flight waits for its reply.
    machine.set_token("fresher".to_owned(), t);
    assert!(drain(&mut machine).is_empty());
    machine.handle_frame(
        frame(
            frames[0].id,
            Body::Refresh(v1::RefreshResult {
                expires_in_seconds: 10,
            }),
        ),
        t,
    );
    let frames = sent(&drain(&mut machine));
    assert!(matches!(
        &frames[0].command,
        Some(Command::Refresh(request)) if request.token == "fresher"
    ));
    // A short session is refreshed at half its lifetime, not at once.
    assert_eq!(machine.poll_timeout(), Some(t + Duration::from_secs(5)));
}

#[test]
fn a_token_set_while_connecting_is_sent_in_a_refresh() {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    machine.connect(base);
    drain(&mut machine);
    machine.handle_transport_open(base);
    drain(&mut machine);
    machine.set_token("newer".to_owned(), base);
    let id = machine.pending.keys().copied().next().unwrap();
    machine.handle_frame(frame(id, connect_result(0, 100)), base);
    let frames = sent(&drain(&mut machine));
    assert!(matches!(
        &frames[0].command,
        Some(Command::Refresh(request)) if request.token == "newer"
    ));
}

#[test]
fn an_expired_token_is_refreshed_once_then_the_machine_gives_up() {
    let (mut machine, base) = connected(&[]);
    machine.handle_transport_closed(CloseCode::EXPIRED, "token expired", base);
    let actions = drain(&mut machine);
    assert_eq!(
        events(&actions),
        vec![
            Event::Disconnected {
                code: CloseCode::EXPIRED,
                reason: "token expired".to_owned(),
                will_reconnect: true
            },
            Event::NeedToken
        ]
    );
    // Waiting for the token: no reconnect, however long the backoff.
    assert_eq!(machine.reconnect_at(), None);
    machine.handle_timeout(base + Duration::from_secs(5));
    machine.connect(base + Duration::from_secs(5));
    assert!(drain(&mut machine).is_empty());
    // The token arrives after the backoff: reconnect at once, with it.
    let t = base + Duration::from_secs(6);
    machine.set_token("fresh".to_owned(), t);
    let actions = drain(&mut machine);
    assert!(actions.contains(&Action::OpenTransport));
    machine.handle_transport_open(t);
    let frames = sent(&drain(&mut machine));
    assert!(matches!(
        &frames[0].command,
        Some(Command::Connect(request)) if request.token == "fresh"
    ));
    // Rejected as expired again (error 109): closed for good.
    machine.handle_frame(
        frame(
            frames[0].id,
            Body::Error(v1::Error {
                code: 109,
                message: "expired".to_owned(),
                temporary: false,
            }),
        ),
        t,
    );
    drain(&mut machine);
    assert_eq!(machine.state(), State::Closed);
    assert_eq!(machine.closed_reason().unwrap().0, CloseCode::EXPIRED);
}

#[test]
fn a_successful_connect_resets_the_expiry_allowance() {
    let (mut machine, base) = connected(&[]);
    machine.handle_transport_closed(CloseCode::EXPIRED, "expired", base);
    drain(&mut machine);
    machine.set_token("t1".to_owned(), base);
    drain(&mut machine);
    let (t, _) = reconnect(&mut machine);
    machine.handle_transport_closed(CloseCode::EXPIRED, "expired", t);
    let actions = drain(&mut machine);
    assert!(events(&actions).contains(&Event::NeedToken));
    assert_eq!(machine.state(), State::WaitingToReconnect);
}

#[test]
fn a_token_given_in_advance_is_the_refresh() {
    let (mut machine, base) = connected(&[]);
    machine.set_token("newer".to_owned(), base);
    drain(&mut machine); // a refresh goes out, and is lost with the transport
    machine.handle_transport_closed(CloseCode::EXPIRED, "expired", base);
    let actions = drain(&mut machine);
    assert!(!events(&actions).contains(&Event::NeedToken));
    assert!(machine.reconnect_at().is_some());
}

#[test]
fn no_token_within_the_timeout_closes() {
    let (mut machine, base) = connected(&[]);
    machine.handle_transport_closed(CloseCode::EXPIRED, "expired", base);
    drain(&mut machine);
    assert_eq!(machine.poll_timeout(), Some(base + Duration::from_secs(60)));
    machine.handle_timeout(base + Duration::from_secs(60));
    let actions = drain(&mut machine);
    assert!(matches!(
        events(&actions)[0],
        Event::Disconnected {
            code: CloseCode::EXPIRED,
            will_reconnect: false,
            ..
        }
    ));
    assert_eq!(machine.state(), State::Closed);
}

// --------------------------------------------------------------------------
// Subscriptions and delivery
// --------------------------------------------------------------------------

#[test]
fn live_publications_are_delivered_once_in_order_and_a_gap_resubscribes() {
    let (mut machine, base) = connected(&["a"]);
    for offset in [11, 12, 12, 9, 13] {
        machine.handle_frame(push(Body::Publication(publication("a", offset))), base);
    }
    assert_eq!(delivered(&drain(&mut machine)), [11, 12, 13]);
    // 15 skips 14: not delivered; unsubscribe + subscribe from 13.
    machine.handle_frame(push(Body::Publication(publication("a", 15))), base);
    let actions = drain(&mut machine);
    assert!(delivered(&actions).is_empty());
    let frames = sent(&actions);
    assert!(matches!(&frames[0].command, Some(Command::Unsubscribe(r)) if r.room == "a"));
    let requests = subscribe_requests(&actions);
    assert_eq!(requests[0].1.since, Some(position(13, "e1")));
    // Publications during the resubscription are dropped...
    machine.handle_frame(push(Body::Publication(publication("a", 16))), base);
    assert!(drain(&mut machine).is_empty());
    // ...and the reply brings them, in order, after the Subscribed event.
    machine.handle_frame(
        frame(
            requests[0].0,
            Body::Subscribe(v1::SubscribeResult {
                epoch: "e1".to_owned(),
                offset: 16,
                recoverable: true,
                recovered: true,
                publications: (12..=16).map(|o| publication("a", o)).collect(),
            }),
        ),
        base,
    );
    let actions = drain(&mut machine);
    assert_eq!(
        events(&actions)[0],
        Event::Subscribed {
            room: "a".to_owned(),
            recovered: Some(true),
            position: position(13, "e1")
        }
    );
    assert_eq!(delivered(&actions), [14, 15, 16]);
    machine.handle_frame(push(Body::Publication(publication("a", 17))), base);
    assert_eq!(delivered(&drain(&mut machine)), [17]);
}

#[test]
fn a_reconnect_recovers_from_the_last_delivered_position() {
    let (mut machine, base) = connected(&["a"]);
    machine.handle_frame(push(Body::Publication(publication("a", 11))), base);
    drain(&mut machine);
    lose_transport(&mut machine, base);
    let (t, actions) = reconnect(&mut machine);
    let requests = subscribe_requests(&actions);
    assert_eq!(requests[0].1.since, Some(position(11, "e1")));
    // The recovered list may repeat what was delivered: deduplicated.
    machine.handle_frame(
        frame(
            requests[0].0,
            Body::Subscribe(v1::SubscribeResult {
                epoch: "e1".to_owned(),
                offset: 13,
                recoverable: true,
                recovered: true,
                publications: (10..=13).map(|o| publication("a", o)).collect(),
            }),
        ),
        t,
    );
    assert_eq!(delivered(&drain(&mut machine)), [12, 13]);
}

#[test]
fn an_unrecoverable_position_is_reported_not_papered_over() {
    for result in [
        // The server says so.
        v1::SubscribeResult {
            epoch: "e1".to_owned(),
            offset: 50,
            recoverable: true,
            recovered: false,
            publications: vec![],
        },
        // A new epoch: positions reset, whatever `recovered` says.
        v1::SubscribeResult {
            epoch: "e2".to_owned(),
            offset: 3,
            recoverable: true,
            recovered: true,
            publications: vec![publication("a", 1)],
        },
        // "Recovered" but with a hole: not delivered as if complete.
        v1::SubscribeResult {
            epoch: "e1".to_owned(),
            offset: 14,
            recoverable: true,
            recovered: true,
            publications: vec![publication("a", 11), publication("a", 14)],
        },
    ] {
        let (mut machine, base) = connected(&["a"]);
        lose_transport(&mut machine, base);
        let (t, actions) = reconnect(&mut machine);
        let id = subscribe_requests(&actions)[0].0;
        let expected = position(result.offset, &result.epoch);
        machine.handle_frame(frame(id, Body::Subscribe(result)), t);
        let actions = drain(&mut machine);
        assert_eq!(
            events(&actions),
            vec![Event::Subscribed {
                room: "a".to_owned(),
                recovered: Some(false),
                position: expected.clone()
            }]
        );
        assert_eq!(machine.position("a"), Some(&expected));
    }
}

#[test]
fn error_113_resubscribes_without_recovery() {
    let (mut machine, base) = connected(&["a"]);
    lose_transport(&mut machine, base);
    let (t, actions) = reconnect(&mut machine);
    let id = subscribe_requests(&actions)[0].0;
    machine.handle_frame(
        frame(
            id,
            Body::Error(v1::Error {
                code: 113,
                message: "gone".to_owned(),
                temporary: false,
            }),
        ),
        t,
    );
    let actions = drain(&mut machine);
    assert!(events(&actions).is_empty());
    let requests = subscribe_requests(&actions);
    assert_eq!(requests[0].1.since, None);
    machine.handle_frame(
        frame(
            requests[0].0,
            Body::Subscribe(v1::SubscribeResult {
                epoch: "e1".to_owned(),
                offset: 99,
                recoverable: true,
                ..Default::default()
            }),
        ),
        t,
    );
    assert!(matches!(
        events(&drain(&mut machine))[0],
        Event::Subscribed {
            recovered: Some(false),
            ..
        }
    ));
}

#[test]
fn rooms_without_history_report_every_resubscription_as_a_possible_gap() {
    let base = Instant::now();
    let mut machine = Machine::new(config());
    machine.subscribe("d", base);
    machine.connect(base);
    drain(&mut machine);
    let actions = accept(&mut machine, base, 0, 0);
    let id = subscribe_requests(&actions)[0].0;
    let no_stream = v1::SubscribeResult::default();
    machine.handle_frame(frame(id, Body::Subscribe(no_stream.clone())), base);
    assert!(matches!(
        events(&drain(&mut machine))[0],
        Event::Subscribed {
            recovered: None,
            ..
        }
    ));
    // Offsets of 0 are delivered as they come.
    for _ in 0..2 {
        machine.handle_frame(push(Body::Publication(publication("d", 0))), base);
    }
    assert_eq!(delivered(&drain(&mut machine)), [0, 0]);
    lose_transport(&mut machine, base);
    let (t, actions) = reconnect(&mut machine);
    let (id, request) = subscribe_requests(&actions).remove(0);
    assert_eq!(request.since, None, "nothing to recover from");
    machine.handle_frame(frame(id, Body::Subscribe(no_stream)), t);
    assert!(matches!(
        events(&drain(&mut machine))[0],
        Event::Subscribed {
            recovered: Some(false),
            ..
        }
    ));
}

#[test]
fn a_stream_that_did_not_move_lost_nothing_even_without_history() {
    let (mut machine, base) = connected(&["c"]);
    machine.rooms.get_mut("c").unwrap().recoverable = false;
    lose_transport(&mut machine, base);
    let (t, actions) = reconnect(&mut machine);
    let (id, request) = subscribe_requests(&actions).remove(0);
    assert_eq!(request.since, None);
    machine.handle_frame(
        frame(
            id,
            Body::Subscribe(v1::SubscribeResult {
                epoch: "e1".to_owned(),
                offset: 10,
                ..Default::default()
            }),
        ),
        t,
    );
    assert!(matches!(
        events(&drain(&mut machine))[0],
        Event::Subscribed {
            recovered: Some(true),
            ..
        }
    ));
}

#[test]
fn unsubscribed_pushes_resubscribe_or_drop_by_code() {
    let (mut machine, base) = connected(&["a", "b"]);
    machine.handle_frame(
        push(Body::Unsubscribed(v1::Unsubscribed {
            room: "a".to_owned(),
            code: 2000,
            reason: "state lost".to_owned(),
        })),
        base,
    );
    let actions = drain(&mut machine);
    assert!(events(&actions).is_empty());
    assert!(matches!(&sent(&actions)[0].command, Some(Command::Unsubscribe(r)) if r.room == "a"));
    assert_eq!(
        subscribe_requests(&actions)[0].1.since,
        Some(position(10, "e1"))
    );
    machine.handle_frame(
        push(Body::Unsubscribed(v1::Unsubscribed {
            room: "b".to_owned(),
            code: 2500,
            reason: "kicked".to_owned(),
        })),
        base,
    );
    assert_eq!(
        events(&drain(&mut machine)),
        vec![Event::Unsubscribed {
            room: "b".to_owned(),
            code: Some(UnsubscribeCode::SERVER),
            reason: "kicked".to_owned()
        }]
    );
    // Publications of a dropped room are not delivered.
    machine.handle_frame(push(Body::Publication(publication("b", 11))), base);
    assert!(drain(&mut machine).is_empty());
}

#[test]
fn an_unsubscribed_push_that_overtakes_the_subscribe_reply_is_not_lost() {
    let (mut machine, base) = connected(&[]);
    machine.subscribe("a", base);
    let id = subscribe_requests(&drain(&mut machine))[0].0;
    // The server subscribed, lost the room's state, and its push overtook
    // the reply.
    machine.handle_frame(
        push(Body::Unsubscribed(v1::Unsubscribed {
            room: "a".to_owned(),
            code: 2000,
            reason: "state lost".to_owned(),
        })),
        base,
    );
    assert!(drain(&mut machine).is_empty());
    machine.handle_frame(
        frame(
            id,
            Body::Subscribe(v1::SubscribeResult {
                epoch: "e1".to_owned(),
                offset: 5,
                recoverable: true,
                ..Default::default()
            }),
        ),
        base,
    );
    let actions = drain(&mut machine);
    assert!(matches!(events(&actions)[0], Event::Subscribed { .. }));
    let frames = sent(&actions);
    assert!(matches!(&frames[0].command, Some(Command::Unsubscribe(_))));
    assert!(matches!(
        &frames[1].command,
        Some(Command::Subscribe(request)) if request.since == Some(position(5, "e1"))
    ));

    // A final code drops the room even while subscribing, and undoes the
    // subscription being made.
    machine.handle_frame(
        push(Body::Unsubscribed(v1::Unsubscribed {
            room: "a".to_owned(),
            code: 2500,
            reason: "kicked".to_owned(),
        })),
        base,
    );
    let actions = drain(&mut machine);
    assert!(matches!(
        &sent(&actions)[0].command,
        Some(Command::Unsubscribe(_))
    ));
    assert!(matches!(
        &events(&actions)[0],
        Event::Unsubscribed {
            code: Some(UnsubscribeCode::SERVER),
            ..
        }
    ));
    assert_eq!(machine.position("a"), None);
}

#[test]
fn subscribe_errors_retry_after_a_backoff_or_drop_the_room() {
    let (mut machine, base) = connected(&[]);
    machine.subscribe("a", base);
    machine.subscribe("b", base);
    let requests = subscribe_requests(&drain(&mut machine));
    machine.handle_frame(
        frame(
            requests[0].0,
            Body::Error(v1::Error {
                code: 114,
                message: "full".to_owned(),
                temporary: true,
            }),
        ),
        base,
    );
    machine.handle_frame(
        frame(
            requests[1].0,
            Body::Error(v1::Error {
                code: 103,
                message: "denied".to_owned(),
                temporary: false,
            }),
        ),
        base,
    );
    let events = events(&drain(&mut machine));
    assert!(matches!(
        &events[0],
        Event::Error { command: CommandKind::Subscribe, room: Some(room), temporary: true, .. } if room == "a"
    ));
    assert!(matches!(
        &events[1],
        Event::Error { room: Some(room), temporary: false, .. } if room == "b"
    ));
    assert!(machine.position("b").is_none() && !machine.rooms.contains_key("b"));
    let retry = machine.poll_timeout().unwrap();
    assert!(retry <= base + ms(500));
    machine.handle_timeout(retry);
    let requests = subscribe_requests(&drain(&mut machine));
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].1.room, "a");
}

#[test]
fn a_stale_subscribe_reply_is_ignored() {
    let (mut machine, base) = connected(&[]);
    machine.subscribe("a", base);
    let old = subscribe_requests(&drain(&mut machine))[0].0;
    machine.unsubscribe("a", base);
    let actions = drain(&mut machine);
    assert!(matches!(
        &sent(&actions)[0].command,
        Some(Command::Unsubscribe(_))
    ));
    assert_eq!(
        events(&actions),
        vec![Event::Unsubscribed {
            room: "a".to_owned(),
            code: None,
            reason: "unsubscribe() called".to_owned()
        }]
    );
    machine.subscribe("a", base);
    let new = subscribe_requests(&drain(&mut machine))[0].0;
    machine.handle_frame(
        frame(
            old,
            Body::Subscribe(v1::SubscribeResult {
                offset: 1,
                ..Default::default()
            }),
        ),
        base,
    );
    assert!(drain(&mut machine).is_empty());
    machine.handle_frame(
        frame(
            new,
            Body::Subscribe(v1::SubscribeResult {
                offset: 2,
                ..Default::default()
            }),
        ),
        base,
    );
    assert!(matches!(
        events(&drain(&mut machine))[0],
        Event::Subscribed {
            recovered: None,
            ..
        }
    ));
}

#[test]
fn server_side_subscriptions_are_tracked_and_bounded() {
    let base = Instant::now();
    let mut machine = Machine::new(Config {
        max_server_rooms: 1,
        ..config()
    });
    machine.connect(base);
    drain(&mut machine);
    accept(&mut machine, base, 0, 0);
    let subscribed = |room: &str, offset| {
        push(Body::Subscribed(v1::Subscribed {
            room: room.to_owned(),
            epoch: "e".to_owned(),
            offset,
            recoverable: true,
        }))
    };
    machine.handle_frame(subscribed("s", 5), base);
    machine.handle_frame(subscribed("t", 5), base);
    let first = events(&drain(&mut machine));
    assert!(matches!(&first[0], Event::Subscribed { room, recovered: None, .. } if room == "s"));
    assert!(matches!(
        &first[1],
        Event::Error { code: ErrorCode::LIMIT_EXCEEDED, room: Some(room), .. } if room == "t"
    ));
    machine.handle_frame(push(Body::Publication(publication("s", 6))), base);
    machine.handle_frame(push(Body::Publication(publication("t", 6))), base);
    assert_eq!(delivered(&drain(&mut machine)), [6]);
    // A gap in a server-side room cannot be repaired by the client: reported.
    machine.handle_frame(push(Body::Publication(publication("s", 9))), base);
    let actions = drain(&mut machine);
    assert!(matches!(
        &events(&actions)[0],
        Event::Subscribed { recovered: Some(false), position, .. } if position.offset == 8
    ));
    assert_eq!(delivered(&actions), [9]);
    // The server re-subscribes after a reconnect: unmoved means nothing lost.
    lose_transport(&mut machine, base);
    let (t, actions) = reconnect(&mut machine);
    assert!(subscribe_requests(&actions).is_empty());
    machine.handle_frame(subscribed("s", 9), t);
    assert!(matches!(
        events(&drain(&mut machine))[0],
        Event::Subscribed {
            recovered: Some(true),
            ..
        }
    ));
}

// --------------------------------------------------------------------------
// Publishing
// --------------------------------------------------------------------------

#[test]
fn the_publish_queue_is_bounded_and_says_so() {
    let base = Instant::now();
    let mut machine = Machine::new(Config {
        max_queued_publishes: 2,
        ..config()
    });
    machine.publish("a", Bytes::new(), base).unwrap();
    machine.publish("a", Bytes::new(), base).unwrap();
    assert_eq!(
        machine.publish("a", Bytes::new(), base),
        Err(PublishError::QueueFull { limit: 2 })
    );
    // In flight counts too: connecting sends both, the bound still holds.
    machine.connect(base);
    drain(&mut machine);
    let actions = accept(&mut machine, base, 0, 0);
    assert_eq!(sent(&actions).len(), 2);
    assert_eq!(
        machine.publish("a", Bytes::new(), base),
        Err(PublishError::QueueFull { limit: 2 })
    );
    // A lost connection gives both an outcome: unknown.
    let actions = lose_transport(&mut machine, base);
    let failures = events(&actions)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::PublishFailed {
                    failure: PublishFailure::OutcomeUnknown,
                    ..
                }
            )
        })
        .count();
    assert_eq!(failures, 2);
    assert_eq!(machine.pending_publishes(), 0);
    assert!(machine.publish("a", Bytes::new(), base).is_ok());
}

#[test]
fn publish_errors_are_reported_with_the_id() {
    let (mut machine, base) = connected(&[]);
    let id = machine
        .publish("a", Bytes::from_static(b"x"), base)
        .unwrap();
    let request = sent(&drain(&mut machine))[0].id;
    machine.handle_frame(
        frame(
            request,
            Body::Error(v1::Error {
                code: 103,
                message: "denied".to_owned(),
                temporary: false,
            }),
        ),
        base,
    );
    assert_eq!(
        events(&drain(&mut machine)),
        vec![Event::PublishFailed {
            id,
            room: "a".to_owned(),
            failure: PublishFailure::Rejected {
                code: ErrorCode::PERMISSION_DENIED,
                message: "denied".to_owned(),
                temporary: false
            }
        }]
    );
}

// --------------------------------------------------------------------------
// The simulation, by hand
// --------------------------------------------------------------------------

#[test]
fn the_simulation_recovers_across_a_restart_and_reports_a_lost_epoch() {
    let mut sim = Sim::new(1, Instant::now());
    let steps = [
        Step::Advance(500),
        Step::Publish(0),
        Step::Publish(1),
        Step::Advance(100),
        Step::Restart {
            lose_history: false,
        },
        Step::Publish(0),
        Step::Publish(0),
        Step::Advance(5000),
        Step::Restart { lose_history: true },
        Step::Publish(0),
        Step::Advance(5000),
    ];
    for step in &steps {
        sim.step(step)
            .unwrap_or_else(|violation| panic!("{violation}"));
    }
    sim.settle()
        .unwrap_or_else(|violation| panic!("{violation}"));
    let stats = sim.stats();
    assert!(stats.recoveries >= 2, "{stats:?}");
    assert!(stats.gaps_reported >= 2, "{stats:?}");
    assert!(stats.delivered >= 5, "{stats:?}");
}

/// Found by the property test: the server lost room `b` right after
/// subscribing it, and its `unsubscribed` push overtook the `subscribe` reply.
#[test]
fn the_simulation_regression_push_overtaking_its_subscribe_reply() {
    let mut sim = Sim::new(0, Instant::now());
    for step in [
        Step::Deliver(1),
        Step::LoseRoom(1),
        Step::Glitch(sim::Glitch::ReorderInFlight),
    ] {
        sim.step(&step)
            .unwrap_or_else(|violation| panic!("{violation}"));
    }
    sim.settle()
        .unwrap_or_else(|violation| panic!("{violation}"));
}

#[test]
fn the_simulation_catches_a_machine_that_skips_a_gap() {
    // The checker must be able to fail: deliver a gap behind the machine's
    // back by editing its position, and expect a violation.
    let mut sim = Sim::new(2, Instant::now());
    sim.step(&Step::Advance(100)).unwrap();
    let room = sim.machine_mut().rooms.get_mut("a").unwrap();
    room.position.as_mut().unwrap().offset += 1;
    sim.step(&Step::Publish(0)).unwrap();
    sim.step(&Step::Publish(0)).unwrap();
    let result = sim.step(&Step::Advance(100));
    assert!(result.is_err(), "a silent gap went unnoticed");
}

// --------------------------------------------------------------------------
// Properties
// --------------------------------------------------------------------------

/// Cases per property: `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn any_step() -> impl Strategy<Value = Step> {
    let room = 0u8..4;
    prop_oneof![
        12 => (0u16..8_000).prop_map(Step::Advance),
        6 => (0u8..6).prop_map(Step::Deliver),
        20 => room.clone().prop_map(Step::Publish),
        3 => (prop::sample::select(sim::DROP_CODES.to_vec()), any::<bool>())
            .prop_map(|(code, push)| Step::Drop { code, push }),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(code, push)| Step::Drop { code, push }),
        2 => any::<bool>().prop_map(|lose_history| Step::Restart { lose_history }),
        2 => room.clone().prop_map(Step::LoseRoom),
        2 => (room.clone(), any::<bool>())
            .prop_map(|(room, resubscribe)| Step::ServerUnsubscribe { room, resubscribe }),
        3 => prop::sample::select(sim::FAIL_CODES.to_vec())
            .prop_map(|(code, temporary)| Step::FailNext { code, temporary }),
        2 => prop::sample::select(vec![Mode::Up, Mode::Up, Mode::Refuse, Mode::Blackhole])
            .prop_map(Step::SetMode),
        2 => Just(Step::Partition),
        2 => Just(Step::Heal),
        1 => Just(Step::ExpireTokens),
        1 => any::<bool>().prop_map(Step::ExpiredReplyIsError),
        4 => room.clone().prop_map(Step::AppSubscribe),
        2 => room.clone().prop_map(Step::AppUnsubscribe),
        5 => room.prop_map(Step::AppPublish),
        2 => Just(Step::AppConnect),
        1 => Just(Step::AppDisconnect),
        3 => Just(Step::AppSetToken),
        4 => prop::sample::select(sim::GLITCHES.to_vec()).prop_map(Step::Glitch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(300),
        ..ProptestConfig::default()
    })]

    /// Every invariant of spec/08-client.md, "Conformance", over arbitrary
    /// runs: drops with any close code, server errors, partitions, restarts
    /// that change epochs, token expiry, and every application call.
    #[test]
    fn the_machine_keeps_its_promises(seed: u64, steps in prop::collection::vec(any_step(), 1..80)) {
        let mut sim = Sim::new(seed, Instant::now());
        for step in &steps {
            if let Err(violation) = sim.step(step) {
                return Err(TestCaseError::fail(violation.to_string()));
            }
        }
        if let Err(violation) = sim.settle() {
            return Err(TestCaseError::fail(violation.to_string()));
        }
    }

    /// The fuzz target's path: any bytes decode to steps and keep the promises.
    #[test]
    fn any_bytes_keep_the_promises(data in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Err(violation) = sim::run_bytes(&data) {
            return Err(TestCaseError::fail(violation.to_string()));
        }
    }

    /// Backoff delays stay in [0, min(max, min * 2^attempt)], vary between
    /// attempts, and differ between seeds.
    #[test]
    fn backoff_is_bounded_and_jittered(seed: u64, other: u64, min_ms in 1u64..2_000, max_ms in 1u64..60_000) {
        prop_assume!(seed != other);
        let delays = |seed: u64| {
            let cfg = Config { jitter_seed: seed, min_backoff: ms(min_ms), max_backoff: ms(max_ms), ..config() };
            let base = Instant::now();
            let mut machine = Machine::new(cfg.clone());
            machine.connect(base);
            drain(&mut machine);
            let mut now = base;
            let mut delays = Vec::new();
            for attempt in 0..16 {
                machine.handle_transport_closed(CloseCode::ABNORMAL, "refused", now);
                drain(&mut machine);
                let at = machine.reconnect_at().expect("reconnect scheduled");
                let delay = at - now;
                assert!(delay <= backoff_ceiling(cfg.min_backoff, cfg.max_backoff, attempt));
                assert!(delay <= cfg.max_backoff);
                delays.push(delay);
                now = at;
                machine.handle_timeout(now);
                drain(&mut machine);
            }
            delays
        };
        let ours = delays(seed);
        prop_assert!(ours.windows(2).any(|pair| pair[0] != pair[1]), "not jittered: {ours:?}");
        prop_assert_ne!(ours, delays(other));
    }

    /// After a terminal close code, no input ever opens a transport again.
    #[test]
    fn terminal_codes_never_reopen(code: u16, inputs in prop::collection::vec(0u8..6, 0..30)) {
        let (mut machine, base) = connected(&["a"]);
        machine.handle_transport_closed(CloseCode(code), "closed", base);
        drain(&mut machine);
        prop_assert_eq!(machine.state() == State::Closed, !CloseCode(code).reconnect());
        if machine.state() != State::Closed {
            return Ok(());
        }
        let mut now = base;
        for input in inputs {
            now += Duration::from_secs(7);
            match input {
                0 => machine.connect(now),
                1 => machine.handle_timeout(now),
                2 => machine.handle_transport_open(now),
                3 => machine.set_token("t".to_owned(), now),
                4 => machine.subscribe("b", now),
                _ => machine.handle_frame(push(Body::Heartbeat(v1::Heartbeat {})), now),
            }
            prop_assert!(drain(&mut machine).is_empty());
        }
    }
}

/// The generated runs actually exercise what the properties claim to cover:
/// recoveries, reported gaps, deliveries, closes. A property over runs that
/// never recover would prove nothing.
#[test]
fn the_simulation_covers_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(any_step(), 1..80);
    let mut total = sim::Stats::default();
    let mut closed = 0;
    for seed in 0..100 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let mut sim = Sim::new(seed, Instant::now());
        for step in &steps {
            sim.step(step)
                .unwrap_or_else(|violation| panic!("{violation}"));
        }
        sim.settle()
            .unwrap_or_else(|violation| panic!("{violation}"));
        let stats = sim.stats();
        total.delivered += stats.delivered;
        total.recoveries += stats.recoveries;
        total.gaps_reported += stats.gaps_reported;
        total.transports += stats.transports;
        total.backoff_delays.extend(&stats.backoff_delays);
        closed += usize::from(stats.closed);
    }
    eprintln!(
        "100 runs: {} deliveries, {} recoveries, {} gaps reported, {} transports, {} backoffs, {closed} closed for good",
        total.delivered,
        total.recoveries,
        total.gaps_reported,
        total.transports,
        total.backoff_delays.len()
    );
    assert!(total.delivered > 250);
    assert!(total.recoveries > 20);
    assert!(total.gaps_reported > 20);
    assert!(total.backoff_delays.len() > 100);
    assert!(
        closed > 0 && closed < 60,
        "{closed} of 100 runs closed for good"
    );
}
