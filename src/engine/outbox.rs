//! A connection's outbound queue: encoded frames waiting for the transport,
//! capped in bytes (house rule 6: nothing a peer can fill grows without end).
//!
//! Producers (the connection's own replies, fan-out from any room) push
//! without blocking; the transport's writer drains everything queued at once
//! and sends it as one batch. A push that would exceed the cap drops the
//! queue and marks the connection slow (3003): falling behind is a close, not
//! unbounded buffering and not silent loss.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use super::session::Control;
use crate::codec::unit::{self, Codec, Levels};
use crate::codec::{self, Encoding};
use crate::codes::CloseCode;
use crate::wire::v1::{Disconnect, ServerFrame, server_frame::Body};

/// Why and how a connection ends, as the peer is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// The close code.
    pub code: CloseCode,
    /// The reason, at most 123 bytes (the WebSocket limit).
    pub reason: String,
}

impl Close {
    /// A close with a reason cut to the 123 bytes a WebSocket close frame holds.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > 123 {
            let mut end = 123;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Self { code, reason }
    }
}

/// Why a push was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing; the frame was dropped with the connection.
    Closed,
    /// This push overflowed the queue: the connection is now closing as slow.
    Overflow,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Close>,
    /// Controls from the node for the session (server API), bounded by
    /// [`CONTROL_QUEUE`]. Kept here rather than in a channel of its own: an
    /// empty `VecDeque` costs no allocation per idle connection.
    controls: VecDeque<Control>,
    /// Volatile frames to send as datagrams: best effort, so a full queue
    /// drops its oldest entry rather than closing the connection.
    datagrams: VecDeque<Bytes>,
}

/// Datagrams queued per connection; an older one is dropped for a newer one
/// beyond this (volatile publications are latest-wins).
pub const DATAGRAM_QUEUE: usize = 32;

/// Controls queued per connection before further ones are refused (the
/// server API then reports fewer connections reached).
pub const CONTROL_QUEUE: usize = 8;

/// The outbound queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the one writer when frames arrive or closing starts.
    ready: Notify,
    /// Wakes every task waiting in [`Outbox::closed`].
    closing: Notify,
    /// Wakes the session waiting in [`Outbox::next_control`].
    control_ready: Notify,
    cap: usize,
    encoding: Encoding,
    /// The largest datagram the transport sends, if it sends any.
    max_datagram: Option<usize>,
    /// Unit framing (spec/11-compression.md), when the client asked for it.
    units: Option<Units>,
}

/// How a connection with unit framing seals its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Units {
    /// The negotiated codec (identity included).
    pub codec: Codec,
    /// Batches below this many bytes stay uncompressed.
    pub min_size: usize,
    /// Compression levels.
    pub levels: Levels,
}

/// What the bytes queued for a connection look like: its encoding, and its
/// unit codec when it uses unit framing. Connections with the same framing
/// get the same bytes for a publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Framing {
    /// The frame encoding.
    pub encoding: Encoding,
    /// The unit codec, `None` without unit framing.
    pub codec: Option<Codec>,
}

impl Framing {
    /// Distinct framings: 2 encodings × (no units, or one of 3 codecs).
    pub const COUNT: usize = 8;

    /// A dense index below [`Framing::COUNT`].
    pub fn index(self) -> usize {
        let codec = match self.codec {
            None => 0,
            Some(Codec::Identity) => 1,
            Some(Codec::DeflateRaw) => 2,
            Some(Codec::Zstd) => 3,
        };
        self.encoding as usize * 4 + codec
    }
}

impl Outbox {
    /// A queue holding at most `cap` bytes for a connection speaking `encoding`.
    pub fn new(cap: usize, encoding: Encoding) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            closing: Notify::new(),
            control_ready: Notify::new(),
            cap,
            encoding,
            max_datagram: None,
            units: None,
        }
    }

    /// Makes the connection use unit framing: every frame queued here is
    /// sealed in a unit (compressed when worth it).
    pub fn with_units(mut self, units: Units) -> Self {
        self.units = Some(units);
        self
    }

    /// The connection's framing.
    pub fn framing(&self) -> Framing {
        Framing {
            encoding: self.encoding,
            codec: self.units.map(|u| u.codec),
        }
    }

    /// Wraps an encoded frame (or batch) as this connection sends it: as is,
    /// or sealed in a unit. The second value tells whether it compressed.
    pub fn seal(&self, encoded: Bytes) -> (Bytes, bool) {
        match self.units {
            None => (encoded, false),
            Some(units) => {
                let mut out = bytes::BytesMut::new();
                let used = unit::seal_into(
                    units.codec,
                    &encoded,
                    units.min_size,
                    units.levels,
                    &mut out,
                );
                (out.freeze(), used != Codec::Identity)
            }
        }
    }

    fn encode(&self, frame: &ServerFrame) -> Bytes {
        self.seal(codec::encode(frame, self.encoding)).0
    }

    /// Lets the queue carry datagrams of at most `max` bytes.
    pub fn with_datagrams(mut self, max: usize) -> Self {
        self.max_datagram = Some(max);
        self
    }

    /// Queues a volatile frame as a datagram if the transport sends
    /// datagrams and it fits; otherwise as an ordinary frame.
    pub fn push_volatile(&self, frame: Bytes) -> Result<(), PushError> {
        if self.max_datagram.is_none_or(|max| frame.len() > max) {
            return self.push(frame);
        }
        let mut queue = self.lock();
        if queue.close.is_some() {
            return Err(PushError::Closed);
        }
        if queue.datagrams.len() == DATAGRAM_QUEUE {
            queue.datagrams.pop_front();
        }
        queue.datagrams.push_back(frame);
        let first = queue.datagrams.len() == 1 && queue.frames.is_empty();
        drop(queue);
        if first {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The most bytes this queue holds before the connection is slow.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The connection's encoding: what every frame pushed here is encoded in.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves a consistent queue (every
        // update is a single push or drain), so poisoning is ignored.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an encoded frame (in this outbox's encoding).
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return Err(PushError::Closed);
        }
        if queue.bytes + frame.len() > self.cap {
            queue.frames = VecDeque::new();
            queue.bytes = 0;
            let close = Close::new(CloseCode::SLOW, "outbound queue overflow: client too slow");
            self.begin_close(&mut queue, close);
            drop(queue);
            self.wake_closing();
            return Err(PushError::Overflow);
        }
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        let first = queue.frames.len() == 1;
        drop(queue);
        if first {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Encodes and queues a frame.
    pub fn push_frame(&self, frame: &ServerFrame) -> Result<(), PushError> {
        self.push(self.encode(frame))
    }

    /// Starts closing: frames already queued are still sent, then a
    /// `disconnect` push and the transport close with `close`. The first
    /// close wins; later ones are ignored.
    pub fn close(&self, close: Close) {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return;
        }
        self.begin_close(&mut queue, close);
        drop(queue);
        self.wake_closing();
    }

    fn wake_closing(&self) {
        self.ready.notify_one();
        self.closing.notify_waiters();
    }

    /// Queues the `disconnect` push (outside the cap: it is the last frame)
    /// and marks the queue closing.
    fn begin_close(&self, queue: &mut Queue, close: Close) {
        let disconnect = ServerFrame {
            id: 0,
            body: Some(Body::Disconnect(Disconnect {
                code: u32::from(close.code.0),
                reason: close.reason.clone(),
                reconnect: close.code.reconnect(),
            })),
        };
        queue.frames.push_back(self.encode(&disconnect));
        queue.close = Some(close);
    }

    /// The close in progress, if any.
    pub fn closing(&self) -> Option<Close> {
        self.lock().close.clone()
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits until there is something to send, then moves every queued frame
    /// into `out`. Returns the close once the queue is drained and closing:
    /// after it, nothing more will come.
    pub async fn next_batch(&self, out: &mut Vec<Bytes>) -> Option<Close> {
        let mut datagrams = Vec::new();
        let close = self.next_output(out, &mut datagrams).await;
        // Only outboxes made `with_datagrams` hold any.
        debug_assert!(datagrams.is_empty());
        close
    }

    /// Like [`Outbox::next_batch`], also moving queued datagrams into
    /// `datagrams`. Returns the close with the last frames (the `disconnect`
    /// push) once closing: after it, nothing more will come.
    pub async fn next_output(
        &self,
        out: &mut Vec<Bytes>,
        datagrams: &mut Vec<Bytes>,
    ) -> Option<Close> {
        loop {
            {
                let mut queue = self.lock();
                datagrams.extend(queue.datagrams.drain(..));
                if !queue.frames.is_empty() {
                    out.extend(queue.frames.drain(..));
                    queue.bytes = 0;
                    // Release the ring buffer of a connection that went quiet.
                    if queue.frames.capacity() > 64 {
                        queue.frames = VecDeque::new();
                    }
                    return None;
                }
                if let Some(close) = &queue.close {
                    return Some(close.clone());
                }
                if !datagrams.is_empty() {
                    return None;
                }
            }
            // A push between the check and here left a permit: no lost wakeup.
            self.ready.notified().await;
        }
    }

    /// Queues a control for the session; `false` when the connection is
    /// closing or already has [`CONTROL_QUEUE`] controls waiting.
    pub fn push_control(&self, control: Control) -> bool {
        let mut queue = self.lock();
        if queue.close.is_some() || queue.controls.len() >= CONTROL_QUEUE {
            return false;
        }
        queue.controls.push_back(control);
        drop(queue);
        self.control_ready.notify_one();
        true
    }

    /// The next control for the session. Cancel-safe; one waiter (the
    /// session's transport loop).
    pub async fn next_control(&self) -> Control {
        loop {
            if let Some(control) = self.lock().controls.pop_front() {
                return control;
            }
            // A push between the check and here left a permit.
            self.control_ready.notified().await;
        }
    }

    /// Waits until the connection starts closing.
    pub async fn closed(&self) -> Close {
        loop {
            // Registered before the check, so a close in between still wakes us.
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(close) = self.closing() {
                return close;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_then_close_with_disconnect_push() {
        let outbox = Outbox::new(100, Encoding::Json);
        outbox.push(Bytes::from_static(b"a\n")).unwrap();
        outbox.push(Bytes::from_static(b"b\n")).unwrap();
        let mut out = Vec::new();
        assert_eq!(outbox.next_batch(&mut out).await, None);
        assert_eq!(
            out,
            [Bytes::from_static(b"a\n"), Bytes::from_static(b"b\n")]
        );
        outbox.close(Close::new(CloseCode::SHUTDOWN, "bye"));
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(PushError::Closed)
        );
        out.clear();
        assert_eq!(outbox.next_batch(&mut out).await, None);
        assert_eq!(
            &out[0][..],
            b"{\"disconnect\":{\"code\":3000,\"reason\":\"bye\",\"reconnect\":true}}\n"
        );
        assert_eq!(
            outbox.next_batch(&mut out).await.unwrap().code,
            CloseCode::SHUTDOWN
        );
    }

    #[tokio::test]
    async fn overflow_drops_the_queue_and_closes_slow() {
        let outbox = Outbox::new(10, Encoding::Protobuf);
        outbox.push(Bytes::from_static(&[0; 8])).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(&[0; 8])),
            Err(PushError::Overflow)
        );
        assert_eq!(outbox.queued_bytes(), 0);
        let mut out = Vec::new();
        assert_eq!(outbox.next_batch(&mut out).await, None);
        assert_eq!(out.len(), 1, "only the disconnect push is left");
        assert_eq!(
            outbox.next_batch(&mut out).await.unwrap().code,
            CloseCode::SLOW
        );
    }

    #[test]
    fn reasons_are_cut_on_a_char_boundary() {
        let close = Close::new(CloseCode::BAD_REQUEST, "é".repeat(100));
        assert!(close.reason.len() <= 123 && close.reason.len() % 2 == 0);
    }
}
