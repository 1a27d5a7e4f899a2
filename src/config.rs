//! Server configuration: every setting, its default and the reason for it.
//!
//! A config comes from a TOML file (`switchboard serve --config FILE`), then
//! environment variables and flags override a few common settings
//! (`src/main.rs`). With no file at all the embedded defaults below run a
//! development server on loopback. spec/06-limits.md lists the limits a
//! client can observe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::codec::DecodeLimits;

/// The HMAC secret used when none is configured. Publicly known: a server
/// using it accepts tokens anyone can mint, so it warns at start and refuses
/// to listen on anything but loopback.
pub const DEVELOPMENT_SECRET: &str = "switchboard-development-secret-not-for-production";

/// Everything `switchboard serve` needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the public endpoint (WebSocket, `/health`, `/metrics`).
    /// Default `127.0.0.1:8000`: loopback, so a development server is not
    /// exposed by accident.
    pub listen: SocketAddr,
    /// Path of the WebSocket endpoint. Default `/connection/websocket`.
    pub websocket_path: String,
    /// Origins allowed to open WebSocket connections (`https://app.example`),
    /// or `*` for any. Browsers send `Origin`; a cross-site page must not
    /// reuse a user's cookies to open a socket (CSWSH). Default: none beyond
    /// same-origin requests and clients that send no `Origin` (non-browsers).
    pub allowed_origins: Vec<String>,
    /// How clients authenticate.
    pub auth: AuthConfig,
    /// Limits on what one peer may use.
    pub limits: Limits,
    /// Options of rooms whose namespace has no entry in `namespaces`.
    pub default_room: RoomOptions,
    /// Options per namespace (the part of a room name before the first `:`).
    pub namespaces: BTreeMap<String, RoomOptions>,
    /// When true, rooms whose namespace is not in `namespaces` do not exist
    /// (error 102). Default false: every namespace uses `default_room`, so a
    /// new user can start without writing config.
    pub strict_namespaces: bool,
    /// Subscribe every authenticated connection to its user's personal room
    /// `<namespace>:#<user>` on connect (a `subscribed` push). Default none:
    /// clients subscribe to personal rooms themselves.
    pub personal_namespace: Option<String>,
    /// The server API for backends (spec/10-server-api.md).
    pub api: ApiConfig,
    /// The WebTransport endpoint (HTTP/3 over QUIC, spec/02-framing.md).
    pub webtransport: WebTransportConfig,
    /// Frame compression (spec/11-compression.md).
    pub compression: CompressionConfig,
    /// How long a graceful shutdown may take before remaining connections
    /// are dropped. Default 10 s.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Connections told to go away per batch during shutdown (then a short
    /// pause), so that clients do not all reconnect in the same instant.
    /// Default 1000.
    pub shutdown_batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            websocket_path: "/connection/websocket".into(),
            allowed_origins: Vec::new(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            default_room: RoomOptions::default(),
            namespaces: BTreeMap::new(),
            strict_namespaces: false,
            personal_namespace: None,
            api: ApiConfig::default(),
            webtransport: WebTransportConfig::default(),
            compression: CompressionConfig::default(),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_batch: 1000,
        }
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Parses a TOML config.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks settings that cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.uses_development_secret() && !self.listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "refusing to listen on {} with the public development secret: set auth.hmac_secret \
                 (or SWITCHBOARD_SECRET) or auth.public_key_file",
                self.listen
            )));
        }
        if let Some(api) = self.api.listen {
            if self.api.keys.is_empty()
                && self.auth.uses_development_secret()
                && !api.ip().is_loopback()
            {
                return Err(ConfigError(format!(
                    "refusing to serve the API on {api} with the public development key: set api.keys"
                )));
            }
        }
        if let Some(unknown) = self
            .compression
            .codecs
            .iter()
            .find(|c| crate::codec::unit::Codec::from_name(c).is_none())
        {
            return Err(ConfigError(format!(
                "compression.codecs: unknown codec {unknown:?} (known: deflate-raw, zstd)"
            )));
        }
        for (name, options) in std::iter::once(("default_room", &self.default_room)).chain(
            self.namespaces
                .iter()
                .map(|(name, options)| (name.as_str(), options)),
        ) {
            if options.volatile && options.delta {
                return Err(ConfigError(format!(
                    "{name}: a room cannot be both volatile and delta \
                     (a lost datagram would break the chain of deltas)"
                )));
            }
        }
        let wt = &self.webtransport;
        if !wt.path.starts_with('/') {
            return Err(ConfigError("webtransport.path must start with '/'".into()));
        }
        if wt.certificate.is_some() != wt.private_key.is_some() {
            return Err(ConfigError(
                "webtransport.certificate and webtransport.private_key go together".into(),
            ));
        }
        if wt.development_certificate_validity > Duration::from_secs(14 * 86_400)
            || wt.development_certificate_renewal >= wt.development_certificate_validity
        {
            return Err(ConfigError(
                "webtransport.development_certificate_validity must be at most 14 days \
                 and longer than development_certificate_renewal"
                    .into(),
            ));
        }
        if !self.websocket_path.starts_with('/') {
            return Err(ConfigError("websocket_path must start with '/'".into()));
        }
        if self.limits.max_frame_size > self.limits.max_message_size {
            return Err(ConfigError(
                "limits.max_frame_size exceeds limits.max_message_size".into(),
            ));
        }
        if self.limits.outbound_queue_bytes < self.limits.max_message_size {
            return Err(ConfigError(
                "limits.outbound_queue_bytes must hold at least one message".into(),
            ));
        }
        for name in self.namespaces.keys() {
            if name.contains(':') || name.contains('#') {
                return Err(ConfigError(format!(
                    "namespace {name:?}: must not contain ':' or '#'"
                )));
            }
        }
        Ok(())
    }

    /// The options of a namespace, `None` when it does not exist.
    pub fn room_options(&self, namespace: &str) -> Option<&RoomOptions> {
        match self.namespaces.get(namespace) {
            Some(options) => Some(options),
            None if self.strict_namespaces => None,
            None => Some(&self.default_room),
        }
    }
}

/// The public development API key, accepted only while the server uses the
/// development secret (so only on loopback).
pub const DEVELOPMENT_API_KEY: &str = "switchboard-development-api-key";

/// The server API for backends.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// API keys; a request must carry one (`Authorization: apikey <key>` or
    /// `X-API-Key: <key>`). Empty: the API is closed, except for the public
    /// [`DEVELOPMENT_API_KEY`] while the development secret is in use.
    pub keys: Vec<String>,
    /// A separate address for the API (keep it off the public network).
    /// Default: served on `listen` beside the client endpoint.
    pub listen: Option<SocketAddr>,
    /// How long a publish's idempotency key is remembered. Default 5 min:
    /// longer than any sane retry loop.
    #[serde(with = "duration")]
    pub idempotency_window: Duration,
    /// Default lifetime of a connection ticket. Default 60 s: time enough for
    /// a page to load and connect, short enough to be useless when leaked.
    #[serde(with = "duration")]
    pub ticket_ttl: Duration,
    /// Largest body of an API request, in bytes. Default 1 MiB.
    pub max_body_size: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            listen: None,
            idempotency_window: Duration::from_secs(300),
            ticket_ttl: Duration::from_secs(60),
            max_body_size: 1024 * 1024,
        }
    }
}

impl Config {
    /// The API keys in force: the configured ones, or the development key
    /// while the development secret is in use.
    pub fn api_keys(&self) -> Vec<&str> {
        if self.api.keys.is_empty() && self.auth.uses_development_secret() {
            vec![DEVELOPMENT_API_KEY]
        } else {
            self.api.keys.iter().map(String::as_str).collect()
        }
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// How connections authenticate (spec/04-auth.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret for HS256/HS384/HS512 tokens. Default: none, which means the
    /// public [`DEVELOPMENT_SECRET`] unless `public_key_file` is set.
    pub hmac_secret: Option<String>,
    /// PEM file with a public key (RSA, EC P-256/P-384 or Ed25519) for RS*,
    /// PS*, ES* or EdDSA tokens.
    pub public_key_file: Option<PathBuf>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Accept connections without a token (user id empty). Default false.
    pub allow_anonymous: bool,
    /// Accept `?token=` on the WebSocket URL, for apps that cannot send a
    /// token in the connect command. Default true; URLs end up in proxy logs,
    /// so prefer short-lived tokens or tickets there.
    pub allow_token_in_url: bool,
    /// How long after a session's expiry the server waits for a `refresh`
    /// before closing with 3002. Default 25 s: one heartbeat interval, so a
    /// client that refreshes on time never races the close.
    #[serde(with = "duration")]
    pub expiry_grace: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hmac_secret: None,
            public_key_file: None,
            audience: None,
            issuer: None,
            allow_anonymous: false,
            allow_token_in_url: true,
            expiry_grace: Duration::from_secs(25),
        }
    }
}

impl AuthConfig {
    /// Whether tokens are checked against the public development secret.
    pub fn uses_development_secret(&self) -> bool {
        self.hmac_secret.is_none() && self.public_key_file.is_none()
    }

    /// The HMAC secret in force.
    pub fn effective_hmac_secret(&self) -> Option<&str> {
        match (&self.hmac_secret, &self.public_key_file) {
            (Some(secret), _) => Some(secret),
            (None, None) => Some(DEVELOPMENT_SECRET),
            (None, Some(_)) => None,
        }
    }
}

/// Frame compression, negotiated per connection by the `codecs` URL
/// parameter and done once per publication (spec/11-compression.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Codecs the server uses when a client lists them: `deflate-raw`,
    /// `zstd`. Default both; empty: clients always get `identity`.
    pub codecs: Vec<String>,
    /// Batches smaller than this are sent uncompressed: compressing a few
    /// dozen bytes costs more CPU than it saves bytes. Default 256.
    pub min_size: usize,
    /// DEFLATE level, 1–9. Default 6.
    pub deflate_level: u32,
    /// zstd level, 1–19. Default 3.
    pub zstd_level: i32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            codecs: vec!["deflate-raw".into(), "zstd".into()],
            min_size: 256,
            deflate_level: 6,
            zstd_level: 3,
        }
    }
}

impl CompressionConfig {
    /// The enabled codecs (validated by [`Config::validate`]).
    pub fn enabled(&self) -> Vec<crate::codec::unit::Codec> {
        self.codecs
            .iter()
            .filter_map(|c| crate::codec::unit::Codec::from_name(c))
            .collect()
    }

    /// The levels as the codec takes them.
    pub fn levels(&self) -> crate::codec::unit::Levels {
        crate::codec::unit::Levels {
            deflate: self.deflate_level,
            zstd: self.zstd_level,
        }
    }
}

/// The WebTransport endpoint: HTTP/3 over UDP, beside the WebSocket one.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebTransportConfig {
    /// Serve WebTransport. Default true.
    pub enabled: bool,
    /// UDP address. Default: the IP and port of `listen` (TCP and UDP ports
    /// are separate namespaces, so one number serves both).
    pub listen: Option<SocketAddr>,
    /// Path of the session URL. Default `/connection/webtransport`; its
    /// certificate hash is served over HTTP at `<path>/certificate`.
    pub path: String,
    /// PEM certificate chain for production. With `private_key`; without
    /// both, a development certificate is generated.
    pub certificate: Option<PathBuf>,
    /// PEM private key of `certificate`.
    pub private_key: Option<PathBuf>,
    /// Validity of a generated development certificate. At most 14 days,
    /// the most browsers accept for `serverCertificateHashes`. Default 10 days.
    #[serde(with = "duration")]
    pub development_certificate_validity: Duration,
    /// A development certificate is replaced by a new one this long before
    /// it expires, without dropping sessions. Default 3 days.
    #[serde(with = "duration")]
    pub development_certificate_renewal: Duration,
    /// QUIC keep-alive interval, so that NAT bindings of quiet sessions
    /// survive. Default 10 s.
    #[serde(with = "duration")]
    pub keep_alive: Duration,
}

impl Default for WebTransportConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            path: "/connection/webtransport".into(),
            certificate: None,
            private_key: None,
            development_certificate_validity: Duration::from_secs(10 * 86_400),
            development_certificate_renewal: Duration::from_secs(3 * 86_400),
            keep_alive: Duration::from_secs(10),
        }
    }
}

/// What one peer may use (spec/06-limits.md). Each limit protects the server
/// and every other client from one misbehaving peer.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message a client may send, in bytes; larger closes
    /// with 1009. Default 64 KiB: chat messages and state updates fit many
    /// times over, and a peer cannot make the server buffer megabytes.
    pub max_message_size: usize,
    /// Largest single frame, in bytes. Default 64 KiB (= the message size).
    pub max_frame_size: usize,
    /// Most frames in one message. Default 100.
    pub max_frames_per_batch: usize,
    /// Bytes queued for one connection before it is closed as too slow
    /// (3003). Default 1 MiB: seconds of a busy room, bounded per peer.
    pub outbound_queue_bytes: usize,
    /// Rooms one connection may be subscribed to. Default 128.
    pub max_rooms_per_connection: usize,
    /// Open connections on this node; more are closed with 3007. Default 100 000.
    pub max_connections: usize,
    /// Open connections of one user on this node; more are closed with 3505.
    /// 0 means unlimited. Default 64 (tabs and devices of one person).
    pub max_connections_per_user: usize,
    /// Commands per second one connection may send, sustained; faster closes
    /// with 3006. Default 100.
    pub command_rate: u32,
    /// Commands one connection may send in a burst above the rate. Default 200.
    pub command_burst: u32,
    /// Time a new connection has to send `connect`; then 3005. Default 10 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Interval of the server's heartbeat pushes. Default 25 s: under the
    /// 30–60 s idle timeouts of common proxies and load balancers.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// Time a client has to answer a heartbeat; then 3004. Default 10 s.
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// Most publications one `history` reply or recovery may carry. Default 1000.
    pub max_history_reply: usize,
    /// WebSocket read buffer per connection, in bytes. Default 1 KiB: it is
    /// allocated (and zeroed before reads) for every connection, idle or not;
    /// larger messages are read in several chunks.
    pub websocket_read_buffer: usize,
    /// WebSocket write buffer per connection (bytes gathered before a write
    /// syscall). Default 8 KiB.
    pub websocket_write_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_frame_size: 64 * 1024,
            max_frames_per_batch: 100,
            outbound_queue_bytes: 1024 * 1024,
            max_rooms_per_connection: 128,
            max_connections: 100_000,
            max_connections_per_user: 64,
            command_rate: 100,
            command_burst: 200,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            max_history_reply: 1000,
            websocket_read_buffer: 1024,
            websocket_write_buffer: 8 * 1024,
        }
    }
}

impl Limits {
    /// The codec limits these limits imply.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_frame_size: self.max_frame_size,
            max_frames_per_batch: self.max_frames_per_batch,
        }
    }
}

/// Options of the rooms of one namespace.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomOptions {
    /// Any connection may subscribe, without a `subscribe` claim matching the
    /// room. Default false: tokens say who may read what.
    pub public: bool,
    /// Anonymous connections may subscribe (needs `public`). Default false.
    pub anonymous: bool,
    /// Subscribed clients may publish, without a `publish` claim matching the
    /// room. Default false.
    pub allow_publish: bool,
    /// Presence (`presence`, `presenceStats`) is kept. Default true.
    pub presence: bool,
    /// Subscribers receive `join` and `leave` pushes. Default false: in big
    /// rooms they multiply traffic by the number of members.
    pub join_leave: bool,
    /// Publications kept per room for `history` and recovery. 0 keeps none:
    /// the room has no stream and publications carry no offset. Default 100.
    pub history_size: usize,
    /// How long a publication is kept in history. Default 10 min: long enough
    /// to recover from a network change or a server restart.
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    /// Most connections subscribed to one room on this node; 0 is unlimited.
    /// Default 0.
    pub max_members: usize,
    /// Best-effort, latest-wins publications (typing indicators, cursors):
    /// never kept in history, sent as QUIC datagrams to WebTransport clients
    /// and as ordinary pushes over WebSocket (spec/03-messages.md,
    /// "Volatile rooms"). Default false.
    pub volatile: bool,
    /// Publications may be sent as deltas against the previous publication
    /// with the same key, to subscribers that ask for deltas (spec/12-delta.md).
    /// Default false.
    pub delta: bool,
}

impl Default for RoomOptions {
    fn default() -> Self {
        Self {
            public: false,
            anonymous: false,
            allow_publish: false,
            presence: true,
            join_leave: false,
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            max_members: 0,
            volatile: false,
            delta: false,
        }
    }
}

/// Durations in config files as human-readable strings ("25s", "10m").
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let config = Config::default();
        config.validate().unwrap();
        assert!(config.listen.ip().is_loopback());
        assert!(config.auth.uses_development_secret());
    }

    #[test]
    fn toml_overrides_and_durations() {
        let config = Config::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            strict_namespaces = true
            [auth]
            hmac_secret = "s3cret"
            [limits]
            ping_interval = "5s"
            [namespaces.chat]
            allow_publish = true
            history_ttl = "1h"
            "#,
        )
        .unwrap();
        assert_eq!(config.limits.ping_interval, Duration::from_secs(5));
        assert_eq!(config.limits.pong_timeout, Duration::from_secs(10));
        let chat = config.room_options("chat").unwrap();
        assert!(chat.allow_publish && chat.presence);
        assert_eq!(chat.history_ttl, Duration::from_secs(3600));
        assert!(config.room_options("other").is_none());
    }

    #[test]
    fn development_secret_stays_on_loopback() {
        let err = Config::from_toml(r#"listen = "0.0.0.0:8000""#).unwrap_err();
        assert!(err.0.contains("development secret"), "{err}");
        assert!(
            Config::from_toml("listen = \"0.0.0.0:8000\"\n[auth]\nhmac_secret = \"x\"").is_ok()
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("lisen = \"127.0.0.1:1\"").is_err());
    }
}
