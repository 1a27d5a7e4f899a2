//! # Switchboard
//!
//! A protocol-first real-time messaging server.
//!
//! # Layout
//!
//! - [`wire`]: the protocol's Rust types, generated from `proto/` at build time.
//!   Nothing else defines what goes on the wire.
//! - [`codec`]: pure functions between frames and bytes: the JSON and protobuf
//!   framings, batches, incremental stream decoding and decode limits
//!   (spec/02-framing.md). No I/O, no clocks.
//! - [`codes`]: close codes, error codes and unsubscribe codes, and whether a
//!   client reconnects after each (spec/05-codes.md).
//!
//! The normative description of the protocol is `spec/`; the code links to it.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod codec;
pub mod codes;
pub mod wire;
