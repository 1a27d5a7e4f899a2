//! The node: configuration, broker, hub and the registry of connections.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::hub::{ConnId, Hub};
use super::outbox::{Close, Outbox};
use super::session::{Control, Session};
use crate::auth::Verifier;
use crate::broker::{Broker, BrokerHandler, StreamOptions};
use crate::codec::Encoding;
use crate::codes::CloseCode;
use crate::config::{Config, ConfigError, RoomOptions};
use crate::metrics as m;
use crate::wire::v1::{ClientInfo, Join, Leave, Publication, ServerFrame, server_frame::Body};

/// What a transport knows when a connection opens.
#[derive(Clone, Debug)]
pub struct OpenParams {
    /// The connection's encoding (negotiated by the transport).
    pub encoding: Encoding,
    /// A token given on the URL (`?token=`), when the transport allows it.
    pub url_token: Option<String>,
    /// The largest datagram the transport can send to this peer, when it
    /// can send datagrams at all (WebTransport): volatile publications that
    /// fit go as datagrams.
    pub datagrams: Option<usize>,
    /// The unit codec, when the client asked for unit framing with
    /// `codecs` (spec/11-compression.md).
    pub codec: Option<crate::codec::unit::Codec>,
}

impl OpenParams {
    /// A connection in `encoding`, with no URL token and no datagrams.
    pub fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            url_token: None,
            datagrams: None,
            codec: None,
        }
    }
}

/// Figures about a node, for `/health`, metrics and the server API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Open connections (connected or not yet).
    pub connections: usize,
    /// Distinct users with an open connection.
    pub users: usize,
    /// Rooms with a local member.
    pub rooms: usize,
}

#[derive(Default)]
struct Registry {
    connections: HashMap<ConnId, Connection>,
    users: HashMap<String, HashSet<ConnId>>,
}

/// What the node holds of each connection: its outbox, which also carries
/// controls to the session. The session owns everything else.
#[derive(Clone)]
struct Connection {
    outbox: Arc<Outbox>,
}

/// One Switchboard server process: everything sessions share.
pub struct Node {
    pub(crate) config: Arc<Config>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) verifier: Verifier,
    registry: Mutex<Registry>,
    shutting_down: AtomicBool,
    /// Unix time and tokio time at start: Unix time is derived from tokio
    /// time, so tests that pause and advance tokio time move token expiry too.
    epoch: (Duration, Instant),
    /// This node's id, unique per process.
    id: String,
}

struct Delivery(Arc<Hub>, Arc<Config>);

impl BrokerHandler for Delivery {
    fn handle_publication(&self, room: &str, publication: &Publication, exclude: Option<&str>) {
        let namespace = room.split_once(':').map_or("", |(ns, _)| ns);
        let options = self.1.room_options(namespace);
        let fanout = if options.is_some_and(|o| o.delta) {
            self.0.broadcast_delta(room, publication, exclude)
        } else {
            let volatile = options.is_some_and(|o| o.volatile);
            let frame = ServerFrame {
                id: 0,
                body: Some(Body::Publication(publication.clone())),
            };
            self.0
                .broadcast(room, &frame, publication.offset, exclude, volatile)
        };
        m::fanout(&fanout);
    }

    fn handle_join(&self, room: &str, client: &ClientInfo) {
        let frame = ServerFrame {
            id: 0,
            body: Some(Body::Join(Join {
                room: room.to_owned(),
                client: Some(client.clone()),
            })),
        };
        m::fanout(&self.0.broadcast(room, &frame, 0, None, false));
    }

    fn handle_leave(&self, room: &str, client: &ClientInfo) {
        let frame = ServerFrame {
            id: 0,
            body: Some(Body::Leave(Leave {
                room: room.to_owned(),
                client: Some(client.clone()),
            })),
        };
        m::fanout(&self.0.broadcast(room, &frame, 0, None, false));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Registry updates are single inserts/removes: consistent after a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Node {
    /// A node with a broker. The broker's handler is set here.
    pub fn new(config: Config, broker: Arc<dyn Broker>) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let verifier = Verifier::new(&config.auth)?;
        let hub = Arc::new(Hub::default());
        let config = Arc::new(config);
        broker.set_handler(Arc::new(Delivery(hub.clone(), config.clone())));
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Arc::new(Self {
            config,
            broker,
            hub,
            verifier,
            registry: Mutex::default(),
            shutting_down: AtomicBool::new(false),
            epoch: (unix, Instant::now()),
            id: format!("node-{}", new_client_id()),
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The current Unix time, following tokio's clock.
    pub fn unix_time(&self) -> Duration {
        self.epoch.0 + self.epoch.1.elapsed()
    }

    /// The tokio instant of a Unix time in seconds.
    pub(crate) fn instant_of_unix(&self, unix_seconds: u64) -> Instant {
        let target = Duration::from_secs(unix_seconds);
        let now = self.unix_time();
        let now_instant = Instant::now();
        match target.checked_sub(now) {
            Some(ahead) => now_instant + ahead,
            None => now_instant,
        }
    }

    /// Options and stream settings of a room's namespace, `None` if it does
    /// not exist.
    pub(crate) fn room_options(&self, namespace: &str) -> Option<(&RoomOptions, StreamOptions)> {
        self.config.room_options(namespace).map(|o| {
            (
                o,
                StreamOptions {
                    // Volatile publications are never kept.
                    history_size: if o.volatile { 0 } else { o.history_size },
                    history_ttl: o.history_ttl,
                },
            )
        })
    }

    /// Opens a session for a new connection, or says why not.
    pub fn open(self: &Arc<Self>, params: OpenParams) -> Result<Session, Close> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Close::new(CloseCode::SHUTDOWN, "server shutting down"));
        }
        let mut outbox = Outbox::new(self.config.limits.outbound_queue_bytes, params.encoding);
        if let Some(max) = params.datagrams {
            outbox = outbox.with_datagrams(max);
        }
        if let Some(codec) = params.codec {
            let compression = &self.config.compression;
            outbox = outbox.with_units(crate::engine::outbox::Units {
                codec,
                min_size: compression.min_size,
                levels: compression.levels(),
            });
        }
        let outbox = Arc::new(outbox);
        let id: ConnId = new_client_id().into();
        {
            let mut registry = lock(&self.registry);
            if registry.connections.len() >= self.config.limits.max_connections {
                m::rejected("server_full");
                return Err(Close::new(
                    CloseCode::SERVER_FULL,
                    "server at its connection limit",
                ));
            }
            let connection = Connection {
                outbox: outbox.clone(),
            };
            registry.connections.insert(id.clone(), connection);
        }
        m::connection_opened(params.encoding);
        Ok(Session::new(self.clone(), id, outbox, params))
    }

    /// Records that a connection authenticated as `user`; fails when the
    /// user has too many connections.
    pub(crate) fn register_user(&self, user: &str, id: &ConnId) -> Result<(), Close> {
        let limit = self.config.limits.max_connections_per_user;
        let mut registry = lock(&self.registry);
        let set = registry.users.entry(user.to_owned()).or_default();
        if limit > 0 && set.len() >= limit {
            if set.is_empty() {
                registry.users.remove(user);
            }
            return Err(Close::new(
                CloseCode::USER_CONNECTION_LIMIT,
                format!("user has {limit} connections, the most allowed"),
            ));
        }
        set.insert(id.clone());
        Ok(())
    }

    /// Forgets a connection.
    pub(crate) fn unregister(&self, id: &ConnId, user: Option<&str>) {
        let mut registry = lock(&self.registry);
        registry.connections.remove(id);
        if let Some(user) = user {
            if let Some(set) = registry.users.get_mut(user) {
                set.remove(id);
                if set.is_empty() {
                    registry.users.remove(user);
                }
            }
        }
    }

    /// The connections of a user (or only `client`, when not empty).
    fn user_connections(&self, user: &str, client: &str) -> Vec<Connection> {
        let registry = lock(&self.registry);
        registry
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter(|id| client.is_empty() || &***id == client)
            .filter_map(|id| registry.connections.get(id).cloned())
            .collect()
    }

    /// Closes every connection of a user (server API, tests).
    pub fn disconnect_user(&self, user: &str, close: &Close) -> usize {
        self.close_user(user, "", close) as usize
    }

    /// Closes a user's connections (or only `client`); returns how many.
    pub(crate) fn close_user(&self, user: &str, client: &str, close: &Close) -> u32 {
        let connections = self.user_connections(user, client);
        for connection in &connections {
            connection.outbox.close(close.clone());
        }
        connections.len() as u32
    }

    /// Sends a control to a user's connections (or only `client`); returns
    /// how many accepted it.
    pub(crate) fn control_user(&self, user: &str, client: &str, control: &Control) -> u32 {
        let connections = self.user_connections(user, client);
        connections
            .iter()
            .filter(|c| c.outbox.push_control(control.clone()))
            .count() as u32
    }

    /// Sends a control to every local member of a room.
    pub(crate) fn control_room(&self, room: &str, control: &Control) -> u32 {
        let members = self.hub.member_ids(room);
        let registry = lock(&self.registry);
        members
            .iter()
            .filter_map(|id| registry.connections.get(id))
            .filter(|c| c.outbox.push_control(control.clone()))
            .count() as u32
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Time since the node started.
    pub fn uptime(&self) -> Duration {
        self.epoch.1.elapsed()
    }

    /// Figures about this node.
    pub fn stats(&self) -> NodeStats {
        let registry = lock(&self.registry);
        NodeStats {
            connections: registry.connections.len(),
            users: registry.users.len(),
            rooms: self.hub.rooms(),
        }
    }

    /// Periodic chores: the broker's expiry of local state (never of rooms
    /// with members here).
    pub fn housekeeping(&self) {
        let hub = &self.hub;
        self.broker.housekeeping(&|room| hub.members(room) > 0);
    }

    /// Whether a graceful shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Graceful shutdown: refuse new connections, tell every connection to
    /// reconnect elsewhere (3000) in batches, and wait until all are gone or
    /// `shutdown_timeout` passed. Returns the connections still open.
    pub async fn shutdown(&self) -> usize {
        self.shutting_down.store(true, Ordering::Release);
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let outboxes: Vec<Arc<Outbox>> = lock(&self.registry)
            .connections
            .values()
            .map(|c| c.outbox.clone())
            .collect();
        let close = Close::new(CloseCode::SHUTDOWN, "server shutting down");
        for batch in outboxes.chunks(self.config.shutdown_batch.max(1)) {
            for outbox in batch {
                outbox.close(close.clone());
            }
            // Spread reconnects out a little; bounded by the deadline.
            if Instant::now() + Duration::from_millis(50) < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        while Instant::now() < deadline {
            if lock(&self.registry).connections.is_empty() {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lock(&self.registry).connections.len()
    }
}

/// A connection id: 16 random base-32 characters (80 bits): unique without
/// coordination between nodes.
fn new_client_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bits = fastrand::u128(..);
    (0..16)
        .map(|_| {
            let c = ALPHABET[(bits & 31) as usize] as char;
            bits >>= 5;
            c
        })
        .collect()
}
