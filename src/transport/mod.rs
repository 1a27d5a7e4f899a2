//! Transports: bytes in from a socket to the engine, encoded frames out from
//! the engine to the socket. Nothing protocol-specific lives here beyond
//! negotiation and the mapping of transport errors to close codes.

pub mod websocket;
pub mod webtransport;

use crate::codec::unit::{self, Codec};
use crate::config::Config;

/// The unit codec a connection asked for with its `codecs` URL parameter
/// (spec/11-compression.md): `Ok(None)` without the parameter (no unit
/// framing), an error for a list that names nothing.
pub(crate) fn negotiate_codec(
    config: &Config,
    offered: Option<&str>,
) -> Result<Option<Codec>, &'static str> {
    match offered {
        None => Ok(None),
        Some(offered) => unit::choose(offered, &config.compression.enabled())
            .map(Some)
            .ok_or("the codecs parameter names no codec (deflate-raw, zstd, identity)"),
    }
}
