//! Compression units (spec/11-compression.md): the test vectors of
//! spec/vectors/units.json, decompression bombs under the allocation probe,
//! then properties over real frame batches and arbitrary bytes.
//!
//! `SWITCHBOARD_BLESS=1 cargo test --test it unit` rewrites units.json after a
//! deliberate change; review the diff before committing it.

use std::io::Read as _;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use switchboard::codec::unit::{
    self, Codec, DEFAULT_MIN_SIZE, Levels, MAX_UNITS_PER_MESSAGE, UnitError, UnitStreamDecoder,
};
use switchboard::codec::{self, DecodeLimits, Encoding, Frame};
use switchboard::wire::v1::{ClientFrame, ServerFrame};

use super::alloc::peak_heap;
use super::strategies::{client_frame, server_frame};

/// The default `max_message_size` (spec/06-limits.md).
const MAX: usize = 64 * 1024;

fn batch_of<F: Frame>(frames: &[F], encoding: Encoding) -> Bytes {
    let mut out = BytesMut::new();
    for frame in frames {
        codec::encode_into(frame, encoding, &mut out);
    }
    out.freeze()
}

fn open(message: &[u8], allowed: Codec, max: usize) -> Result<Vec<Bytes>, UnitError> {
    unit::open_message(&Bytes::copy_from_slice(message), allowed, max)
}

/// Cut points for `input` from proptest indexes.
fn points(input: &[u8], cuts: &[Index]) -> Vec<usize> {
    cuts.iter().map(|i| i.index(input.len() + 1)).collect()
}

/// Every unit of a stream cut at `cuts` (positions in `input`), draining
/// after each push; the error that ended it; and the bytes left buffered.
fn stream(
    input: &[u8],
    cuts: &[usize],
    allowed: Codec,
    max: usize,
) -> (Vec<Bytes>, Option<UnitError>, usize) {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    let mut decoder = UnitStreamDecoder::new(allowed, max);
    let mut batches = Vec::new();
    for pair in points.windows(2) {
        let piece = &input[pair[0]..pair[1]];
        decoder.push(piece);
        loop {
            match decoder.next_unit() {
                Ok(Some(batch)) => batches.push(batch),
                Ok(None) => break,
                Err(err) => {
                    assert_ne!(err, UnitError::Failed, "first error");
                    decoder.push(b"\x00\x01x");
                    assert_eq!(decoder.buffered(), 0, "a failed decoder buffers nothing");
                    assert_eq!(decoder.next_unit(), Err(UnitError::Failed));
                    return (batches, Some(err), 0);
                }
            }
        }
        // One unit (header and payload) plus the last piece, at most.
        assert!(
            decoder.buffered() <= max + 11 + piece.len(),
            "holds {} bytes",
            decoder.buffered()
        );
    }
    let buffered = decoder.buffered();
    (batches, None, buffered)
}

/// Checks that a stream cut at `cuts` gives what the same bytes as one
/// message give: the same batches and the same error, except that a message
/// ending inside a unit (`truncated`) is a stream waiting for more bytes,
/// and that the decompressed limit covers a whole message but each unit of
/// a stream.
fn assert_stream_matches_message(input: &[u8], cuts: &[usize], allowed: Codec, max: usize) {
    if input.is_empty() {
        return;
    }
    let message = Bytes::copy_from_slice(input);
    let mut whole = Vec::new();
    let mut whole_error = None;
    for result in unit::units(&message, allowed, max) {
        match result {
            Ok(batch) => whole.push(batch),
            Err(err) => whole_error = Some(err),
        }
    }
    let (streamed, error, buffered) = stream(input, cuts, allowed, max);
    match whole_error {
        Some(UnitError::DecompressedTooLarge { .. }) | Some(UnitError::TooManyUnits { .. }) => {
            // The stream may go on where the message stopped.
            assert!(streamed.len() >= whole.len());
            assert_eq!(&streamed[..whole.len()], &whole[..]);
        }
        Some(UnitError::Truncated) => {
            assert_eq!(streamed, whole);
            assert_eq!(error, None);
            assert!(buffered > 0);
        }
        other => {
            assert_eq!(streamed, whole);
            assert_eq!(error, other);
            assert_eq!(buffered, 0);
        }
    }
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::DeflateEncoder::new(data, flate2::Compression::best())
        .read_to_end(&mut out)
        .expect("in memory");
    out
}

fn raw_inflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid deflate");
    out
}

/// A zstd frame without a declared content size, as a streaming encoder
/// writes it.
fn zstd_streamed(data: &[u8]) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
    encoder.include_contentsize(false).expect("parameter");
    std::io::Write::write_all(&mut encoder, data).expect("in memory");
    encoder.finish().expect("in memory")
}

fn framed(codec: Codec, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    unit::write_unit(codec, payload, &mut out);
    out.freeze()
}

// ---------------------------------------------------------------------------
// Unit cases
// ---------------------------------------------------------------------------

#[test]
fn decompression_bombs_fail_within_twice_the_limit() {
    let zeros = vec![0u8; 10 << 20];
    let deflated = raw_deflate(&zeros);
    assert!(deflated.len() < 11 * 1024, "{}", deflated.len());
    let bombs = [
        ("deflate-raw", Codec::DeflateRaw, deflated),
        (
            "zstd with content size",
            Codec::Zstd,
            zstd::bulk::compress(&zeros, 3).expect("compress"),
        ),
        (
            "zstd without content size",
            Codec::Zstd,
            zstd_streamed(&zeros),
        ),
    ];
    for max in [MAX, 1 << 20] {
        for (name, codec, payload) in &bombs {
            let message = framed(*codec, payload);
            // Warm this thread's decompression contexts: they are created
            // once per thread, not per unit.
            let warm = unit::seal(*codec, &[b'x'; 1000], 0, Levels::default());
            open(&warm, *codec, max).expect("valid unit");

            let (result, peak) = peak_heap(|| unit::open_message(&message, *codec, max));
            assert_eq!(
                result,
                Err(UnitError::DecompressedTooLarge { limit: max }),
                "{name}"
            );
            assert!(peak < 2 * max, "{name}: peak {peak} with max {max}");
            println!("{name} bomb, max {max}: open_message peaks at {peak} bytes");

            let (result, peak) = peak_heap(|| {
                let mut decoder = UnitStreamDecoder::new(*codec, max);
                decoder.push(&message);
                decoder.next_unit()
            });
            assert_eq!(result.map_err(|e| e.kind()), Err("decompressed_too_large"));
            assert!(
                peak < 2 * max + message.len(),
                "{name} stream: peak {peak} with max {max}"
            );
            // The same as one unit of a longer message.
            let mut longer = BytesMut::from(&framed(Codec::Identity, b"{}\n")[..]);
            longer.extend_from_slice(&message);
            assert_eq!(
                open(&longer, *codec, max).map_err(|e| e.kind()),
                Err("decompressed_too_large")
            );
        }
    }
}

#[test]
fn contexts_cost_a_bounded_amount_once_per_thread() {
    // A thread's first unit creates its decompression context; report and
    // bound the cost. miniz_oxide's inflater (~43 KiB) is on the Rust heap;
    // zstd's DCtx (~94 KiB) is on the C heap, which this probe does not see.
    for codec in [Codec::DeflateRaw, Codec::Zstd] {
        let message = unit::seal(codec, &[b'x'; 1000], 0, Levels::default());
        let peak = std::thread::spawn(move || {
            let (result, peak) = peak_heap(|| unit::open_message(&message, codec, MAX));
            assert!(result.is_ok());
            peak
        })
        .join()
        .expect("thread");
        println!("{codec}: a thread's first unit peaks at {peak} bytes");
        assert!(
            peak < 256 * 1024,
            "{codec}: first unit on a thread peaks at {peak}"
        );
    }
}

#[test]
fn units_of_codecs_not_negotiated_are_rejected() {
    let batch = vec![b'a'; 1000];
    for sealed_with in [Codec::DeflateRaw, Codec::Zstd] {
        let message = unit::seal(sealed_with, &batch, 0, Levels::default());
        assert_eq!(message[0], sealed_with.marker());
        for allowed in Codec::ALL {
            let result = open(&message, allowed, MAX);
            if allowed == sealed_with {
                assert_eq!(result, Ok(vec![Bytes::from(batch.clone())]));
            } else {
                assert_eq!(result, Err(UnitError::UnexpectedCodec(sealed_with)));
            }
        }
    }
}

#[test]
fn compressed_units_are_standard_streams() {
    // What another implementation's stock decoder reads.
    let frames: Vec<ServerFrame> = vector_frames()
        .into_iter()
        .filter_map(|(_, direction, json)| (direction == "server").then_some(json))
        .map(|json| decode_json::<ServerFrame>(&json))
        .collect();
    let batch = batch_of(&frames, Encoding::Json);
    let sealed = unit::seal(Codec::DeflateRaw, &batch, 0, Levels::default());
    assert_eq!(sealed[0], 0x01);
    let payload = &sealed[1 + varint_size(&sealed[1..])..];
    assert_eq!(raw_inflate(payload), batch);
    let sealed = unit::seal(Codec::Zstd, &batch, 0, Levels::default());
    assert_eq!(sealed[0], 0x02);
    let payload = &sealed[1 + varint_size(&sealed[1..])..];
    assert_eq!(
        zstd::bulk::decompress(payload, batch.len()).expect("zstd"),
        batch
    );
    println!(
        "{} bytes of server frames: deflate-raw {} bytes, zstd {} bytes",
        batch.len(),
        unit::seal(Codec::DeflateRaw, &batch, 0, Levels::default()).len(),
        sealed.len()
    );
}

fn varint_size(bytes: &[u8]) -> usize {
    bytes.iter().position(|b| b & 0x80 == 0).expect("varint") + 1
}

// ---------------------------------------------------------------------------
// Test vectors
// ---------------------------------------------------------------------------

fn vector_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("spec/vectors/units.json")
}

fn bless() -> bool {
    std::env::var_os("SWITCHBOARD_BLESS").is_some()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The frame vectors of frames.json: (name, direction, JSON).
fn vector_frames() -> Vec<(String, String, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("spec/vectors/frames.json");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("frames.json")).expect("JSON");
    file["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|v| {
            (
                str_of(v, "name").to_owned(),
                str_of(v, "direction").to_owned(),
                str_of(v, "json").to_owned(),
            )
        })
        .collect()
}

fn decode_json<F: Frame>(json: &str) -> F {
    let limits = DecodeLimits::default();
    codec::decode_batch::<F>(json.as_bytes(), Encoding::Json, &limits)
        .next()
        .expect("a frame")
        .expect("frame vector decodes")
}

/// One frame vector, delimited, in `encoding`.
fn delimited(json: &str, direction: &str, encoding: Encoding) -> Bytes {
    match direction {
        "client" => codec::encode(&decode_json::<ClientFrame>(json), encoding),
        _ => codec::encode(&decode_json::<ServerFrame>(json), encoding),
    }
}

/// How a vector lists a delimited frame: JSON without its LF, protobuf in hex.
fn listed(frame: &[u8], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Json => Value::from(
            std::str::from_utf8(&frame[..frame.len() - 1])
                .expect("UTF-8")
                .to_owned(),
        ),
        Encoding::Protobuf => Value::from(hex::encode(frame)),
    }
}

/// The valid vectors: (name, direction, allowed codec, units as (codec,
/// frame names)). Sealed with `min_size` 0 so that every compressed unit is
/// compressed.
type ValidSpec = (
    &'static str,
    &'static str,
    Codec,
    Vec<(Codec, Vec<&'static str>)>,
);

fn valid_specs() -> Vec<ValidSpec> {
    let server_many = vec![
        "subscribe_result_recovered",
        "publication",
        "publication_binary",
        "history_result",
        "join",
        "leave",
    ];
    let client_many = vec![
        "connect_token",
        "subscribe",
        "publish_json",
        "publish_tags_exclude_self",
        "history",
    ];
    vec![
        (
            "identity",
            "server",
            Codec::Identity,
            vec![(Codec::Identity, vec!["publication", "heartbeat"])],
        ),
        (
            "identity_under_zstd",
            "client",
            Codec::Zstd,
            vec![(Codec::Identity, vec!["subscribe"])],
        ),
        (
            "deflate_raw",
            "server",
            Codec::DeflateRaw,
            vec![(Codec::DeflateRaw, server_many.clone())],
        ),
        (
            "deflate_raw_client",
            "client",
            Codec::DeflateRaw,
            vec![(Codec::DeflateRaw, client_many.clone())],
        ),
        (
            "zstd",
            "server",
            Codec::Zstd,
            vec![(Codec::Zstd, server_many.clone())],
        ),
        (
            "zstd_client",
            "client",
            Codec::Zstd,
            vec![(Codec::Zstd, client_many)],
        ),
        (
            "several_units",
            "server",
            Codec::DeflateRaw,
            vec![
                (Codec::Identity, vec!["publish_result"]),
                (Codec::DeflateRaw, server_many),
                (Codec::Identity, vec!["heartbeat", "message"]),
            ],
        ),
    ]
}

/// The invalid vectors: (name, mode, allowed, input, error, max).
type InvalidSpec = (String, &'static str, Codec, Vec<u8>, &'static str, usize);

fn invalid_specs() -> Vec<InvalidSpec> {
    let batch = br#"{"heartbeat":{}}
{"publication":{"room":"chat:lobby","offset":"7","data":{"text":"hello"}}}
{"publication":{"room":"chat:lobby","offset":"8","data":{"text":"hello again"}}}
"#;
    let deflated = raw_deflate(batch);
    let zstd = zstd::bulk::compress(batch, 3).expect("zstd");
    let with = |codec: Codec, payload: &[u8]| framed(codec, payload).to_vec();
    let mut specs: Vec<InvalidSpec> = Vec::new();
    let mut add = |name: &str, mode, allowed, input: Vec<u8>, error, max| {
        specs.push((name.to_owned(), mode, allowed, input, error, max));
    };
    use Codec::{DeflateRaw, Identity, Zstd};
    add(
        "empty_message",
        "message",
        Identity,
        vec![],
        "empty_unit",
        MAX,
    );
    add(
        "marker_3",
        "message",
        Zstd,
        b"\x03\x03{}\n".to_vec(),
        "bad_marker",
        MAX,
    );
    add(
        "marker_ff",
        "message",
        Zstd,
        b"\xff".to_vec(),
        "bad_marker",
        MAX,
    );
    add(
        "marker_after_a_unit",
        "stream",
        Identity,
        b"\x00\x03{}\n\x80".to_vec(),
        "bad_marker",
        MAX,
    );
    add(
        "deflate_raw_not_negotiated",
        "message",
        Identity,
        with(DeflateRaw, &deflated),
        "unexpected_codec",
        MAX,
    );
    add(
        "zstd_on_deflate_raw_connection",
        "stream",
        DeflateRaw,
        with(Zstd, &zstd),
        "unexpected_codec",
        MAX,
    );
    let mut eleven = vec![0x00];
    eleven.extend([0x80; 10]);
    eleven.push(0x00);
    add(
        "length_11_bytes",
        "message",
        Identity,
        eleven.clone(),
        "bad_length",
        MAX,
    );
    add(
        "length_11_bytes_stream",
        "stream",
        Identity,
        eleven,
        "bad_length",
        MAX,
    );
    let mut overflow = vec![0x00];
    overflow.extend([0xff; 9]);
    overflow.push(0x02);
    add(
        "length_overflows_64_bits",
        "message",
        Identity,
        overflow,
        "bad_length",
        MAX,
    );
    add(
        "length_above_max",
        "message",
        Identity,
        b"\x00\x81\x80\x04".to_vec(),
        "unit_too_large",
        MAX,
    );
    add(
        "length_above_max_stream",
        "stream",
        DeflateRaw,
        b"\x01\x81\x80\x04".to_vec(),
        "unit_too_large",
        MAX,
    );
    add(
        "length_above_small_max",
        "message",
        Identity,
        b"\x00\x05{}\n{}".to_vec(),
        "unit_too_large",
        4,
    );
    let bomb = vec![b'a'; 1025];
    add(
        "deflate_raw_inflates_above_max",
        "message",
        DeflateRaw,
        with(DeflateRaw, &raw_deflate(&bomb)),
        "decompressed_too_large",
        1024,
    );
    add(
        "zstd_decompresses_above_max",
        "stream",
        Zstd,
        with(Zstd, &zstd::bulk::compress(&bomb, 3).expect("zstd")),
        "decompressed_too_large",
        1024,
    );
    add(
        "zstd_without_content_size_above_max",
        "message",
        Zstd,
        with(Zstd, &zstd_streamed(&bomb)),
        "decompressed_too_large",
        1024,
    );
    let half = with(DeflateRaw, &raw_deflate(&bomb[..600]));
    add(
        "message_total_above_max",
        "message",
        DeflateRaw,
        [half.clone(), half].concat(),
        "decompressed_too_large",
        1024,
    );
    add(
        "deflate_raw_corrupt",
        "message",
        DeflateRaw,
        with(DeflateRaw, &[0xff; 8]),
        "bad_compressed_data",
        MAX,
    );
    add(
        "deflate_raw_cut_short",
        "message",
        DeflateRaw,
        with(DeflateRaw, &deflated[..deflated.len() - 1]),
        "bad_compressed_data",
        MAX,
    );
    add(
        "deflate_raw_trailing_byte",
        "stream",
        DeflateRaw,
        with(DeflateRaw, &[deflated.as_slice(), &[0]].concat()),
        "bad_compressed_data",
        MAX,
    );
    add(
        "deflate_raw_zlib_header",
        "message",
        DeflateRaw,
        with(DeflateRaw, &{
            let mut out = Vec::new();
            flate2::read::ZlibEncoder::new(&batch[..], flate2::Compression::default())
                .read_to_end(&mut out)
                .expect("in memory");
            out
        }),
        "bad_compressed_data",
        MAX,
    );
    add(
        "zstd_corrupt_magic",
        "message",
        Zstd,
        with(Zstd, &[&[0x28, 0xb5, 0x2f, 0xfe], &zstd[4..]].concat()),
        "bad_compressed_data",
        MAX,
    );
    add(
        "zstd_cut_short",
        "message",
        Zstd,
        with(Zstd, &zstd[..zstd.len() - 1]),
        "bad_compressed_data",
        MAX,
    );
    add(
        "zstd_trailing_byte",
        "message",
        Zstd,
        with(Zstd, &[zstd.as_slice(), &[0]].concat()),
        "bad_compressed_data",
        MAX,
    );
    add(
        "zstd_two_frames",
        "stream",
        Zstd,
        with(Zstd, &[zstd.as_slice(), &zstd].concat()),
        "bad_compressed_data",
        MAX,
    );
    add(
        "zstd_skippable_frame",
        "message",
        Zstd,
        with(
            Zstd,
            &[0x50, 0x2a, 0x4d, 0x18, 0x01, 0x00, 0x00, 0x00, 0x78],
        ),
        "bad_compressed_data",
        MAX,
    );
    add(
        "identity_length_0",
        "message",
        Identity,
        b"\x00\x00".to_vec(),
        "empty_unit",
        MAX,
    );
    add(
        "deflate_raw_length_0",
        "stream",
        DeflateRaw,
        b"\x01\x00".to_vec(),
        "empty_unit",
        MAX,
    );
    add(
        "deflate_raw_inflates_to_nothing",
        "message",
        DeflateRaw,
        with(DeflateRaw, &raw_deflate(b"")),
        "empty_unit",
        MAX,
    );
    add(
        "zstd_decompresses_to_nothing",
        "message",
        Zstd,
        with(Zstd, &zstd::bulk::compress(b"", 3).expect("zstd")),
        "empty_unit",
        MAX,
    );
    add(
        "message_ends_after_marker",
        "message",
        Identity,
        b"\x00".to_vec(),
        "truncated",
        MAX,
    );
    add(
        "message_ends_in_length",
        "message",
        Identity,
        b"\x00\x83".to_vec(),
        "truncated",
        MAX,
    );
    add(
        "message_ends_in_payload",
        "message",
        Identity,
        b"\x00\x05{}\n".to_vec(),
        "truncated",
        MAX,
    );
    add(
        "stream_waits_in_payload",
        "stream",
        Identity,
        b"\x00\x03{}\n\x00\x05{}\n".to_vec(),
        "incomplete",
        MAX,
    );
    add(
        "too_many_units",
        "message",
        Identity,
        b"\x00\x03{}\n".repeat(MAX_UNITS_PER_MESSAGE + 1),
        "too_many_units",
        MAX,
    );
    specs
}

fn generate_vectors() -> Value {
    let frames = vector_frames();
    let find = |name: &str| {
        frames
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no frame vector {name}"))
    };
    let mut valid = Vec::new();
    for encoding in Encoding::ALL {
        for (name, direction, allowed, units) in valid_specs() {
            let mut message = BytesMut::new();
            let mut listed_units = Vec::new();
            for (codec, names) in units {
                let mut batch = BytesMut::new();
                let mut list = Vec::new();
                for frame_name in names {
                    let (_, frame_direction, json) = find(frame_name);
                    assert_eq!(frame_direction, direction, "{frame_name}");
                    let frame = delimited(json, direction, encoding);
                    list.push(listed(&frame, encoding));
                    batch.extend_from_slice(&frame);
                }
                let used = unit::seal_into(codec, &batch, 0, Levels::default(), &mut message);
                assert_eq!(
                    used, codec,
                    "{name}: {codec} does not make the batch smaller"
                );
                listed_units.push(json!({ "codec": codec.name(), "frames": list }));
            }
            valid.push(json!({
                "name": format!("{}_{}", encoding.name(), name),
                "direction": direction,
                "encoding": encoding.name(),
                "allowed": allowed.name(),
                "message_hex": hex::encode(&message),
                "units": listed_units,
            }));
        }
    }
    let invalid: Vec<Value> = invalid_specs()
        .into_iter()
        .map(|(name, mode, allowed, input, error, max)| {
            let mut v = json!({
                "name": name,
                "mode": mode,
                "allowed": allowed.name(),
                "input_hex": hex::encode(input),
                "error": error,
            });
            if max != MAX {
                v["max"] = Value::from(max);
            }
            v
        })
        .collect();
    json!({
        "description": "Unit vectors (spec/11-compression.md, 'Test vectors'). valid[]: opening `message_hex` as one transport message on a connection that negotiated `allowed` (max_message_size 65536) gives one batch per entry of `units`, in order; each unit's marker names `codec`, and its batch is exactly the concatenation of `frames` with their delimiters (JSON: each frame followed by LF; protobuf: the hex is the delimited frame). Compressed payloads are one encoder's output, not canonical: compare the decoded frames, never re-compress and compare bytes. Identity units are canonical. invalid[]: with `mode` `message`, opening `input_hex` as one transport message fails with kind `error`; with `mode` `stream`, pushing it into a unit stream decoder and taking units fails with `error`, or, when `error` is `incomplete`, stops waiting for more bytes. `max` (default 65536) is the receiver's max_message_size.",
        "valid": valid,
        "invalid": invalid,
    })
}

fn check_valid(v: &Value) {
    let name = str_of(v, "name");
    let encoding = Encoding::from_name(str_of(v, "encoding")).expect("encoding");
    let allowed = Codec::from_name(str_of(v, "allowed")).expect("allowed");
    let message = hex::decode(str_of(v, "message_hex")).expect("hex");
    let batches = open(&message, allowed, MAX).unwrap_or_else(|e| panic!("{name}: {e}"));
    let units = v["units"].as_array().expect("units");
    assert_eq!(batches.len(), units.len(), "{name}");
    // Walk the units once more to see each marker.
    let mut rest = &message[..];
    for (i, (batch, listed_unit)) in batches.iter().zip(units).enumerate() {
        let codec = Codec::from_name(str_of(listed_unit, "codec")).expect("codec");
        assert_eq!(rest[0], codec.marker(), "{name}: unit {i}");
        let header = 1 + varint_size(&rest[1..]);
        let payload_len = {
            let mut n = 0u64;
            for (k, b) in rest[1..header].iter().enumerate() {
                n |= u64::from(b & 0x7f) << (7 * k);
            }
            n as usize
        };
        let payload = &rest[header..header + payload_len];
        rest = &rest[header + payload_len..];
        let mut expected = Vec::new();
        for frame in listed_unit["frames"].as_array().expect("frames") {
            let frame = frame.as_str().expect("frame");
            match encoding {
                Encoding::Json => {
                    expected.extend_from_slice(frame.as_bytes());
                    expected.push(b'\n');
                }
                Encoding::Protobuf => expected.extend(hex::decode(frame).expect("hex")),
            }
        }
        assert_eq!(&batch[..], &expected[..], "{name}: unit {i}");
        // A stock decoder agrees.
        match codec {
            Codec::Identity => assert_eq!(payload, &expected[..]),
            Codec::DeflateRaw => assert_eq!(raw_inflate(payload), expected, "{name}"),
            Codec::Zstd => assert_eq!(
                zstd::bulk::decompress(payload, MAX).expect("zstd"),
                expected,
                "{name}"
            ),
        }
        // And the frames are frames.
        let limits = DecodeLimits::default();
        let count = match str_of(v, "direction") {
            "client" => codec::decode_batch::<ClientFrame>(batch, encoding, &limits)
                .collect::<Result<Vec<_>, _>>()
                .map(|f| f.len()),
            _ => codec::decode_batch::<ServerFrame>(batch, encoding, &limits)
                .collect::<Result<Vec<_>, _>>()
                .map(|f| f.len()),
        }
        .unwrap_or_else(|e| panic!("{name}: unit {i}: {e}"));
        assert_eq!(count, listed_unit["frames"].as_array().map_or(0, Vec::len));
    }
    assert!(rest.is_empty(), "{name}");
    // The same bytes as a stream, cut anywhere, give the same batches.
    for cut in 0..=message.len() {
        let (streamed, error, buffered) = stream(&message, &[cut], allowed, MAX);
        assert_eq!((error, buffered), (None, 0), "{name} cut at {cut}");
        assert_eq!(streamed, batches, "{name} cut at {cut}");
    }
}

fn first_error(v: &Value) -> &'static str {
    let allowed = Codec::from_name(str_of(v, "allowed")).expect("allowed");
    let input = hex::decode(str_of(v, "input_hex")).expect("hex");
    let max = v["max"].as_u64().map_or(MAX, |n| n as usize);
    match str_of(v, "mode") {
        "message" => open(&input, allowed, max).map_or_else(|e| e.kind(), |_| "none"),
        _ => {
            let mut results = Vec::new();
            // Every split in two gives the same result.
            for cut in 0..=input.len() {
                let (_, error, buffered) = stream(&input, &[cut], allowed, max);
                results.push(match error {
                    Some(e) => e.kind(),
                    None if buffered > 0 => "incomplete",
                    None => "none",
                });
            }
            results.dedup();
            assert_eq!(results.len(), 1, "{}: {results:?}", str_of(v, "name"));
            results[0]
        }
    }
}

#[test]
fn unit_vectors() {
    let generated = generate_vectors();
    if bless() {
        let text = serde_json::to_string_pretty(&generated).expect("serializable") + "\n";
        std::fs::write(vector_path(), text).expect("write units.json");
    }
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(vector_path()).expect("spec/vectors/units.json"),
    )
    .expect("JSON");
    let names = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|x| str_of(x, "name").to_owned())
            .collect()
    };
    for key in ["valid", "invalid"] {
        assert_eq!(
            names(&file, key),
            names(&generated, key),
            "{key}: units.json is stale; run with SWITCHBOARD_BLESS=1"
        );
    }
    for (v, here) in file["valid"]
        .as_array()
        .expect("valid")
        .iter()
        .zip(generated["valid"].as_array().expect("valid"))
    {
        check_valid(v);
        assert_eq!(
            v["units"],
            here["units"],
            "{}: stale frames",
            str_of(v, "name")
        );
        let identity_only = v["units"]
            .as_array()
            .expect("units")
            .iter()
            .all(|u| u["codec"] == "identity");
        if identity_only {
            // Identity units are canonical.
            assert_eq!(
                v["message_hex"],
                here["message_hex"],
                "{}",
                str_of(v, "name")
            );
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for v in file["invalid"].as_array().expect("invalid") {
        assert_eq!(first_error(v), str_of(v, "error"), "{}", str_of(v, "name"));
        kinds.insert(str_of(v, "error").to_owned());
    }
    let all = [
        "bad_marker",
        "unexpected_codec",
        "bad_length",
        "unit_too_large",
        "decompressed_too_large",
        "bad_compressed_data",
        "empty_unit",
        "truncated",
        "too_many_units",
        "incomplete",
    ];
    assert_eq!(
        kinds,
        all.iter().map(|k| k.to_string()).collect(),
        "every kind has a vector"
    );
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

fn any_codec() -> impl Strategy<Value = Codec> {
    prop::sample::select(Codec::ALL.to_vec())
}

fn any_encoding() -> impl Strategy<Value = Encoding> {
    prop::sample::select(Encoding::ALL.to_vec())
}

/// A few batches of real frames: (the codec to seal with, the frames).
fn batches() -> impl Strategy<Value = Vec<(Codec, Vec<ServerFrame>)>> {
    prop::collection::vec(
        (any_codec(), prop::collection::vec(server_frame(), 1..6)),
        1..5,
    )
}

/// Seals each batch (with its codec if `allowed` accepts it, else identity)
/// into one message; returns it with the batches in order.
fn seal_message(
    parts: &[(Codec, Vec<ServerFrame>)],
    encoding: Encoding,
    allowed: Codec,
    min_size: usize,
) -> (Bytes, Vec<Bytes>) {
    let mut message = BytesMut::new();
    let mut expected = Vec::new();
    for (codec, frames) in parts {
        let codec = if allowed.accepts(*codec) {
            *codec
        } else {
            Codec::Identity
        };
        let batch = batch_of(frames, encoding);
        unit::seal_into(codec, &batch, min_size, Levels::default(), &mut message);
        expected.push(batch);
    }
    (message.freeze(), expected)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn seal_then_open_gives_the_batch_back(
        server in prop::collection::vec(server_frame(), 1..12),
        client in prop::collection::vec(client_frame(), 1..12),
        min_size in prop::sample::select(vec![0, DEFAULT_MIN_SIZE]),
    ) {
        for encoding in Encoding::ALL {
            for batch in [batch_of(&server, encoding), batch_of(&client, encoding)] {
                for codec in Codec::ALL {
                    let sealed = unit::seal(codec, &batch, min_size, Levels::default());
                    let marker = sealed[0];
                    if codec == Codec::Identity || batch.len() < min_size {
                        prop_assert_eq!(marker, 0);
                    }
                    if marker != 0 {
                        prop_assert_eq!(marker, codec.marker());
                        prop_assert!(sealed.len() < batch.len() + 1 + varint_size(&sealed[1..]));
                    } else {
                        prop_assert_eq!(&sealed[1 + varint_size(&sealed[1..])..], &batch[..]);
                    }
                    let opened = unit::open_message(&sealed, codec, MAX);
                    prop_assert_eq!(opened, Ok(vec![batch.clone()]));
                }
            }
        }
    }

    #[test]
    fn messages_of_several_units_open_in_order_also_as_streams(
        parts in batches(),
        encoding in any_encoding(),
        allowed in any_codec(),
        min_size in prop::sample::select(vec![0, DEFAULT_MIN_SIZE]),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let (message, expected) = seal_message(&parts, encoding, allowed, min_size);
        let opened = unit::open_message(&message, allowed, MAX);
        prop_assert_eq!(opened, Ok(expected.clone()));
        let cuts = points(&message, &cuts);
        let (streamed, error, buffered) = stream(&message, &cuts, allowed, MAX);
        prop_assert_eq!(streamed, expected);
        prop_assert_eq!(error, None);
        prop_assert_eq!(buffered, 0);
        // Refused, whole or streamed, on a connection that did not
        // negotiate a codec it uses.
        for other in Codec::ALL {
            let used: Vec<Codec> = message_codecs(&message);
            let refused = used.iter().find(|c| !other.accepts(**c));
            let result = unit::open_message(&message, other, MAX);
            match refused {
                Some(codec) => prop_assert_eq!(result, Err(UnitError::UnexpectedCodec(*codec))),
                None => prop_assert!(result.is_ok()),
            }
            assert_stream_matches_message(&message, &cuts, other, MAX);
        }
    }

    #[test]
    fn corrupted_units_are_errors_or_batches_within_the_limit(
        parts in batches(),
        encoding in any_encoding(),
        allowed in any_codec(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        cut in any::<Index>(),
        cuts in prop::collection::vec(any::<Index>(), 0..4),
        max in prop::sample::select(vec![64, 1024, MAX]),
    ) {
        let (message, _) = seal_message(&parts, encoding, allowed, 0);
        let mut corrupted = message.to_vec();
        for (at, byte) in &flips {
            let i = at.index(corrupted.len());
            corrupted[i] ^= byte;
        }
        corrupted.truncate(cut.index(corrupted.len() + 1));
        // Warm the decompression contexts so that the peak is the unit's own.
        let _ = unit::open_message(&unit::seal(Codec::DeflateRaw, &[b'x'; 300], 0, Levels::default()), Codec::DeflateRaw, MAX);
        let _ = unit::open_message(&unit::seal(Codec::Zstd, &[b'x'; 300], 0, Levels::default()), Codec::Zstd, MAX);
        let input = Bytes::from(corrupted);
        let cuts = points(&input, &cuts);
        for allowed in Codec::ALL {
            let (result, peak) = peak_heap(|| unit::open_message(&input, allowed, max));
            // The batches (at most `max` bytes) and the list of them.
            prop_assert!(peak <= 2 * max + 4096, "peak {} with max {}", peak, max);
            if let Ok(batches) = result {
                prop_assert!(batches.iter().all(|b| !b.is_empty()));
                prop_assert!(batches.iter().map(Bytes::len).sum::<usize>() <= max);
            }
            assert_stream_matches_message(&input, &cuts, allowed, max);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        cuts in prop::collection::vec(any::<Index>(), 0..4),
    ) {
        let cuts = points(&bytes, &cuts);
        for allowed in Codec::ALL {
            let _ = open(&bytes, allowed, 1024);
            assert_stream_matches_message(&bytes, &cuts, allowed, 1024);
        }
        // With a valid header in front, the bytes are the payload.
        for codec in [Codec::DeflateRaw, Codec::Zstd] {
            let unit = framed(codec, &bytes);
            let _ = open(&unit, codec, 1024);
            assert_stream_matches_message(&unit, &cuts, codec, 1024);
        }
    }
}

/// The codec of each unit of a well-formed message.
fn message_codecs(message: &[u8]) -> Vec<Codec> {
    let mut rest = message;
    let mut codecs = Vec::new();
    while !rest.is_empty() {
        codecs.push(Codec::from_marker(rest[0]).expect("marker"));
        let header = 1 + varint_size(&rest[1..]);
        let mut len = 0usize;
        for (k, b) in rest[1..header].iter().enumerate() {
            len |= usize::from(b & 0x7f) << (7 * k);
        }
        rest = &rest[header + len..];
    }
    codecs
}
