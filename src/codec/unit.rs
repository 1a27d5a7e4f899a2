//! Compression units: per-batch compression in our own framing, identical on
//! WebSocket and WebTransport (spec/11-compression.md).
//!
//! A connection that negotiated *unit framing* (the `codecs` URL query
//! parameter) wraps every batch of delimited frames in a **unit**:
//!
//! ```text
//! unit    = marker length payload
//! marker  = 0x00 identity | 0x01 deflate-raw | 0x02 zstd
//! length  = unsigned LEB128 varint, at most 10 bytes: the payload's size
//! payload = the batch itself (identity), one raw DEFLATE stream (RFC 1951)
//!           or one zstd frame (RFC 8878) that decompresses to the batch
//! ```
//!
//! A WebSocket message (always binary) holds one or more whole units; a
//! WebTransport stream carries units back to back. Compression happens once
//! per publication, in the sender's framing, so the very same sealed bytes go
//! to every subscriber that negotiated the same (framing, codec) pair, which
//! permessage-deflate cannot do.
//!
//! - Sender side: [`seal`] / [`seal_into`] write one unit, compressed only
//!   when the batch is at least `min_size` bytes and compression makes it
//!   smaller. The compression contexts are reused per thread.
//! - Receiver side: [`open_message`] (or the lazy [`units`]) takes a
//!   transport message apart; [`UnitStreamDecoder`] does the same for a byte
//!   stream arriving in pieces. Units of a codec outside the receiver's
//!   [`Allowed`] set are errors. Both give each unit's batch, to be decoded
//!   with [`decode_batch`](super::decode_batch) or fed to a
//!   [`StreamDecoder`](super::StreamDecoder).
//!
//! Like the rest of the codec these are pure functions of their input that
//! never panic on peer input. Every declared length is checked against the
//! limit before anything is buffered, and decompression output grows with
//! the data actually produced, never beyond the limit plus one byte: a
//! decompression bomb costs at most `max` bytes of memory and the time to
//! produce them.

use std::cell::Cell;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::codes::CloseCode;

/// The batch size below which [`seal`] does not try to compress: DEFLATE
/// and zstd headers and tables make smaller inputs gain little or grow.
pub const DEFAULT_MIN_SIZE: usize = 256;

/// The most units one transport message may hold. A protocol constant, like
/// the 100-frame default of `max_frames_per_batch`: every unit holds at least
/// one frame and a sender puts at most 100 frames in a message, so 100 units
/// is never a constraint for a sender, while it bounds the work and the
/// bookkeeping one message can cause a receiver.
pub const MAX_UNITS_PER_MESSAGE: usize = 100;

/// The longest unit length prefix: an unsigned LEB128 varint of a `u64`.
const MAX_VARINT_LEN: usize = 10;

/// The magic number that starts a Zstandard frame (RFC 8878, 3.1.1), in the
/// order of the bytes on the wire.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decompression output starts at this many bytes, or at a small multiple
/// of the compressed size, whichever is larger (but never above the limit),
/// and doubles from there.
const MIN_OUTPUT_CAPACITY: usize = 1024;

/// A unit's codec, named by its marker byte (spec/11-compression.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// No compression: the payload is the batch. Always allowed.
    Identity,
    /// Raw DEFLATE (RFC 1951, no zlib or gzip wrapper): what the browsers'
    /// `DecompressionStream("deflate-raw")` reads.
    DeflateRaw,
    /// One Zstandard frame (RFC 8878).
    Zstd,
}

impl Codec {
    /// Every codec, in marker order.
    pub const ALL: [Codec; 3] = [Codec::Identity, Codec::DeflateRaw, Codec::Zstd];

    /// The name used in the `codecs` query parameter and in
    /// `ConnectResult.codec`: `identity`, `deflate-raw` or `zstd`.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Identity => "identity",
            Codec::DeflateRaw => "deflate-raw",
            Codec::Zstd => "zstd",
        }
    }

    /// The codec a name selects, if any. Names are case-sensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The marker byte that starts a unit of this codec.
    pub const fn marker(self) -> u8 {
        match self {
            Codec::Identity => 0x00,
            Codec::DeflateRaw => 0x01,
            Codec::Zstd => 0x02,
        }
    }

    /// The codec a marker byte names, if any.
    pub const fn from_marker(marker: u8) -> Option<Self> {
        match marker {
            0x00 => Some(Codec::Identity),
            0x01 => Some(Codec::DeflateRaw),
            0x02 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Whether a receiver that negotiated `self` accepts units of `unit`:
    /// the negotiated codec and identity.
    pub const fn accepts(self, unit: Codec) -> bool {
        matches!(unit, Codec::Identity) || self as u8 == unit as u8
    }
}

/// The codecs a receiver accepts units of: identity always, plus the
/// negotiated codec. A client that offered several codecs accepts all of them
/// until it has read `ConnectResult.codec`, then only that one
/// (spec/11-compression.md, "Negotiation"). A [`Codec`] converts into the set
/// of itself and identity, so the functions taking `impl Into<Allowed>` take
/// the negotiated codec as is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allowed(u8);

impl Allowed {
    /// Identity only.
    pub const IDENTITY: Allowed = Allowed(1);

    /// Identity and every codec in `codecs`.
    pub fn of(codecs: &[Codec]) -> Self {
        codecs.iter().fold(Self::IDENTITY, |set, &c| set.with(c))
    }

    /// This set and `codec`.
    pub const fn with(self, codec: Codec) -> Self {
        Allowed(self.0 | 1 << codec.marker())
    }

    /// Whether units of `codec` are accepted.
    pub const fn accepts(self, codec: Codec) -> bool {
        self.0 & 1 << codec.marker() != 0
    }
}

impl From<Codec> for Allowed {
    fn from(codec: Codec) -> Self {
        Self::IDENTITY.with(codec)
    }
}

impl fmt::Debug for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Codec::ALL.iter().filter(|c| self.accepts(**c)))
            .finish()
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Picks a connection's codec from the value of its `codecs` query
/// parameter (already percent-decoded): a comma-separated list of codec
/// names, most preferred first. Blanks around names are ignored.
///
/// Returns the first listed codec that is [`Codec::Identity`] or in
/// `enabled`, else [`Codec::Identity`] when the list names anything at all
/// (unknown names are skipped: a newer client may list codecs this server
/// does not know). Returns `None` when the list holds no name (`""`, `","`):
/// the request is malformed.
pub fn choose(offered: &str, enabled: &[Codec]) -> Option<Codec> {
    let mut named = false;
    for name in offered.split(',').map(|n| n.trim_matches([' ', '\t'])) {
        if name.is_empty() {
            continue;
        }
        named = true;
        match Codec::from_name(name) {
            Some(codec) if codec == Codec::Identity || enabled.contains(&codec) => {
                return Some(codec);
            }
            _ => {}
        }
    }
    named.then_some(Codec::Identity)
}

/// Why units could not be taken apart. Every variant means the input is
/// invalid and the connection is closed with [`UnitError::close_code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// The marker byte names no codec.
    #[error("unknown unit marker 0x{0:02x}")]
    BadMarker(u8),
    /// The unit uses a codec the connection did not negotiate.
    #[error("{0} unit on a connection that did not negotiate it")]
    UnexpectedCodec(Codec),
    /// The length is not a valid varint (longer than 10 bytes, or above
    /// 2^64 - 1).
    #[error("malformed unit length")]
    BadLength,
    /// The declared payload length exceeds the limit.
    #[error("unit of {size} bytes exceeds the limit of {limit} bytes")]
    UnitTooLarge {
        /// The declared length.
        size: u64,
        /// The limit in force.
        limit: usize,
    },
    /// The payload decompresses to more than the limit allows (for a
    /// message: all its units together).
    #[error("unit decompresses to more than {limit} bytes")]
    DecompressedTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The payload is not exactly one valid stream of its codec: corrupt,
    /// cut short, or followed by more bytes.
    #[error("corrupt {0} unit")]
    BadCompressedData(Codec),
    /// A unit of length 0, one that decompresses to nothing, or an empty
    /// transport message.
    #[error("empty unit")]
    EmptyUnit,
    /// A transport message ends inside a unit (a message transport never
    /// splits a unit).
    #[error("message ends inside a unit")]
    Truncated,
    /// A transport message holds more than [`MAX_UNITS_PER_MESSAGE`] units.
    #[error("more than {limit} units in one message")]
    TooManyUnits {
        /// The limit in force.
        limit: usize,
    },
    /// The stream decoder already failed; a stream cannot resynchronise.
    #[error("unit stream decoder already failed")]
    Failed,
}

impl UnitError {
    /// A stable name for the error, used by the test vectors in
    /// `spec/vectors/units.json` and in metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            UnitError::BadMarker(_) => "bad_marker",
            UnitError::UnexpectedCodec(_) => "unexpected_codec",
            UnitError::BadLength => "bad_length",
            UnitError::UnitTooLarge { .. } => "unit_too_large",
            UnitError::DecompressedTooLarge { .. } => "decompressed_too_large",
            UnitError::BadCompressedData(_) => "bad_compressed_data",
            UnitError::EmptyUnit => "empty_unit",
            UnitError::Truncated => "truncated",
            UnitError::TooManyUnits { .. } => "too_many_units",
            UnitError::Failed => "failed",
        }
    }

    /// The close code a server (or client) sends when its peer's units fail
    /// to open (spec/05-codes.md): 1009 for the size limits, 3501 otherwise.
    pub const fn close_code(&self) -> CloseCode {
        match self {
            UnitError::UnitTooLarge { .. } | UnitError::DecompressedTooLarge { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            _ => CloseCode::BAD_REQUEST,
        }
    }
}

// ---------------------------------------------------------------------------
// Sender side
// ---------------------------------------------------------------------------

/// Compression levels, one per codec (a level means different things to
/// each). The defaults are the codecs' usual defaults: DEFLATE 6, zstd 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Levels {
    /// DEFLATE level, 0 (stored, so never smaller: always identity) to 9.
    /// Larger values are taken as 9.
    pub deflate: u32,
    /// zstd level: 1 to 22, or negative for the fast levels; clamped to
    /// what the library supports.
    pub zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            deflate: 6,
            zstd: 3,
        }
    }
}

/// Compression contexts kept from one unit to the next: a raw-DEFLATE
/// compressor (about 300 KiB) and a zstd context, each created on first use.
///
/// [`seal`] and [`seal_into`] keep one per thread, which is what a server
/// wants; a `Compressor` of your own is only useful to control where that
/// memory lives.
#[derive(Default)]
pub struct Compressor {
    deflate: Option<(u32, Compress)>,
    zstd: Option<zstd::zstd_safe::CCtx<'static>>,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("deflate_level", &self.deflate.as_ref().map(|(l, _)| *l))
            .field("zstd", &self.zstd.is_some())
            .finish()
    }
}

impl Compressor {
    /// A compressor with no context yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one unit holding `batch` to `out` and returns the codec it
    /// used: `codec` if it is not identity, `batch` has at least `min_size`
    /// bytes and compressing it makes it smaller; else identity.
    ///
    /// `batch` must be a non-empty batch of delimited frames (receivers
    /// reject an empty unit).
    pub fn seal_into(
        &mut self,
        codec: Codec,
        batch: &[u8],
        min_size: usize,
        levels: Levels,
        out: &mut BytesMut,
    ) -> Codec {
        if codec != Codec::Identity && batch.len() >= min_size.max(1) {
            // The payload must come out strictly smaller than the batch.
            let budget = batch.len() - 1;
            let start = out.len();
            let header = 1 + varint_len(budget as u64);
            out.resize(start + header + budget, 0);
            let written = match codec {
                Codec::DeflateRaw => self.deflate(batch, &mut out[start + header..], levels),
                Codec::Zstd => self.zstd(batch, &mut out[start + header..], levels),
                Codec::Identity => None,
            };
            if let Some(len) = written.filter(|&len| len > 0 && len <= budget) {
                // Write the header in place; a shorter length varint moves
                // the payload left.
                let mut head = [0u8; 1 + MAX_VARINT_LEN];
                head[0] = codec.marker();
                let used = 1 + write_varint(len as u64, &mut head[1..]);
                out[start..start + used].copy_from_slice(&head[..used]);
                if used < header {
                    out.copy_within(start + header..start + header + len, start + used);
                }
                out.truncate(start + used + len);
                return codec;
            }
            out.truncate(start);
        }
        write_unit(Codec::Identity, batch, out);
        Codec::Identity
    }

    /// Raw DEFLATE of `input` into `dst`: the size written, or `None` when
    /// it does not fit.
    fn deflate(&mut self, input: &[u8], dst: &mut [u8], levels: Levels) -> Option<usize> {
        let level = levels.deflate.min(9);
        let compress = match &mut self.deflate {
            Some((current, compress)) if *current == level => {
                compress.reset();
                compress
            }
            slot => {
                &mut slot
                    .insert((level, Compress::new(Compression::new(level), false)))
                    .1
            }
        };
        match compress.compress(input, dst, FlushCompress::Finish) {
            Ok(Status::StreamEnd) if compress.total_in() == input.len() as u64 => {
                usize::try_from(compress.total_out()).ok()
            }
            _ => None,
        }
    }

    /// One zstd frame of `input` into `dst`: the size written, or `None`
    /// when it does not fit.
    fn zstd(&mut self, input: &[u8], dst: &mut [u8], levels: Levels) -> Option<usize> {
        use zstd::zstd_safe;
        let level = levels
            .zstd
            .clamp(zstd_safe::min_c_level(), zstd_safe::max_c_level());
        let cctx = match &mut self.zstd {
            Some(cctx) => cctx,
            slot => slot.insert(zstd_safe::CCtx::try_create()?),
        };
        cctx.compress(dst, input, level).ok()
    }
}

thread_local! {
    /// The compressor of [`seal`] and [`seal_into`] on this thread, taken out
    /// while in use (so a nested call, which cannot happen today, would just
    /// use a fresh one).
    static COMPRESSOR: Cell<Option<Compressor>> = const { Cell::new(None) };
}

/// [`Compressor::seal_into`] with this thread's compressor.
pub fn seal_into(
    codec: Codec,
    batch: &[u8],
    min_size: usize,
    levels: Levels,
    out: &mut BytesMut,
) -> Codec {
    if codec == Codec::Identity || batch.len() < min_size {
        write_unit(Codec::Identity, batch, out);
        return Codec::Identity;
    }
    let mut compressor = COMPRESSOR
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let used = compressor.seal_into(codec, batch, min_size, levels, out);
    let _ = COMPRESSOR.try_with(|cell| cell.set(Some(compressor)));
    used
}

/// One unit holding `batch`, as [`seal_into`] writes it.
pub fn seal(codec: Codec, batch: &[u8], min_size: usize, levels: Levels) -> Bytes {
    let mut out = BytesMut::new();
    seal_into(codec, batch, min_size, levels, &mut out);
    out.freeze()
}

/// Appends a unit with this marker and payload to `out`, as is: no
/// compression and no check that `payload` really is `codec` data.
pub fn write_unit(codec: Codec, payload: &[u8], out: &mut BytesMut) {
    let mut head = [0u8; 1 + MAX_VARINT_LEN];
    head[0] = codec.marker();
    let used = 1 + write_varint(payload.len() as u64, &mut head[1..]);
    out.reserve(used + payload.len());
    out.put_slice(&head[..used]);
    out.put_slice(payload);
}

/// Writes the minimal LEB128 encoding of `value` to `out` (at least 10
/// bytes long) and returns its length.
fn write_varint(mut value: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    while value >= 0x80 {
        out[i] = (value as u8) | 0x80;
        value >>= 7;
        i += 1;
    }
    out[i] = value as u8;
    i + 1
}

/// The length of the minimal LEB128 encoding of `value`.
const fn varint_len(value: u64) -> usize {
    // 1 + floor(log2(value) / 7), with 0 taking one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

// ---------------------------------------------------------------------------
// Receiver side
// ---------------------------------------------------------------------------

/// A unit header: codec, payload length and header size.
struct Header {
    codec: Codec,
    len: usize,
    size: usize,
}

/// Reads the header at the start of `buf`. `Ok(None)`: `buf` is a valid but
/// incomplete header. The marker is checked as soon as it is there, the
/// length against `max` as soon as it is complete.
fn read_header(buf: &[u8], allowed: Allowed, max: usize) -> Result<Option<Header>, UnitError> {
    let Some((&marker, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let codec = Codec::from_marker(marker).ok_or(UnitError::BadMarker(marker))?;
    if !allowed.accepts(codec) {
        return Err(UnitError::UnexpectedCodec(codec));
    }
    let mut value: u64 = 0;
    for (i, &byte) in rest.iter().enumerate().take(MAX_VARINT_LEN) {
        // The tenth byte may only carry the top bit of a u64.
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(UnitError::BadLength);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if value > max as u64 {
                return Err(UnitError::UnitTooLarge {
                    size: value,
                    limit: max,
                });
            }
            if value == 0 {
                return Err(UnitError::EmptyUnit);
            }
            return Ok(Some(Header {
                codec,
                // At most `max`, so it fits.
                len: value as usize,
                size: 2 + i,
            }));
        }
    }
    if rest.len() >= MAX_VARINT_LEN {
        Err(UnitError::BadLength)
    } else {
        Ok(None)
    }
}

/// The batch a unit payload holds: `payload` itself for identity, else its
/// decompression, at most `limit` bytes.
fn open_payload(codec: Codec, payload: Bytes, limit: usize) -> Result<Bytes, UnitError> {
    let batch = match codec {
        Codec::Identity => {
            if payload.len() > limit {
                return Err(UnitError::DecompressedTooLarge { limit });
            }
            return Ok(payload);
        }
        Codec::DeflateRaw => with_decompressor(|d| d.inflate_raw(&payload, limit))?,
        Codec::Zstd => with_decompressor(|d| d.unzstd(&payload, limit))?,
    };
    if batch.is_empty() {
        return Err(UnitError::EmptyUnit);
    }
    Ok(Bytes::from(batch))
}

/// Takes a transport message apart: the batch of each unit, in order. See
/// [`units`]; this collects them, stopping at the first error.
pub fn open_message(
    message: &Bytes,
    allowed: impl Into<Allowed>,
    max: usize,
) -> Result<Vec<Bytes>, UnitError> {
    units(message, allowed, max).collect()
}

/// The units of one transport message, lazily: each item is one unit's
/// batch (identity payloads are slices of `message`, no copy). Units not
/// in `allowed` (the negotiated codec; identity is always allowed)
/// are errors. `max` is the receiver's `max_message_size`: it bounds each
/// declared length and the decompressed size of the whole message (all its
/// batches together). The iterator ends after the first error.
pub fn units(message: &Bytes, allowed: impl Into<Allowed>, max: usize) -> Units {
    Units {
        rest: message.clone(),
        allowed: allowed.into(),
        max,
        budget: max,
        count: 0,
        done: false,
    }
}

/// The batches of one transport message; see [`units`].
#[derive(Debug)]
pub struct Units {
    rest: Bytes,
    allowed: Allowed,
    max: usize,
    /// Decompressed bytes the message may still produce.
    budget: usize,
    count: usize,
    done: bool,
}

impl Iterator for Units {
    type Item = Result<Bytes, UnitError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || (self.rest.is_empty() && self.count > 0) {
            return None;
        }
        let result = self.next_unit();
        self.done = result.is_err();
        Some(result)
    }
}

impl Units {
    fn next_unit(&mut self) -> Result<Bytes, UnitError> {
        if self.rest.is_empty() {
            return Err(UnitError::EmptyUnit);
        }
        if self.count == MAX_UNITS_PER_MESSAGE {
            return Err(UnitError::TooManyUnits {
                limit: MAX_UNITS_PER_MESSAGE,
            });
        }
        let header =
            read_header(&self.rest, self.allowed, self.max)?.ok_or(UnitError::Truncated)?;
        if self.rest.len() - header.size < header.len {
            return Err(UnitError::Truncated);
        }
        self.rest.advance(header.size);
        let payload = self.rest.split_to(header.len);
        self.count += 1;
        let batch = open_payload(header.codec, payload, self.budget).map_err(|err| match err {
            UnitError::DecompressedTooLarge { .. } => {
                UnitError::DecompressedTooLarge { limit: self.max }
            }
            other => other,
        })?;
        self.budget -= batch.len();
        Ok(batch)
    }
}

/// Takes units from a byte stream that arrives in arbitrary pieces (a
/// WebTransport stream): the unit counterpart of
/// [`StreamDecoder`](super::StreamDecoder), whose contract it shares.
///
/// After each [`push`](Self::push), call [`next_unit`](Self::next_unit) until
/// it returns `Ok(None)`. The decoder then holds at most one unit (header and
/// compressed payload, at most `max` + 11 bytes) plus the last piece pushed:
/// a declared length above `max` fails as soon as the header is complete.
/// `max` also bounds each unit's decompressed batch.
#[derive(Debug)]
pub struct UnitStreamDecoder {
    buf: BytesMut,
    allowed: Allowed,
    max: usize,
    failed: bool,
}

impl UnitStreamDecoder {
    /// A decoder for one stream of a connection that negotiated `allowed`,
    /// with the receiver's `max_message_size`.
    pub fn new(allowed: impl Into<Allowed>, max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            allowed: allowed.into(),
            max,
            failed: false,
        }
    }

    /// Bytes buffered and not yet taken out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Changes the codecs accepted from the next unit on: what a client does
    /// once it has read `ConnectResult.codec`.
    pub fn set_allowed(&mut self, allowed: impl Into<Allowed>) {
        self.allowed = allowed.into();
    }

    /// Appends bytes read from the stream. Ignored once the decoder failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next unit's batch, or `Ok(None)` when more bytes are needed.
    /// After an error the decoder stays failed ([`UnitError::Failed`]).
    pub fn next_unit(&mut self) -> Result<Option<Bytes>, UnitError> {
        if self.failed {
            return Err(UnitError::Failed);
        }
        let result = self.take_unit();
        if result.is_err() {
            self.failed = true;
            self.buf = BytesMut::new();
        }
        result
    }

    fn take_unit(&mut self) -> Result<Option<Bytes>, UnitError> {
        let Some(header) = read_header(&self.buf, self.allowed, self.max)? else {
            return Ok(None);
        };
        let end = header.size + header.len;
        if self.buf.len() < end {
            // Room for the rest of this unit only: the pieces to come.
            self.buf.reserve(end - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(header.size);
        let payload = self.buf.split_to(header.len).freeze();
        open_payload(header.codec, payload, self.max).map(Some)
    }
}

/// Decompression contexts, one per thread (see [`with_decompressor`]).
#[derive(Default)]
struct Decompressor {
    deflate: Option<Decompress>,
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
}

thread_local! {
    static DECOMPRESSOR: Cell<Option<Decompressor>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's decompressor (a fresh one if it is in use or
/// gone).
fn with_decompressor<T>(f: impl FnOnce(&mut Decompressor) -> T) -> T {
    let mut decompressor = DECOMPRESSOR
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let out = f(&mut decompressor);
    let _ = DECOMPRESSOR.try_with(|cell| cell.set(Some(decompressor)));
    out
}

/// The first output capacity for `input_len` compressed bytes and a limit:
/// enough for typical ratios, never above `limit + 1` (one byte more than
/// allowed is how an excess is detected).
fn first_capacity(input_len: usize, limit: usize) -> usize {
    input_len
        .saturating_mul(4)
        .max(MIN_OUTPUT_CAPACITY)
        .min(limit.saturating_add(1))
}

impl Decompressor {
    /// Inflates exactly one raw DEFLATE stream that makes up all of `input`,
    /// into at most `limit` bytes.
    fn inflate_raw(&mut self, input: &[u8], limit: usize) -> Result<Vec<u8>, UnitError> {
        const BAD: UnitError = UnitError::BadCompressedData(Codec::DeflateRaw);
        let inflate = match &mut self.deflate {
            Some(inflate) => {
                inflate.reset(false);
                inflate
            }
            slot => slot.insert(Decompress::new(false)),
        };
        let ceiling = limit.saturating_add(1);
        let mut out = Vec::with_capacity(first_capacity(input.len(), limit));
        loop {
            let consumed = usize::try_from(inflate.total_in()).map_err(|_| BAD)?;
            let rest = input.get(consumed..).ok_or(BAD)?;
            let before = out.len();
            // `None`, not `Finish`: with `Finish`, miniz_oxide gives up when
            // the first output buffer is too small.
            let status = inflate
                .decompress_vec(rest, &mut out, FlushDecompress::None)
                .map_err(|_| BAD)?;
            if out.len() > limit {
                return Err(UnitError::DecompressedTooLarge { limit });
            }
            if status == Status::StreamEnd {
                break;
            }
            if out.len() == out.capacity() {
                // Output full: grow with the output actually produced.
                let wanted = out.capacity().saturating_mul(2).min(ceiling);
                out.reserve_exact(wanted - out.len());
            } else if out.len() == before && inflate.total_in() as usize == consumed {
                // No progress with room to write: the input ended early.
                return Err(BAD);
            }
        }
        if inflate.total_in() != input.len() as u64 {
            // Bytes after the final block.
            return Err(BAD);
        }
        Ok(out)
    }

    /// Decompresses exactly one Zstandard frame that makes up all of
    /// `input`, into at most `limit` bytes.
    fn unzstd(&mut self, input: &[u8], limit: usize) -> Result<Vec<u8>, UnitError> {
        use zstd::zstd_safe::{self, zstd_sys::ZSTD_ErrorCode};
        const BAD: UnitError = UnitError::BadCompressedData(Codec::Zstd);
        // One Zstandard frame (not a skippable one), nothing after it.
        if !input.starts_with(&ZSTD_MAGIC) {
            return Err(BAD);
        }
        match zstd_safe::find_frame_compressed_size(input) {
            Ok(size) if size == input.len() => {}
            _ => return Err(BAD),
        }
        let declared = match zstd_safe::get_frame_content_size(input) {
            Ok(size) => size,
            Err(_) => return Err(BAD),
        };
        if declared.is_some_and(|size| size > limit as u64) {
            return Err(UnitError::DecompressedTooLarge { limit });
        }
        let dctx = match &mut self.zstd {
            Some(dctx) => dctx,
            slot => slot.insert(zstd_safe::DCtx::try_create().ok_or(BAD)?),
        };
        let ceiling = limit.saturating_add(1);
        // The declared size is trusted only as far as the compressed size
        // makes it plausible; beyond that the buffer grows by doubling.
        let mut capacity = first_capacity(input.len(), limit);
        if let Some(size) = declared {
            // At most `limit`, so it fits.
            capacity = capacity.min((size as usize).max(1));
        }
        let too_small = (ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall as usize).wrapping_neg();
        let mut out: Vec<u8> = Vec::new();
        loop {
            out.reserve_exact(capacity);
            match dctx.decompress(&mut out, input) {
                Ok(len) if len > limit => return Err(UnitError::DecompressedTooLarge { limit }),
                Ok(_) => return Ok(out),
                Err(code) if code == too_small => {
                    if capacity >= ceiling {
                        return Err(UnitError::DecompressedTooLarge { limit });
                    }
                    capacity = capacity.saturating_mul(2).min(ceiling);
                }
                Err(_) => return Err(BAD),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    fn batch(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend_from_slice(
                format!("{{\"id\":{i},\"publication\":{{\"room\":\"chat:lobby\",\"data\":{{\"text\":\"hello number {i}\"}}}}}}\n")
                    .as_bytes(),
            );
        }
        out
    }

    /// xorshift bytes: incompressible.
    fn noise(n: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect()
    }

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(9), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        assert_eq!(
            c.compress_vec(data, &mut out, FlushCompress::Finish)
                .unwrap(),
            Status::StreamEnd
        );
        out
    }

    fn unit(codec: Codec, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        write_unit(codec, payload, &mut out);
        out.freeze()
    }

    fn open(message: &[u8], allowed: Codec) -> Result<Vec<Bytes>, UnitError> {
        open_message(&Bytes::copy_from_slice(message), allowed, MAX)
    }

    fn kind(message: &[u8], allowed: Codec) -> &'static str {
        open(message, allowed).map_or_else(|e| e.kind(), |_| "ok")
    }

    #[test]
    fn names_and_markers_round_trip() {
        for codec in Codec::ALL {
            assert_eq!(Codec::from_name(codec.name()), Some(codec));
            assert_eq!(Codec::from_marker(codec.marker()), Some(codec));
            assert_eq!(codec.to_string(), codec.name());
        }
        assert_eq!(Codec::from_name("gzip"), None);
        assert_eq!(Codec::from_name("Zstd"), None);
        assert_eq!(Codec::from_marker(3), None);
        assert!(Codec::Zstd.accepts(Codec::Identity));
        assert!(Codec::Zstd.accepts(Codec::Zstd));
        assert!(!Codec::Zstd.accepts(Codec::DeflateRaw));
        assert!(!Codec::Identity.accepts(Codec::DeflateRaw));
        let offered = Allowed::of(&[Codec::Zstd, Codec::DeflateRaw]);
        assert!(Codec::ALL.iter().all(|&c| offered.accepts(c)));
        assert_eq!(Allowed::from(Codec::Identity), Allowed::IDENTITY);
        assert_eq!(
            Allowed::from(Codec::Zstd),
            Allowed::IDENTITY.with(Codec::Zstd)
        );
        assert_eq!(
            format!("{:?}", Allowed::from(Codec::Zstd)),
            "{Identity, Zstd}"
        );
    }

    #[test]
    fn a_client_accepts_what_it_offered_until_connect_result() {
        let deflated = seal(Codec::DeflateRaw, &batch(20), 0, Levels::default());
        let zstd = seal(Codec::Zstd, &batch(20), 0, Levels::default());
        let offered = Allowed::of(&[Codec::Zstd, Codec::DeflateRaw]);
        let message = Bytes::from([&deflated[..], &zstd[..]].concat());
        assert_eq!(open_message(&message, offered, MAX).map(|b| b.len()), Ok(2));
        let mut decoder = UnitStreamDecoder::new(offered, MAX);
        decoder.push(&message);
        assert!(decoder.next_unit().unwrap().is_some());
        decoder.set_allowed(Codec::DeflateRaw);
        assert_eq!(
            decoder.next_unit(),
            Err(UnitError::UnexpectedCodec(Codec::Zstd))
        );
    }

    #[test]
    fn choose_takes_the_clients_first_supported_codec() {
        let both = [Codec::DeflateRaw, Codec::Zstd];
        assert_eq!(choose("zstd,deflate-raw", &both), Some(Codec::Zstd));
        assert_eq!(choose("deflate-raw,zstd", &both), Some(Codec::DeflateRaw));
        assert_eq!(choose("brotli, zstd", &both), Some(Codec::Zstd));
        assert_eq!(choose("zstd", &[Codec::DeflateRaw]), Some(Codec::Identity));
        assert_eq!(choose("identity,zstd", &both), Some(Codec::Identity));
        assert_eq!(choose("brotli", &both), Some(Codec::Identity));
        assert_eq!(choose("deflate-raw", &[]), Some(Codec::Identity));
        assert_eq!(choose("", &both), None);
        assert_eq!(choose(" , ,", &both), None);
    }

    #[test]
    fn varints_are_minimal() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut buf = [0u8; MAX_VARINT_LEN];
            let n = write_varint(value, &mut buf);
            assert_eq!(n, varint_len(value), "{value}");
            assert_eq!(buf[n - 1] & 0x80, 0);
        }
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn seal_compresses_only_when_it_pays() {
        let big = batch(20);
        for codec in [Codec::DeflateRaw, Codec::Zstd] {
            let sealed = seal(codec, &big, DEFAULT_MIN_SIZE, Levels::default());
            assert_eq!(sealed[0], codec.marker());
            assert!(sealed.len() < big.len() / 3, "{codec}: {}", sealed.len());
            assert_eq!(
                open(&sealed, codec).unwrap(),
                vec![Bytes::from(big.clone())]
            );
            // Below the threshold: identity.
            let small = batch(1);
            let sealed = seal(codec, &small, DEFAULT_MIN_SIZE, Levels::default());
            assert_eq!(sealed, unit(Codec::Identity, &small));
            // Incompressible: identity, even above the threshold.
            let noise = noise(4000);
            let sealed = seal(codec, &noise, 0, Levels::default());
            assert_eq!(sealed[0], 0, "{codec}");
            assert_eq!(&sealed[3..], &noise[..]);
        }
        let sealed = seal(Codec::Identity, &big, 0, Levels::default());
        assert_eq!(sealed, unit(Codec::Identity, &big));
        // Level 0 DEFLATE is stored blocks: never smaller.
        let stored = Levels {
            deflate: 0,
            ..Levels::default()
        };
        assert_eq!(seal(Codec::DeflateRaw, &big, 0, stored)[0], 0);
    }

    #[test]
    fn seal_moves_the_payload_when_the_length_shrinks() {
        // 200 bytes need a 2-byte length; the compressed form a 1-byte one.
        let data = vec![b'a'; 200];
        let mut out = BytesMut::from(&b"xy"[..]);
        assert_eq!(
            seal_into(Codec::DeflateRaw, &data, 0, Levels::default(), &mut out),
            Codec::DeflateRaw
        );
        assert_eq!(&out[..2], b"xy");
        assert_eq!(out[2], 1);
        assert_eq!(usize::from(out[3]), out.len() - 4);
        let units = open(&out[2..], Codec::DeflateRaw).unwrap();
        assert_eq!(units, vec![Bytes::from(data)]);
    }

    #[test]
    fn messages_hold_several_units() {
        let a = batch(1);
        let b = batch(30);
        let mut message = BytesMut::new();
        seal_into(Codec::Zstd, &a, 256, Levels::default(), &mut message);
        seal_into(Codec::Zstd, &b, 256, Levels::default(), &mut message);
        seal_into(Codec::Identity, &b, 256, Levels::default(), &mut message);
        assert_eq!(message[0], 0);
        let got = open(&message, Codec::Zstd).unwrap();
        assert_eq!(
            got,
            vec![Bytes::from(a), Bytes::from(b.clone()), Bytes::from(b)]
        );
    }

    #[test]
    fn identity_payloads_are_not_copied() {
        let message = unit(Codec::Identity, b"{}\n");
        let got = open_message(&message, Codec::Identity, MAX).unwrap();
        assert_eq!(got[0].as_ptr(), message[2..].as_ptr());
    }

    #[test]
    fn every_error_kind() {
        let deflated = deflate_raw(&batch(3));
        let zstd = zstd::bulk::compress(&batch(3), 3).unwrap();
        assert_eq!(kind(b"", Codec::Zstd), "empty_unit");
        assert_eq!(kind(b"\x03\x01x", Codec::Zstd), "bad_marker");
        assert_eq!(
            kind(&unit(Codec::DeflateRaw, &deflated), Codec::Zstd),
            "unexpected_codec"
        );
        assert_eq!(
            kind(&unit(Codec::Zstd, &zstd), Codec::Identity),
            "unexpected_codec"
        );
        assert_eq!(
            kind(
                b"\x00\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
                Codec::Identity
            ),
            "bad_length"
        );
        assert_eq!(
            kind(
                b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02",
                Codec::Identity
            ),
            "bad_length"
        );
        assert_eq!(kind(b"\x00\x81\x80\x04", Codec::Identity), "unit_too_large");
        assert_eq!(kind(b"\x00\x00", Codec::Identity), "empty_unit");
        assert_eq!(kind(b"\x01\x00", Codec::DeflateRaw), "empty_unit");
        assert_eq!(kind(b"\x00\x05{}\n", Codec::Identity), "truncated");
        assert_eq!(kind(b"\x00", Codec::Identity), "truncated");
        assert_eq!(kind(b"\x00\x83", Codec::Identity), "truncated");
        // Non-minimal lengths are accepted.
        assert_eq!(kind(b"\x00\x83\x00{}\n", Codec::Identity), "ok");
        // A deflate stream that decompresses to nothing.
        assert_eq!(
            kind(&unit(Codec::DeflateRaw, &[0x03, 0x00]), Codec::DeflateRaw),
            "empty_unit"
        );
        let empty_zstd = zstd::bulk::compress(b"", 3).unwrap();
        assert_eq!(
            kind(&unit(Codec::Zstd, &empty_zstd), Codec::Zstd),
            "empty_unit"
        );
        // Corrupt, cut short, or followed by more.
        for (codec, good) in [(Codec::DeflateRaw, &deflated), (Codec::Zstd, &zstd)] {
            assert_eq!(kind(&unit(codec, good), codec), "ok");
            let mut trailing = good.clone();
            trailing.push(0);
            assert_eq!(
                kind(&unit(codec, &trailing), codec),
                "bad_compressed_data",
                "{codec} trailing"
            );
            for cut in 1..good.len() {
                assert_eq!(
                    kind(&unit(codec, &good[..cut]), codec),
                    "bad_compressed_data",
                    "{codec} cut at {cut}"
                );
            }
            let twice = [good.as_slice(), good.as_slice()].concat();
            assert_eq!(
                kind(&unit(codec, &twice), codec),
                "bad_compressed_data",
                "{codec} twice"
            );
        }
        assert_eq!(
            kind(&unit(Codec::DeflateRaw, &[0xff; 8]), Codec::DeflateRaw),
            "bad_compressed_data"
        );
        assert_eq!(
            kind(&unit(Codec::Zstd, b"not zstd"), Codec::Zstd),
            "bad_compressed_data"
        );
        // A skippable frame is not a Zstandard frame.
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 1, 0, 0, 0, b'x'];
        assert_eq!(
            kind(&unit(Codec::Zstd, &skippable), Codec::Zstd),
            "bad_compressed_data"
        );
        // Too many units.
        let mut many = BytesMut::new();
        for _ in 0..=MAX_UNITS_PER_MESSAGE {
            write_unit(Codec::Identity, b"{}\n", &mut many);
        }
        assert_eq!(kind(&many, Codec::Identity), "too_many_units");
        assert_eq!(kind(&many[..many.len() - 5], Codec::Identity), "ok");
    }

    #[test]
    fn error_close_codes() {
        assert_eq!(
            UnitError::UnitTooLarge { size: 1, limit: 0 }.close_code(),
            CloseCode::MESSAGE_TOO_BIG
        );
        assert_eq!(
            UnitError::DecompressedTooLarge { limit: 0 }.close_code(),
            CloseCode::MESSAGE_TOO_BIG
        );
        assert_eq!(UnitError::BadMarker(9).close_code(), CloseCode::BAD_REQUEST);
        assert_eq!(UnitError::EmptyUnit.close_code(), CloseCode::BAD_REQUEST);
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let deflated = deflate_raw(&zeros);
        let zstd = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(deflated.len() < 11_000, "{}", deflated.len());
        for (codec, payload) in [(Codec::DeflateRaw, &deflated), (Codec::Zstd, &zstd)] {
            let message = unit(codec, payload);
            let err = open(&message, codec).unwrap_err();
            assert_eq!(
                err,
                UnitError::DecompressedTooLarge { limit: MAX },
                "{codec}"
            );
            // Exactly at the limit is fine; one byte more is not.
            let exact = seal(codec, &vec![b'x'; MAX], 0, Levels::default());
            assert_eq!(open(&exact, codec).unwrap()[0].len(), MAX);
            let over = seal(codec, &vec![b'x'; MAX + 1], 0, Levels::default());
            assert_eq!(
                open(&over, codec).unwrap_err().kind(),
                "decompressed_too_large"
            );
            // Several units share the message's limit.
            let half = seal(codec, &vec![b'y'; MAX / 2 + 1], 0, Levels::default());
            let message = [half.as_ref(), half.as_ref()].concat();
            assert_eq!(
                open(&message, codec).unwrap_err(),
                UnitError::DecompressedTooLarge { limit: MAX }
            );
            // A stream applies the limit per unit.
            let mut decoder = UnitStreamDecoder::new(codec, MAX);
            decoder.push(&message);
            assert!(decoder.next_unit().unwrap().is_some());
            assert!(decoder.next_unit().unwrap().is_some());
        }
    }

    #[test]
    fn zstd_without_declared_size_grows() {
        let data = batch(400);
        let mut cctx = zstd::zstd_safe::CCtx::create();
        cctx.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
            .unwrap();
        let mut out = vec![0u8; data.len()];
        let n = cctx.compress2(&mut out[..], &data).unwrap();
        assert!(
            zstd::zstd_safe::get_frame_content_size(&out[..n])
                .unwrap()
                .is_none()
        );
        let got = open(&unit(Codec::Zstd, &out[..n]), Codec::Zstd).unwrap();
        assert_eq!(got, vec![Bytes::from(data)]);
    }

    #[test]
    fn stream_decoder_matches_message_decoding_at_every_cut() {
        let mut message = BytesMut::new();
        seal_into(
            Codec::DeflateRaw,
            &batch(1),
            256,
            Levels::default(),
            &mut message,
        );
        seal_into(
            Codec::DeflateRaw,
            &batch(12),
            256,
            Levels::default(),
            &mut message,
        );
        seal_into(
            Codec::Identity,
            &batch(2),
            256,
            Levels::default(),
            &mut message,
        );
        let message = message.freeze();
        let expected = open_message(&message, Codec::DeflateRaw, MAX).unwrap();
        for cut in 0..=message.len() {
            let mut decoder = UnitStreamDecoder::new(Codec::DeflateRaw, MAX);
            let mut got = Vec::new();
            for piece in [&message[..cut], &message[cut..]] {
                decoder.push(piece);
                while let Some(batch) = decoder.next_unit().unwrap() {
                    got.push(batch);
                }
            }
            assert_eq!(got, expected, "cut at {cut}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn stream_decoder_fails_early_and_stays_failed() {
        let mut decoder = UnitStreamDecoder::new(Codec::Identity, MAX);
        decoder.push(b"\x00\xff\xff");
        assert_eq!(decoder.next_unit().unwrap(), None);
        decoder.push(b"\x7f");
        assert_eq!(decoder.next_unit().unwrap_err().kind(), "unit_too_large");
        decoder.push(b"\x00\x01x");
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.next_unit().unwrap_err(), UnitError::Failed);

        let mut decoder = UnitStreamDecoder::new(Codec::Identity, MAX);
        decoder.push(b"\x01");
        assert_eq!(
            decoder.next_unit().unwrap_err(),
            UnitError::UnexpectedCodec(Codec::DeflateRaw)
        );
        let mut decoder = UnitStreamDecoder::new(Codec::Identity, MAX);
        decoder.push(b"\x00\x03ab");
        assert_eq!(decoder.next_unit().unwrap(), None);
        assert_eq!(decoder.buffered(), 4);
    }
}
