//! The shared test vectors of spec/vectors/, checked both ways. Every client
//! library runs the same files (spec/02-framing.md, "Test vectors").
//!
//! `SWITCHBOARD_BLESS=1 cargo test vectors` fills in the protobuf encodings
//! after a deliberate protocol change; review the diff before committing it.

use std::path::PathBuf;

use bytes::BytesMut;
use serde_json::Value;
use switchboard::codec::{self, DecodeError, DecodeLimits, Encoding, Frame, StreamDecoder};
use switchboard::wire::v1::{ClientFrame, ServerFrame};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("spec/vectors")
        .join(name)
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(path(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn bless() -> bool {
    std::env::var_os("SWITCHBOARD_BLESS").is_some()
}

fn save(name: &str, value: &Value) {
    let text = serde_json::to_string_pretty(value).expect("serializable") + "\n";
    std::fs::write(path(name), text).expect("write vectors");
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn one<F: Frame>(bytes: &[u8], encoding: Encoding) -> Result<F, DecodeError> {
    let limits = DecodeLimits::default();
    let mut it = codec::decode_batch::<F>(bytes, encoding, &limits);
    let frame = it.next().expect("a frame")?;
    assert!(it.next().is_none(), "one frame expected");
    Ok(frame)
}

/// Checks one frame vector; returns its protobuf hex as encoded here.
fn check_frame<F: Frame + PartialEq + std::fmt::Debug>(v: &Value) -> String {
    let name = str_of(v, "name");
    let json = str_of(v, "json");
    let from_json: F = one(json.as_bytes(), Encoding::Json)
        .unwrap_or_else(|e| panic!("{name}: JSON does not decode: {e}"));
    let pb = codec::encode(&from_json, Encoding::Protobuf);
    let hex_here = hex::encode(&pb);
    if !bless() {
        let want = str_of(v, "protobuf_hex");
        assert_eq!(hex_here, want, "{name}: protobuf encoding differs");
        let bytes = hex::decode(want).expect("hex");
        let from_pb: F = one(&bytes, Encoding::Protobuf)
            .unwrap_or_else(|e| panic!("{name}: protobuf does not decode: {e}"));
        assert_eq!(from_pb, from_json, "{name}: the two framings disagree");
    }
    let again = codec::encode(&from_json, Encoding::Json);
    assert_eq!(
        again.last(),
        Some(&b'\n'),
        "{name}: JSON frames end with LF"
    );
    let again: Value = serde_json::from_slice(&again).expect("JSON");
    let want: Value = serde_json::from_str(json).expect("vector JSON");
    assert_eq!(again, want, "{name}: JSON encoding differs");
    hex_here
}

#[test]
fn frame_vectors() {
    let mut file = load("frames.json");
    let frames = file["frames"].as_array_mut().expect("frames");
    assert!(frames.len() >= 40);
    for v in frames.iter_mut() {
        let hex = match str_of(v, "direction") {
            "client" => check_frame::<ClientFrame>(v),
            "server" => check_frame::<ServerFrame>(v),
            other => panic!("unknown direction {other}"),
        };
        v["protobuf_hex"] = Value::from(hex);
    }
    if bless() {
        save("frames.json", &file);
    }
}

fn encoding_of(v: &Value) -> Encoding {
    Encoding::from_name(str_of(v, "encoding")).expect("encoding")
}

fn input_of(v: &Value, encoding: Encoding, key: &str) -> Vec<u8> {
    match encoding {
        Encoding::Json => str_of(v, key).as_bytes().to_vec(),
        Encoding::Protobuf => hex::decode(str_of(v, key)).expect("hex"),
    }
}

fn batch_of<F: Frame + PartialEq + std::fmt::Debug>(v: &Value, frames: &Value) -> Value {
    let name = str_of(v, "name");
    let encoding = encoding_of(v);
    let mut expected = Vec::new();
    let mut message = BytesMut::new();
    for wanted in v["frames"].as_array().expect("frame names") {
        let vector = frames["frames"]
            .as_array()
            .and_then(|all| all.iter().find(|f| f["name"] == *wanted))
            .unwrap_or_else(|| panic!("{name}: no frame vector {wanted}"));
        let frame: F =
            one(str_of(vector, "json").as_bytes(), Encoding::Json).expect("frame vector");
        codec::encode_into(&frame, encoding, &mut message);
        expected.push(frame);
    }
    let here = match encoding {
        Encoding::Json => Value::from(String::from_utf8(message.to_vec()).expect("UTF-8")),
        Encoding::Protobuf => Value::from(hex::encode(&message)),
    };
    if !bless() {
        assert_eq!(here, v["message"], "{name}: batch encoding differs");
        let bytes = input_of(v, encoding, "message");
        let limits = DecodeLimits::default();
        let got: Vec<F> = codec::decode_batch(&bytes, encoding, &limits)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "{name}");
        if encoding == Encoding::Json {
            // The last line feed of a message is optional.
            let trimmed = &bytes[..bytes.len() - 1];
            let got: Vec<F> = codec::decode_batch(trimmed, encoding, &limits)
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{name} without final LF: {e}"));
            assert_eq!(got, expected, "{name}");
        }
    }
    here
}

#[test]
fn batch_vectors() {
    let frames = load("frames.json");
    let mut file = load("batches.json");
    for v in file["batches"].as_array_mut().expect("batches") {
        let message = match str_of(v, "direction") {
            "client" => batch_of::<ClientFrame>(v, &frames),
            _ => batch_of::<ServerFrame>(v, &frames),
        };
        v["message"] = message;
    }
    if bless() {
        save("batches.json", &file);
    }
}

fn first_error<F: Frame>(v: &Value) -> &'static str {
    let encoding = encoding_of(v);
    let input = input_of(v, encoding, "input");
    let mut limits = DecodeLimits::default();
    if let Some(n) = v["limits"]["max_frame_size"].as_u64() {
        limits.max_frame_size = n as usize;
    }
    if let Some(n) = v["limits"]["max_frames_per_batch"].as_u64() {
        limits.max_frames_per_batch = n as usize;
    }
    match str_of(v, "mode") {
        "batch" => codec::decode_batch::<F>(&input, encoding, &limits)
            .find_map(Result::err)
            .map_or("none", |e| e.kind()),
        _ => {
            let mut decoder = StreamDecoder::new(encoding, limits);
            decoder.push(&input);
            loop {
                match decoder.next_frame::<F>() {
                    Ok(Some(_)) => continue,
                    Ok(None) if decoder.buffered() > 0 => break "incomplete",
                    Ok(None) => break "none",
                    Err(e) => break e.kind(),
                }
            }
        }
    }
}

#[test]
fn invalid_vectors() {
    let file = load("invalid.json");
    for v in file["invalid"].as_array().expect("invalid") {
        let kind = match str_of(v, "direction") {
            "client" => first_error::<ClientFrame>(v),
            _ => first_error::<ServerFrame>(v),
        };
        assert_eq!(kind, str_of(v, "error"), "{}", str_of(v, "name"));
    }
}
