//! The committed seed corpus, `fuzz/seeds/<target>/seed-<name>`: small valid
//! inputs built from frames with the codec itself, never written by hand.
//!
//! `cargo test` in `fuzz/` checks that the files on disk are exactly what
//! [`seeds`] builds and that each passes its target's checks without error;
//! `SWITCHBOARD_WRITE_SEEDS=1 cargo test` rewrites them (after a schema or
//! framing change).

use bytes::{Bytes, BytesMut};
use switchboard::codec::{self, Encoding, Frame};
use switchboard::wire::v1::{
    ClientFrame, ClientInfo, ConnectRequest, ConnectResult, Disconnect, Error, Heartbeat,
    HistoryRequest, Join, Message, Pong, Publication, PublishRequest, ServerFrame, StreamPosition,
    SubscribeRequest, SubscribeResult, client_frame::Command, server_frame::Body,
};

use crate::StreamControl;
use switchboard::codec::unit::{
    self, Codec, Levels, MAX_UNITS_PER_MESSAGE, UnitError, UnitStreamDecoder,
};

/// One seed file.
#[derive(Debug)]
pub struct Seed {
    /// The fuzz target whose seed directory holds it.
    pub target: &'static str,
    /// The file name, `seed-<name>`.
    pub file_name: String,
    /// The file's contents.
    pub bytes: Vec<u8>,
}

/// Client frames the seeds are built from, by name.
pub fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    let frame = |id, command| ClientFrame {
        id,
        command: Some(command),
    };
    vec![
        (
            "connect",
            frame(
                1,
                Command::Connect(ConnectRequest {
                    token: "x".into(),
                    ..Default::default()
                }),
            ),
        ),
        (
            "subscribe",
            frame(
                2,
                Command::Subscribe(SubscribeRequest {
                    room: "chat:lobby".into(),
                    since: Some(StreamPosition {
                        offset: 5,
                        epoch: "ab".into(),
                    }),
                    ..Default::default()
                }),
            ),
        ),
        (
            "publish",
            frame(
                3,
                Command::Publish(PublishRequest {
                    room: "chat:lobby".into(),
                    data: Bytes::from_static(br#"{"text":"hello","n":[1,2.5,null,true]}"#),
                    tags: [("lang".to_string(), "en".to_string())].into(),
                    exclude_self: true,
                }),
            ),
        ),
        (
            "publish-binary",
            frame(
                4,
                Command::Publish(PublishRequest {
                    room: "files".into(),
                    data: Bytes::from_static(b"\x00\x01\xfe\xff not json"),
                    ..Default::default()
                }),
            ),
        ),
        (
            "history",
            frame(
                5,
                Command::History(HistoryRequest {
                    room: "chat:lobby".into(),
                    limit: 10,
                    since: Some(StreamPosition {
                        offset: 12340,
                        epoch: "ab".into(),
                    }),
                    reverse: true,
                }),
            ),
        ),
        ("pong", frame(0, Command::Pong(Pong {}))),
    ]
}

fn publication(offset: u64, text: &str) -> Publication {
    Publication {
        room: "chat:lobby".into(),
        offset,
        data: Bytes::from(format!(r#"{{"text":"{text}","mentions":["bob"]}}"#)),
        info: Some(ClientInfo {
            user: "ann".into(),
            client: "c-7f3a".into(),
            info: Bytes::from_static(br#"{"name":"Ann","avatar":null}"#),
        }),
        tags: [("kind".to_string(), "chat".to_string())].into(),
        time: 1_767_225_600_000,
        delta: false,
    }
}

/// Server frames the seeds are built from, by name.
pub fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    let frame = |id, body| ServerFrame {
        id,
        body: Some(body),
    };
    vec![
        (
            "connect",
            frame(
                1,
                Body::Connect(ConnectResult {
                    client: "c-7f3a".into(),
                    user: "ann".into(),
                    version: "switchboard/0.1.0".into(),
                    expires_in_seconds: 3600,
                    ping_interval_ms: 25_000,
                    pong_timeout_ms: 10_000,
                    codec: "identity".into(),
                }),
            ),
        ),
        (
            "subscribe",
            frame(
                2,
                Body::Subscribe(SubscribeResult {
                    epoch: "ab".into(),
                    offset: 7,
                    recoverable: true,
                    recovered: true,
                    publications: vec![publication(6, "one"), publication(7, "two")],
                }),
            ),
        ),
        (
            "publication",
            frame(0, Body::Publication(publication(12345, "hi all"))),
        ),
        (
            "error",
            frame(
                3,
                Body::Error(Error {
                    code: 104,
                    message: "unknown command".into(),
                    temporary: false,
                }),
            ),
        ),
        (
            "join",
            frame(
                0,
                Body::Join(Join {
                    room: "chat:lobby".into(),
                    client: Some(ClientInfo {
                        user: "bob".into(),
                        client: "c-0001".into(),
                        info: Bytes::from_static(b"\xffbinary info"),
                    }),
                }),
            ),
        ),
        (
            "message",
            frame(
                0,
                Body::Message(Message {
                    data: Bytes::from_static(b"\x00\x9f\x92\x96"),
                }),
            ),
        ),
        ("heartbeat", frame(0, Body::Heartbeat(Heartbeat {}))),
        (
            "disconnect",
            frame(
                0,
                Body::Disconnect(Disconnect {
                    code: 3001,
                    reason: "shutdown".into(),
                    reconnect: true,
                }),
            ),
        ),
    ]
}

fn batch<F: Frame>(frames: &[(&str, F)], encoding: Encoding) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (_, frame) in frames {
        codec::encode_into(frame, encoding, &mut out);
    }
    out.to_vec()
}

fn batch_seeds<F: Frame>(
    seeds: &mut Vec<Seed>,
    target: &'static str,
    side: &str,
    frames: &[(&'static str, F)],
    encoding: Encoding,
) {
    for (name, frame) in frames {
        seeds.push(Seed {
            target,
            file_name: format!("seed-{side}-{name}"),
            bytes: codec::encode(frame, encoding).to_vec(),
        });
    }
    seeds.push(Seed {
        target,
        file_name: format!("seed-{side}-batch"),
        bytes: batch(frames, encoding),
    });
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let client = client_frames();
    let server = server_frames();
    let mut seeds = Vec::new();

    batch_seeds(
        &mut seeds,
        "decode_batch_protobuf",
        "client",
        &client,
        Encoding::Protobuf,
    );
    batch_seeds(
        &mut seeds,
        "decode_batch_protobuf",
        "server",
        &server,
        Encoding::Protobuf,
    );
    batch_seeds(
        &mut seeds,
        "decode_batch_json",
        "client",
        &client,
        Encoding::Json,
    );
    batch_seeds(
        &mut seeds,
        "decode_batch_json",
        "server",
        &server,
        Encoding::Json,
    );

    // The stream target: a control byte, then every frame back to back, split
    // whole, into 3-byte pieces, and into varied pieces of up to 16 bytes.
    for encoding in Encoding::ALL {
        for server_side in [false, true] {
            let (side, stream) = if server_side {
                ("server", batch(&server, encoding))
            } else {
                ("client", batch(&client, encoding))
            };
            for (split, chunk, mode) in [("whole", 0, 0), ("by3", 3, 0), ("varied", 9, 1)] {
                let control = StreamControl::new(encoding, server_side, chunk, mode);
                let mut bytes = vec![control.0];
                bytes.extend_from_slice(&stream);
                seeds.push(Seed {
                    target: "stream_decode",
                    file_name: format!("seed-{}-{side}-{split}", encoding.name()),
                    bytes,
                });
            }
        }
    }
    delta_seeds(&mut seeds);
    unit_seeds(&mut seeds, &client, &server);
    seeds
}

/// Leaderboard rows as JSON, in the order given.
fn leaderboard(rows: &[(&str, u32)]) -> Vec<u8> {
    let rows: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(rank, (user, score))| {
            format!(r#"{{"rank":{},"user":"{user}","score":{score}}}"#, rank + 1)
        })
        .collect();
    format!(r#"{{"board":"weekly","rows":[{}]}}"#, rows.join(",")).into_bytes()
}

/// The delta target: a base, then the reference encoder's delta of a target
/// against it (`crate::delta::input`).
fn delta_seeds(seeds: &mut Vec<Seed>) {
    let state = |progress: u32, status: &str| {
        format!(
            r#"{{"room":"ops:deploy-7","progress":{progress},"status":"{status}","owner":{{"user":"ann","client":"c-7f3a"}},"steps":["build","test","publish"]}}"#
        )
        .into_bytes()
    };
    let board = [
        ("ann", 900),
        ("bob", 870),
        ("cy", 640),
        ("dee", 410),
        ("eve", 90),
    ];
    let moved = [
        ("ann", 900),
        ("eve", 880),
        ("bob", 870),
        ("cy", 640),
        ("dee", 410),
    ];
    let pairs: [(&str, Vec<u8>, Vec<u8>); 7] = [
        (
            "worked-example",
            br#"{"p":10,"s":"run"}"#.to_vec(),
            br#"{"p":20,"s":"run"}"#.to_vec(),
        ),
        (
            "state-one-field",
            state(40, "running"),
            state(41, "running"),
        ),
        ("state-two-fields", state(99, "running"), state(100, "done")),
        (
            "leaderboard-moved",
            leaderboard(&board),
            leaderboard(&moved),
        ),
        ("empty-target", b"abc".to_vec(), Vec::new()),
        ("empty-base", Vec::new(), b"hello, world".to_vec()),
        (
            "repeated",
            b"0123456789abcdef".to_vec(),
            b"0123456789abcdef".repeat(6),
        ),
    ];
    for (name, base, target) in pairs {
        seeds.push(Seed {
            target: "delta_apply",
            file_name: format!("seed-{name}"),
            bytes: crate::delta::input(&base, &codec::delta::encode(&base, &target)),
        });
    }
}

// ---------------------------------------------------------------------------
// The open_units target (spec/11-compression.md). Its checks live here, next
// to its seeds, so that `cargo test` in this directory runs them on the seeds.
// ---------------------------------------------------------------------------

/// The limit of the open_units target: the default `max_message_size`.
pub const UNITS_MAX: usize = 64 * 1024;

/// The open_units seeds: a control byte ([`check_units`]), then one transport
/// message of units sealed from the seed frames, never written by hand.
fn unit_seeds(
    seeds: &mut Vec<Seed>,
    client: &[(&'static str, ClientFrame)],
    server: &[(&'static str, ServerFrame)],
) {
    for encoding in Encoding::ALL {
        let client_batch = batch(client, encoding);
        let server_batch = batch(server, encoding);
        let seal = |codec, batch: &[u8]| unit::seal(codec, batch, 0, Levels::default());
        let mut mixed = Vec::new();
        mixed.extend_from_slice(&seal(Codec::Identity, &batch(&client[..1], encoding)));
        mixed.extend_from_slice(&seal(Codec::DeflateRaw, &server_batch));
        mixed.extend_from_slice(&seal(Codec::Identity, &batch(&server[..2], encoding)));
        let messages = [
            (
                "identity-client",
                seal(Codec::Identity, &client_batch).to_vec(),
            ),
            (
                "deflate-raw-server",
                seal(Codec::DeflateRaw, &server_batch).to_vec(),
            ),
            (
                "deflate-raw-client",
                seal(Codec::DeflateRaw, &client_batch).to_vec(),
            ),
            ("zstd-server", seal(Codec::Zstd, &server_batch).to_vec()),
            ("zstd-client", seal(Codec::Zstd, &client_batch).to_vec()),
            ("mixed-server", mixed),
        ];
        for (name, message) in messages {
            for (split, chunk, mode) in [("whole", 0, 0), ("varied", 9, 1)] {
                // Only the piece-size bits of the control byte matter here.
                let control = StreamControl::new(Encoding::Json, false, chunk, mode);
                let mut bytes = vec![control.0];
                bytes.extend_from_slice(&message);
                seeds.push(Seed {
                    target: "open_units",
                    file_name: format!("seed-{}-{name}-{split}", encoding.name()),
                    bytes,
                });
            }
        }
    }
}

/// The open_units target: `data[0]` picks the piece sizes of the stream (bits
/// 2..=7, as in [`StreamControl::chunks`]), the rest is both one transport
/// message and a stream of units. For each codec as the negotiated one, with
/// a 64 KiB limit ([`UNITS_MAX`]):
///
/// - [`unit::open_message`] and [`unit::units`] agree, never panic, give
///   non-empty batches of at most the limit in total, and errors that fit
///   the input;
/// - a [`UnitStreamDecoder`] fed the pieces (drained after each push) gives
///   the same batches and error, except where a message and a stream
///   differ by design: a message ending inside a unit (`truncated`) is a
///   stream waiting for more, and the decompressed limit and the unit count
///   cover a whole message but each unit of a stream. It never holds more
///   than one unit plus the last piece, and stays failed after an error;
/// - every batch opened seals again, with that codec, and opens back equal
///   under a limit of exactly its size.
///
/// Returns, per codec in [`Codec::ALL`] order, how many batches the message
/// gave and the kind of the error that ended it.
pub fn check_units(data: &[u8]) -> [(usize, Option<&'static str>); 3] {
    let Some((&control, input)) = data.split_first() else {
        return [(0, None); 3];
    };
    let chunks = StreamControl(control).chunks(input);
    let message = Bytes::copy_from_slice(input);
    Codec::ALL.map(|allowed| check_units_as(&message, &chunks, allowed))
}

fn check_units_as(
    message: &Bytes,
    chunks: &[&[u8]],
    allowed: Codec,
) -> (usize, Option<&'static str>) {
    let mut batches = Vec::new();
    let mut error = None;
    for result in unit::units(message, allowed, UNITS_MAX) {
        match result {
            Ok(batch) => batches.push(batch),
            Err(err) => error = Some(err),
        }
    }
    match (unit::open_message(message, allowed, UNITS_MAX), &error) {
        (Ok(opened), None) => assert!(opened == batches, "open_message and units disagree"),
        (Err(err), Some(first)) => assert_eq!(&err, first),
        (other, _) => panic!("open_message gave {other:?}, units {error:?}"),
    }
    assert!(batches.len() <= MAX_UNITS_PER_MESSAGE);
    assert!(batches.iter().all(|b| !b.is_empty()), "an empty batch");
    assert!(batches.iter().map(Bytes::len).sum::<usize>() <= UNITS_MAX);
    match &error {
        None => assert!(!message.is_empty()),
        Some(UnitError::Failed) => panic!("a message gave `failed`"),
        Some(UnitError::UnexpectedCodec(codec)) => assert!(!allowed.accepts(*codec)),
        Some(UnitError::UnitTooLarge { size, limit }) => {
            assert_eq!(*limit, UNITS_MAX);
            assert!(*size > UNITS_MAX as u64);
        }
        Some(UnitError::DecompressedTooLarge { limit }) => assert_eq!(*limit, UNITS_MAX),
        Some(UnitError::TooManyUnits { limit }) => {
            assert_eq!((*limit, batches.len()), (MAX_UNITS_PER_MESSAGE, *limit));
        }
        Some(UnitError::EmptyUnit) if message.is_empty() => {}
        Some(_) => {}
    }

    let mut decoder = UnitStreamDecoder::new(allowed, UNITS_MAX);
    let mut streamed = Vec::new();
    let mut stream_error = None;
    'pieces: for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_unit() {
                Ok(Some(batch)) => streamed.push(batch),
                Ok(None) => break,
                Err(err) => {
                    assert_ne!(err, UnitError::Failed, "first error");
                    stream_error = Some(err);
                    break 'pieces;
                }
            }
        }
        let bound = UNITS_MAX + 11 + chunk.len();
        assert!(
            decoder.buffered() <= bound,
            "unit stream decoder holds {} bytes after draining, more than {bound}",
            decoder.buffered()
        );
    }
    if stream_error.is_some() {
        decoder.push(b"\x00\x01x");
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.next_unit(), Err(UnitError::Failed));
    }
    match &error {
        Some(UnitError::DecompressedTooLarge { .. } | UnitError::TooManyUnits { .. }) => {
            assert!(streamed.len() >= batches.len());
            assert!(
                streamed[..batches.len()] == batches[..],
                "stream and message differ"
            );
        }
        Some(UnitError::Truncated) => {
            assert!(streamed == batches, "stream and message differ");
            assert_eq!(stream_error, None);
            assert!(decoder.buffered() > 0);
        }
        Some(UnitError::EmptyUnit) if message.is_empty() => {
            assert!(streamed.is_empty());
            assert_eq!(stream_error, None);
        }
        first => {
            assert!(streamed == batches, "stream and message differ");
            assert_eq!(&stream_error, first);
        }
    }

    for batch in &batches {
        let sealed = unit::seal(allowed, batch, 0, Levels::default());
        let opened = unit::open_message(&sealed, allowed, batch.len());
        assert!(
            opened.as_deref() == Ok(std::slice::from_ref(batch)),
            "{allowed} round trip: {opened:?}"
        );
    }
    (batches.len(), error.map(|e| e.kind()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;
    use crate::{check_batch, check_stream};

    fn seed_dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target)
    }

    #[test]
    fn json_seeds_are_the_documented_lines() {
        let client = client_frames();
        let json = |i: usize| {
            String::from_utf8(codec::encode(&client[i].1, Encoding::Json).to_vec()).unwrap()
        };
        assert_eq!(json(0), "{\"id\":1,\"connect\":{\"token\":\"x\"}}\n");
        assert_eq!(
            json(1),
            "{\"id\":2,\"subscribe\":{\"room\":\"chat:lobby\",\"since\":{\"offset\":\"5\",\"epoch\":\"ab\"}}}\n"
        );
    }

    #[test]
    fn seeds_pass_their_targets_without_error() {
        for seed in seeds() {
            let (frames, error) = match seed.target {
                "decode_batch_protobuf" => {
                    let (client, client_error) =
                        check_batch::<ClientFrame>(&seed.bytes, Encoding::Protobuf);
                    let (server, server_error) =
                        check_batch::<ServerFrame>(&seed.bytes, Encoding::Protobuf);
                    let (frames, error) = if seed.file_name.contains("-client-") {
                        (client, client_error)
                    } else {
                        (server, server_error)
                    };
                    (frames, error.map(|e| e.kind()))
                }
                "decode_batch_json" => {
                    let (frames, error) = if seed.file_name.contains("-client-") {
                        check_batch::<ClientFrame>(&seed.bytes, Encoding::Json)
                    } else {
                        check_batch::<ServerFrame>(&seed.bytes, Encoding::Json)
                    };
                    (frames, error.map(|e| e.kind()))
                }
                "stream_decode" => check_stream(&seed.bytes),
                // A valid delta: one result, no error.
                "delta_apply" => match crate::delta::check_delta(&seed.bytes) {
                    Ok(_) => (1, None),
                    Err(err) => (0, Some(err.kind())),
                },
                // Some negotiated codec opens every unit of the seed.
                "open_units" => check_units(&seed.bytes)
                    .into_iter()
                    .find(|(_, error)| error.is_none())
                    .unwrap_or((0, Some("no codec opens it"))),
                other => panic!("unknown target {other}"),
            };
            assert!(frames > 0, "{} decodes no frame", seed.file_name);
            assert_eq!(error, None, "{} of {}", seed.file_name, seed.target);
        }
    }

    /// Checks the committed files, or rewrites them when
    /// `SWITCHBOARD_WRITE_SEEDS=1`.
    #[test]
    fn committed_seeds_are_current() {
        let write = std::env::var_os("SWITCHBOARD_WRITE_SEEDS").is_some_and(|v| v == "1");
        let seeds = seeds();
        let targets: BTreeSet<&str> = seeds.iter().map(|s| s.target).collect();
        for target in targets {
            let dir = seed_dir(target);
            let wanted: BTreeSet<&str> = seeds
                .iter()
                .filter(|s| s.target == target)
                .map(|s| s.file_name.as_str())
                .collect();
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name().into_string().unwrap();
                    if name.starts_with("seed-") && !wanted.contains(name.as_str()) {
                        std::fs::remove_file(entry.path()).unwrap();
                    }
                }
            } else {
                let present: BTreeSet<String> = std::fs::read_dir(&dir)
                    .unwrap_or_else(|e| {
                        panic!("{}: {e}; run with SWITCHBOARD_WRITE_SEEDS=1", dir.display())
                    })
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|name| name.starts_with("seed-"))
                    .collect();
                let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
                assert_eq!(
                    present, wanted,
                    "{target}: stale seed files; run with SWITCHBOARD_WRITE_SEEDS=1"
                );
            }
        }
        for seed in &seeds {
            let path = seed_dir(seed.target).join(&seed.file_name);
            if write {
                std::fs::write(&path, &seed.bytes).unwrap();
            } else {
                let on_disk = std::fs::read(&path).unwrap();
                assert!(
                    on_disk == seed.bytes,
                    "{} is out of date; run with SWITCHBOARD_WRITE_SEEDS=1",
                    path.display()
                );
            }
        }
    }
}
