//! The client's reconnection machine against a simulated server and network
//! (`switchboard::client::sim`): the input seeds the jitter and decodes to up
//! to 512 steps (drops with any close code, restarts with epoch changes,
//! partitions, misbehaving replies, app calls, time). Any broken invariant
//! (a duplicate or out-of-order offset, a silent gap, an unbounded queue, a
//! reconnect after a terminal code, a panic) is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = switchboard::client::sim::run_bytes(data) {
        panic!("{violation}");
    }
});
