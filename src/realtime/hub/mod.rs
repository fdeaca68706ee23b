//! The hub: which connection is subscribed where, who is present in each channel, and fan-out.
//!
//! Connections are indexed by id, by peer and by channel. The lock is a plain `RwLock` that is
//! never held across an `.await`: delivering is a non-blocking `try_send` of shared, already
//! serialized bytes into each connection's bounded queue.
//!
//! Slow consumers: when a connection's queue is full (in frames or in bytes), that connection is
//! told to close (1008, "slow consumer") and counted; the frame is dropped for it alone. Publishers never wait for a
//! reader, so one stalled socket cannot slow the others or grow memory without bound.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};

use super::protocol::{PeerEntry, ServerFrame, close};
use crate::cluster::wire::Version;

mod mirror;
pub use mirror::{Departure, LocalState, Reservation};

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

#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<RwLock<Inner>>,
    /// Presence is decided in Redis (cluster mode): channels mirror the cluster's roster rather
    /// than counting local connections.
    clustered: bool,
    next_id: Arc<AtomicU64>,
    pub stats: Arc<HubStats>,
    /// Connection tasks still running, closing handshakes included.
    tasks: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    connections: HashMap<ConnId, Connection>,
    channels: HashMap<Arc<str>, Channel>,
    peers: HashMap<Arc<str>, Vec<ConnId>>,
}

struct Connection {
    member: Member,
    channels: Vec<Arc<str>>,
}

#[derive(Default)]
struct Channel {
    subscribers: Vec<Subscriber>,
    /// Local mode: who is here and on how many connections. Cluster mode: the mirror of the
    /// cluster's roster (connection counts unused).
    peers: HashMap<Arc<str>, Presence>,
    /// Cluster mode: the roster version the mirror is at; `None` while it is being (re)read.
    version: Option<Version>,
    /// Cluster mode: presence events and messages that arrived while the mirror was being read,
    /// in their order.
    pending_events: Vec<mirror::Pending>,
    /// Cluster mode: subscriptions on their way in (waiting on Redis).
    reserved: usize,
}

struct Subscriber {
    conn: ConnId,
    peer: Arc<str>,
    include_sender_metadata: bool,
    presence: bool,
    tx: mpsc::Sender<Outbound>,
    signal: Arc<CloseSignal>,
}

impl Subscriber {
    fn of(conn: ConnId, member: &Member, include_sender_metadata: bool) -> Self {
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

struct Presence {
    connections: u32,
    metadata: Option<Metadata>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    LimitExceeded,
}

/// Peers already present in a channel when a connection subscribed.
pub type Roster = Vec<(Arc<str>, Option<Metadata>)>;

impl Hub {
    /// A hub whose presence is decided in Redis and mirrored here.
    pub fn clustered() -> Self {
        Self {
            clustered: true,
            ..Self::default()
        }
    }

    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(&self, member: Member) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = self.write();
        inner
            .peers
            .entry(member.peer_id.clone())
            .or_default()
            .push(id);
        inner.connections.insert(
            id,
            Connection {
                member,
                channels: Vec::new(),
            },
        );
        id
    }

    /// Removes the connection everywhere; peers whose last connection this was leave. Returns
    /// what it was subscribed to, the first time only.
    pub fn unregister(&self, conn: ConnId) -> Option<Departure> {
        let mut inner = self.write();
        let connection = inner.connections.get(&conn)?;
        let channels = connection.channels.clone();
        let peer = connection.member.peer_id.clone();
        for channel in &channels {
            inner.leave(conn, channel, self.clustered, &self.stats);
        }
        let mut last_of_peer = true;
        if let Some(conns) = inner.peers.get_mut(&peer) {
            conns.retain(|c| *c != conn);
            last_of_peer = conns.is_empty();
            if last_of_peer {
                inner.peers.remove(&peer);
            }
        }
        inner.connections.remove(&conn);
        Some(Departure {
            peer,
            channels,
            last_of_peer,
        })
    }

    /// Subscribes `conn` to `channel`. Returns the roster of other peers there (`None` only for
    /// a connection that is gone); subscribing again changes only the options and returns a
    /// fresh roster. A peer's first connection in the channel announces it to the others.
    pub fn subscribe(
        &self,
        conn: ConnId,
        channel: &str,
        include_sender_metadata: bool,
        max_subscriptions: usize,
    ) -> Result<Option<Roster>, SubscribeError> {
        let mut guard = self.write();
        let inner = &mut *guard;
        let Some(connection) = inner.connections.get_mut(&conn) else {
            return Ok(None);
        };
        if let Some(existing) = inner.channels.get_mut(channel)
            && let Some(sub) = existing.subscribers.iter_mut().find(|s| s.conn == conn)
        {
            // Subscribed already: only its options change, and it gets a fresh roster; nothing
            // is announced to the others.
            sub.include_sender_metadata = include_sender_metadata;
            return Ok(Some(existing.roster_for(&connection.member.peer_id)));
        }
        if connection.channels.len() >= max_subscriptions {
            return Err(SubscribeError::LimitExceeded);
        }
        let name: Arc<str> = inner
            .channels
            .get_key_value(channel)
            .map_or_else(|| Arc::from(channel), |(k, _)| k.clone());
        connection.channels.push(name.clone());
        let member = &connection.member;
        let entry = inner.channels.entry(name.clone()).or_default();
        let roster: Roster = entry
            .peers
            .iter()
            .filter(|(peer, _)| *peer != &member.peer_id)
            .map(|(peer, presence)| (peer.clone(), presence.metadata.clone()))
            .collect();
        entry
            .subscribers
            .push(Subscriber::of(conn, member, include_sender_metadata));
        let presence = entry
            .peers
            .entry(member.peer_id.clone())
            .or_insert(Presence {
                connections: 0,
                metadata: member.peer_metadata.clone(),
            });
        presence.connections += 1;
        if presence.connections == 1 {
            let joined = [PeerEntry {
                peer_id: &member.peer_id,
                metadata: member.peer_metadata.as_deref(),
            }];
            let frame: Outbound = ServerFrame::Presence {
                channel: &name,
                joined: &joined,
                left: &[],
            }
            .encode()
            .into();
            // The peer's first connection here: every other subscriber belongs to another peer.
            entry.broadcast_presence(&frame, Some(conn), &self.stats);
        }
        Ok(Some(roster))
    }

    /// Returns whether `conn` was subscribed.
    pub fn unsubscribe(&self, conn: ConnId, channel: &str) -> bool {
        let mut inner = self.write();
        let Some(connection) = inner.connections.get_mut(&conn) else {
            return false;
        };
        let Some(position) = connection.channels.iter().position(|c| &**c == channel) else {
            return false;
        };
        let name = connection.channels.swap_remove(position);
        inner.leave(conn, &name, self.clustered, &self.stats);
        true
    }

    /// Delivers to every subscriber of `channel` but `sender`. Subscribers that asked for sender
    /// metadata get `with_metadata` when there is one. Returns how many were reached.
    pub fn publish(
        &self,
        channel: &str,
        sender: Option<ConnId>,
        plain: &Outbound,
        with_metadata: Option<&Outbound>,
    ) -> usize {
        let inner = self.read();
        let Some(entry) = inner.channels.get(channel) else {
            return 0;
        };
        let mut delivered = 0;
        for sub in entry.subscribers.iter().filter(|s| Some(s.conn) != sender) {
            let frame = match with_metadata {
                Some(frame) if sub.include_sender_metadata => frame,
                _ => plain,
            };
            if deliver(&sub.tx, &sub.signal, frame, &self.stats) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Delivers to every connection of `peer`. Returns how many were reached.
    pub fn send_to_peer(&self, peer: &str, frame: &Outbound) -> usize {
        let inner = self.read();
        inner
            .peer_connections(peer)
            .filter(|c| deliver(&c.member.tx, &c.member.signal, frame, &self.stats))
            .count()
    }

    pub fn is_connected(&self, peer: &str) -> bool {
        self.read().peers.contains_key(peer)
    }

    /// Closes every connection of `peer` with `code`. Returns how many there were.
    pub fn close_peer(&self, peer: &str, code: u16) -> usize {
        let inner = self.read();
        inner
            .peer_connections(peer)
            .inspect(|c| {
                c.member.signal.close(code);
            })
            .count()
    }

    /// Closes every connection made with one of `keys` (revoked or expired keys).
    pub fn close_keys(&self, keys: &HashSet<String>, code: u16) -> usize {
        let inner = self.read();
        inner
            .connections
            .values()
            .filter(|c| keys.contains(&*c.member.key_id))
            .inspect(|c| {
                c.member.signal.close(code);
            })
            .count()
    }

    /// The distinct keys behind open connections.
    pub fn key_ids(&self) -> Vec<String> {
        let inner = self.read();
        let keys: HashSet<&str> = inner
            .connections
            .values()
            .map(|c| &*c.member.key_id)
            .collect();
        keys.into_iter().map(str::to_owned).collect()
    }

    /// Peers present in `channel`, with their metadata.
    pub fn peers(&self, channel: &str) -> Roster {
        let inner = self.read();
        inner.channels.get(channel).map_or_else(Vec::new, |entry| {
            entry
                .peers
                .iter()
                .map(|(p, presence)| (p.clone(), presence.metadata.clone()))
                .collect()
        })
    }

    /// Bytes queued to every connection, not yet written. Summed when asked, so that the hot
    /// path touches only each connection's own counter.
    pub fn queued_bytes(&self) -> u64 {
        self.read()
            .connections
            .values()
            .map(|c| c.member.signal.queued_bytes() as u64)
            .sum()
    }

    /// Counts a connection task until the returned guard is dropped.
    pub fn task(&self) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self.tasks.clone())
    }

    /// Connection tasks still running, including those finishing their closing handshake.
    pub fn task_count(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }

    pub fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.read()
            .connections
            .values()
            .map(|c| c.channels.len())
            .sum()
    }
}

impl Inner {
    fn peer_connections<'a>(&'a self, peer: &str) -> impl Iterator<Item = &'a Connection> {
        self.peers
            .get(peer)
            .into_iter()
            .flatten()
            .filter_map(|id| self.connections.get(id))
    }

    /// Removes `conn` from `channel`; announces the peer's departure on its last connection.
    fn leave(&mut self, conn: ConnId, channel: &Arc<str>, clustered: bool, stats: &HubStats) {
        let Some(peer) = self
            .connections
            .get(&conn)
            .map(|c| c.member.peer_id.clone())
        else {
            return;
        };
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        entry.subscribers.retain(|s| s.conn != conn);
        if clustered {
            // Presence changes come back from Redis; only the local subscription ends here.
            if entry.subscribers.is_empty() && entry.reserved == 0 {
                self.channels.remove(channel);
            }
            return;
        }
        if let Some(presence) = entry.peers.get_mut(&peer) {
            presence.connections -= 1;
            if presence.connections == 0 {
                let presence = entry.peers.remove(&peer).expect("present");
                let left = [PeerEntry {
                    peer_id: &peer,
                    metadata: presence.metadata.as_deref(),
                }];
                let frame: Outbound = ServerFrame::Presence {
                    channel,
                    joined: &[],
                    left: &left,
                }
                .encode()
                .into();
                entry.broadcast_presence(&frame, None, stats);
            }
        }
        if entry.subscribers.is_empty() {
            self.channels.remove(channel);
        }
    }
}

impl Channel {
    /// Who is here, but `own`.
    fn roster_for(&self, own: &str) -> Roster {
        self.peers
            .iter()
            .filter(|(peer, _)| &***peer != own)
            .map(|(peer, presence)| (peer.clone(), presence.metadata.clone()))
            .collect()
    }

    fn broadcast_presence(&self, frame: &Outbound, except: Option<ConnId>, stats: &HubStats) {
        for sub in self
            .subscribers
            .iter()
            .filter(|s| s.presence && Some(s.conn) != except)
        {
            deliver(&sub.tx, &sub.signal, frame, stats);
        }
    }
}

/// One running connection task; see [`Hub::task`].
pub struct TaskGuard(Arc<AtomicUsize>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Queues `frame` for one connection without waiting. A full queue marks a slow consumer.
fn deliver(
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
