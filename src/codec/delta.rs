//! Delta publications: a publication sent as the difference from the previous
//! value its subscriber received (spec/12-delta.md).
//!
//! A delta is a declared result length, a CRC-32 of the result, and a list of
//! operations that build the result from `COPY` (a range of the base) and
//! `INSERT` (literal bytes):
//!
//! ```text
//! delta      = target_len checksum op*
//! target_len = varint                 ; length of the result
//! checksum   = 4 bytes, CRC-32 (IEEE) of the result, little-endian
//! op         = header [offset] [literal]
//! header     = varint: (len << 1) | kind ; kind 0 = COPY, 1 = INSERT; len >= 1
//! ```
//!
//! [`apply`] parses peer bytes: it is bounded by its `max_len` argument, holds
//! at most the result in memory, and never panics, whatever its input.
//! [`encode`] is the reference encoder, linear-time and deterministic; any
//! valid delta is acceptable to [`apply`], so other encoders are free to
//! choose other operations.

/// Longest varint, in bytes: enough for any `u64`.
const MAX_VARINT_LEN: usize = 10;

/// Bytes of the fixed part of a delta after `target_len`: the checksum.
const CHECKSUM_LEN: usize = 4;

/// Why [`apply`] rejected a delta. Every variant means the delta is invalid
/// (or was made against another base); the caller should fall back to the
/// full value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The declared result length exceeds the caller's limit.
    #[error("delta declares a result of {declared} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The declared `target_len`.
        declared: u64,
        /// The limit in force.
        limit: usize,
    },
    /// The delta ends inside a varint, the checksum or a literal.
    #[error("delta ends inside a field")]
    Truncated,
    /// A varint is longer than 10 bytes or overflows a `u64`.
    #[error("malformed varint")]
    BadVarint,
    /// An operation of length 0.
    #[error("operation of length 0")]
    EmptyOp,
    /// A `COPY` reads outside the base.
    #[error("copy of {len} bytes at offset {offset} outside a base of {base_len} bytes")]
    CopyOutOfRange {
        /// The operation's offset.
        offset: u64,
        /// The operation's length.
        len: u64,
        /// The length of the base.
        base_len: usize,
    },
    /// An operation would make the result longer than declared.
    #[error("operations produce more than the declared {target_len} bytes")]
    Overflow {
        /// The declared `target_len`.
        target_len: u64,
    },
    /// The operations end before the result reaches its declared length.
    #[error("operations produce {len} bytes, {target_len} declared")]
    Short {
        /// The bytes produced.
        len: usize,
        /// The declared `target_len`.
        target_len: u64,
    },
    /// The result's CRC-32 differs from the declared one: a corrupted delta,
    /// or a delta made against another base.
    #[error("checksum mismatch: declared {declared:08x}, result has {actual:08x}")]
    Checksum {
        /// The checksum the delta declares.
        declared: u32,
        /// The checksum of the result built.
        actual: u32,
    },
}

impl DeltaError {
    /// A stable name for the error, used by the test vectors in
    /// `spec/vectors/delta.json` and in metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            DeltaError::TooLarge { .. } => "too_large",
            DeltaError::Truncated => "truncated",
            DeltaError::BadVarint => "bad_varint",
            DeltaError::EmptyOp => "empty_op",
            DeltaError::CopyOutOfRange { .. } => "copy_out_of_range",
            DeltaError::Overflow { .. } => "overflow",
            DeltaError::Short { .. } => "short",
            DeltaError::Checksum { .. } => "checksum",
        }
    }
}

/// Whether a delta of `delta_len` bytes is worth sending instead of the
/// `target_len`-byte value it encodes: true when it is strictly smaller than
/// 3/4 of the value.
pub const fn worth_it(delta_len: usize, target_len: usize) -> bool {
    // In u128, so that neither product can overflow.
    (delta_len as u128) * 4 < (target_len as u128) * 3
}

// ---------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------

/// The unread part of a delta.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// An unsigned LEB128 varint of at most 10 bytes whose value fits a
    /// `u64`. Non-minimal encodings are accepted.
    fn varint(&mut self) -> Result<u64, DeltaError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.rest.iter().enumerate().take(MAX_VARINT_LEN) {
            // The tenth byte may only carry bit 63, and ends the varint.
            if i == MAX_VARINT_LEN - 1 && byte > 1 {
                return Err(DeltaError::BadVarint);
            }
            // `i <= 9`, so the shift is at most 63.
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = self.rest.get(i + 1..).unwrap_or_default();
                return Ok(value);
            }
        }
        if self.rest.len() >= MAX_VARINT_LEN {
            Err(DeltaError::BadVarint)
        } else {
            Err(DeltaError::Truncated)
        }
    }

    /// The next `len` bytes.
    fn take(&mut self, len: usize) -> Result<&'a [u8], DeltaError> {
        let (taken, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(DeltaError::Truncated)?;
        self.rest = rest;
        Ok(taken)
    }

    fn checksum(&mut self) -> Result<u32, DeltaError> {
        let bytes = self.take(CHECKSUM_LEN)?;
        let array: [u8; CHECKSUM_LEN] = bytes.try_into().map_err(|_| DeltaError::Truncated)?;
        Ok(u32::from_le_bytes(array))
    }
}

/// Makes room for `additional` more bytes in `out` without its capacity ever
/// exceeding `limit` (which the caller guarantees `out.len() + additional`
/// does not exceed): doubling, so that many small operations stay linear,
/// but capped, so that peak memory is the result's size.
fn reserve_bounded(out: &mut Vec<u8>, additional: usize, limit: usize) {
    let spare = out.capacity().saturating_sub(out.len());
    if spare >= additional {
        return;
    }
    let needed = out.len().saturating_add(additional);
    let wanted = out
        .capacity()
        .saturating_mul(2)
        .max(needed)
        .min(limit.max(needed));
    out.reserve_exact(wanted.saturating_sub(out.len()));
}

/// Applies `delta` to `base` and returns the result, which is at most
/// `max_len` bytes long.
///
/// Bounded and panic-free on any input: a declared length above `max_len` is
/// rejected before anything is allocated, no more than
/// `min(target_len, delta.len() + base.len())` bytes are allocated up front,
/// and the result's buffer never grows beyond its declared length. The
/// errors, and the order in which they are checked, are specified in
/// spec/12-delta.md ("Decoding").
pub fn apply(base: &[u8], delta: &[u8], max_len: usize) -> Result<Vec<u8>, DeltaError> {
    let mut reader = Reader { rest: delta };
    let declared = reader.varint()?;
    let too_large = DeltaError::TooLarge {
        declared,
        limit: max_len,
    };
    if u128::from(declared) > max_len as u128 {
        return Err(too_large);
    }
    // Cannot fail: `declared <= max_len`, a usize.
    let target_len = usize::try_from(declared).map_err(|_| too_large)?;
    let declared_checksum = reader.checksum()?;

    let overflow = DeltaError::Overflow {
        target_len: declared,
    };
    let mut out = Vec::with_capacity(target_len.min(delta.len().saturating_add(base.len())));
    while !reader.rest.is_empty() {
        let header = reader.varint()?;
        let len = header >> 1;
        if len == 0 {
            return Err(DeltaError::EmptyOp);
        }
        let room = target_len.saturating_sub(out.len());
        let len = match usize::try_from(len) {
            Ok(len) if len <= room => len,
            _ => return Err(overflow),
        };
        if header & 1 == 0 {
            let offset = reader.varint()?;
            let source = usize::try_from(offset)
                .ok()
                .and_then(|start| base.get(start..start.checked_add(len)?))
                .ok_or(DeltaError::CopyOutOfRange {
                    offset,
                    len: len as u64,
                    base_len: base.len(),
                })?;
            reserve_bounded(&mut out, len, target_len);
            out.extend_from_slice(source);
        } else {
            let literal = reader.take(len)?;
            reserve_bounded(&mut out, len, target_len);
            out.extend_from_slice(literal);
        }
    }
    if out.len() < target_len {
        return Err(DeltaError::Short {
            len: out.len(),
            target_len: declared,
        });
    }
    let actual = crc32fast::hash(&out);
    if actual != declared_checksum {
        return Err(DeltaError::Checksum {
            declared: declared_checksum,
            actual,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------

/// Bytes per indexed base block, and the shortest match the index finds
/// (before extension). A `COPY` costs at most 2 + 3 bytes for bases up to
/// 2 MiB, so any match this long is worth it.
const BLOCK: usize = 16;

/// The shortest match found by assuming that the target continues where the
/// last `COPY` left off (after a same-length replacement): cheaper than the
/// literal it replaces, and checked without the index.
const MIN_CONTINUATION: usize = 8;

/// Matches shorter than this are checked for a longer match starting inside
/// them ([`longer_match`]).
const LAZY_LEN: usize = 64;

/// Most slots of the block index (4 bytes each): 4 MiB of index at most.
const MAX_INDEX_BITS: u32 = 20;

/// The multiplier of the polynomial rolling hash (odd, so the hash keeps
/// every input bit).
const HASH_MUL: u64 = 0x0000_0100_0000_01b3;

/// `HASH_MUL^(BLOCK - 1)`, to remove the byte leaving the window.
const HASH_MUL_OUT: u64 = {
    let mut power: u64 = 1;
    let mut i = 1;
    while i < BLOCK {
        power = power.wrapping_mul(HASH_MUL);
        i += 1;
    }
    power
};

/// The rolling hash of one window of exactly [`BLOCK`] bytes.
fn window_hash(window: &[u8]) -> u64 {
    window.iter().fold(0u64, |hash, &byte| {
        hash.wrapping_mul(HASH_MUL).wrapping_add(u64::from(byte))
    })
}

/// The hash of the window one byte further: `out` leaves, `byte_in` enters.
fn roll(hash: u64, out: u8, byte_in: u8) -> u64 {
    hash.wrapping_sub(u64::from(out).wrapping_mul(HASH_MUL_OUT))
        .wrapping_mul(HASH_MUL)
        .wrapping_add(u64::from(byte_in))
}

/// The base's block-aligned windows by hash: an open table of
/// `position + 1` (0 = empty) where the first block of a given slot wins.
struct BlockIndex {
    slots: Vec<u32>,
    shift: u32,
}

impl BlockIndex {
    fn new(base: &[u8]) -> Self {
        let blocks = base.len() / BLOCK;
        let bits = (blocks
            .saturating_mul(2)
            .max(2)
            .next_power_of_two()
            .trailing_zeros())
        .clamp(4, MAX_INDEX_BITS);
        let mut index = Self {
            slots: vec![0; 1 << bits],
            shift: 64 - bits,
        };
        for (k, block) in base.chunks_exact(BLOCK).enumerate() {
            // Positions are stored as u32: a base beyond 4 GiB is indexed
            // only in its first 4 GiB.
            let Some(stored) = k
                .checked_mul(BLOCK)
                .and_then(|pos| u32::try_from(pos.checked_add(1)?).ok())
            else {
                break;
            };
            let slot = index.slot(window_hash(block));
            if let Some(entry) = index.slots.get_mut(slot)
                && *entry == 0
            {
                *entry = stored;
            }
        }
        index
    }

    fn slot(&self, hash: u64) -> usize {
        // Multiplicative mixing: the top bits depend on every bit of `hash`.
        (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// A base position whose block may equal the window with this hash.
    fn candidate(&self, hash: u64) -> Option<usize> {
        let stored = *self.slots.get(self.slot(hash))?;
        (stored as usize).checked_sub(1)
    }
}

/// An index match starting inside `first` (base start, target start, length)
/// that ends at least [`MIN_CONTINUATION`] bytes after it, extended both
/// ways (backwards down to `literal`).
fn longer_match(
    index: &BlockIndex,
    base: &[u8],
    target: &[u8],
    first: (usize, usize, usize),
    end: usize,
    literal: usize,
) -> Option<(usize, usize, usize)> {
    let first_end = first.1 + first.2;
    let mut hash = None;
    let mut pos = first.1 + 1;
    while pos < first_end && pos + BLOCK <= end {
        let window = &target[pos..pos + BLOCK];
        let h = hash.unwrap_or_else(|| window_hash(window));
        if let Some(candidate) = index.candidate(h)
            && base.get(candidate..candidate + BLOCK) == Some(window)
        {
            let forward =
                BLOCK + common_prefix(&base[candidate + BLOCK..], &target[pos + BLOCK..end]);
            if pos + forward >= first_end + MIN_CONTINUATION {
                let backward = common_suffix(&base[..candidate], &target[literal..pos]);
                return Some((candidate - backward, pos - backward, backward + forward));
            }
        }
        hash = target
            .get(pos + BLOCK)
            .map(|&next| roll(h, target[pos], next));
        pos += 1;
    }
    None
}

/// How many leading bytes `a` and `b` share.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut len = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let diff = u64::from_le_bytes(x.try_into().unwrap_or_default())
            ^ u64::from_le_bytes(y.try_into().unwrap_or_default());
        if diff != 0 {
            return len + (diff.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    len + a
        .iter()
        .skip(len)
        .zip(b.iter().skip(len))
        .take_while(|(x, y)| x == y)
        .count()
}

/// How many trailing bytes `a` and `b` share.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let mut len = 0;
    for (x, y) in a.rchunks_exact(8).zip(b.rchunks_exact(8)) {
        let diff = u64::from_be_bytes(x.try_into().unwrap_or_default())
            ^ u64::from_be_bytes(y.try_into().unwrap_or_default());
        if diff != 0 {
            return len + (diff.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    len + a
        .iter()
        .rev()
        .skip(len)
        .zip(b.iter().rev().skip(len))
        .take_while(|(x, y)| x == y)
        .count()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes operations, merging a `COPY` that continues the previous one.
struct Ops {
    out: Vec<u8>,
    /// A `COPY` not yet written: (offset, len).
    copy: Option<(usize, usize)>,
}

impl Ops {
    fn copy(&mut self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        match &mut self.copy {
            Some((start, pending)) if *start + *pending == offset => *pending += len,
            _ => {
                self.flush();
                self.copy = Some((offset, len));
            }
        }
    }

    fn insert(&mut self, literal: &[u8]) {
        if literal.is_empty() {
            return;
        }
        self.flush();
        put_varint(&mut self.out, ((literal.len() as u64) << 1) | 1);
        self.out.extend_from_slice(literal);
    }

    fn flush(&mut self) {
        if let Some((offset, len)) = self.copy.take() {
            put_varint(&mut self.out, (len as u64) << 1);
            put_varint(&mut self.out, offset as u64);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.out
    }
}

/// Encodes `target` as a delta against `base`, such that
/// `apply(base, &encode(base, target), target.len())` gives back `target`.
///
/// Deterministic, and linear in `base.len() + target.len()` (about 50 MB/s
/// on unrelated inputs, several hundred MB/s on similar ones). Strategy
/// (spec/12-delta.md, "Encoding"):
///
/// 1. the common prefix and suffix are copied directly;
/// 2. in between, at each target position, two candidates are verified: the
///    *continuation* (the base position right after the last `COPY`, shifted
///    by the bytes inserted since: what follows a same-length replacement),
///    at least 8 bytes long; and an *index* match, found by a rolling hash of
///    the 16-byte window against a table of the base's block-aligned 16-byte
///    blocks;
/// 3. the longer one is extended forwards, and backwards into the bytes not
///    yet covered; a match shorter than 64 bytes is given up for a longer
///    index match starting inside it, if there is one (a moved item whose
///    first bytes resemble another);
/// 4. matches become `COPY` (adjacent ones merged), the bytes between them
///    `INSERT`.
pub fn encode(base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    put_varint(&mut out, target.len() as u64);
    out.extend_from_slice(&crc32fast::hash(target).to_le_bytes());
    let mut ops = Ops { out, copy: None };

    let prefix = common_prefix(base, target);
    let suffix = common_suffix(
        base.get(prefix..).unwrap_or_default(),
        target.get(prefix..).unwrap_or_default(),
    );
    // Where the middle of the target ends: `prefix <= end <= target.len()`.
    let end = target.len() - suffix;
    ops.copy(0, prefix);

    // Start of the bytes not yet covered by an operation.
    let mut literal = prefix;
    // Where the last COPY ended, in the base and in the target: the bytes
    // after an in-place replacement continue from there.
    let mut last = (prefix, prefix);
    let index = (end - prefix >= BLOCK && base.len() >= BLOCK).then(|| BlockIndex::new(base));
    // The rolling hash of `target[pos..pos + BLOCK]`, when known.
    let mut hash = None;
    let mut pos = prefix;
    while pos + MIN_CONTINUATION <= end {
        // A verified match of `min` bytes at (`candidate`, `pos`), extended
        // both ways: (base start, target start, length).
        let extend = |candidate: usize, min: usize| {
            let forward = min + common_prefix(&base[candidate + min..], &target[pos + min..end]);
            let backward = common_suffix(&base[..candidate], &target[literal..pos]);
            (candidate - backward, pos - backward, backward + forward)
        };
        let mut best = None;
        let continuation = last.0 + (pos - last.1);
        if let Some(bytes) = base.get(continuation..continuation + MIN_CONTINUATION)
            && bytes == &target[pos..pos + MIN_CONTINUATION]
        {
            best = Some(extend(continuation, MIN_CONTINUATION));
        }
        if let Some(index) = &index
            && pos + BLOCK <= end
        {
            let window = &target[pos..pos + BLOCK];
            let h = hash.unwrap_or_else(|| window_hash(window));
            if let Some(candidate) = index.candidate(h)
                && base.get(candidate..candidate + BLOCK) == Some(window)
            {
                let found = extend(candidate, BLOCK);
                if best.is_none_or(|(_, _, len)| found.2 > len) {
                    best = Some(found);
                }
            }
            hash = target
                .get(pos + BLOCK)
                .map(|&next| roll(h, target[pos], next));
        }
        // Lazy matching: a short match may hide a longer one that starts
        // inside it (a row that moved, whose first bytes match another row).
        if let Some(first) = best
            && first.2 < LAZY_LEN
            && let Some(index) = &index
            && let Some(later) = longer_match(index, base, target, first, end, literal)
        {
            let (from, start, _) = first;
            let keep = later.1.saturating_sub(start);
            if keep >= MIN_CONTINUATION {
                ops.insert(&target[literal..start]);
                ops.copy(from, keep);
                literal = start + keep;
            }
            best = Some(later);
        }
        match best {
            Some((from, start, len)) => {
                ops.insert(&target[literal..start]);
                ops.copy(from, len);
                pos = start + len;
                literal = pos;
                last = (from + len, pos);
                hash = None;
            }
            None => pos += 1,
        }
    }
    ops.insert(&target[literal..end]);
    ops.copy(base.len() - suffix, suffix);
    ops.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn round_trip(base: &[u8], target: &[u8]) -> Vec<u8> {
        let delta = encode(base, target);
        assert_eq!(
            apply(base, &delta, target.len()).as_deref(),
            Ok(target),
            "delta {delta:02x?}"
        );
        delta
    }

    #[test]
    fn worked_example_of_the_spec() {
        let base = br#"{"p":10,"s":"run"}"#;
        let target = br#"{"p":20,"s":"run"}"#;
        let delta = round_trip(base, target);
        assert_eq!(crc32fast::hash(target), 0xbb6b_0262);
        assert_eq!(delta, hex("12 62026bbb 0a00 0332 1806"));
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(round_trip(b"", b""), hex("00 00000000"));
        assert_eq!(round_trip(b"abc", b""), hex("00 00000000"));
        let delta = round_trip(b"", b"abc");
        assert_eq!(&delta[5..], b"\x07abc");
        // A result of 0 bytes needs no base and no operation.
        assert_eq!(apply(b"anything", &hex("00 00000000"), 0), Ok(vec![]));
    }

    #[test]
    fn identical_and_shifted_inputs_copy() {
        let doc: Vec<u8> = (0..4000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert!(round_trip(&doc, &doc).len() <= 5 + 3 + 1 + 3);
        let mut shifted = b"new head".to_vec();
        shifted.extend_from_slice(&doc[100..]);
        assert!(round_trip(&doc, &shifted).len() < 30);
    }

    #[test]
    fn errors_have_their_kinds() {
        let base = b"0123456789";
        let ok = encode(base, b"456");
        assert_eq!(apply(base, &ok, 3), Ok(b"456".to_vec()));
        let kind = |delta: &[u8], max| apply(base, delta, max).unwrap_err().kind();
        assert_eq!(kind(&ok, 2), "too_large");
        assert_eq!(kind(&ok[..ok.len() - 1], 3), "truncated");
        assert_eq!(kind(&ok[..3], 3), "truncated");
        assert_eq!(kind(&[], 3), "truncated");
        assert_eq!(kind(&hex("ffffffffffffffffff02"), usize::MAX), "bad_varint");
        assert_eq!(
            kind(&hex("ffffffffffffffffff8000"), usize::MAX),
            "bad_varint"
        );
        let mut empty = ok[..5].to_vec();
        empty.push(0x01);
        assert_eq!(kind(&empty, 3), "empty_op");
        let mut range = ok[..5].to_vec();
        range.extend_from_slice(&[0x06, 0x08]);
        assert_eq!(kind(&range, 3), "copy_out_of_range");
        let mut far = ok[..5].to_vec();
        far.extend_from_slice(&hex("06 ffffffffffffffffff01"));
        assert_eq!(kind(&far, 3), "copy_out_of_range");
        let mut over = ok.clone();
        over.extend_from_slice(&[0x03, b'x']);
        assert_eq!(kind(&over, 3), "overflow");
        let mut huge = ok[..5].to_vec();
        huge.extend_from_slice(&hex("feffffffffffffffff01 00"));
        assert_eq!(kind(&huge, 3), "overflow");
        assert_eq!(kind(&ok[..5], 3), "short");
        let mut bad_sum = ok.clone();
        bad_sum[1] ^= 1;
        assert_eq!(kind(&bad_sum, 3), "checksum");
        // A delta applied to another base.
        let mut copy = ok[..5].to_vec();
        copy.extend_from_slice(&[0x06, 0x04]);
        assert_eq!(apply(base, &copy, 3), Ok(b"456".to_vec()));
        assert_eq!(
            apply(b"0123X56789", &copy, 3).unwrap_err().kind(),
            "checksum"
        );
    }

    #[test]
    fn worth_it_is_three_quarters() {
        assert!(worth_it(74, 100));
        assert!(!worth_it(75, 100));
        assert!(!worth_it(0, 0));
        assert!(worth_it(usize::MAX / 2, usize::MAX));
    }

    #[test]
    fn varints_are_minimal_and_read_back() {
        for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert!(out.len() <= MAX_VARINT_LEN);
            assert_ne!(out.last(), Some(&0).filter(|_| out.len() > 1));
            let mut reader = Reader { rest: &out };
            assert_eq!(reader.varint(), Ok(value));
            assert!(reader.rest.is_empty());
        }
        // Non-minimal encodings are accepted.
        assert_eq!(
            Reader {
                rest: &[0x80, 0x00]
            }
            .varint(),
            Ok(0)
        );
    }

    #[test]
    fn rolling_hash_matches_window_hash() {
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 % 251) as u8).collect();
        let mut h = window_hash(&data[..BLOCK]);
        for pos in 0..data.len() - BLOCK {
            assert_eq!(h, window_hash(&data[pos..pos + BLOCK]));
            h = roll(h, data[pos], data[pos + BLOCK]);
        }
    }
}
