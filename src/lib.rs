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
//! - [`client`]: the Rust client. Its core is [`client::Machine`], a sans-IO
//!   state machine (spec/08-client.md) that decides when to connect, reconnect
//!   with jittered backoff, refresh tokens and resubscribe with recovery, and
//!   delivers each publication at most once and in order; it takes events and
//!   `now` and returns actions, never touching a socket or a clock.
//! - [`config`]: every setting and limit with its default and the reason for it.
//! - [`auth`]: JWT verification (HMAC and public keys), claims to capabilities,
//!   room patterns (spec/04-auth.md).
//! - [`engine`]: the transport-agnostic core: a [`engine::Node`], its hub of
//!   rooms, one [`engine::Session`] per connection and its byte-capped
//!   [`engine::Outbox`]. Never imports a transport.
//! - [`broker`]: the [`broker::Broker`] seam (streams, history, presence; its
//!   contract is on the trait) and the embedded in-memory broker.
//! - [`transport`]: sockets to the engine and back (WebSocket now).
//! - [`api`]: the server API for backends (`POST /api/v1/<method>`, its
//!   OpenAPI document), `/health` and `/metrics`.
//! - [`server`]: a running server: router, listener, housekeeping, graceful
//!   shutdown. [`metrics`] names every metric once.
//! - [`mod@bench`]: `switchboard bench`, a load generator and a bare tokio-tungstenite baseline server.
//!
//! Dependencies point one way: transport → engine → broker; codec, codes and
//! wire are leaves everything may use.
//!
//! The normative description of the protocol is `spec/`; the code links to it.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod client;
pub mod codec;
pub mod codes;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod server;
pub mod transport;
pub mod wire;
