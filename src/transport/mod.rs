//! Transports: bytes in from a socket to the engine, encoded frames out from
//! the engine to the socket. Nothing protocol-specific lives here beyond
//! negotiation and the mapping of transport errors to close codes.

pub mod websocket;
pub mod webtransport;

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::codec::unit::{self, Codec};
use crate::codes::CloseCode;
use crate::config::Config;
use crate::engine::{Close, Outbox};

/// How long a closing connection may take to accept its last frames.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Runs one write of a connection's writer. Once the connection is closing,
/// a peer that does not read gets [`CLOSE_GRACE`], then is given up on.
/// `Err` carries the close that ends the connection: the one in progress,
/// or an abnormal close naming the failed write.
pub(crate) async fn write_or_give_up<E: Display>(
    outbox: &Outbox,
    write: impl Future<Output = Result<(), E>>,
    what: &str,
) -> Result<(), Close> {
    let gave_up = async {
        let close = outbox.closed().await;
        tokio::time::sleep(CLOSE_GRACE).await;
        close
    };
    tokio::select! {
        written = write => written.map_err(|err| {
            let close = outbox
                .closing()
                .unwrap_or_else(|| Close::new(CloseCode::ABNORMAL, format!("{what} failed: {err}")));
            outbox.close(close.clone());
            close
        }),
        close = gave_up => Err(close),
    }
}

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
