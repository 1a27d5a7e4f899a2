//! The embedded broker: streams and presence in this process's memory.
//!
//! The default for a single node. Each room's stream lives behind its shard's
//! lock; a publication is appended and handed to the handler under that lock,
//! which is what makes append and fan-out atomic and ordered (contract 1–2).
//! A restart loses everything, and the new process draws new epochs
//! (contract 3). Memory is bounded by `history_size` per room and by
//! dropping streams idle for [`STREAM_META_TTL`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    BoxFuture, Broker, BrokerError, BrokerHandler, HistoryPage, HistoryQuery, PresenceStats,
    PublishOptions, StreamOptions, StreamTop, TicketError, TicketGrant,
};
use crate::wire::v1::{ClientInfo, Publication};

/// How long a room's stream position (offset and epoch) outlives its last
/// publication. After that the stream is dropped, and a later publication
/// starts a new epoch: clients then get `recovered = false`, never a silent gap.
pub const STREAM_META_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a stream that never had a publication is kept.
pub const EMPTY_STREAM_TTL: Duration = Duration::from_secs(300);

const SHARDS: usize = 64;

struct Stream {
    epoch: String,
    offset: u64,
    /// (publication, when it expires), oldest first.
    entries: VecDeque<(Publication, Instant)>,
    last_publish: Instant,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Self {
            epoch: new_epoch(),
            offset: 0,
            entries: VecDeque::new(),
            last_publish: now,
        }
    }

    fn trim(&mut self, now: Instant, history_size: usize) {
        while self.entries.len() > history_size {
            self.entries.pop_front();
        }
        while self
            .entries
            .front()
            .is_some_and(|(_, expires)| *expires <= now)
        {
            self.entries.pop_front();
        }
    }

    fn top(&self) -> StreamTop {
        StreamTop {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

fn new_epoch() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(8)
        .collect()
}

/// Who is in each room: room → client id → client.
type PresenceShard = HashMap<String, BTreeMap<String, ClientInfo>>;

/// Recent idempotency keys: `room \0 key` → (the first result, forget at).
type RecentShard = HashMap<String, (StreamTop, Instant)>;

/// A ticket's state, and when it expires.
#[derive(Debug)]
enum Ticket {
    Unused(TicketGrant),
    Used,
}

/// How long an expired ticket is remembered, so its error says "expired"
/// rather than "unknown".
const EXPIRED_TICKET_MEMORY: Duration = Duration::from_secs(3600);

/// The in-memory broker.
pub struct MemoryBroker {
    streams: Box<[Mutex<HashMap<String, Stream>>]>,
    /// Same sharding as `streams`; locked only while that shard is held.
    recent: Box<[Mutex<RecentShard>]>,
    presence: Box<[Mutex<PresenceShard>]>,
    tickets: Mutex<HashMap<String, (Ticket, Instant)>>,
    hasher: RandomState,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self {
            streams: (0..SHARDS).map(|_| Mutex::default()).collect(),
            recent: (0..SHARDS).map(|_| Mutex::default()).collect(),
            presence: (0..SHARDS).map(|_| Mutex::default()).collect(),
            tickets: Mutex::default(),
            hasher: RandomState::new(),
            handler: OnceLock::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Updates below keep each map consistent at every step: poisoning by a
    // panicking handler leaves valid data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, room: &str) -> usize {
        self.hasher.hash_one(room) as usize % SHARDS
    }

    /// Drops streams whose last publication is older than [`STREAM_META_TTL`]
    /// (unless `in_use` says the room has subscribers) and history entries
    /// past their TTL. Called periodically by the node.
    pub fn sweep(&self, now: Instant, in_use: &dyn Fn(&str) -> bool) {
        for shard in self.recent.iter() {
            lock(shard).retain(|_, (_, forget_at)| *forget_at > now);
        }
        lock(&self.tickets).retain(|_, (_, expires)| *expires + EXPIRED_TICKET_MEMORY > now);
        for shard in self.streams.iter() {
            lock(shard).retain(|room, stream| {
                stream.trim(now, usize::MAX);
                if in_use(room) {
                    return true;
                }
                // A stream nobody published into was created by a read
                // (subscribe, history); dropping it early costs at most a
                // `recovered = false` for a client that saw nothing anyway.
                let ttl = if stream.offset == 0 {
                    EMPTY_STREAM_TTL
                } else {
                    STREAM_META_TTL
                };
                now.saturating_duration_since(stream.last_publish) < ttl
            });
        }
    }

    /// Number of room streams held.
    pub fn streams(&self) -> usize {
        self.streams.iter().map(|s| lock(s).len()).sum()
    }

    fn publish_now(
        &self,
        room: &str,
        mut publication: Publication,
        options: StreamOptions,
        publish: PublishOptions<'_>,
    ) -> StreamTop {
        let now = Instant::now();
        let handler = self.handler.get();
        let index = self.shard(room);
        // The stream shard's lock orders delivery and makes the idempotency
        // check and the append one atomic step.
        let mut shard = lock(&self.streams[index]);
        let recent_key = publish.idempotency_key.map(|key| format!("{room}\0{key}"));
        if let Some(key) = &recent_key {
            if let Some((top, forget_at)) = lock(&self.recent[index]).get(key) {
                if *forget_at > now {
                    return top.clone();
                }
            }
        }
        let top = if options.history_size == 0 {
            // No stream: no offset, nothing kept.
            if let Some(handler) = handler {
                handler.handle_publication(room, &publication, publish.exclude);
            }
            StreamTop::default()
        } else {
            let stream = shard
                .entry(room.to_owned())
                .or_insert_with(|| Stream::new(now));
            stream.offset += 1;
            stream.last_publish = now;
            publication.offset = stream.offset;
            if let Some(handler) = handler {
                handler.handle_publication(room, &publication, publish.exclude);
            }
            stream
                .entries
                .push_back((publication, now + options.history_ttl));
            stream.trim(now, options.history_size);
            stream.top()
        };
        if let Some(key) = recent_key {
            lock(&self.recent[index]).insert(key, (top.clone(), now + publish.idempotency_window));
        }
        top
    }

    fn history_now(
        &self,
        room: &str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> Result<HistoryPage, BrokerError> {
        if options.history_size == 0 {
            return match query.since {
                Some(_) => Err(BrokerError::Unrecoverable),
                None => Ok(HistoryPage::default()),
            };
        }
        let now = Instant::now();
        let mut shard = lock(&self.streams[self.shard(room)]);
        let stream = shard
            .entry(room.to_owned())
            .or_insert_with(|| Stream::new(now));
        stream.trim(now, options.history_size);
        let top = stream.top();
        // The oldest offset still kept; everything at or above it is present.
        let oldest = stream
            .entries
            .front()
            .map_or(stream.offset + 1, |(p, _)| p.offset);
        let entries = &stream.entries;
        let publications: Vec<Publication> = match (&query.since, query.reverse) {
            (Some(since), _) if since.epoch != stream.epoch => {
                return Err(BrokerError::Unrecoverable);
            }
            (Some(since), false) => {
                if since.offset > stream.offset || since.offset + 1 < oldest {
                    return Err(BrokerError::Unrecoverable);
                }
                entries
                    .iter()
                    .filter(|(p, _)| p.offset > since.offset)
                    .take(query.limit)
                    .map(|(p, _)| p.clone())
                    .collect()
            }
            (Some(since), true) => entries
                .iter()
                .rev()
                .filter(|(p, _)| p.offset < since.offset)
                .take(query.limit)
                .map(|(p, _)| p.clone())
                .collect(),
            (None, false) => entries
                .iter()
                .take(query.limit)
                .map(|(p, _)| p.clone())
                .collect(),
            (None, true) => entries
                .iter()
                .rev()
                .take(query.limit)
                .map(|(p, _)| p.clone())
                .collect(),
        };
        Ok(HistoryPage { publications, top })
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    fn publish<'a>(
        &'a self,
        room: &'a str,
        publication: Publication,
        options: StreamOptions,
        publish: PublishOptions<'a>,
    ) -> BoxFuture<'a, Result<StreamTop, BrokerError>> {
        ready(Ok(self.publish_now(room, publication, options, publish)))
    }

    fn remove_history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        lock(&self.streams[self.shard(room)]).remove(room);
        ready(Ok(()))
    }

    fn store_ticket<'a>(
        &'a self,
        ticket: &'a str,
        grant: TicketGrant,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let expires = Instant::now() + ttl;
        lock(&self.tickets).insert(ticket.to_owned(), (Ticket::Unused(grant), expires));
        ready(Ok(()))
    }

    fn redeem_ticket<'a>(
        &'a self,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<Result<TicketGrant, TicketError>, BrokerError>> {
        let now = Instant::now();
        let mut tickets = lock(&self.tickets);
        let outcome = match tickets.get_mut(ticket) {
            None => Err(TicketError::Unknown),
            Some((_, expires)) if *expires <= now => Err(TicketError::Expired),
            Some((Ticket::Used, _)) => Err(TicketError::Used),
            Some((state, _)) => match std::mem::replace(state, Ticket::Used) {
                Ticket::Unused(grant) => Ok(grant),
                Ticket::Used => Err(TicketError::Used),
            },
        };
        ready(Ok(outcome))
    }

    fn publish_join<'a>(
        &'a self,
        room: &'a str,
        client: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        if let Some(handler) = self.handler.get() {
            handler.handle_join(room, &client);
        }
        ready(Ok(()))
    }

    fn publish_leave<'a>(
        &'a self,
        room: &'a str,
        client: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        if let Some(handler) = self.handler.get() {
            handler.handle_leave(room, &client);
        }
        ready(Ok(()))
    }

    fn history<'a>(
        &'a self,
        room: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        ready(self.history_now(room, query, options))
    }

    fn add_presence<'a>(
        &'a self,
        room: &'a str,
        client: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        lock(&self.presence[self.shard(room)])
            .entry(room.to_owned())
            .or_default()
            .insert(client.client.clone(), client);
        ready(Ok(()))
    }

    fn remove_presence<'a>(
        &'a self,
        room: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut shard = lock(&self.presence[self.shard(room)]);
        if let Some(clients) = shard.get_mut(room) {
            clients.remove(client_id);
            if clients.is_empty() {
                shard.remove(room);
            }
        }
        ready(Ok(()))
    }

    fn presence<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, ClientInfo>, BrokerError>> {
        let clients = lock(&self.presence[self.shard(room)])
            .get(room)
            .cloned()
            .unwrap_or_default();
        ready(Ok(clients))
    }

    fn presence_stats<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        let shard = lock(&self.presence[self.shard(room)]);
        let stats = shard
            .get(room)
            .map_or_else(PresenceStats::default, |clients| {
                let users: HashSet<&str> = clients.values().map(|c| c.user.as_str()).collect();
                PresenceStats {
                    clients: clients.len() as u32,
                    users: users.len() as u32,
                }
            });
        ready(Ok(stats))
    }

    fn health(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        ready(Ok(()))
    }

    fn housekeeping(&self, in_use: &dyn Fn(&str) -> bool) {
        self.sweep(Instant::now(), in_use);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::v1::StreamPosition;

    const KEEP3: StreamOptions = StreamOptions {
        history_size: 3,
        history_ttl: Duration::from_secs(60),
    };

    fn publication(n: u8) -> Publication {
        Publication {
            room: "r".into(),
            data: vec![n].into(),
            ..Default::default()
        }
    }

    fn offsets(page: &HistoryPage) -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn offsets_history_window_and_recovery_bounds() {
        let broker = MemoryBroker::new();
        for n in 1..=5 {
            let top = broker
                .publish("r", publication(n), KEEP3, PublishOptions::default())
                .await
                .unwrap();
            assert_eq!(top.offset, u64::from(n));
        }
        let all = broker
            .history(
                "r",
                HistoryQuery {
                    limit: 10,
                    ..Default::default()
                },
                KEEP3,
            )
            .await
            .unwrap();
        assert_eq!(offsets(&all), [3, 4, 5]);
        let epoch = all.top.epoch.clone();
        let since = |offset| {
            Some(StreamPosition {
                offset,
                epoch: epoch.clone(),
            })
        };
        let q = |since, reverse| HistoryQuery {
            since,
            limit: 10,
            reverse,
        };
        assert_eq!(
            offsets(
                &broker
                    .history("r", q(since(2), false), KEEP3)
                    .await
                    .unwrap()
            ),
            [3, 4, 5]
        );
        assert_eq!(
            offsets(
                &broker
                    .history("r", q(since(5), false), KEEP3)
                    .await
                    .unwrap()
            ),
            Vec::<u64>::new()
        );
        assert!(matches!(
            broker.history("r", q(since(1), false), KEEP3).await,
            Err(BrokerError::Unrecoverable)
        ));
        assert!(matches!(
            broker.history("r", q(since(6), false), KEEP3).await,
            Err(BrokerError::Unrecoverable)
        ));
        let other = Some(StreamPosition {
            offset: 4,
            epoch: "other".into(),
        });
        assert!(matches!(
            broker.history("r", q(other, false), KEEP3).await,
            Err(BrokerError::Unrecoverable)
        ));
        assert_eq!(
            offsets(&broker.history("r", q(since(5), true), KEEP3).await.unwrap()),
            [4, 3]
        );
        assert_eq!(
            offsets(&broker.history("r", q(None, true), KEEP3).await.unwrap()),
            [5, 4, 3]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_entries_and_meta_ttl_changes_the_epoch() {
        let broker = MemoryBroker::new();
        broker
            .publish("r", publication(1), KEEP3, PublishOptions::default())
            .await
            .unwrap();
        let first = broker
            .history(
                "r",
                HistoryQuery {
                    limit: 10,
                    ..Default::default()
                },
                KEEP3,
            )
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        let later = broker
            .history(
                "r",
                HistoryQuery {
                    limit: 10,
                    ..Default::default()
                },
                KEEP3,
            )
            .await
            .unwrap();
        assert!(later.publications.is_empty());
        assert_eq!(later.top, first.top, "the position survives its entries");
        let since = Some(StreamPosition {
            offset: 0,
            epoch: first.top.epoch.clone(),
        });
        let q = HistoryQuery {
            since,
            limit: 10,
            reverse: false,
        };
        assert!(
            matches!(
                broker.history("r", q, KEEP3).await,
                Err(BrokerError::Unrecoverable)
            ),
            "offset 1 expired"
        );
        tokio::time::advance(STREAM_META_TTL).await;
        broker.sweep(Instant::now(), &|room| room == "r");
        assert_eq!(
            broker.streams(),
            1,
            "a room with subscribers keeps its stream"
        );
        broker.sweep(Instant::now(), &|_| false);
        assert_eq!(broker.streams(), 0);
        let top = broker
            .publish("r", publication(2), KEEP3, PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(top.offset, 1);
        assert_ne!(top.epoch, first.top.epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn idempotent_publishes_store_once_within_the_window() {
        let broker = MemoryBroker::new();
        let once = PublishOptions {
            idempotency_key: Some("k"),
            idempotency_window: Duration::from_secs(10),
            ..Default::default()
        };
        for _ in 0..3 {
            let top = broker
                .publish("r", publication(1), KEEP3, once)
                .await
                .unwrap();
            assert_eq!(top.offset, 1);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            broker
                .publish("r", publication(1), KEEP3, once)
                .await
                .unwrap()
                .offset,
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tickets_are_single_use_and_expire() {
        let broker = MemoryBroker::new();
        let grant = TicketGrant {
            user: "alice".into(),
            ..Default::default()
        };
        broker
            .store_ticket("t1", grant.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        broker
            .store_ticket("t2", grant.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(broker.redeem_ticket("t1").await.unwrap(), Ok(grant));
        assert_eq!(
            broker.redeem_ticket("t1").await.unwrap(),
            Err(TicketError::Used)
        );
        assert_eq!(
            broker.redeem_ticket("nope").await.unwrap(),
            Err(TicketError::Unknown)
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            broker.redeem_ticket("t2").await.unwrap(),
            Err(TicketError::Expired)
        );
    }

    #[tokio::test]
    async fn presence_and_stats() {
        let broker = MemoryBroker::new();
        for (user, client) in [("a", "1"), ("a", "2"), ("b", "3")] {
            let info = ClientInfo {
                user: user.into(),
                client: client.into(),
                ..Default::default()
            };
            broker.add_presence("r", info).await.unwrap();
        }
        assert_eq!(
            broker.presence_stats("r").await.unwrap(),
            PresenceStats {
                clients: 3,
                users: 2
            }
        );
        broker.remove_presence("r", "2").await.unwrap();
        assert_eq!(broker.presence("r").await.unwrap().len(), 2);
    }
}
