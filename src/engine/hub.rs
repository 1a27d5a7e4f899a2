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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;

use super::outbox::{Close, Outbox};
use crate::codec::{self, Encoding};
use crate::codes::CloseCode;
use crate::wire::v1::ServerFrame;

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

#[derive(Default)]
struct Room {
    members: RwLock<HashMap<ConnId, Arc<Outbox>>>,
    pending: Mutex<HashMap<ConnId, (Arc<Outbox>, Held)>>,
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
    ) -> (usize, bool) {
        let mut shard = write(self.shard(room));
        let created = !shard.contains_key(&**room);
        let entry = shard.entry(room.clone()).or_default().clone();
        let mut pending = lock(&entry.pending);
        if pending
            .insert(conn.clone(), (outbox, Held::default()))
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
        let Some((outbox, held)) = lock(&entry.pending).remove(conn) else {
            return;
        };
        entry.pending_count.fetch_sub(1, Ordering::AcqRel);
        for (offset, frame) in held.frames {
            if offset == 0 || offset > after_offset {
                let _ = outbox.push(frame);
            }
        }
        members.insert(conn.clone(), outbox);
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
    pub fn broadcast(
        &self,
        room: &str,
        frame: &ServerFrame,
        offset: u64,
        exclude: Option<&str>,
    ) -> Fanout {
        let mut out = Fanout::default();
        let Some(entry) = self.room(room) else {
            return out;
        };
        let mut encoded: [Option<Bytes>; 2] = [None, None];
        let mut bytes_for = |encoding: Encoding, out: &mut Fanout| -> Bytes {
            let slot = &mut encoded[encoding as usize];
            slot.get_or_insert_with(|| {
                out.encodings += 1;
                codec::encode(frame, encoding)
            })
            .clone()
        };
        let members = read(&entry.members);
        for (conn, outbox) in members.iter() {
            if exclude == Some(&**conn) {
                continue;
            }
            match outbox.push(bytes_for(outbox.encoding(), &mut out)) {
                Ok(()) => out.delivered += 1,
                Err(super::outbox::PushError::Overflow) => out.overflowed += 1,
                Err(super::outbox::PushError::Closed) => {}
            }
        }
        if entry.pending_count.load(Ordering::Acquire) > 0 {
            let mut pending = lock(&entry.pending);
            for (conn, (outbox, held)) in pending.iter_mut() {
                if exclude == Some(&**conn) || outbox.closing().is_some() {
                    continue;
                }
                let frame = bytes_for(outbox.encoding(), &mut out);
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
        out
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
            hub.add_pending(&room, &conn, outbox.clone());
            hub.activate("r", &conn, 0);
            outboxes.push(outbox);
        }
        let fanout = hub.broadcast("r", &publication(1), 1, Some("c0"));
        assert_eq!(
            fanout,
            Fanout {
                delivered: 9,
                overflowed: 0,
                encodings: 2
            }
        );
        assert!(drain(&outboxes[0]).await.is_empty());
        assert_eq!(drain(&outboxes[2]).await.len(), 1);
    }

    #[tokio::test]
    async fn pending_members_get_held_frames_above_the_recovered_offset() {
        let hub = Hub::default();
        let room: Arc<str> = "r".into();
        let conn: ConnId = "c".into();
        let outbox = Arc::new(Outbox::new(1 << 20, Encoding::Json));
        hub.add_pending(&room, &conn, outbox.clone());
        for offset in 1..=4 {
            hub.broadcast("r", &publication(offset), offset, None);
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
        hub.broadcast("r", &publication(5), 5, None);
        assert_eq!(drain(&outbox).await.len(), 1);
        assert!(hub.remove("r", "c"));
        assert_eq!(hub.rooms(), 0);
    }
}
