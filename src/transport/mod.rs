//! Transports: bytes in from a socket to the engine, encoded frames out from
//! the engine to the socket. Nothing protocol-specific lives here beyond
//! negotiation and the mapping of transport errors to close codes.

pub mod websocket;
