//! A transport message in the protobuf framing, decoded as a batch of client
//! frames and of server frames (small limits). Never panics; every frame
//! decoded re-encodes in both framings and decodes back equal
//! (`switchboard_fuzz::check_batch`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::codec::Encoding;
use switchboard::wire::v1::{ClientFrame, ServerFrame};
use switchboard_fuzz::check_batch;

fuzz_target!(|message: &[u8]| {
    check_batch::<ClientFrame>(message, Encoding::Protobuf);
    check_batch::<ServerFrame>(message, Encoding::Protobuf);
});
