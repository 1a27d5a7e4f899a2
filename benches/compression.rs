//! Bytes on the wire and server CPU per delivery under each compression mode,
//! for realistic payload streams, through the real hub fan-out path
//! (encode once per framing, compress once per (framing, codec), delta once
//! per publication).
//!
//! `cargo bench --bench compression` prints one table; ratios are against
//! uncompressed JSON. CPU is the fan-out thread's time per delivery: encoding,
//! compression, delta and queueing, for 100 subscribers of one framing per
//! run; "compressions" counts compressions per publication (1: compressed
//! once for all subscribers; 0: sent as is, too small or not smaller). Options: `--subscribers N`, `--publications N`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard::codec::Encoding;
use switchboard::codec::unit::{Codec, Levels};
use switchboard::engine::Outbox;
use switchboard::engine::hub::{ConnId, Hub};
use switchboard::engine::outbox::Units;
use switchboard::wire::v1::{Publication, ServerFrame, server_frame::Body};

/// A stream of payloads as an application would publish them.
struct Workload {
    name: &'static str,
    make: fn(u32) -> String,
}

fn progress(i: u32) -> String {
    format!(
        "{{\"build\":\"b-7731\",\"stage\":\"compile\",\"step\":{},\"total\":48,\"percent\":{:.1},\"message\":\"Compiling crate-{} v1.0.{}\",\"elapsedMs\":{}}}",
        i % 48,
        f64::from(i % 48) * 100.0 / 48.0,
        i % 31,
        i % 7,
        12_000 + i * 250
    )
}

fn chat(i: u32) -> String {
    const LINES: [&str; 4] = [
        "Deploy is green on staging, promoting to production after the smoke tests finish.",
        "Can someone look at the flaky websocket reconnect test? It failed twice this morning.",
        "Lunch at noon? The place around the corner has the soup again, and it is raining.",
        "I pushed the fix for the history offset bug, the reviewer is assigned, CI running.",
    ];
    format!(
        "{{\"id\":\"m-{i}\",\"user\":{{\"id\":\"u-{}\",\"name\":\"User {}\",\"avatar\":\"https://cdn.example.com/a/{}.png\"}},\"text\":\"{}\",\"ts\":{}}}",
        i % 9,
        i % 9,
        i % 9,
        LINES[i as usize % LINES.len()],
        1_764_547_200_000u64 + u64::from(i) * 1_300
    )
}

fn llm_chunk(i: u32) -> String {
    const TOKENS: [&str; 6] = [
        " the",
        " server",
        " encodes",
        " each",
        " publication",
        " once",
    ];
    format!(
        "{{\"id\":\"chatcmpl-9x\",\"index\":{i},\"delta\":\"{}\"}}",
        TOKENS[i as usize % TOKENS.len()]
    )
}

fn state_document(i: u32) -> String {
    // About 2 KiB; one task's progress changes per publication.
    let current = i as usize % 24;
    let tasks: Vec<String> = (0..24)
        .map(|t| {
            let progress = if t < current {
                100
            } else if t == current {
                (i * 7) % 100
            } else {
                0
            };
            format!(
                "{{\"id\":\"task-{t}\",\"title\":\"Compile crate {t}\",\"state\":\"{}\",\"progress\":{progress}}}",
                if t < current { "done" } else if t == current { "running" } else { "queued" }
            )
        })
        .collect();
    format!(
        "{{\"build\":\"b-7731\",\"version\":{i},\"tasks\":[{}]}}",
        tasks.join(",")
    )
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "progress update",
        make: progress,
    },
    Workload {
        name: "chat message",
        make: chat,
    },
    Workload {
        name: "LLM token chunk",
        make: llm_chunk,
    },
    Workload {
        name: "2 KiB state document",
        make: state_document,
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    None,
    Codec(Codec),
    /// Delta publications, then the codec (identity: delta alone).
    Delta(Codec),
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::None => "none".into(),
            Mode::Codec(c) => c.name().into(),
            Mode::Delta(Codec::Identity) => "delta".into(),
            Mode::Delta(c) => format!("delta+{}", c.name()),
        }
    }
}

struct Measured {
    bytes_per_delivery: f64,
    cpu_per_delivery: Duration,
    /// Compressions per publication: 1 when compressed once, 0 when sent
    /// as is (too small, or not smaller compressed).
    compressions: f64,
}

fn measure(
    workload: &Workload,
    encoding: Encoding,
    mode: Mode,
    subscribers: usize,
    publications: u32,
) -> Measured {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let hub = Hub::default();
    let room: Arc<str> = "doc:bench".into();
    let mut outboxes = Vec::new();
    for i in 0..subscribers {
        let mut outbox = Outbox::new(64 << 20, encoding);
        let codec = match mode {
            Mode::None | Mode::Delta(Codec::Identity) => None,
            Mode::Codec(c) | Mode::Delta(c) => Some(c),
        };
        if let Some(codec) = codec {
            outbox = outbox.with_units(Units {
                codec,
                min_size: 256,
                levels: Levels::default(),
            });
        }
        let outbox = Arc::new(outbox);
        let conn: ConnId = format!("c{i}").into();
        hub.add_pending(&room, &conn, outbox.clone(), matches!(mode, Mode::Delta(_)));
        hub.activate("doc:bench", &conn, 0);
        outboxes.push(outbox);
    }
    let mut cpu = Duration::ZERO;
    let mut bytes = 0usize;
    let mut deliveries = 0usize;
    let mut compressions = 0usize;
    let mut batch = Vec::new();
    for i in 0..publications {
        let publication = Publication {
            room: room.to_string(),
            offset: u64::from(i) + 1,
            data: Bytes::from((workload.make)(i)),
            time: 1_764_547_200_000 + i64::from(i),
            ..Default::default()
        };
        let started = Instant::now();
        let fanout = if matches!(mode, Mode::Delta(_)) {
            hub.broadcast_delta("doc:bench", &publication, None)
        } else {
            let frame = ServerFrame {
                id: 0,
                body: Some(Body::Publication(publication.clone())),
            };
            hub.broadcast("doc:bench", &frame, publication.offset, None, false)
        };
        cpu += started.elapsed();
        deliveries += fanout.delivered;
        compressions += fanout.compressions;
        for outbox in &outboxes {
            batch.clear();
            runtime.block_on(outbox.next_batch(&mut batch));
            bytes += batch.iter().map(Bytes::len).sum::<usize>();
        }
    }
    Measured {
        bytes_per_delivery: bytes as f64 / deliveries as f64,
        cpu_per_delivery: cpu / deliveries as u32,
        compressions: compressions as f64 / f64::from(publications),
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once quickly.
    let quick = std::env::args().any(|a| a == "--test");
    let subscribers = arg("--subscribers", if quick { 4 } else { 100 });
    let publications = arg("--publications", if quick { 8 } else { 400 }) as u32;
    let modes = [
        Mode::None,
        Mode::Codec(Codec::DeflateRaw),
        Mode::Codec(Codec::Zstd),
        Mode::Delta(Codec::Identity),
        Mode::Delta(Codec::DeflateRaw),
    ];
    println!(
        "compression: {subscribers} subscribers of one framing, {publications} publications per workload; \
         bytes and fan-out CPU per delivery (ratio to uncompressed JSON)"
    );
    for workload in &WORKLOADS {
        let sample = (workload.make)(7);
        println!("\n{} (payload ~{} B)", workload.name, sample.len());
        println!(
            "  {:<9} {:<18} {:>10} {:>8} {:>12} {:>8} {:>13}",
            "framing", "mode", "bytes", "ratio", "CPU ns", "ratio", "compressions"
        );
        let baseline = measure(
            workload,
            Encoding::Json,
            Mode::None,
            subscribers,
            publications,
        );
        for encoding in Encoding::ALL {
            for mode in modes {
                let m = if encoding == Encoding::Json && mode == Mode::None {
                    Measured {
                        bytes_per_delivery: baseline.bytes_per_delivery,
                        cpu_per_delivery: baseline.cpu_per_delivery,
                        compressions: baseline.compressions,
                    }
                } else {
                    measure(workload, encoding, mode, subscribers, publications)
                };
                println!(
                    "  {:<9} {:<18} {:>10.1} {:>8.3} {:>12} {:>8.2} {:>13.2}",
                    encoding.name(),
                    mode.name(),
                    m.bytes_per_delivery,
                    m.bytes_per_delivery / baseline.bytes_per_delivery,
                    m.cpu_per_delivery.as_nanos(),
                    m.cpu_per_delivery.as_secs_f64() / baseline.cpu_per_delivery.as_secs_f64(),
                    m.compressions
                );
            }
        }
    }
}
