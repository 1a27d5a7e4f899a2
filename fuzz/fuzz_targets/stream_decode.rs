//! A byte stream fed to `StreamDecoder` in pieces: the first input byte picks
//! the encoding, the frame type and the piece sizes
//! (`switchboard_fuzz::StreamControl`). The decoder must give exactly the
//! frames and first error that `decode_frame` gives on the whole stream, and
//! never hold more than the frame limit + 10 + the last piece after draining
//! (`switchboard_fuzz::check_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::check_stream(data);
});
