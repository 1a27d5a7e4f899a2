//! Codec micro-benchmarks: the cost of the hot path of fan-out, a publication
//! push, in both framings (spec/02-framing.md).
//!
//! - `push/{encode,decode}/{json,protobuf}`: one `ServerFrame` carrying a
//!   typical chat publication (room, offset, a ~200-byte JSON payload, the
//!   publisher's `ClientInfo` with a small JSON `info`, and a time);
//! - `batch100/{encode,decode}/{json,protobuf}`: one transport message of 100
//!   such pushes (offsets and texts vary), encoded with `encode_into` into a
//!   fresh buffer, decoded with `decode_batch`.
//!
//! Throughput is in frames (`Throughput::Elements`), so criterion's
//! "thrpt" line is frames per second and time/frame is its inverse; the
//! bytes per frame of each framing are printed once at start.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use switchboard::codec::{self, DecodeLimits, Encoding};
use switchboard::wire::v1::{ClientInfo, Publication, ServerFrame, server_frame::Body};

/// Frames in the batch benchmarks: the default `max_frames_per_batch`.
const BATCH: usize = 100;

/// A chat message as an application would publish it: a JSON object of
/// about 200 bytes.
fn chat_payload(n: usize) -> Bytes {
    Bytes::from(format!(
        concat!(
            r#"{{"type":"message","id":"m-{:06}","text":"Deploy {} finished, dashboards look "#,
            r#"healthy; ping me if anything looks odd.","mentions":["bob","carol"],"#,
            r#""reply_to":null,"edited":false,"attachments":[]}}"#
        ),
        100_000 + n,
        n % 1000
    ))
}

/// The push a subscriber receives for publication `n` of a chat room.
fn publication_push(n: usize) -> ServerFrame {
    ServerFrame {
        id: 0,
        body: Some(Body::Publication(Publication {
            room: "chat:lobby".into(),
            offset: 12_345 + n as u64,
            data: chat_payload(n),
            info: Some(ClientInfo {
                user: "user-4821".into(),
                client: "c-9b1f0e7a".into(),
                info: Bytes::from_static(br#"{"name":"Ann","avatar":"a/4821.png"}"#),
            }),
            tags: Default::default(),
            time: 1_767_225_600_123 + n as i64,
            delta: false,
        })),
    }
}

fn batch_message(frames: &[ServerFrame], encoding: Encoding) -> Bytes {
    let mut out = BytesMut::new();
    for frame in frames {
        codec::encode_into(frame, encoding, &mut out);
    }
    out.freeze()
}

/// Prints the sizes the benchmark note quotes, once.
fn print_sizes() {
    let push = publication_push(0);
    let frames: Vec<ServerFrame> = (0..BATCH).map(publication_push).collect();
    eprintln!("publication push: payload {} bytes", chat_payload(0).len());
    for encoding in Encoding::ALL {
        let one = codec::encode(&push, encoding);
        let batch = batch_message(&frames, encoding);
        eprintln!(
            "  {:<8}: {} bytes/frame with delimiter; batch of {BATCH}: {} bytes ({:.1} bytes/frame)",
            encoding.name(),
            one.len(),
            batch.len(),
            batch.len() as f64 / BATCH as f64
        );
    }
}

fn push(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let frame = publication_push(0);
    let mut group = c.benchmark_group("push");
    group.throughput(Throughput::Elements(1));
    for encoding in Encoding::ALL {
        group.bench_function(BenchmarkId::new("encode", encoding.name()), |b| {
            b.iter(|| codec::encode(black_box(&frame), encoding))
        });
        let bytes = codec::encode(&frame, encoding);
        group.bench_function(BenchmarkId::new("decode", encoding.name()), |b| {
            b.iter(|| {
                let (frame, used) =
                    codec::decode_frame::<ServerFrame>(black_box(&bytes), encoding, &limits)
                        .expect("the push decodes");
                assert_eq!(used, bytes.len());
                frame
            })
        });
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let frames: Vec<ServerFrame> = (0..BATCH).map(publication_push).collect();
    let mut group = c.benchmark_group("batch100");
    group.throughput(Throughput::Elements(BATCH as u64));
    for encoding in Encoding::ALL {
        group.bench_function(BenchmarkId::new("encode", encoding.name()), |b| {
            b.iter(|| batch_message(black_box(&frames), encoding))
        });
        let message = batch_message(&frames, encoding);
        group.bench_function(BenchmarkId::new("decode", encoding.name()), |b| {
            b.iter(|| {
                let mut decoded = 0;
                for frame in
                    codec::decode_batch::<ServerFrame>(black_box(&message), encoding, &limits)
                {
                    black_box(frame.expect("the batch decodes"));
                    decoded += 1;
                }
                assert_eq!(decoded, BATCH);
            })
        });
    }
    group.finish();
}

fn main() {
    print_sizes();
    let mut criterion = Criterion::default().configure_from_args();
    push(&mut criterion);
    batch(&mut criterion);
    criterion.final_summary();
}
