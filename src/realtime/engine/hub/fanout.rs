//! What both engines deliver through: the frames queued for each connection, the bound on each
//! queue, and the one function that queues a frame without waiting.
//!
//! Slow consumers: when a connection's queue is full (in frames or in bytes), that connection is
//! told to close (1008, "slow consumer") and counted; the frame is dropped for it alone.
//! Publishers never wait for a reader, so one stalled socket cannot slow the others or grow
//! memory without bound.

use std::sync::{
    Arc,
    atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
};

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};

use crate::realtime::protocol::close;

pub type ConnId = u64;

/// A frame queued for one connection. Frames carrying a stored message name it, so that a
/// subscription resumed from history can skip live frames it already replayed.
///
/// Kept small: every connection's queue allocates its first block of 32 slots up front, so
/// each byte here is 32 bytes of every idle connection. Hence the rarely set reference is
/// behind an `Arc` (8 bytes) rather than inline (24).
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Utf8Bytes,
    pub stored: Option<Arc<StoredRef>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRef {
    pub channel_id: i64,
    pub message_id: i64,
    /// The names the message mentions, for subscriptions filtered by `mentions`.
    pub mentions: Box<[String]>,
}

impl From<Utf8Bytes> for Outbound {
    fn from(frame: Utf8Bytes) -> Self {
        Self {
            frame,
            stored: None,
        }
    }
}
pub type Metadata = Arc<RawValue>;

/// Tells one connection's task to close, from anywhere, even when its queue is full; and counts
/// the bytes queued for it, which are bounded as its frames are.
#[derive(Debug, Default)]
pub struct CloseSignal {
    code: AtomicU16,
    notify: Notify,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
}

impl CloseSignal {
    pub fn new(max_queued_bytes: usize) -> Self {
        Self {
            max_queued_bytes,
            ..Self::default()
        }
    }

    /// Counts `len` more bytes queued; `false` (and nothing counted) when that would pass the
    /// bound. A frame larger than the bound still passes into an empty queue.
    fn reserve(&self, len: usize) -> bool {
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Bytes that left the queue (written).
    pub fn release(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }

    /// Bytes queued right now.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Asks the connection to close with `code`. Returns `false` if it was already asked.
    pub fn close(&self, code: u16) -> bool {
        let first = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // Every waiter: the connection's loop and a write blocked on a stalled client may
            // both be waiting.
            self.notify.notify_waiters();
        }
        first
    }

    /// Resolves with the close code once [`CloseSignal::close`] was called.
    pub async fn closed(&self) -> u16 {
        loop {
            // Created before the check: `notify_waiters` completes every `Notified` that
            // exists when it runs, so a close between the check and the await is not missed.
            let notified = self.notify.notified();
            let code = self.code.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            notified.await;
        }
    }
}

/// What the hub keeps about a connection when it registers.
pub struct Member {
    pub peer_id: Arc<str>,
    /// The peer as `send` and `kick` reach it: its app and its id (`apps::scoped`).
    pub address: Arc<str>,
    pub key_id: Arc<str>,
    /// Receives presence frames.
    pub presence: bool,
    pub peer_metadata: Option<Metadata>,
    pub tx: mpsc::Sender<Outbound>,
    pub signal: Arc<CloseSignal>,
}

/// Counters for operators.
#[derive(Debug, Default)]
pub struct HubStats {
    pub slow_consumer_disconnects: AtomicU64,
    pub frames_out: AtomicU64,
}

/// A connection subscribed to one channel, with what delivering to it needs.
pub(in crate::realtime::engine) struct Subscriber {
    pub conn: ConnId,
    pub peer: Arc<str>,
    pub include_sender_metadata: bool,
    /// Receives presence frames.
    pub presence: bool,
    pub tx: mpsc::Sender<Outbound>,
    pub signal: Arc<CloseSignal>,
}

impl Subscriber {
    pub fn of(conn: ConnId, member: &Member, include_sender_metadata: bool) -> Self {
        Self {
            conn,
            peer: member.peer_id.clone(),
            include_sender_metadata,
            presence: member.presence,
            tx: member.tx.clone(),
            signal: member.signal.clone(),
        }
    }
}

/// Peers present in a channel, with their metadata.
pub type Roster = Vec<(Arc<str>, Option<Metadata>)>;

/// One running connection task; see `Hub::task`.
pub struct TaskGuard(Arc<AtomicUsize>);

impl TaskGuard {
    /// Counts one more task in `running` until dropped.
    pub(in crate::realtime::engine) fn count(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::AcqRel);
        Self(running.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Queues `frame` for one connection without waiting. A full queue marks a slow consumer.
pub(in crate::realtime::engine) fn deliver(
    tx: &mpsc::Sender<Outbound>,
    signal: &CloseSignal,
    frame: &Outbound,
    stats: &HubStats,
) -> bool {
    let len = frame.frame.len();
    let slow = || {
        if signal.close(close::POLICY) {
            stats
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("slow consumer disconnected");
        }
        false
    };
    if !signal.reserve(len) {
        return slow();
    }
    match tx.try_send(frame.clone()) {
        Ok(()) => {
            stats.frames_out.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(error) => {
            signal.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            match error {
                mpsc::error::TrySendError::Full(_) => slow(),
                mpsc::error::TrySendError::Closed(_) => false,
            }
        }
    }
}

/// Delivers a message to every subscriber but `sender`; subscribers that asked for sender
/// metadata get `with_metadata` when there is one. Returns how many subscribers that is: one
/// whose queue is full is counted too, as it is closed as a slow consumer (the Redis engine
/// counts every subscription the cluster has).
pub(in crate::realtime::engine) fn deliver_to(
    subscribers: &[Subscriber],
    sender: Option<ConnId>,
    plain: &Outbound,
    with_metadata: Option<&Outbound>,
    stats: &HubStats,
) -> usize {
    let mut count = 0;
    for sub in subscribers.iter().filter(|s| Some(s.conn) != sender) {
        let frame = match with_metadata {
            Some(frame) if sub.include_sender_metadata => frame,
            _ => plain,
        };
        deliver(&sub.tx, &sub.signal, frame, stats);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_frame_stays_small_because_every_idle_queue_holds_32_slots() {
        assert!(
            std::mem::size_of::<Outbound>() <= 40,
            "Outbound grew to {} bytes",
            std::mem::size_of::<Outbound>()
        );
    }
}
