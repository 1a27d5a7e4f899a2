//! Integration tests: one binary, one module per area (ARCHITECTURE.md).

mod it {
    pub mod alloc;
    pub mod api;
    pub mod browser;
    pub mod client;
    pub mod codec;
    pub mod compression;
    pub mod delta;
    pub mod engine;
    pub mod openapi;
    pub mod server;
    pub mod strategies;
    pub mod support;
    pub mod unit;
    pub mod vectors;
    pub mod webtransport;
}
