//! Compression unit benchmarks (spec/11-compression.md): what compressing a
//! publication once costs the server, and what opening it costs a receiver.
//!
//! Two publication pushes in the JSON framing, each a batch of one frame:
//!
//! - `state`: a ~2 KiB JSON state document (a game table: players, seats,
//!   chips, last actions) as a publication's data;
//! - `chat`: a ~300-byte chat message push (the frame with its room, offset,
//!   publisher info and time).
//!
//! Benchmarks, for both documents and both codecs:
//!
//! - `seal/<codec>/<doc>`: [`unit::seal`] with this thread's reused contexts
//!   and the default levels (the server's path);
//! - `seal_fresh/<codec>/<doc>`: the same with a new [`Compressor`] per call,
//!   to show what reusing the contexts saves;
//! - `open/<codec>/<doc>`: [`unit::open_message`] of the sealed unit (64 KiB
//!   limit); `open/identity/<doc>` is the baseline.
//!
//! Throughput is in uncompressed batch bytes. The compressed sizes, for both
//! framings and a few levels, are printed once at start.
//!
//! Run: `cargo bench --bench units -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use switchboard::codec::unit::{self, Codec, Compressor, Levels};
use switchboard::codec::{self, Encoding};
use switchboard::wire::v1::{ClientInfo, Publication, ServerFrame, server_frame::Body};

/// The receiver's limit: the default `max_message_size`.
const MAX: usize = 64 * 1024;

/// A ~2 KiB JSON state document: the kind of payload a room's state
/// publication carries.
fn state_document() -> Bytes {
    let mut doc = String::from(
        r#"{"type":"state","table":"table-17","version":48213,"round":"turn","pot":4250,"players":["#,
    );
    for i in 0..8 {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&format!(
            concat!(
                r#"{{"id":"user-{:04}","name":"Player {}","seat":{},"chips":{},"status":"{}","#,
                r#""cards":[],"lastAction":{{"kind":"{}","amount":{},"at":"2026-01-01T12:00:{:02}Z"}},"#,
                r#""stats":{{"hands":{},"won":{},"vpip":0.{:02}}}}}"#
            ),
            4000 + i * 37,
            i,
            i,
            1000 + i * 250,
            if i % 3 == 0 { "active" } else { "waiting" },
            ["raise", "call", "fold", "check"][i % 4],
            50 * i,
            i * 3,
            120 + i * 7,
            30 + i * 3,
            10 + i * 4
        ));
    }
    doc.push_str(
        r#"],"board":["As","Kd","7h","2c"],"dealer":3,"blinds":{"small":25,"big":50},"timers":{"turn":30,"bank":120}}"#,
    );
    Bytes::from(doc)
}

fn push(data: Bytes, offset: u64) -> ServerFrame {
    ServerFrame {
        id: 0,
        body: Some(Body::Publication(Publication {
            room: "chat:lobby".into(),
            offset,
            data,
            info: Some(ClientInfo {
                user: "user-4821".into(),
                client: "c-9b1f0e7a".into(),
                info: Bytes::from_static(br#"{"name":"Ann","avatar":"a/4821.png"}"#),
            }),
            time: 1_767_225_600_123,
            ..Default::default()
        })),
    }
}

/// The two documents as publication pushes: (name, frame).
fn documents() -> [(&'static str, ServerFrame); 2] {
    let chat = Bytes::from_static(
        br#"{"type":"message","id":"m-100042","text":"Deploy 42 finished, dashboards look healthy; ping me if anything looks odd.","mentions":["bob","carol"],"reply_to":null}"#,
    );
    [
        ("state", push(state_document(), 48_213)),
        ("chat", push(chat, 12_345)),
    ]
}

/// Prints the compressed sizes the benchmark note quotes, once.
fn print_sizes() {
    for (name, frame) in documents() {
        for encoding in Encoding::ALL {
            let batch = codec::encode(&frame, encoding);
            let mut line = format!("{name:>5} {:<8} {:>5} bytes:", encoding.name(), batch.len());
            for deflate in [1, 6, 9] {
                let levels = Levels {
                    deflate,
                    ..Levels::default()
                };
                let sealed = unit::seal(Codec::DeflateRaw, &batch, 0, levels);
                line += &format!(" deflate-raw/{deflate} {}", sealed.len());
            }
            for zstd in [1, 3, 9] {
                let levels = Levels {
                    zstd,
                    ..Levels::default()
                };
                let sealed = unit::seal(Codec::Zstd, &batch, 0, levels);
                line += &format!(" zstd/{zstd} {}", sealed.len());
            }
            eprintln!("{line}  (unit bytes, header included)");
        }
    }
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    for (name, frame) in documents() {
        let batch = codec::encode(&frame, Encoding::Json);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        for codec in [Codec::DeflateRaw, Codec::Zstd] {
            group.bench_function(BenchmarkId::new(codec.name(), name), |b| {
                b.iter(|| {
                    let sealed = unit::seal(codec, black_box(&batch), 0, Levels::default());
                    assert_eq!(sealed[0], codec.marker());
                    sealed
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("seal_fresh");
    for (name, frame) in documents() {
        let batch = codec::encode(&frame, Encoding::Json);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        for codec in [Codec::DeflateRaw, Codec::Zstd] {
            group.bench_function(BenchmarkId::new(codec.name(), name), |b| {
                b.iter(|| {
                    let mut out = BytesMut::new();
                    Compressor::new().seal_into(
                        codec,
                        black_box(&batch),
                        0,
                        Levels::default(),
                        &mut out,
                    );
                    out
                })
            });
        }
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    for (name, frame) in documents() {
        let batch = codec::encode(&frame, Encoding::Json);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        for codec in Codec::ALL {
            let sealed = unit::seal(codec, &batch, 0, Levels::default());
            group.bench_function(BenchmarkId::new(codec.name(), name), |b| {
                b.iter(|| {
                    let batches =
                        unit::open_message(black_box(&sealed), codec, MAX).expect("the unit opens");
                    assert_eq!(batches[0].len(), batch.len());
                    batches
                })
            });
        }
    }
    group.finish();
}

fn main() {
    print_sizes();
    let mut criterion = Criterion::default().configure_from_args();
    seal(&mut criterion);
    open(&mut criterion);
    criterion.final_summary();
}
