//! Delta publications (spec/12-delta.md): the test vectors, realistic
//! documents, then properties of the encoder and the bounded decoder.

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use switchboard::codec::delta::{self, DeltaError};

use super::alloc::peak_heap;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// Encodes, checks that the delta applies back to `target` under a limit of
/// exactly its length, and returns it.
fn round_trip(base: &[u8], target: &[u8]) -> Vec<u8> {
    let delta = delta::encode(base, target);
    assert_eq!(
        delta::apply(base, &delta, target.len()).as_deref(),
        Ok(target),
        "delta {delta:02x?}"
    );
    delta
}

/// A JSON state document of about `size` bytes: a few nested fields, then
/// numbered entries.
fn state_document(version: u32, progress: u32, size: usize) -> String {
    let mut doc = format!(
        r#"{{"room":"ops:deploy-7","version":{version},"progress":{progress},"status":"running","owner":{{"user":"ann","client":"c-7f3a"}},"items":["#
    );
    let mut i = 0;
    while doc.len() < size {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&format!(
            r#"{{"id":{i},"name":"step-{i:03}","host":"node-{:02}.eu-west","done":{},"ms":{}}}"#,
            i % 17,
            i < 5,
            (i * 7919) % 4000
        ));
        i += 1;
    }
    doc.push_str("]}");
    doc
}

/// A leaderboard: `(user, score)` rows, highest score first.
fn leaderboard(rows: &[(String, u32)]) -> String {
    let mut sorted = rows.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rows: Vec<String> = sorted
        .iter()
        .enumerate()
        .map(|(rank, (user, score))| {
            format!(r#"{{"rank":{},"user":"{user}","score":{score}}}"#, rank + 1)
        })
        .collect();
    format!(r#"{{"board":"weekly","rows":[{}]}}"#, rows.join(","))
}

#[test]
fn realistic_documents_give_small_deltas() {
    // A 2 KiB state document where one field changes.
    let base = state_document(41, 10, 2048);
    let target = state_document(41, 11, 2048);
    let d = round_trip(base.as_bytes(), target.as_bytes());
    println!(
        "state doc, one field: {} -> {} bytes",
        target.len(),
        d.len()
    );
    assert!(d.len() < 24, "{}", d.len());
    assert!(delta::worth_it(d.len(), target.len()));

    // Two fields far apart change.
    let target = state_document(42, 11, 2048).replace(
        r#""id":20,"name":"step-020","host":"node-03.eu-west","done":false"#,
        r#""id":20,"name":"step-020","host":"node-03.eu-west","done":true"#,
    );
    let d = round_trip(base.as_bytes(), target.as_bytes());
    println!(
        "state doc, two fields: {} -> {} bytes",
        target.len(),
        d.len()
    );
    assert!(d.len() < 40, "{}", d.len());

    // A leaderboard of 100 rows where three scores change and rows move.
    let mut rows: Vec<(String, u32)> = (0..100u32)
        .map(|i| (format!("player{:03}", (i * 37) % 101), 10_000 - i * 97))
        .collect();
    let base = leaderboard(&rows);
    rows[50].1 += 3000; // moves up about 30 places
    rows[7].1 += 5; // changes in place
    rows[90].1 = 1; // moves to the bottom
    let target = leaderboard(&rows);
    let d = round_trip(base.as_bytes(), target.as_bytes());
    println!("leaderboard: {} -> {} bytes", target.len(), d.len());
    assert!(d.len() * 5 < target.len(), "{}", d.len());
}

#[test]
fn unrelated_and_empty_inputs_stay_small() {
    let target: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    // No match: one INSERT, and the overhead of a header.
    assert!(round_trip(b"", &target).len() <= target.len() + 10);
    assert!(round_trip(b"something else", &target).len() <= target.len() + 10);
    assert!(!delta::worth_it(target.len() + 7, target.len()));
    assert_eq!(round_trip(&target, b""), [0, 0, 0, 0, 0]);
}

#[test]
fn a_mebibyte_encodes_in_linear_time() {
    // Half-compressible data with 200 scattered edits, and a repetitive
    // pair that defeats a naive index.
    let mut state = 0x1234_5678_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let base: Vec<u8> = (0..1 << 20).map(|_| (next() % 64) as u8).collect();
    let mut target = base.clone();
    for _ in 0..200 {
        let at = next() as usize % (target.len() - 10);
        target[at] ^= 0x40;
        let insert_at = next() as usize % target.len();
        target.insert(insert_at, b'!');
    }
    let start = std::time::Instant::now();
    let d = round_trip(&base, &target);
    println!("1 MiB, 400 edits: {} bytes, {:?}", d.len(), start.elapsed());
    assert!(d.len() < 400 * 16, "{}", d.len());

    let base = b"abcdefghijklmnop".repeat(1 << 16);
    let target = b"abcdefghijklmnopq".repeat(1 << 16);
    let start = std::time::Instant::now();
    round_trip(&base, &target);
    let zeros = vec![0u8; 1 << 20];
    let mut ones = zeros.clone();
    ones[1 << 19] = 1;
    round_trip(&zeros, &ones);
    round_trip(&ones, &zeros[1..]);
    println!("1 MiB repetitive: {:?}", start.elapsed());
}

/// The default `max_len` of a vector without one.
const VECTOR_MAX_LEN: usize = 1 << 20;

fn hex_of(v: &Value, key: &str) -> Vec<u8> {
    let text = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"));
    hex::decode(text).unwrap_or_else(|e| panic!("{key} of {v}: {e}"))
}

#[test]
fn spec_vectors() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("spec/vectors/delta.json");
    let text = std::fs::read_to_string(path).expect("spec/vectors/delta.json");
    let vectors: Vec<Value> = serde_json::from_str(&text).expect("vector file is JSON");
    let (mut valid, mut kinds) = (0, std::collections::BTreeSet::new());
    for v in &vectors {
        let name = v["name"].as_str().expect("name");
        let base = hex_of(v, "base_hex");
        let d = hex_of(v, "delta_hex");
        let max_len = v["max_len"].as_u64().map_or(VECTOR_MAX_LEN, |n| n as usize);
        let result = delta::apply(&base, &d, max_len);
        if let Some(error) = v["error"].as_str() {
            assert!(v.get("target_hex").is_none(), "{name}: target and error");
            let got = result.map_err(|e| e.kind());
            assert_eq!(got, Err(error), "{name}");
            kinds.insert(error);
        } else {
            let target = hex_of(v, "target_hex");
            assert_eq!(result.as_deref(), Ok(&target[..]), "{name}");
            // The reference encoder's delta for the same pair works too.
            round_trip(&base, &target);
            valid += 1;
        }
    }
    assert!(valid >= 6, "{valid} valid vectors");
    let all = [
        "too_large",
        "truncated",
        "bad_varint",
        "empty_op",
        "copy_out_of_range",
        "overflow",
        "short",
        "checksum",
    ];
    assert_eq!(
        kinds,
        all.into_iter().collect(),
        "every error kind has a vector"
    );
}

#[test]
fn a_huge_declared_length_is_rejected_before_allocating() {
    // target_len = 2^63 - 1, then an INSERT that would fill it.
    let mut d = vec![0xff; 8];
    d.push(0x7f);
    d.extend_from_slice(&[0, 0, 0, 0, 0x03, b'x']);
    let (result, peak) = peak_heap(|| delta::apply(b"", &d, 1 << 20));
    assert_eq!(
        result,
        Err(DeltaError::TooLarge {
            declared: (1 << 63) - 1,
            limit: 1 << 20
        })
    );
    assert_eq!(result.unwrap_err().kind(), "too_large");
    assert_eq!(peak, 0, "allocated before rejecting");
}

#[test]
fn memory_follows_the_result_not_the_declaration() {
    // Declares 1 MiB (allowed) but holds 3 bytes: at most delta + base is
    // reserved up front.
    let mut d = Vec::new();
    put_varint(&mut d, 1 << 20);
    d.extend_from_slice(&[0, 0, 0, 0, 0x07, b'a', b'b', b'c']);
    let (result, peak) = peak_heap(|| delta::apply(b"0123456789", &d, 1 << 20));
    assert_eq!(result.map_err(|e| e.kind()), Err("short"));
    assert!(peak <= d.len() + 10, "peak {peak}");

    // 1 MiB from 4096 COPYs of a 256-byte base: the buffer grows, but never
    // beyond the result.
    let base: Vec<u8> = (0..=255u8).collect();
    let target = base.repeat(4096);
    let mut d = Vec::new();
    put_varint(&mut d, target.len() as u64);
    d.extend_from_slice(&crc32fast::hash(&target).to_le_bytes());
    for _ in 0..4096 {
        d.extend_from_slice(&[0x80, 0x04, 0x00]); // COPY 256 bytes at 0
    }
    let (result, peak) = peak_heap(|| delta::apply(&base, &d, target.len()));
    assert!(result.as_deref() == Ok(&target[..]));
    assert!(peak <= target.len(), "peak {peak} for {}", target.len());
    // The same delta under a smaller limit fails before building anything.
    let (result, peak) = peak_heap(|| delta::apply(&base, &d, target.len() - 1));
    assert_eq!(result.map_err(|e| e.kind()), Err("too_large"));
    assert_eq!(peak, 0);
}

#[derive(Clone, Debug)]
enum Edit {
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Replace(Index, Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let bytes = proptest::collection::vec(any::<u8>(), 1..24);
    prop_oneof![
        (any::<Index>(), bytes.clone()).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<Index>(), 1..24usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<Index>(), bytes).prop_map(|(at, b)| Edit::Replace(at, b)),
    ]
}

/// Applies the edits in order; returns the result and the bytes they added.
fn edited(base: &[u8], edits: &[Edit]) -> (Vec<u8>, usize) {
    let mut out = base.to_vec();
    let mut added = 0;
    for e in edits {
        match e {
            Edit::Insert(at, bytes) => {
                let at = at.index(out.len() + 1);
                out.splice(at..at, bytes.iter().copied());
                added += bytes.len();
            }
            Edit::Delete(at, n) => {
                let at = at.index(out.len() + 1);
                let end = (at + n).min(out.len());
                out.drain(at..end);
            }
            Edit::Replace(at, bytes) => {
                let at = at.index(out.len() + 1);
                let end = (at + bytes.len()).min(out.len());
                out.splice(at..end, bytes.iter().copied());
                added += bytes.len();
            }
        }
    }
    (out, added)
}

/// Bytes: random, or from a small alphabet (long accidental matches), or
/// runs (repetition).
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        proptest::collection::vec(0u8..3, 0..max),
        proptest::collection::vec((0u8..4, 1..40usize), 0..max / 20).prop_map(|runs| runs
            .into_iter()
            .flat_map(|(b, n)| std::iter::repeat_n(b, n))
            .collect()),
    ]
}

/// A JSON-ish document of at least 2 KiB: `(key, value)` fields.
fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    let value = prop_oneof![
        any::<i32>().prop_map(|n| n.to_string()),
        "[a-zA-Z0-9 _.-]{0,40}".prop_map(|s| format!("\"{s}\"")),
        any::<bool>().prop_map(|b| b.to_string()),
    ];
    proptest::collection::vec(("[a-z_]{3,12}", value), 90..140)
}

fn to_json(fields: &[(String, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unrelated_inputs_round_trip(base in bytes(2048), target in bytes(2048)) {
        let d = round_trip(&base, &target);
        // Never much worse than sending the target: every COPY but the
        // prefix and suffix covers more than it costs.
        prop_assert!(d.len() <= target.len() + 32, "{} for {}", d.len(), target.len());
    }

    #[test]
    fn edited_inputs_round_trip_with_small_deltas(
        base in proptest::collection::vec(any::<u8>(), 0..4096),
        edits in proptest::collection::vec(edit(), 0..8),
    ) {
        let (target, added) = edited(&base, &edits);
        let d = round_trip(&base, &target);
        // Random bytes match only where they were kept: each edit costs its
        // new bytes, a few operations, and at most a few blocks that the
        // index misses around it.
        let bound = 5 + 10 + added + edits.len() * 80;
        prop_assert!(d.len() <= bound, "{} > {bound} for {} edits", d.len(), edits.len());
    }

    #[test]
    fn edited_repetitive_inputs_round_trip(base in bytes(4096), edits in proptest::collection::vec(edit(), 0..8)) {
        let (target, _) = edited(&base, &edits);
        let d = round_trip(&base, &target);
        prop_assert!(d.len() <= target.len() + 32, "{} for {}", d.len(), target.len());
    }

    #[test]
    fn one_changed_field_of_a_2k_document_is_a_tiny_delta(
        fields in fields(),
        which in any::<Index>(),
        value in "[a-z0-9]{1,30}",
    ) {
        let base = to_json(&fields);
        prop_assume!(base.len() >= 2048);
        let mut changed = fields.clone();
        changed[which.index(fields.len())].1 = format!("\"{value}\"");
        let target = to_json(&changed);
        let d = round_trip(base.as_bytes(), target.as_bytes());
        prop_assert!(d.len() * 10 < target.len(), "{} of {}", d.len(), target.len());
        prop_assert!(d.len() <= 5 + 2 * 6 + 3 + value.len() + 2, "{}", d.len());
    }

    #[test]
    fn arbitrary_deltas_never_panic_and_respect_the_limit(
        base in bytes(256),
        d in proptest::collection::vec(any::<u8>(), 0..256),
        max_len in 0..1024usize,
    ) {
        let (result, peak) = peak_heap(|| delta::apply(&base, &d, max_len));
        if let Ok(result) = result {
            prop_assert!(result.len() <= max_len);
        }
        // Never more than the declared length, nor than the inputs allow
        // up front.
        prop_assert!(peak <= max_len, "peak {} above max_len {}", peak, max_len);
    }

    #[test]
    fn structured_deltas_never_panic_and_respect_the_limit(
        base in bytes(64),
        target_len in 0..300u64,
        ops in proptest::collection::vec((any::<bool>(), 0..80u64, 0..80u64, any::<u8>()), 0..12),
        max_len in 0..300usize,
    ) {
        // Plausible operations, mostly valid, ending in a checksum error.
        let mut d = Vec::new();
        put_varint(&mut d, target_len);
        d.extend_from_slice(&[1, 2, 3, 4]);
        for (copy, len, offset, byte) in ops {
            put_varint(&mut d, (len << 1) | u64::from(!copy));
            if copy {
                put_varint(&mut d, offset);
            } else {
                d.extend(std::iter::repeat_n(byte, len as usize));
            }
        }
        match delta::apply(&base, &d, max_len) {
            Ok(result) => prop_assert!(result.len() <= max_len),
            Err(e) => prop_assert!(!e.kind().is_empty()),
        }
    }

    #[test]
    fn a_corrupted_delta_is_detected_unless_harmless(
        base in proptest::collection::vec(any::<u8>(), 0..1024),
        edits in proptest::collection::vec(edit(), 1..4),
        at in any::<Index>(),
        flip in 1..=255u8,
    ) {
        let (target, _) = edited(&base, &edits);
        let mut d = delta::encode(&base, &target);
        let i = at.index(d.len());
        d[i] ^= flip;
        if let Ok(result) = delta::apply(&base, &d, 1 << 16) {
            prop_assert_eq!(result, target, "corruption at {} of {:02x?}", i, d);
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}
