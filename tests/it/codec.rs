//! The codec's promises (spec/02-framing.md, spec/03-messages.md "Payloads"):
//! unit cases, then properties over arbitrary frames and arbitrary bytes.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use switchboard::codec::{
    self, DecodeError, DecodeLimits, Encoding, Frame, StreamDecoder, payload,
};
use switchboard::wire::v1::{
    ClientFrame, ClientInfo, Publication, PublishRequest, ServerFrame, SubscribeRequest,
    client_frame::Command, server_frame::Body,
};

use super::alloc::peak_heap;
use super::strategies::{client_frame, server_frame};

fn json_of<F: Frame>(frame: &F) -> String {
    String::from_utf8(codec::encode(frame, Encoding::Json).to_vec()).expect("JSON is UTF-8")
}

fn decode_one<F: Frame>(bytes: &[u8], encoding: Encoding) -> Result<F, DecodeError> {
    let limits = DecodeLimits::default();
    let mut frames = codec::decode_batch::<F>(bytes, encoding, &limits);
    let first = frames.next().expect("at least one result")?;
    assert!(frames.next().is_none(), "exactly one frame");
    Ok(first)
}

fn publish(room: &str, data: &'static [u8]) -> ClientFrame {
    ClientFrame {
        id: 7,
        command: Some(Command::Publish(PublishRequest {
            room: room.into(),
            data: Bytes::from_static(data),
            ..Default::default()
        })),
    }
}

/// Every payload field with [`payload::normalized`] applied: what a JSON
/// round trip must give back.
fn normalize_client(mut frame: ClientFrame) -> ClientFrame {
    if let Some(Command::Publish(p)) = &mut frame.command {
        p.data = payload::normalized(&p.data);
    }
    frame
}

fn normalize_info(info: &mut ClientInfo) {
    info.info = payload::normalized(&info.info);
}

fn normalize_publication(p: &mut Publication) {
    p.data = payload::normalized(&p.data);
    if let Some(info) = &mut p.info {
        normalize_info(info);
    }
}

fn normalize_server(mut frame: ServerFrame) -> ServerFrame {
    match &mut frame.body {
        Some(Body::Publication(p)) => normalize_publication(p),
        Some(Body::Subscribe(r)) => r.publications.iter_mut().for_each(normalize_publication),
        Some(Body::History(r)) => r.publications.iter_mut().for_each(normalize_publication),
        Some(Body::Presence(r)) => r.clients.values_mut().for_each(normalize_info),
        Some(Body::Join(j)) => j.client.iter_mut().for_each(normalize_info),
        Some(Body::Leave(l)) => l.client.iter_mut().for_each(normalize_info),
        Some(Body::Message(m)) => m.data = payload::normalized(&m.data),
        _ => {}
    }
    frame
}

#[test]
fn json_payloads_are_json_values_and_binary_is_named_base64() {
    assert_eq!(
        json_of(&publish("chat:a", br#"{"text":"hi"}"#)),
        "{\"id\":7,\"publish\":{\"room\":\"chat:a\",\"data\":{\"text\":\"hi\"}}}\n"
    );
    assert_eq!(
        json_of(&publish("chat:a", b"\xff\x00")),
        "{\"id\":7,\"publish\":{\"room\":\"chat:a\",\"dataBase64\":\"/wA=\"}}\n"
    );
    // `null` is a payload of its own, distinct from no payload.
    assert_eq!(
        json_of(&publish("r", b"null")),
        "{\"id\":7,\"publish\":{\"room\":\"r\",\"data\":null}}\n"
    );
    assert_eq!(
        json_of(&publish("r", b"")),
        "{\"id\":7,\"publish\":{\"room\":\"r\"}}\n"
    );
    // Line breaks between tokens are removed: a frame is one line.
    assert_eq!(
        json_of(&publish("r", b"{\n  \"a\": [1,\r\n 2]\n}")),
        "{\"id\":7,\"publish\":{\"room\":\"r\",\"data\":{  \"a\": [1, 2]}}}\n"
    );
}

#[test]
fn json_input_accepts_both_payload_forms_but_not_both_at_once() {
    let f: ClientFrame = decode_one(
        br#"{"id":1,"publish":{"room":"r","data":[1, 2]}}"#,
        Encoding::Json,
    )
    .unwrap();
    assert_eq!(f, publish_id(1, "r", b"[1, 2]"));
    let f: ClientFrame = decode_one(
        br#"{"id":1,"publish":{"room":"r","dataBase64":"/wA"}}"#,
        Encoding::Json,
    )
    .unwrap();
    assert_eq!(f, publish_id(1, "r", b"\xff\x00"));
    let err = decode_one::<ClientFrame>(
        br#"{"id":1,"publish":{"room":"r","data":1,"dataBase64":"AA=="}}"#,
        Encoding::Json,
    )
    .unwrap_err();
    assert_eq!(err.kind(), "invalid_json");
}

fn publish_id(id: u32, room: &str, data: &'static [u8]) -> ClientFrame {
    ClientFrame {
        id,
        ..publish(room, data)
    }
}

#[test]
fn proto3_json_rules_hold_for_generated_and_hand_mapped_messages() {
    // Proto names are accepted, 64-bit integers may be numbers or strings,
    // null means default, unknown fields are ignored.
    let f: ServerFrame = decode_one(
        br#"{"id":0,"publication":{"room":"r","offset":5,"time":"-3","unknown":{"x":[1]},"tags":null},"future":1}"#,
        Encoding::Json,
    )
    .unwrap();
    let Some(Body::Publication(p)) = f.body else {
        panic!("publication expected")
    };
    assert_eq!((p.offset, p.time, p.tags.len()), (5, -3, 0));
    let f: ClientFrame =
        decode_one(br#"{"id":2,"presence_stats":{"room":"r"}}"#, Encoding::Json).unwrap();
    assert!(matches!(f.command, Some(Command::PresenceStats(_))));
    // Two members of one oneof: invalid.
    let err =
        decode_one::<ClientFrame>(br#"{"id":2,"ping":{},"pong":{}}"#, Encoding::Json).unwrap_err();
    assert_eq!(err.kind(), "invalid_json");
    // Offsets are strings on output.
    let frame = ServerFrame {
        id: 0,
        body: Some(Body::Publication(Publication {
            room: "r".into(),
            offset: 1 << 60,
            ..Default::default()
        })),
    };
    assert_eq!(
        json_of(&frame),
        "{\"publication\":{\"room\":\"r\",\"offset\":\"1152921504606846976\"}}\n"
    );
}

#[test]
fn batches_json_last_line_feed_optional_and_limits() {
    let limits = DecodeLimits {
        max_frame_size: 64,
        max_frames_per_batch: 2,
    };
    let two = b"{\"id\":1,\"ping\":{}}\n{\"id\":2,\"ping\":{}}";
    let frames: Vec<ClientFrame> = codec::decode_batch(two, Encoding::Json, &limits)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(frames.iter().map(|f| f.id).collect::<Vec<_>>(), [1, 2]);

    let three = b"{\"id\":1,\"ping\":{}}\n{\"id\":2,\"ping\":{}}\n{\"id\":3,\"ping\":{}}\n";
    let results: Vec<_> =
        codec::decode_batch::<ClientFrame>(three, Encoding::Json, &limits).collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2].as_ref().unwrap_err().kind(), "too_many_frames");

    let empty_line = b"{\"id\":1,\"ping\":{}}\n\n";
    let last = codec::decode_batch::<ClientFrame>(empty_line, Encoding::Json, &limits)
        .last()
        .unwrap();
    assert_eq!(last.unwrap_err().kind(), "empty_frame");

    let long = format!(
        "{{\"id\":1,\"connect\":{{\"token\":\"{}\"}}}}",
        "x".repeat(64)
    );
    let err = codec::decode_batch::<ClientFrame>(long.as_bytes(), Encoding::Json, &limits)
        .next()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), "frame_too_large");
    assert_eq!(err.close_code().0, 1009);
}

#[test]
fn batches_protobuf_truncation_and_declared_size() {
    let limits = DecodeLimits::default();
    let mut buf = BytesMut::new();
    for id in 1..=3 {
        codec::encode_into(&publish_id(id, "r", b"1"), Encoding::Protobuf, &mut buf);
    }
    let frames: Vec<ClientFrame> = codec::decode_batch(&buf, Encoding::Protobuf, &limits)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(frames.len(), 3);

    let cut = &buf[..buf.len() - 1];
    let last = codec::decode_batch::<ClientFrame>(cut, Encoding::Protobuf, &limits)
        .last()
        .unwrap();
    assert_eq!(last.unwrap_err().kind(), "truncated");

    // A length prefix declaring 1 GiB is rejected from the prefix alone.
    let huge = [0x80, 0x80, 0x80, 0x80, 0x04, 0x08];
    let err = codec::decode_frame::<ClientFrame>(&huge, Encoding::Protobuf, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::FrameTooLarge {
                size: 1073741824,
                ..
            }
        ),
        "{err:?}"
    );
    // Eleven continuation bytes are no varint.
    let err =
        codec::decode_frame::<ClientFrame>(&[0xff; 11], Encoding::Protobuf, &limits).unwrap_err();
    assert_eq!(err.kind(), "bad_length");
    // An empty message is not a batch.
    let err = codec::decode_batch::<ClientFrame>(b"", Encoding::Protobuf, &limits)
        .next()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), "empty_frame");
}

#[test]
fn too_deep_payloads_are_rejected_by_kind() {
    let deep = format!(
        "{{\"id\":1,\"publish\":{{\"room\":\"r\",\"data\":{}1{}}}}}",
        "[".repeat(33),
        "]".repeat(33)
    );
    let err = decode_one::<ClientFrame>(deep.as_bytes(), Encoding::Json).unwrap_err();
    assert_eq!(err.kind(), "too_deep");
    let ok = format!(
        "{{\"id\":1,\"publish\":{{\"room\":\"r\",\"data\":{}1{}}}}}",
        "[".repeat(32),
        "]".repeat(32)
    );
    decode_one::<ClientFrame>(ok.as_bytes(), Encoding::Json).unwrap();
    // The same too-deep bytes published over protobuf reach JSON clients as base64.
    let bytes: &'static [u8] = Box::leak(
        format!("{}1{}", "[".repeat(33), "]".repeat(33))
            .into_bytes()
            .into_boxed_slice(),
    );
    assert!(json_of(&publish("r", bytes)).contains("\"dataBase64\""));
    // Structure outside payloads is bounded too (unknown fields nest freely).
    let nested = format!("{{\"id\":1,\"x\":{}{}}}", "[".repeat(60), "]".repeat(60));
    assert_eq!(
        decode_one::<ClientFrame>(nested.as_bytes(), Encoding::Json)
            .unwrap_err()
            .kind(),
        "too_deep"
    );
}

#[test]
fn stream_decoder_rejects_oversized_frames_before_buffering_them() {
    let limits = DecodeLimits {
        max_frame_size: 100,
        max_frames_per_batch: 100,
    };
    let mut json = StreamDecoder::new(Encoding::Json, limits);
    json.push(&[b' '; 101]);
    assert_eq!(
        json.next_frame::<ClientFrame>().unwrap_err().kind(),
        "frame_too_large"
    );
    assert_eq!(json.buffered(), 0);
    assert_eq!(
        json.next_frame::<ClientFrame>().unwrap_err().kind(),
        "failed"
    );

    let mut pb = StreamDecoder::new(Encoding::Protobuf, limits);
    pb.push(&[101]);
    assert_eq!(
        pb.next_frame::<ClientFrame>().unwrap_err().kind(),
        "frame_too_large"
    );
}

fn sub(id: u32, room: &str) -> ClientFrame {
    ClientFrame {
        id,
        command: Some(Command::Subscribe(SubscribeRequest {
            room: room.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn stream_decoder_reassembles_frames_split_byte_by_byte() {
    for encoding in Encoding::ALL {
        let mut bytes = BytesMut::new();
        for id in 1..=4 {
            codec::encode_into(&sub(id, "chat:lobby"), encoding, &mut bytes);
        }
        let mut decoder = StreamDecoder::new(encoding, DecodeLimits::default());
        let mut ids = Vec::new();
        for byte in bytes.iter() {
            decoder.push(&[*byte]);
            while let Some(frame) = decoder.next_frame::<ClientFrame>().unwrap() {
                ids.push(frame.id);
            }
        }
        assert_eq!(ids, [1, 2, 3, 4], "{encoding:?}");
        assert_eq!(decoder.buffered(), 0);
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn protobuf_round_trips_exactly(c in client_frame(), s in server_frame()) {
        prop_assert_eq!(decode_one::<ClientFrame>(&codec::encode(&c, Encoding::Protobuf), Encoding::Protobuf).unwrap(), c);
        prop_assert_eq!(decode_one::<ServerFrame>(&codec::encode(&s, Encoding::Protobuf), Encoding::Protobuf).unwrap(), s);
    }

    #[test]
    fn json_round_trips_up_to_payload_whitespace(c in client_frame(), s in server_frame()) {
        let json = codec::encode(&c, Encoding::Json);
        prop_assert_eq!(json.iter().filter(|&&b| b == b'\n').count(), 1, "one line per frame");
        prop_assert_eq!(decode_one::<ClientFrame>(&json, Encoding::Json).unwrap(), normalize_client(c));
        let json = codec::encode(&s, Encoding::Json);
        prop_assert_eq!(json.iter().filter(|&&b| b == b'\n').count(), 1, "one line per frame");
        prop_assert_eq!(decode_one::<ServerFrame>(&json, Encoding::Json).unwrap(), normalize_server(s));
    }

    #[test]
    fn json_and_protobuf_carry_the_same_logical_frame(s in server_frame()) {
        let via_json: ServerFrame = decode_one(&codec::encode(&s, Encoding::Json), Encoding::Json).unwrap();
        let via_pb: ServerFrame = decode_one(&codec::encode(&via_json, Encoding::Protobuf), Encoding::Protobuf).unwrap();
        prop_assert_eq!(&via_pb, &via_json);
        // And a frame normalised once is a fixed point of both framings.
        prop_assert_eq!(json_of(&via_pb), json_of(&via_json));
    }

    #[test]
    fn batches_split_and_rejoin(frames in proptest::collection::vec(server_frame(), 1..12),
                                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        for encoding in Encoding::ALL {
            let mut batch = BytesMut::new();
            for f in &frames {
                codec::encode_into(f, encoding, &mut batch);
            }
            let expected: Vec<ServerFrame> = frames.iter().cloned().map(|f| match encoding {
                Encoding::Json => normalize_server(f),
                Encoding::Protobuf => f,
            }).collect();
            let limits = DecodeLimits::default();
            let whole: Vec<ServerFrame> = codec::decode_batch(&batch, encoding, &limits).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&whole, &expected);

            // The same bytes as a stream cut at arbitrary points.
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(batch.len() + 1)).collect();
            points.push(0);
            points.push(batch.len());
            points.sort_unstable();
            let mut decoder = StreamDecoder::new(encoding, limits);
            let mut streamed = Vec::new();
            for pair in points.windows(2) {
                decoder.push(&batch[pair[0]..pair[1]]);
                while let Some(f) = decoder.next_frame::<ServerFrame>().unwrap() {
                    streamed.push(f);
                }
            }
            prop_assert_eq!(&streamed, &expected);
            prop_assert_eq!(decoder.buffered(), 0);

            // Cut back into batches of whole frames (what a WebTransport
            // client hands on): the bytes come out unchanged, at frame
            // boundaries, and decode to the same frames.
            let mut splitter = StreamDecoder::new(encoding, limits);
            let (mut rejoined, mut batched) = (BytesMut::new(), Vec::new());
            for pair in points.windows(2) {
                splitter.push(&batch[pair[0]..pair[1]]);
                while let Some(part) = splitter.next_delimited().unwrap() {
                    rejoined.extend_from_slice(&part);
                    for f in codec::decode_batch::<ServerFrame>(&part, encoding, &limits) {
                        batched.push(f.unwrap());
                    }
                }
            }
            prop_assert_eq!(&rejoined[..], &batch[..]);
            prop_assert_eq!(&batched, &expected);
            prop_assert_eq!(splitter.buffered(), 0);
        }
    }

    #[test]
    fn corrupted_input_is_an_error_or_a_frame_and_allocation_follows_input(
        frames in proptest::collection::vec(client_frame(), 1..6),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let limits = DecodeLimits::default();
        for encoding in Encoding::ALL {
            let mut batch = BytesMut::new();
            for f in &frames {
                codec::encode_into(f, encoding, &mut batch);
            }
            for (at, byte) in &flips {
                let i = at.index(batch.len());
                batch[i] ^= byte;
            }
            let input = &batch[..cut.index(batch.len() + 1)];
            let (results, peak) = peak_heap(|| {
                codec::decode_batch::<ClientFrame>(input, encoding, &limits).collect::<Vec<_>>()
            });
            // Decoded frames hold at most a few hundred bytes of structs per
            // input byte (an empty repeated element costs 2 bytes of input);
            // never an allocation sized by a declared length.
            prop_assert!(peak <= 512 * input.len() + 4096, "peak {} for {} input bytes", peak, input.len());
            for r in results.into_iter().flatten() {
                // Whatever decodes re-encodes and decodes to itself.
                let again: ClientFrame = decode_one(&codec::encode(&r, encoding), encoding).unwrap();
                prop_assert_eq!(normalize_client(again), normalize_client(r));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let limits = DecodeLimits { max_frame_size: 64, max_frames_per_batch: 4 };
        for encoding in Encoding::ALL {
            let _ = codec::decode_batch::<ClientFrame>(&bytes, encoding, &limits).count();
            let _ = codec::decode_batch::<ServerFrame>(&bytes, encoding, &limits).count();
            let mut d = StreamDecoder::new(encoding, limits);
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_frame::<ServerFrame>() {}
            prop_assert!(d.buffered() <= bytes.len());
        }
    }
}

/// The hand-written JSON mapping (src/codec/payload.rs) covers exactly the
/// schema's fields, and every `bytes` field in the schema (client protocol
/// and server API) is a payload with a hand-written mapping: a new bytes
/// field cannot slip into the JSON format as base64 unnoticed.
#[test]
fn hand_mapped_json_matches_the_schema() {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::Type;
    let set = prost_types::FileDescriptorSet::decode(switchboard::wire::DESCRIPTORS).unwrap();
    let mut checked = 0;
    for file in &set.file {
        for message in &file.message_type {
            let name = format!("{}.{}", file.package(), message.name());
            let fields: Vec<&str> = message.field.iter().map(|f| f.name()).collect();
            let has_bytes = message.field.iter().any(|f| f.r#type() == Type::Bytes);
            match payload::HAND_MAPPED_FIELDS.iter().find(|(n, _)| *n == name) {
                Some((_, handled)) => {
                    assert_eq!(&fields, handled, "{name}: hand mapping drifted");
                    checked += 1;
                }
                None => assert!(!has_bytes, "{name}: bytes field without a payload mapping"),
            }
        }
    }
    assert_eq!(
        checked,
        payload::HAND_MAPPED_FIELDS.len(),
        "every hand mapping names a message"
    );
}

#[test]
fn the_allocation_probe_sees_allocations() {
    let (_, peak) = peak_heap(|| vec![0u8; 10_000]);
    assert!(peak >= 10_000, "{peak}");
}
