//! Why a frame could not be decoded, and what the peer is told.

use crate::codes::CloseCode;

/// A decoding failure. Every variant but [`DecodeError::Incomplete`] means the
/// input is invalid and the connection is closed with
/// [`DecodeError::close_code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes so far are a valid prefix of a frame; more are needed. Only
    /// stream decoding returns it.
    #[error("incomplete frame")]
    Incomplete,
    /// A transport message ended inside a frame.
    #[error("message ends inside a frame")]
    Truncated,
    /// A frame's declared or observed size exceeds the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The declared size, or the bytes seen so far without a delimiter.
        size: u64,
        /// The limit in force.
        limit: usize,
    },
    /// A transport message carries more frames than allowed.
    #[error("more than {limit} frames in one message")]
    TooManyFrames {
        /// The limit in force.
        limit: usize,
    },
    /// A JSON frame or payload nests deeper than allowed.
    #[error("JSON nested deeper than {limit} levels")]
    TooDeep {
        /// The limit in force.
        limit: usize,
    },
    /// A protobuf length prefix is not a valid varint.
    #[error("malformed length prefix")]
    BadLength,
    /// An empty frame (an empty line, or an empty message).
    #[error("empty frame")]
    EmptyFrame,
    /// The frame is not a valid protobuf encoding of the frame message.
    #[error("invalid protobuf frame: {0}")]
    Protobuf(prost::DecodeError),
    /// The frame is not a valid proto3-JSON encoding of the frame message.
    #[error("invalid JSON frame: {0}")]
    Json(String),
    /// The stream decoder already failed; a stream cannot resynchronise.
    #[error("stream decoder already failed")]
    Failed,
}

impl DecodeError {
    /// A stable name for the error, used by the test vectors in
    /// `spec/vectors/` and in metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::Incomplete => "incomplete",
            DecodeError::Truncated => "truncated",
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            DecodeError::TooManyFrames { .. } => "too_many_frames",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::BadLength => "bad_length",
            DecodeError::EmptyFrame => "empty_frame",
            DecodeError::Protobuf(_) => "invalid_protobuf",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::Failed => "failed",
        }
    }

    /// The close code a server (or client) sends when its peer's input fails
    /// to decode (spec/05-codes.md).
    pub const fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::FrameTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::BAD_REQUEST,
        }
    }
}
