//! Frames to bytes and back: the two framings, batches and stream decoding.
//!
//! This module owns spec/02-framing.md. Everything here is a pure function of
//! its inputs: no I/O, no clocks, no allocation beyond what the limits allow.
//! It must never panic on any input; the fuzz targets in `fuzz/` hold it to that.
//!
//! - **Protobuf framing**: every frame is a varint length followed by that many
//!   bytes of a protobuf-encoded frame message.
//! - **JSON framing**: every frame is a proto3-JSON object followed by a line
//!   feed; payload fields are JSON values ([`payload`]).
//!
//! A transport message (a WebSocket message) carries one or more delimited
//! frames: a *batch*, decoded by [`decode_batch`]. A byte stream (a WebTransport
//! stream) carries delimited frames back to back, decoded incrementally by
//! [`StreamDecoder`]. Both check declared lengths against [`DecodeLimits`]
//! before buffering anything.

pub mod delta;
mod error;
mod json;
pub mod payload;
pub mod unit;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use self::error::DecodeError;
use crate::wire::v1::{ClientFrame, ServerFrame};

/// A frame's wire format, chosen per connection (spec/02-framing.md,
/// "Negotiation").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// proto3 JSON, one frame per line. Text.
    Json,
    /// Binary protobuf, varint-length-prefixed.
    Protobuf,
}

impl Encoding {
    /// Both encodings, JSON first.
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::Protobuf];
    /// The WebSocket subprotocols a server accepts, in the order listed in
    /// error messages.
    pub const SUBPROTOCOLS: [&'static str; 2] = ["switchboard.v1.json", "switchboard.v1.protobuf"];

    /// The WebSocket subprotocol that selects this encoding.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => Self::SUBPROTOCOLS[0],
            Encoding::Protobuf => Self::SUBPROTOCOLS[1],
        }
    }

    /// The encoding a WebSocket subprotocol selects, if any.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.subprotocol() == name)
    }

    /// Short name: `json` or `protobuf` (URL query values, CLI flags, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }

    /// The encoding a short name selects, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Whether messages in this encoding are UTF-8 text (a WebSocket text
    /// message) rather than binary.
    pub const fn is_text(self) -> bool {
        matches!(self, Encoding::Json)
    }
}

/// Limits a decoder enforces before it buffers or parses anything
/// (spec/06-limits.md). The defaults suit a public server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest frame, in bytes, without its delimiter. Default 64 KiB: the
    /// default maximum message size, so one frame can fill a message.
    pub max_frame_size: usize,
    /// Most frames in one transport message. Default 100: enough for any
    /// client's burst, small enough that one message cannot queue unbounded work.
    pub max_frames_per_batch: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_frame_size: 64 * 1024,
            max_frames_per_batch: 100,
        }
    }
}

/// How deep a JSON payload may nest (arrays and objects). A protocol constant,
/// not a setting: it decides how a payload is shown to JSON clients, so every
/// peer must agree on it (spec/03-messages.md, "Payloads").
pub const PAYLOAD_MAX_DEPTH: usize = 32;

/// How deep the schema itself nests a payload inside a frame, at most
/// (`ServerFrame.subscribe.publications[].info.info`), with headroom for
/// additions in v1.
const SCHEMA_MAX_DEPTH: usize = 8;

/// A protocol frame type: [`ClientFrame`] or [`ServerFrame`].
pub trait Frame:
    prost::Message + Default + serde::Serialize + serde::de::DeserializeOwned + Sized
{
}
impl Frame for ClientFrame {}
impl Frame for ServerFrame {}

/// Encodes one frame with its delimiter, ready to be sent alone or appended to
/// a batch.
pub fn encode<F: Frame>(frame: &F, encoding: Encoding) -> Bytes {
    let mut out = BytesMut::new();
    encode_into(frame, encoding, &mut out);
    out.freeze()
}

/// Appends one frame with its delimiter to `out`.
pub fn encode_into<F: Frame>(frame: &F, encoding: Encoding, out: &mut BytesMut) {
    match encoding {
        Encoding::Protobuf => {
            let len = frame.encoded_len();
            out.reserve(len + prost::length_delimiter_len(len));
            // Cannot fail: the buffer was reserved for the whole frame above.
            if frame.encode_length_delimited(out).is_err() {
                unreachable!("reserved buffer too small");
            }
        }
        Encoding::Json => {
            json::encode_into(frame, out);
            out.put_u8(b'\n');
        }
    }
}

/// Decodes the first delimited frame of `buf`, returning it and how many bytes
/// it used. [`DecodeError::Incomplete`] means `buf` holds a valid prefix and
/// more bytes are needed; every other error means the input is invalid.
pub fn decode_frame<F: Frame>(
    buf: &[u8],
    encoding: Encoding,
    limits: &DecodeLimits,
) -> Result<(F, usize), DecodeError> {
    let (body, used) = split_frame(buf, encoding, limits)?;
    Ok((decode_body(body, encoding)?, used))
}

/// Finds the first delimited frame in `buf`: its body (without delimiter) and
/// the bytes it used, without parsing the body.
fn split_frame<'a>(
    buf: &'a [u8],
    encoding: Encoding,
    limits: &DecodeLimits,
) -> Result<(&'a [u8], usize), DecodeError> {
    match encoding {
        Encoding::Protobuf => {
            let (len, prefix) = decode_length(buf)?;
            if len > limits.max_frame_size as u64 {
                return Err(DecodeError::FrameTooLarge {
                    size: len,
                    limit: limits.max_frame_size,
                });
            }
            // `len` fits in usize: it is at most `max_frame_size`.
            let end = prefix + len as usize;
            match buf.get(prefix..end) {
                Some(body) => Ok((body, end)),
                None => Err(DecodeError::Incomplete),
            }
        }
        Encoding::Json => match buf.iter().position(|&b| b == b'\n') {
            Some(len) if len > limits.max_frame_size => Err(DecodeError::FrameTooLarge {
                size: len as u64,
                limit: limits.max_frame_size,
            }),
            Some(0) => Err(DecodeError::EmptyFrame),
            Some(len) => Ok((&buf[..len], len + 1)),
            None if buf.len() > limits.max_frame_size => Err(DecodeError::FrameTooLarge {
                size: buf.len() as u64,
                limit: limits.max_frame_size,
            }),
            None => Err(DecodeError::Incomplete),
        },
    }
}

/// Reads a protobuf varint length prefix: (value, bytes used).
fn decode_length(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        // The tenth byte may only carry the top bit of a u64.
        if i == 9 && byte > 1 {
            return Err(DecodeError::BadLength);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() >= 10 {
        Err(DecodeError::BadLength)
    } else {
        Err(DecodeError::Incomplete)
    }
}

/// Parses one frame body (without its delimiter).
fn decode_body<F: Frame>(body: &[u8], encoding: Encoding) -> Result<F, DecodeError> {
    match encoding {
        Encoding::Protobuf => F::decode(body).map_err(DecodeError::Protobuf),
        Encoding::Json => json::decode(body, PAYLOAD_MAX_DEPTH + SCHEMA_MAX_DEPTH),
    }
}

/// Decodes a whole transport message: one or more delimited frames, at most
/// `limits.max_frames_per_batch`. In the JSON framing the last frame's line
/// feed may be omitted. A message that ends inside a frame is
/// [`DecodeError::Truncated`]: a message transport never splits frames.
pub fn decode_batch<'a, F: Frame>(
    message: &'a [u8],
    encoding: Encoding,
    limits: &'a DecodeLimits,
) -> Batch<'a, F> {
    Batch {
        rest: message,
        encoding,
        limits,
        decoded: 0,
        failed: false,
        _frame: Default::default(),
    }
}

/// The frames of one transport message, in order; see [`decode_batch`].
/// After the first error the iterator ends.
pub struct Batch<'a, F> {
    rest: &'a [u8],
    encoding: Encoding,
    limits: &'a DecodeLimits,
    decoded: usize,
    failed: bool,
    _frame: std::marker::PhantomData<fn() -> F>,
}

impl<F: Frame> Iterator for Batch<'_, F> {
    type Item = Result<F, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || (self.rest.is_empty() && self.decoded > 0) {
            return None;
        }
        let result = self.next_frame();
        self.failed = result.is_err();
        Some(result)
    }
}

impl<F: Frame> Batch<'_, F> {
    fn next_frame(&mut self) -> Result<F, DecodeError> {
        if self.rest.is_empty() {
            return Err(DecodeError::EmptyFrame);
        }
        if self.decoded == self.limits.max_frames_per_batch {
            return Err(DecodeError::TooManyFrames {
                limit: self.limits.max_frames_per_batch,
            });
        }
        let (body, used) = match split_frame(self.rest, self.encoding, self.limits) {
            Ok(found) => found,
            // The last JSON frame of a message needs no line feed.
            Err(DecodeError::Incomplete) if self.encoding == Encoding::Json => {
                (self.rest, self.rest.len())
            }
            Err(DecodeError::Incomplete) => return Err(DecodeError::Truncated),
            Err(other) => return Err(other),
        };
        self.rest = &self.rest[used..];
        self.decoded += 1;
        decode_body(body, self.encoding)
    }
}

/// Decodes frames from a byte stream that arrives in arbitrary pieces
/// (spec/02-framing.md, "Streams").
///
/// Contract: after each [`push`](Self::push), call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. The decoder then
/// never holds more than one frame's limit plus the last piece pushed: a
/// declared (protobuf) or growing (JSON) frame above the limit is an error as
/// soon as the bytes seen prove it, before the rest of it is buffered.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: BytesMut,
    encoding: Encoding,
    limits: DecodeLimits,
    /// JSON: bytes at the front of `buf` known to hold no line feed, so each
    /// byte is searched once however the stream is split.
    scanned: usize,
    failed: bool,
}

impl StreamDecoder {
    /// A decoder for one stream.
    pub fn new(encoding: Encoding, limits: DecodeLimits) -> Self {
        Self {
            buf: BytesMut::new(),
            encoding,
            limits,
            scanned: 0,
            failed: false,
        }
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes read from the stream. Ignored once the decoder failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete frame, or `Ok(None)` when more bytes are needed.
    /// After an error the decoder stays failed ([`DecodeError::Failed`]): a
    /// stream cannot resynchronise after a bad frame.
    pub fn next_frame<F: Frame>(&mut self) -> Result<Option<F>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Failed);
        }
        let result = self.take_frame();
        if result.is_err() {
            self.failed = true;
            self.buf = BytesMut::new();
        }
        result
    }

    /// Every complete delimited frame buffered, as one batch of bytes (its
    /// frames not decoded yet, their sizes checked), or `Ok(None)` when no
    /// frame is complete. For clients that decode batches elsewhere.
    pub fn next_delimited(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Failed);
        }
        let mut end = 0;
        let mut frames = 0;
        // JSON: bytes after `end` already known to hold no line feed.
        let mut skip = self.scanned;
        let result = loop {
            if frames == self.limits.max_frames_per_batch {
                break Ok(false);
            }
            let rest = &self.buf[end..];
            let found = match self.encoding {
                Encoding::Json => match memchr::memchr(b'\n', &rest[skip.min(rest.len())..]) {
                    Some(pos) => {
                        let pos = skip + pos;
                        skip = 0;
                        split_frame(&rest[..=pos], self.encoding, &self.limits)
                    }
                    None if rest.len() > self.limits.max_frame_size => {
                        Err(DecodeError::FrameTooLarge {
                            size: rest.len() as u64,
                            limit: self.limits.max_frame_size,
                        })
                    }
                    None => Err(DecodeError::Incomplete),
                },
                Encoding::Protobuf => split_frame(rest, self.encoding, &self.limits),
            };
            match found {
                Ok((_, used)) => {
                    end += used;
                    frames += 1;
                }
                Err(DecodeError::Incomplete) => break Ok(true),
                Err(err) => break Err(err),
            }
        };
        let incomplete = match result {
            Ok(incomplete) => incomplete,
            Err(err) => {
                self.failed = true;
                self.buf = BytesMut::new();
                return Err(err);
            }
        };
        let batch = (end > 0).then(|| self.buf.split_to(end).freeze());
        // What is left holds no line feed when the search stopped for one.
        self.scanned = if incomplete && self.encoding == Encoding::Json {
            self.buf.len()
        } else {
            0
        };
        Ok(batch)
    }

    fn take_frame<F: Frame>(&mut self) -> Result<Option<F>, DecodeError> {
        let end = match self.encoding {
            // Search only the bytes not searched before.
            Encoding::Json => match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(pos) => self.scanned + pos + 1,
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.limits.max_frame_size {
                        return Err(DecodeError::FrameTooLarge {
                            size: self.buf.len() as u64,
                            limit: self.limits.max_frame_size,
                        });
                    }
                    return Ok(None);
                }
            },
            Encoding::Protobuf => self.buf.len(),
        };
        let (body, used) = match split_frame(&self.buf[..end], self.encoding, &self.limits) {
            Ok(found) => found,
            Err(DecodeError::Incomplete) => return Ok(None),
            Err(err) => return Err(err),
        };
        let frame = decode_body(body, self.encoding)?;
        self.buf.advance(used);
        self.scanned = 0;
        Ok(Some(frame))
    }
}
