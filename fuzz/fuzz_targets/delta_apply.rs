//! A base and a delta (spec/12-delta.md): the first two input bytes pick the
//! base's length (`switchboard_fuzz::delta::split_input`). `apply` must never
//! panic and never return more than its 1 MiB `max_len`; the reference
//! encoder must round-trip its result, the delta bytes and the base with
//! them spliced in (`switchboard_fuzz::delta::check_delta`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchboard_fuzz::delta::check_delta(data);
});
