//! Units (spec/11-compression.md): the input after its first byte is opened
//! as one transport message and fed to a `UnitStreamDecoder` in the pieces
//! the first byte selects, on a connection that negotiated each codec in
//! turn, with a 64 KiB limit. Never panics; message and stream agree; every
//! batch opened seals and opens back (`switchboard_fuzz::seeds::check_units`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::seeds::check_units(data);
});
