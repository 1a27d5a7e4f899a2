//! The Rust client: a sans-IO reconnection state machine and the thin tokio
//! driver that runs it over a transport.
//!
//! [`machine`] owns every decision (spec/08-client.md, normative for every
//! client library): connecting, backoff, heartbeats, token refresh,
//! resubscription with recovery, at-most-once in-order delivery and the
//! bounded publish queue. It never touches a socket, a clock or the OS; the
//! driver feeds it events and `now`, performs its actions and sleeps until its
//! next timeout. [`sim`] is a simulated server and network that drive the
//! machine and check its promises, for the property tests and fuzz targets
//! ([`sim::run_bytes`] applies arbitrary bytes as steps and reports the first
//! broken invariant).

pub mod cli;
pub mod driver;
pub mod machine;
#[doc(hidden)]
pub mod sim;
pub mod transport;
pub mod webtransport;

pub use self::driver::{Client, Stopped};
pub use self::machine::{
    Action, CommandKind, Config, Event, Machine, PublishError, PublishFailure, PublishId, State,
};
