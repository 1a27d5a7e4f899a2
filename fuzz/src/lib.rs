//! What the fuzz targets in `fuzz_targets/` assert, kept here so that the
//! targets stay one-line wrappers and the committed seeds can be checked
//! against the same invariants by `cargo test` in this directory.
//!
//! The codec (`switchboard::codec`, spec/02-framing.md) must never panic on
//! any input, and every frame it accepts must survive a round trip:
//!
//! - re-encoded in the framing it came from, it decodes back to an equal frame
//!   (in the JSON framing: equal after [`FuzzFrame::json_normalized`], since
//!   a JSON client sees payloads without surrounding whitespace or line
//!   breaks);
//! - re-encoded in the *other* framing, it decodes back the same way, so a
//!   JSON client and a protobuf client are shown the same frames.
//!
//! Stream decoding ([`check_stream`]) must produce exactly the frames, and the
//! first error, that [`decode_frame`](switchboard::codec::decode_frame) gives
//! on the whole input, however the input is split, and must never hold more
//! than one frame's limit plus the last piece pushed.

pub mod delta;
pub mod seeds;

use std::fmt::Debug;

use bytes::Bytes;
use switchboard::codec::payload::normalized;
use switchboard::codec::{self, DecodeError, DecodeLimits, Encoding, Frame, StreamDecoder};
use switchboard::wire::v1::{
    ClientFrame, ClientInfo, Publication, ServerFrame, client_frame, server_frame,
};

/// Limits of the batch targets: small enough that fuzzed inputs (libFuzzer's
/// default `-max_len` is 4096) reach both of them.
pub const BATCH_LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 4096,
    max_frames_per_batch: 16,
};

/// Limits of the stream target: a frame limit well below the input size, so
/// that the "too large" paths of both framings are exercised.
pub const STREAM_LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 512,
    max_frames_per_batch: 16,
};

/// Limits for decoding what the codec itself encoded. A frame accepted under
/// [`BATCH_LIMITS`] can grow when re-encoded (a binary payload becomes base64
/// in JSON), so these are generous: the round trip checks the mapping, not
/// the limits.
const ROUND_TRIP_LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 1 << 24,
    max_frames_per_batch: 1,
};

/// A frame type the targets fuzz: [`ClientFrame`] or [`ServerFrame`].
pub trait FuzzFrame: Frame + Clone + PartialEq + Debug {
    /// The frame a JSON round trip gives back: every payload field replaced
    /// by [`normalized`] of it.
    fn json_normalized(&self) -> Self;
}

fn normalize(payload: &mut Bytes) {
    *payload = normalized(payload);
}

fn normalize_info(info: &mut ClientInfo) {
    normalize(&mut info.info);
}

fn normalize_publication(publication: &mut Publication) {
    normalize(&mut publication.data);
    if let Some(info) = &mut publication.info {
        normalize_info(info);
    }
}

// Payload fields are the `bytes` fields mapped by hand in
// `src/codec/payload.rs` (`HAND_MAPPED_FIELDS`). The matches below list every
// oneof member on purpose: a new member fails to compile here until someone
// decides whether it carries a payload.

impl FuzzFrame for ClientFrame {
    fn json_normalized(&self) -> Self {
        use client_frame::Command;
        let mut frame = self.clone();
        match &mut frame.command {
            Some(Command::Publish(publish)) => normalize(&mut publish.data),
            Some(
                Command::Connect(_)
                | Command::Subscribe(_)
                | Command::Unsubscribe(_)
                | Command::Presence(_)
                | Command::PresenceStats(_)
                | Command::History(_)
                | Command::Refresh(_)
                | Command::Ping(_)
                | Command::Pong(_),
            )
            | None => {}
        }
        frame
    }
}

impl FuzzFrame for ServerFrame {
    fn json_normalized(&self) -> Self {
        use server_frame::Body;
        let mut frame = self.clone();
        match &mut frame.body {
            Some(Body::Publication(publication)) => normalize_publication(publication),
            Some(Body::Subscribe(result)) => {
                result
                    .publications
                    .iter_mut()
                    .for_each(normalize_publication);
            }
            Some(Body::History(result)) => {
                result
                    .publications
                    .iter_mut()
                    .for_each(normalize_publication);
            }
            Some(Body::Presence(result)) => result.clients.values_mut().for_each(normalize_info),
            Some(Body::Join(join)) => join.client.iter_mut().for_each(normalize_info),
            Some(Body::Leave(leave)) => leave.client.iter_mut().for_each(normalize_info),
            Some(Body::Message(message)) => normalize(&mut message.data),
            Some(
                Body::Error(_)
                | Body::Connect(_)
                | Body::Unsubscribe(_)
                | Body::Publish(_)
                | Body::PresenceStats(_)
                | Body::Refresh(_)
                | Body::Ping(_)
                | Body::Unsubscribed(_)
                | Body::Subscribed(_)
                | Body::Disconnect(_)
                | Body::Heartbeat(_),
            )
            | None => {}
        }
        frame
    }
}

/// Asserts that `frame`, encoded in `encoding`, decodes back to itself (to
/// its JSON-normalized form in the JSON framing) and uses every byte.
pub fn assert_round_trips<F: FuzzFrame>(frame: &F, encoding: Encoding) {
    let expected = match encoding {
        Encoding::Protobuf => frame.clone(),
        Encoding::Json => frame.json_normalized(),
    };
    let bytes = codec::encode(frame, encoding);
    match codec::decode_frame::<F>(&bytes, encoding, &ROUND_TRIP_LIMITS) {
        Ok((back, used)) => {
            assert_eq!(
                used,
                bytes.len(),
                "{encoding:?} encoding of {frame:?} decodes from a prefix: {bytes:?}"
            );
            assert_eq!(
                back, expected,
                "{encoding:?} round trip changed the frame; encoded as {bytes:?}"
            );
        }
        Err(err) => panic!("{encoding:?} encoding of {frame:?} does not decode ({err}): {bytes:?}"),
    }
}

/// Decodes `message` as one transport message of `F` frames in `encoding`
/// under [`BATCH_LIMITS`], and checks every frame's round trips (same
/// framing first, then the other) and the batch's limits and error rules.
/// Returns how many frames decoded and the error that ended the batch.
pub fn check_batch<F: FuzzFrame>(
    message: &[u8],
    encoding: Encoding,
) -> (usize, Option<DecodeError>) {
    let other = match encoding {
        Encoding::Json => Encoding::Protobuf,
        Encoding::Protobuf => Encoding::Json,
    };
    let mut batch = codec::decode_batch::<F>(message, encoding, &BATCH_LIMITS);
    let mut decoded = 0;
    let mut error = None;
    for result in batch.by_ref() {
        match result {
            Ok(frame) => {
                decoded += 1;
                assert!(decoded <= BATCH_LIMITS.max_frames_per_batch);
                assert_round_trips(&frame, encoding);
                assert_round_trips(&frame, other);
            }
            Err(err) => {
                check_batch_error(&err, encoding, decoded);
                error = Some(err);
                break;
            }
        }
    }
    assert!(
        batch.next().is_none(),
        "a batch goes on after its first error"
    );
    (decoded, error)
}

fn check_batch_error(err: &DecodeError, encoding: Encoding, decoded: usize) {
    match err {
        DecodeError::Incomplete | DecodeError::Failed => {
            panic!("a batch decoder returned {err:?}, which only streams may")
        }
        DecodeError::Truncated => assert_eq!(encoding, Encoding::Protobuf, "{err:?}"),
        DecodeError::FrameTooLarge { size, limit } => {
            assert_eq!(*limit, BATCH_LIMITS.max_frame_size);
            assert!(*size > *limit as u64, "{err:?}");
        }
        DecodeError::TooManyFrames { limit } => {
            assert_eq!(*limit, BATCH_LIMITS.max_frames_per_batch);
            assert_eq!(decoded, *limit);
        }
        _ => {}
    }
}

/// How the stream target reads its first input byte.
///
/// - bit 0: the encoding (0 JSON, 1 protobuf);
/// - bit 1: the frame type (0 [`ClientFrame`], 1 [`ServerFrame`]);
/// - bits 2..=5: the largest piece, from [`CHUNK_SIZES`] (index 0: the whole
///   input in one piece);
/// - bits 6..=7: 0 for pieces of exactly that size, else pseudo-random sizes
///   from 1 up to it, seeded by the whole byte.
#[derive(Clone, Copy, Debug)]
pub struct StreamControl(pub u8);

/// The largest piece sizes the stream target splits its input into.
pub const CHUNK_SIZES: [usize; 16] = [
    usize::MAX,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    13,
    16,
    31,
    64,
    100,
    256,
    511,
    1024,
];

impl StreamControl {
    /// The control byte for these choices; `chunk` indexes [`CHUNK_SIZES`]
    /// (mod 16), `mode` is 0 for fixed sizes and 1..=3 for varied ones.
    pub const fn new(encoding: Encoding, server: bool, chunk: u8, mode: u8) -> Self {
        let encoding_bit = match encoding {
            Encoding::Json => 0,
            Encoding::Protobuf => 1,
        };
        Self(encoding_bit | (server as u8) << 1 | (chunk & 0x0f) << 2 | (mode & 0x03) << 6)
    }

    /// The encoding this byte selects.
    pub const fn encoding(self) -> Encoding {
        if self.0 & 1 == 0 {
            Encoding::Json
        } else {
            Encoding::Protobuf
        }
    }

    /// Whether this byte selects [`ServerFrame`] rather than [`ClientFrame`].
    pub const fn server(self) -> bool {
        self.0 & 2 != 0
    }

    /// Splits `input` into the pieces this byte selects.
    pub fn chunks(self, input: &[u8]) -> Vec<&[u8]> {
        let max = CHUNK_SIZES[usize::from((self.0 >> 2) & 0x0f)];
        let varied = self.0 >> 6 != 0;
        // xorshift32; never seeded with 0.
        let mut state = 0x9e37_79b9_u32 ^ u32::from(self.0);
        let mut rest = input;
        let mut chunks = Vec::new();
        while !rest.is_empty() {
            let size = if varied && max != usize::MAX {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                1 + (state as usize) % max
            } else {
                max
            };
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks
    }
}

/// The stream target: `data[0]` is a [`StreamControl`], the rest is the
/// stream. Feeds the stream to a [`StreamDecoder`] in the pieces the control
/// byte selects, draining it after each push (its documented contract), and
/// checks it against [`decode_frame`](codec::decode_frame) applied repeatedly
/// to the whole stream. Returns how many frames the stream gave and the kind
/// of the error that ended it, if any.
pub fn check_stream(data: &[u8]) -> (usize, Option<&'static str>) {
    let Some((&control, stream)) = data.split_first() else {
        return (0, None);
    };
    let control = StreamControl(control);
    if control.server() {
        check_stream_as::<ServerFrame>(stream, control)
    } else {
        check_stream_as::<ClientFrame>(stream, control)
    }
}

fn check_stream_as<F: FuzzFrame>(
    stream: &[u8],
    control: StreamControl,
) -> (usize, Option<&'static str>) {
    let encoding = control.encoding();
    let limits = STREAM_LIMITS;

    // What the stream must produce: whole-buffer decoding, until the first
    // error or until the rest is an incomplete frame (which a stream simply
    // waits on).
    let mut expected_frames = Vec::new();
    let mut expected_error = None;
    let mut rest = stream;
    loop {
        match codec::decode_frame::<F>(rest, encoding, &limits) {
            Ok((frame, used)) => {
                assert!(
                    used > 0 && used <= rest.len(),
                    "used {used} of {}",
                    rest.len()
                );
                rest = &rest[used..];
                expected_frames.push(frame);
            }
            Err(DecodeError::Incomplete) => break,
            Err(err) => {
                expected_error = Some(err.kind());
                break;
            }
        }
    }

    let mut decoder = StreamDecoder::new(encoding, limits);
    let mut frames = Vec::new();
    let mut error = None;
    'pieces: for chunk in control.chunks(stream) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame::<F>() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    assert!(
                        !matches!(err, DecodeError::Incomplete | DecodeError::Failed),
                        "a stream decoder returned {err:?} as its first error"
                    );
                    error = Some(err.kind());
                    break 'pieces;
                }
            }
        }
        let bound = limits.max_frame_size + 10 + chunk.len();
        assert!(
            decoder.buffered() <= bound,
            "stream decoder holds {} bytes after draining, more than {bound}",
            decoder.buffered()
        );
    }

    if error.is_some() {
        // A failed stream stays failed and buffers nothing more.
        decoder.push(b"{}\n\x00");
        assert_eq!(decoder.buffered(), 0);
        assert!(matches!(
            decoder.next_frame::<F>(),
            Err(DecodeError::Failed)
        ));
    }
    assert_eq!(frames.len(), expected_frames.len(), "frame counts differ");
    assert!(
        frames == expected_frames,
        "stream and whole-buffer frames differ"
    );
    assert_eq!(
        error, expected_error,
        "stream and whole-buffer errors differ"
    );

    for frame in &frames {
        assert_round_trips(frame, encoding);
    }
    (frames.len(), error)
}
