//! What the `delta_apply` target asserts (spec/12-delta.md).
//!
//! [`delta::apply`] parses peer bytes: it must never panic, and whatever it
//! accepts is at most its `max_len`. The reference encoder must be exact and
//! never much worse than sending the value itself: for every base and target,
//! `apply(base, encode(base, target))` gives back `target`, from a delta of
//! at most `target.len() + 32` bytes.

use switchboard::codec::delta::{self, DeltaError};

/// The target's `max_len`: 1 MiB, far beyond any input, so that only `COPY`
/// amplification (one small operation, many result bytes) can reach it.
pub const DELTA_MAX_LEN: usize = 1 << 20;

/// Most bytes the reference encoder may add to a target below 2 MiB: the
/// header (at most 1 + 3 + 4 bytes), one `INSERT` header, and the prefix and
/// suffix `COPY`s, which may be shorter than they cost. Every other `COPY`
/// covers at least 8 bytes and costs at most 7, with the `INSERT` header it
/// splits off.
const ENCODER_OVERHEAD: usize = 32;

/// Splits a target input: its first two bytes (little-endian) modulo the
/// length of the rest plus one are the base's length; the rest is the base
/// followed by the delta.
pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    let (control, rest) = data.split_at(data.len().min(2));
    let control = control
        .iter()
        .rev()
        .fold(0usize, |n, &byte| n << 8 | usize::from(byte));
    rest.split_at(control % (rest.len() + 1))
}

/// The target input that [`split_input`] splits into `base` and `delta`;
/// `base` must be shorter than 64 KiB.
pub fn input(base: &[u8], delta: &[u8]) -> Vec<u8> {
    let len = u16::try_from(base.len()).expect("base under 64 KiB");
    let mut data = len.to_le_bytes().to_vec();
    data.extend_from_slice(base);
    data.extend_from_slice(delta);
    data
}

/// The `delta_apply` target: applies the input's delta to its base under
/// [`DELTA_MAX_LEN`] and checks the result's length; then checks that the
/// encoder round-trips the result, the delta bytes taken as a target, and
/// the base with the delta bytes spliced into it. Returns the result's
/// length or the decoder's error.
pub fn check_delta(data: &[u8]) -> Result<usize, DeltaError> {
    let (base, bytes) = split_input(data);
    let result = delta::apply(base, bytes, DELTA_MAX_LEN);
    if let Ok(out) = &result {
        assert!(out.len() <= DELTA_MAX_LEN, "result above max_len");
        assert_round_trip(base, out);
    }
    assert_round_trip(base, bytes);
    let cut = data.len() % (base.len() + 1);
    let mut spliced = base[..cut].to_vec();
    spliced.extend_from_slice(bytes);
    spliced.extend_from_slice(&base[cut..]);
    assert_round_trip(base, &spliced);
    result.map(|out| out.len())
}

/// Asserts that the reference encoder's delta of `target` against `base`
/// applies back to `target`, and is at most [`ENCODER_OVERHEAD`] bytes
/// longer than it.
pub fn assert_round_trip(base: &[u8], target: &[u8]) {
    let encoded = delta::encode(base, target);
    match delta::apply(base, &encoded, target.len()) {
        Ok(back) => assert!(
            back == target,
            "encode/apply changed the target: base {base:02x?}, delta {encoded:02x?}"
        ),
        Err(err) => {
            panic!("encoded delta rejected ({err}): base {base:02x?}, delta {encoded:02x?}")
        }
    }
    assert!(
        encoded.len() <= target.len() + ENCODER_OVERHEAD,
        "delta of {} bytes for a target of {}",
        encoded.len(),
        target.len()
    );
}
