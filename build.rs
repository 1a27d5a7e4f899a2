//! Compiles `proto/` into Rust types (prost) and their proto3 JSON mapping
//! (pbjson), in OUT_DIR. No `protoc` is needed: protox is a protobuf compiler
//! written in Rust. Generated code is never committed or edited.

use std::{env, path::PathBuf};

/// Messages whose JSON mapping is written by hand in `src/codec/payload.rs`,
/// because their payload fields are JSON values in the JSON framing rather
/// than base64 strings (spec/03-messages.md, "Payloads"). A test checks the
/// hand-written mapping against these messages' descriptors.
const HAND_MAPPED: &[&str] = &[
    ".switchboard.v1.ClientInfo",
    ".switchboard.v1.PublishRequest",
    ".switchboard.v1.Publication",
    ".switchboard.v1.Message",
    ".switchboard.api.v1.PublishRequest",
    ".switchboard.api.v1.BroadcastRequest",
    ".switchboard.api.v1.TicketRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/switchboard/v1/client.proto",
        "proto/switchboard/v1/api.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_bytes = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("descriptors.bin"), &descriptor_bytes)?;

    prost_build::Config::new()
        // Maps encode in key order: encodings are deterministic, so test
        // vectors and "encode once" caches compare byte for byte.
        .btree_map(["."])
        .bytes(["."])
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .ignore_unknown_fields()
        .exclude(HAND_MAPPED.iter().copied())
        .build(&[".switchboard"])?;
    Ok(())
}
