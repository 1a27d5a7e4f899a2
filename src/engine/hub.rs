//! The hub: which local connections are in which room, and fan-out to them.
//!
//! Rooms live in shards so that a busy room does not lock the others. A
//! publication is encoded once per encoding in use (house rule 7) and the
//! same `Bytes` is queued for every member; nothing here allocates per
//! member. A connection that is subscribing with recovery is *pending*: live
//! frames for it are held until its recovery reply is queued, then released
//! in order without duplicates (spec/03-messages.md, "Recovery").

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;

use super::outbox::{Close, Framing, Outbox};
use crate::codec::{self, delta};
use crate::codes::CloseCode;
use crate::wire::v1::{Publication, ServerFrame, server_frame::Body};

/// A connection id, shared by every map that holds it.
pub type ConnId = Arc<str>;

const SHARDS: usize = 64;

/// Frames held for a pending member, with the offset each carries (0: none),
/// and their total size: bounded by the member's outbox capacity.
#[derive(Default)]
struct Held {
    frames: Vec<(u64, Bytes)>,
    bytes: usize,
}

/// A member waiting for its recovery reply: its outbox, the frames held
/// for it, and whether it asked for deltas.
type Pending = (Arc<Outbox>, Held, bool);

/// A live member of a room.
struct Member {
    outbox: Arc<Outbox>,
    /// Delta rooms: the sequence number (in [`DeltaChain`]) of the last
    /// publication this member received, 0 when it has none to build on, or
    /// [`NO_DELTA`] when it did not ask for deltas.
    last: AtomicU64,
}

/// [`Member::last`] of a member that gets full values only.
const NO_DELTA: u64 = u64::MAX;

/// The publications of a delta room on this node: how many were fanned out
/// and the data of the newest, the base of the next delta.
#[derive(Default)]
struct DeltaChain {
    seq: u64,
    base: Option<Bytes>,
}

#[derive(Default)]
struct Room {
    members: RwLock<HashMap<ConnId, Member>>,
    pending: Mutex<HashMap<ConnId, Pending>>,
    /// Held while a delta room's publication fans out, so that members see
    /// the chain in order.
    chain: Mutex<DeltaChain>,
    /// Number of pending members, so fan-out skips the pending lock when 0.
    pending_count: AtomicUsize,
}

impl Room {
    fn is_empty(&self) -> bool {
        read(&self.members).is_empty() && self.pending_count.load(Ordering::Acquire) == 0
    }

    fn len(&self) -> usize {
        read(&self.members).len() + self.pending_count.load(Ordering::Acquire)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Every critical section below leaves the maps consistent at each step,
    // so a poisoned lock (a panic elsewhere) holds valid data.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a fan-out did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Frames queued for members (and held for pending ones).
    pub delivered: usize,
    /// Members whose queue overflowed: they are now closing as slow.
    pub overflowed: usize,
    /// Encodings performed: at most one per encoding in use.
    pub encodings: usize,
    /// Compressions performed: at most one per (encoding, codec) in use.
    pub compressions: usize,
}

impl Fanout {
    fn count(&mut self, pushed: Result<(), super::outbox::PushError>) {
        match pushed {
            Ok(()) => self.delivered += 1,
            Err(super::outbox::PushError::Overflow) => self.overflowed += 1,
            Err(super::outbox::PushError::Closed) => {}
        }
    }
}

/// A frame's bytes for each framing in use: encoded once per encoding,
/// sealed (and compressed) once per framing, shared by every member.
struct Sealed<'a> {
    frame: &'a ServerFrame,
    encoded: [Option<Bytes>; 2],
    sealed: [Option<Bytes>; Framing::COUNT],
}

impl<'a> Sealed<'a> {
    fn new(frame: &'a ServerFrame) -> Self {
        Self {
            frame,
            encoded: [None, None],
            sealed: Default::default(),
        }
    }

    fn get(&mut self, outbox: &Outbox, out: &mut Fanout) -> Bytes {
        let framing = outbox.framing();
        let (frame, encoded) = (self.frame, &mut self.encoded);
        self.sealed[framing.index()]
            .get_or_insert_with(|| {
                let plain = encoded[framing.encoding as usize]
                    .get_or_insert_with(|| {
                        out.encodings += 1;
                        codec::encode(frame, framing.encoding)
                    })
                    .clone();
                let (bytes, compressed) = outbox.seal(plain);
                out.compressions += usize::from(compressed);
                bytes
            })
            .clone()
    }
}

/// The delta publication that turns `base` into `publication`'s data, when
/// it is worth sending instead of the full value.
fn delta_frame(base: &Bytes, publication: &Publication) -> Option<ServerFrame> {
    let delta = delta::encode(base, &publication.data);
    delta::worth_it(delta.len(), publication.data.len()).then(|| ServerFrame {
        id: 0,
        body: Some(Body::Publication(Publication {
            data: Bytes::from(delta),
            delta: true,
            ..publication.clone()
        })),
    })
}

/// One shard of the hub: room name → room.
type Shard = RwLock<HashMap<Arc<str>, Arc<Room>>>;

/// The rooms of this node and their local members.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Hub {
    fn shard(&self, room: &str) -> &Shard {
        let index = self.hasher.hash_one(room) as usize % SHARDS;
        &self.shards[index]
    }

    fn room(&self, room: &str) -> Option<Arc<Room>> {
        read(self.shard(room)).get(room).cloned()
    }

    /// Adds a connection to a room as pending: frames for the room are held
    /// for it until [`Hub::activate`]. Returns the room's member count
    /// including it, and whether the room was new on this node.
    pub fn add_pending(
        &self,
        room: &Arc<str>,
        conn: &ConnId,
        outbox: Arc<Outbox>,
        delta: bool,
    ) -> (usize, bool) {
        let mut shard = write(self.shard(room));
        let created = !shard.contains_key(&**room);
        let entry = shard.entry(room.clone()).or_default().clone();
        let mut pending = lock(&entry.pending);
        if pending
            .insert(conn.clone(), (outbox, Held::default(), delta))
            .is_none()
        {
            entry.pending_count.fetch_add(1, Ordering::AcqRel);
        }
        drop(pending);
        (entry.len(), created)
    }

    /// Makes a pending member live, first queueing the frames held for it
    /// whose offset is above `after_offset` (or that carry no offset).
    pub fn activate(&self, room: &str, conn: &ConnId, after_offset: u64) {
        let Some(entry) = self.room(room) else { return };
        // Lock order: members, then pending (as in `broadcast`), so no frame
        // can be broadcast between releasing the held ones and going live.
        let mut members = write(&entry.members);
        let Some((outbox, held, delta)) = lock(&entry.pending).remove(conn) else {
            return;
        };
        entry.pending_count.fetch_sub(1, Ordering::AcqRel);
        for (offset, frame) in held.frames {
            if offset == 0 || offset > after_offset {
                let _ = outbox.push(frame);
            }
        }
        // The first live publication goes in full: the member's base is
        // unknown until then.
        let last = AtomicU64::new(if delta { 0 } else { NO_DELTA });
        members.insert(conn.clone(), Member { outbox, last });
    }

    /// Removes a connection from a room (live or pending). Returns whether
    /// the room is now empty on this node (and was dropped).
    pub fn remove(&self, room: &str, conn: &str) -> bool {
        let Some(entry) = self.room(room) else {
            return false;
        };
        write(&entry.members).remove(conn);
        if lock(&entry.pending).remove(conn).is_some() {
            entry.pending_count.fetch_sub(1, Ordering::AcqRel);
        }
        if !entry.is_empty() {
            return false;
        }
        let mut shard = write(self.shard(room));
        // Re-check under the shard lock: a member may have joined meanwhile.
        match shard.get(room) {
            Some(current) if Arc::ptr_eq(current, &entry) && current.is_empty() => {
                shard.remove(room);
                true
            }
            _ => false,
        }
    }

    /// Queues `frame` for every member of `room` except `exclude`, encoding it
    /// once per encoding in use. `offset` is the publication's offset (0 for
    /// frames without one), used to release held frames without duplicates.
    /// A `volatile` frame goes as a datagram where the transport can send one.
    pub fn broadcast(
        &self,
        room: &str,
        frame: &ServerFrame,
        offset: u64,
        exclude: Option<&str>,
        volatile: bool,
    ) -> Fanout {
        let mut out = Fanout::default();
        let Some(entry) = self.room(room) else {
            return out;
        };
        let mut bytes = Sealed::new(frame);
        let members = read(&entry.members);
        for (conn, Member { outbox, .. }) in members.iter() {
            if exclude == Some(&**conn) {
                continue;
            }
            let bytes = bytes.get(outbox, &mut out);
            let pushed = if volatile {
                outbox.push_volatile(bytes)
            } else {
                outbox.push(bytes)
            };
            out.count(pushed);
        }
        drop(members);
        Self::hold(&entry, exclude, offset, &mut bytes, &mut out);
        out
    }

    /// Fans out a publication of a delta room (spec/12-delta.md): members
    /// that asked for deltas and received the previous publication get its
    /// data as a delta against that one, everyone else the full value. The
    /// delta is computed once, then encoded and compressed once per framing
    /// in use, like the full value.
    pub fn broadcast_delta(
        &self,
        room: &str,
        publication: &Publication,
        exclude: Option<&str>,
    ) -> Fanout {
        let mut out = Fanout::default();
        let Some(entry) = self.room(room) else {
            return out;
        };
        // Held during the fan-out: members see the chain in order.
        let mut chain = lock(&entry.chain);
        let previous = chain.seq;
        chain.seq += 1;
        let seq = chain.seq;
        let base = chain.base.replace(publication.data.clone());
        let full = ServerFrame {
            id: 0,
            body: Some(Body::Publication(publication.clone())),
        };
        let mut full_bytes = Sealed::new(&full);
        // `None` until needed; then `Some(None)` when not worth sending.
        let mut delta: Option<Option<ServerFrame>> = None;
        let mut delta_bytes: [Option<Bytes>; Framing::COUNT] = Default::default();
        let members = read(&entry.members);
        for (conn, member) in members.iter() {
            let last = member.last.load(Ordering::Acquire);
            if exclude == Some(&**conn) {
                // It misses this one, so its next publication goes in full.
                if last != NO_DELTA {
                    member.last.store(0, Ordering::Release);
                }
                continue;
            }
            let has_base = last != NO_DELTA && previous > 0 && last == previous;
            let as_delta = has_base
                .then(|| {
                    delta
                        .get_or_insert_with(|| delta_frame(base.as_ref()?, publication))
                        .as_ref()
                })
                .flatten();
            let bytes = match as_delta {
                Some(frame) => {
                    let framing = member.outbox.framing();
                    delta_bytes[framing.index()]
                        .get_or_insert_with(|| {
                            out.encodings += 1;
                            let encoded = codec::encode(frame, framing.encoding);
                            let (bytes, compressed) = member.outbox.seal(encoded);
                            out.compressions += usize::from(compressed);
                            bytes
                        })
                        .clone()
                }
                None => full_bytes.get(&member.outbox, &mut out),
            };
            let pushed = member.outbox.push(bytes);
            if pushed.is_ok() && last != NO_DELTA {
                member.last.store(seq, Ordering::Release);
            }
            out.count(pushed);
        }
        drop(members);
        Self::hold(
            &entry,
            exclude,
            publication.offset,
            &mut full_bytes,
            &mut out,
        );
        out
    }

    /// Holds a frame for the pending members of a room (full values only).
    fn hold(
        entry: &Room,
        exclude: Option<&str>,
        offset: u64,
        bytes: &mut Sealed<'_>,
        out: &mut Fanout,
    ) {
        if entry.pending_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut pending = lock(&entry.pending);
        for (conn, (outbox, held, _)) in pending.iter_mut() {
            if exclude == Some(&**conn) || outbox.closing().is_some() {
                continue;
            }
            let frame = bytes.get(outbox, out);
            if held.bytes + frame.len() > outbox.capacity() {
                *held = Held::default();
                outbox.close(Close::new(
                    CloseCode::SLOW,
                    "too many publications during recovery",
                ));
                out.overflowed += 1;
                continue;
            }
            held.bytes += frame.len();
            held.frames.push((offset, frame));
            out.delivered += 1;
        }
    }

    /// Number of local members of a room (live and pending).
    pub fn members(&self, room: &str) -> usize {
        self.room(room).map_or(0, |r| r.len())
    }

    /// The ids of a room's local members (live and pending).
    pub fn member_ids(&self, room: &str) -> Vec<ConnId> {
        let Some(entry) = self.room(room) else {
            return Vec::new();
        };
        let mut ids: Vec<ConnId> = read(&entry.members).keys().cloned().collect();
        ids.extend(lock(&entry.pending).keys().cloned());
        ids
    }

    /// Every room with local members, and how many.
    pub fn room_list(&self) -> Vec<(String, u32)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .iter()
                    .map(|(name, room)| (name.to_string(), room.len() as u32))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of rooms with at least one local member.
    pub fn rooms(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoding;
    use crate::wire::v1::{Publication, server_frame::Body};

    fn publication(offset: u64) -> ServerFrame {
        ServerFrame {
            id: 0,
            body: Some(Body::Publication(Publication {
                room: "r".into(),
                offset,
                ..Default::default()
            })),
        }
    }

    async fn drain(outbox: &Outbox) -> Vec<Bytes> {
        let mut out = Vec::new();
        if outbox.queued_bytes() > 0 {
            outbox.next_batch(&mut out).await;
        }
        out
    }

    #[tokio::test]
    async fn encodes_once_per_encoding_and_excludes() {
        let hub = Hub::default();
        let room: Arc<str> = "r".into();
        let mut outboxes = Vec::new();
        for i in 0..10 {
            let encoding = if i % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::Protobuf
            };
            let outbox = Arc::new(Outbox::new(1 << 20, encoding));
            let conn: ConnId = format!("c{i}").into();
            hub.add_pending(&room, &conn, outbox.clone(), false);
            hub.activate("r", &conn, 0);
            outboxes.push(outbox);
        }
        let fanout = hub.broadcast("r", &publication(1), 1, Some("c0"), false);
        assert_eq!(
            fanout,
            Fanout {
                delivered: 9,
                overflowed: 0,
                encodings: 2,
                compressions: 0,
            }
        );
        assert!(drain(&outboxes[0]).await.is_empty());
        assert_eq!(drain(&outboxes[2]).await.len(), 1);
    }

    #[tokio::test]
    async fn compresses_once_per_framing_in_use() {
        use crate::codec::unit::{self, Codec, Levels};
        use crate::engine::outbox::Units;
        let hub = Hub::default();
        let room: Arc<str> = "r".into();
        let units = |codec| Units {
            codec,
            min_size: 64,
            levels: Levels::default(),
        };
        let framings = [
            (Encoding::Json, None),
            (Encoding::Json, Some(Codec::DeflateRaw)),
            (Encoding::Protobuf, Some(Codec::DeflateRaw)),
            (Encoding::Protobuf, Some(Codec::Zstd)),
            (Encoding::Json, Some(Codec::Identity)),
        ];
        let mut outboxes = Vec::new();
        for i in 0..100 {
            let (encoding, codec) = framings[i % framings.len()];
            let mut outbox = Outbox::new(1 << 20, encoding);
            if let Some(codec) = codec {
                outbox = outbox.with_units(units(codec));
            }
            let outbox = Arc::new(outbox);
            let conn: ConnId = format!("c{i}").into();
            hub.add_pending(&room, &conn, outbox.clone(), false);
            hub.activate("r", &conn, 0);
            outboxes.push((outbox, codec));
        }
        let mut frame = publication(1);
        if let Some(Body::Publication(p)) = &mut frame.body {
            p.data = format!("{{\"progress\":\"{}\"}}", "step ".repeat(200)).into();
        }
        let fanout = hub.broadcast("r", &frame, 1, None, false);
        // 100 deliveries, 2 encodings, 3 compressions (identity is none).
        assert_eq!(
            (fanout.delivered, fanout.encodings, fanout.compressions),
            (100, 2, 3)
        );
        // Every subscriber decodes the same publication.
        for (outbox, codec) in &outboxes {
            let bytes = drain(outbox).await.remove(0);
            let batch = match codec {
                None => bytes,
                Some(codec) => {
                    let mut batches = unit::open_message(&bytes, *codec, 1 << 20).unwrap();
                    assert_eq!(batches.len(), 1);
                    if *codec != Codec::Identity {
                        assert_eq!(bytes[0], codec.marker(), "compressed");
                    }
                    batches.remove(0)
                }
            };
            let decoded: ServerFrame =
                codec::decode_batch(&batch, outbox.encoding(), &codec::DecodeLimits::default())
                    .next()
                    .unwrap()
                    .unwrap();
            assert_eq!(decoded, frame);
        }
    }

    #[tokio::test]
    async fn pending_members_get_held_frames_above_the_recovered_offset() {
        let hub = Hub::default();
        let room: Arc<str> = "r".into();
        let conn: ConnId = "c".into();
        let outbox = Arc::new(Outbox::new(1 << 20, Encoding::Json));
        hub.add_pending(&room, &conn, outbox.clone(), false);
        for offset in 1..=4 {
            hub.broadcast("r", &publication(offset), offset, None, false);
        }
        assert!(drain(&outbox).await.is_empty(), "held while pending");
        hub.activate("r", &conn, 2);
        let frames = drain(&outbox).await;
        assert_eq!(frames.len(), 2);
        assert!(
            std::str::from_utf8(&frames[0])
                .unwrap()
                .contains("\"offset\":\"3\"")
        );
        hub.broadcast("r", &publication(5), 5, None, false);
        assert_eq!(drain(&outbox).await.len(), 1);
        assert!(hub.remove("r", "c"));
        assert_eq!(hub.rooms(), 0);
    }
}
