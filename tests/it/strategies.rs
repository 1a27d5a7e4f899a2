//! proptest strategies for every frame of the protocol.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use switchboard::wire::v1::{client_frame::Command, server_frame::Body, *};

/// Short strings, any Unicode (room names are validated by the engine, not the codec).
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z:#_\\-]{0,12}",
        1 => "\\PC{0,8}",
    ]
}

/// A JSON value, compactly written: what a JSON client would publish.
pub fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e9f64..1e9).prop_map(serde_json::Value::from),
        "\\PC{0,10}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A payload: usually JSON text, sometimes arbitrary bytes.
pub fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => json_value().prop_map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default())),
        1 => vec(any::<u8>(), 0..40).prop_map(Bytes::from),
        1 => Just(Bytes::new()),
    ]
}

fn tags() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-z]{1,5}", text(), 0..3)
}

fn position() -> impl Strategy<Value = Option<StreamPosition>> {
    option::of((any::<u64>(), text()).prop_map(|(offset, epoch)| StreamPosition { offset, epoch }))
}

pub fn client_info() -> impl Strategy<Value = ClientInfo> {
    (text(), text(), payload()).prop_map(|(user, client, info)| ClientInfo { user, client, info })
}

pub fn publication() -> impl Strategy<Value = Publication> {
    (
        text(),
        any::<u64>(),
        payload(),
        option::of(client_info()),
        tags(),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(
            |(room, offset, data, info, tags, time, delta)| Publication {
                room,
                offset,
                data,
                info,
                tags,
                time,
                delta,
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (text(), text(), text(), text(), vec(text(), 0..3)).prop_map(
            |(token, ticket, name, version, codecs)| Command::Connect(ConnectRequest {
                token,
                ticket,
                name,
                version,
                codecs
            })
        ),
        (text(), position(), text(), any::<bool>()).prop_map(|(room, since, token, delta)| {
            Command::Subscribe(SubscribeRequest {
                room,
                since,
                token,
                delta,
            })
        }),
        text().prop_map(|room| Command::Unsubscribe(UnsubscribeRequest { room })),
        (text(), payload(), tags(), any::<bool>()).prop_map(|(room, data, tags, exclude_self)| {
            Command::Publish(PublishRequest {
                room,
                data,
                tags,
                exclude_self,
            })
        }),
        text().prop_map(|room| Command::Presence(PresenceRequest { room })),
        text().prop_map(|room| Command::PresenceStats(PresenceStatsRequest { room })),
        (text(), any::<u32>(), position(), any::<bool>()).prop_map(
            |(room, limit, since, reverse)| {
                Command::History(HistoryRequest {
                    room,
                    limit,
                    since,
                    reverse,
                })
            }
        ),
        text().prop_map(|token| Command::Refresh(RefreshRequest { token })),
        Just(Command::Ping(PingRequest {})),
        Just(Command::Pong(Pong {})),
    ]
}

pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    (any::<u32>(), option::of(command())).prop_map(|(id, command)| ClientFrame { id, command })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u32>(), text(), any::<bool>()).prop_map(|(code, message, temporary)| Body::Error(
            Error {
                code,
                message,
                temporary
            }
        )),
        (
            text(),
            text(),
            text(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            text()
        )
            .prop_map(
                |(
                    client,
                    user,
                    version,
                    expires_in_seconds,
                    ping_interval_ms,
                    pong_timeout_ms,
                    codec,
                )| {
                    Body::Connect(ConnectResult {
                        client,
                        user,
                        version,
                        expires_in_seconds,
                        ping_interval_ms,
                        pong_timeout_ms,
                        codec,
                    })
                }
            ),
        (
            text(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            vec(publication(), 0..3)
        )
            .prop_map(|(epoch, offset, recoverable, recovered, publications)| {
                Body::Subscribe(SubscribeResult {
                    epoch,
                    offset,
                    recoverable,
                    recovered,
                    publications,
                })
            }),
        Just(Body::Unsubscribe(UnsubscribeResult {})),
        (any::<u64>(), text())
            .prop_map(|(offset, epoch)| Body::Publish(PublishResult { offset, epoch })),
        btree_map(text(), client_info(), 0..3)
            .prop_map(|clients| Body::Presence(PresenceResult { clients })),
        (any::<u32>(), any::<u32>()).prop_map(|(clients, users)| Body::PresenceStats(
            PresenceStatsResult { clients, users }
        )),
        (vec(publication(), 0..3), text(), any::<u64>()).prop_map(
            |(publications, epoch, offset)| {
                Body::History(HistoryResult {
                    publications,
                    epoch,
                    offset,
                })
            }
        ),
        any::<u32>()
            .prop_map(|expires_in_seconds| Body::Refresh(RefreshResult { expires_in_seconds })),
        Just(Body::Ping(PingResult {})),
        publication().prop_map(Body::Publication),
        (text(), option::of(client_info()))
            .prop_map(|(room, client)| Body::Join(Join { room, client })),
        (text(), option::of(client_info()))
            .prop_map(|(room, client)| Body::Leave(Leave { room, client })),
        (text(), any::<u32>(), text()).prop_map(|(room, code, reason)| Body::Unsubscribed(
            Unsubscribed { room, code, reason }
        )),
        (text(), text(), any::<u64>(), any::<bool>()).prop_map(
            |(room, epoch, offset, recoverable)| {
                Body::Subscribed(Subscribed {
                    room,
                    epoch,
                    offset,
                    recoverable,
                })
            }
        ),
        (any::<u32>(), text(), any::<bool>()).prop_map(|(code, reason, reconnect)| {
            Body::Disconnect(Disconnect {
                code,
                reason,
                reconnect,
            })
        }),
        payload().prop_map(|data| Body::Message(Message { data })),
        Just(Body::Heartbeat(Heartbeat {})),
    ]
}

pub fn server_frame() -> impl Strategy<Value = ServerFrame> {
    (any::<u32>(), option::of(body())).prop_map(|(id, body)| ServerFrame { id, body })
}
