//! The generated protocol types (`proto/` compiled by `build.rs` into OUT_DIR).
//!
//! This module owns nothing but the schema's Rust shape: prost structs for the
//! protobuf framing and their proto3 JSON mapping (pbjson), except the
//! payload-carrying messages whose JSON mapping lives in
//! [`crate::codec::payload`]. Generated code is never edited; change the
//! `.proto` files instead. Modules mirror the protobuf packages, so generated
//! cross-package paths resolve.

/// The protobuf packages, as generated.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod switchboard {
    /// Client protocol v1: `proto/switchboard/v1/client.proto`.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/switchboard.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/switchboard.v1.serde.rs"));
    }
    /// The server API.
    pub mod api {
        /// Server API v1: `proto/switchboard/v1/api.proto`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/switchboard.api.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/switchboard.api.v1.serde.rs"));
        }
    }
}

/// Client protocol v1: `proto/switchboard/v1/client.proto`.
pub use self::switchboard::v1;

/// Server API v1: `proto/switchboard/v1/api.proto`.
pub use self::switchboard::api::v1 as api;

/// The encoded `FileDescriptorSet` of every `.proto` file, for tests that check
/// hand-written code against the schema, and for the OpenAPI document.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
