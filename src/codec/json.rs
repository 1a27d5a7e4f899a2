//! The JSON framing's body: proto3 JSON via serde, with a nesting check first.

use bytes::{BufMut, BytesMut};

use super::{DecodeError, Frame, PAYLOAD_MAX_DEPTH, payload::TOO_DEEP_MARKER};

/// Appends the frame's JSON text (no line feed).
pub(super) fn encode_into<F: Frame>(frame: &F, out: &mut BytesMut) {
    // Cannot fail: the generated and hand-written Serialize impls only emit
    // strings, numbers, booleans, maps and pre-validated raw JSON, and writing
    // to memory does not fail.
    if serde_json::to_writer(out.writer(), frame).is_err() {
        unreachable!("serializing a frame to memory cannot fail");
    }
}

/// Parses one JSON frame body, rejecting nesting deeper than `max_depth`
/// before any value is built.
pub(super) fn decode<F: Frame>(body: &[u8], max_depth: usize) -> Result<F, DecodeError> {
    if depth(body) > max_depth {
        return Err(DecodeError::TooDeep { limit: max_depth });
    }
    serde_json::from_slice(body).map_err(|err| {
        let message = err.to_string();
        if message.starts_with(TOO_DEEP_MARKER) {
            DecodeError::TooDeep {
                limit: PAYLOAD_MAX_DEPTH,
            }
        } else {
            DecodeError::Json(message)
        }
    })
}

/// The deepest nesting of arrays and objects in `text`, counting only
/// brackets outside strings. Linear, allocation-free; well-defined for any
/// bytes (invalid JSON is rejected later by the parser).
pub(crate) fn depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::depth;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(depth(b"1"), 0);
        assert_eq!(depth(b"{}"), 1);
        assert_eq!(depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(depth(br#"{"a":"[[[[{{{"}"#), 1);
        assert_eq!(depth(br#"{"a":"\"[[["}"#), 1);
        assert_eq!(depth(b"]]]]"), 0);
    }
}
