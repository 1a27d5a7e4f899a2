//! The generated protocol types (`proto/` compiled by `build.rs` into OUT_DIR).
//!
//! This module owns nothing but the schema's Rust shape: prost structs for the
//! protobuf framing and their proto3 JSON mapping (pbjson), except the
//! payload-carrying messages whose JSON mapping lives in
//! [`crate::codec::payload`]. Generated code is never edited; change the
//! `.proto` files instead.

/// Client protocol v1: `proto/switchboard/v1/client.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/switchboard.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/switchboard.v1.serde.rs"));
}

/// Server API v1: `proto/switchboard/v1/api.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/switchboard.api.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/switchboard.api.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for tests that check
/// hand-written code against the schema (and for reflection tools).
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
