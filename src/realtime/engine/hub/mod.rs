//! The hub: which of this instance's connections is subscribed where, who is present in each
//! channel, and fan-out to local sockets. Both engines deliver through it.
//!
//! Connections are indexed by id, by peer and by channel. The lock is a plain `RwLock` that is
//! never held across an `.await`: delivering is a non-blocking `try_send` of shared, already
//! serialized bytes into each connection's bounded queue (see [`fanout`]).
//!
//! Presence is where the engines differ. In memory, a channel counts its peers' connections here
//! ([`ChannelPresence::Counted`]). With Redis, Redis decides every join and leave and a channel
//! here mirrors the cluster's roster ([`ChannelPresence::Mirrored`]; the rules are in
//! `engine::redis::mirror`).

pub mod fanout;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use crate::{
    apps::unscoped,
    realtime::{
        engine::redis::roster::Mirror,
        protocol::{PeerEntry, ServerFrame},
    },
};
use fanout::{
    ConnId, HubStats, Member, Metadata, Outbound, Roster, Subscriber, TaskGuard, deliver,
    deliver_to,
};

#[derive(Clone, Default)]
pub struct Hub {
    pub(in crate::realtime::engine) inner: Arc<RwLock<Inner>>,
    next_id: Arc<AtomicU64>,
    pub stats: Arc<HubStats>,
    /// Connection tasks still running, closing handshakes included.
    tasks: Arc<AtomicUsize>,
    /// Joins and leaves as this engine decides them, for webhooks.
    pub presence_out: Arc<PresenceOut>,
}

/// A peer joined or left a channel (a peer's first connection to it, or its last gone).
#[derive(Debug, Clone)]
pub struct PresenceChange {
    /// The engine's (app-scoped) channel name.
    pub channel: Arc<str>,
    pub peer: Arc<str>,
    pub metadata: Option<Metadata>,
    pub joined: bool,
    /// The same for every instance that observes this change (Redis's presence version), so it
    /// is recorded once; `None` where only one instance can observe it.
    pub dedupe: Option<String>,
}

/// Where presence changes go: nowhere until a consumer connects and wants them, then to a
/// bounded queue (a change that does not fit is counted and dropped; presence never waits).
#[derive(Debug, Default)]
pub struct PresenceOut {
    sink: std::sync::OnceLock<tokio::sync::mpsc::Sender<PresenceChange>>,
    wanted: std::sync::atomic::AtomicBool,
    pub dropped: AtomicU64,
}

impl PresenceOut {
    pub fn connect(&self, sink: tokio::sync::mpsc::Sender<PresenceChange>) {
        let _ = self.sink.set(sink);
    }

    /// Whether changes are wanted now (some app has a webhook).
    pub fn want(&self, wanted: bool) {
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    pub fn emit(&self, change: impl FnOnce() -> PresenceChange) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        if let Some(sink) = self.sink.get()
            && sink.try_send(change()).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
pub(in crate::realtime::engine) struct Inner {
    pub connections: HashMap<ConnId, Connection>,
    pub channels: HashMap<Arc<str>, Channel>,
    pub peers: HashMap<Arc<str>, Vec<ConnId>>,
}

pub(in crate::realtime::engine) struct Connection {
    pub member: Member,
    pub channels: Vec<Arc<str>>,
}

pub(in crate::realtime::engine) struct Channel {
    pub subscribers: Vec<Subscriber>,
    pub presence: ChannelPresence,
}

/// Who is in a channel, as each engine knows it.
pub(in crate::realtime::engine) enum ChannelPresence {
    /// In memory: each peer here, on how many of this instance's connections.
    Counted(HashMap<Arc<str>, Presence>),
    /// Redis: the mirror of the cluster's roster.
    Mirrored(Mirror),
}

pub(in crate::realtime::engine) struct Presence {
    pub connections: u32,
    pub metadata: Option<Metadata>,
}

/// What a connection was subscribed to when it unregistered.
#[derive(Debug)]
pub struct Departure {
    /// The peer's address (`Member::address`).
    pub peer: Arc<str>,
    pub channels: Vec<Arc<str>>,
    /// No other connection of the peer remains on this instance.
    pub last_of_peer: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    LimitExceeded,
}

impl Hub {
    pub(in crate::realtime::engine) fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(in crate::realtime::engine) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(&self, member: Member) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = self.write();
        inner
            .peers
            .entry(member.address.clone())
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
        let address = connection.member.address.clone();
        for channel in &channels {
            inner.leave(conn, channel, &self.stats, &self.presence_out);
        }
        let mut last_of_peer = true;
        if let Some(conns) = inner.peers.get_mut(&address) {
            conns.retain(|c| *c != conn);
            last_of_peer = conns.is_empty();
            if last_of_peer {
                inner.peers.remove(&address);
            }
        }
        inner.connections.remove(&conn);
        Some(Departure {
            peer: address,
            channels,
            last_of_peer,
        })
    }

    /// Subscribes `conn` to `channel`, counting presence here (the in-memory engine). Returns
    /// the roster of other peers there (`None` only for a connection that is gone); subscribing
    /// again changes only the options and returns a fresh roster. A peer's first connection in
    /// the channel announces it to the others.
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
        if let Some(roster) = inner.channels.get_mut(channel).and_then(|existing| {
            existing.resubscribe(conn, &connection.member.peer_id, include_sender_metadata)
        }) {
            // Subscribed already: only its options change, and it gets a fresh roster; nothing
            // is announced to the others.
            return Ok(Some(roster));
        }
        if connection.channels.len() >= max_subscriptions {
            return Err(SubscribeError::LimitExceeded);
        }
        let name = name_for(&inner.channels, channel);
        connection.channels.push(name.clone());
        let member = &connection.member;
        let entry = inner
            .channels
            .entry(name.clone())
            .or_insert_with(|| Channel {
                subscribers: Vec::new(),
                presence: ChannelPresence::Counted(HashMap::new()),
            });
        let roster = entry.roster_for(&member.peer_id);
        entry
            .subscribers
            .push(Subscriber::of(conn, member, include_sender_metadata));
        let ChannelPresence::Counted(peers) = &mut entry.presence else {
            // Only the Redis engine mirrors channels, and it subscribes through `reserve`.
            return Ok(Some(roster));
        };
        let presence = peers.entry(member.peer_id.clone()).or_insert(Presence {
            connections: 0,
            metadata: member.peer_metadata.clone(),
        });
        presence.connections += 1;
        if presence.connections == 1 {
            self.presence_out.emit(|| PresenceChange {
                channel: name.clone(),
                peer: member.peer_id.clone(),
                metadata: member.peer_metadata.clone(),
                joined: true,
                dedupe: None,
            });
            let joined = [PeerEntry {
                peer_id: &member.peer_id,
                metadata: member.peer_metadata.as_deref(),
            }];
            let frame: Outbound = ServerFrame::Presence {
                channel: unscoped(&name),
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
        inner.leave(conn, &name, &self.stats, &self.presence_out);
        true
    }

    /// Delivers to every subscriber of `channel` but `sender`. Subscribers that asked for sender
    /// metadata get `with_metadata` when there is one. Returns how many subscribers there were.
    pub fn publish(
        &self,
        channel: &str,
        sender: Option<ConnId>,
        plain: &Outbound,
        with_metadata: Option<&Outbound>,
    ) -> usize {
        let inner = self.read();
        inner.channels.get(channel).map_or(0, |entry| {
            entry.deliver(sender, plain, with_metadata, &self.stats)
        })
    }

    /// Delivers to every connection of `peer`. Returns how many connections the peer has here.
    pub fn send_to_peer(&self, peer: &str, frame: &Outbound) -> usize {
        let inner = self.read();
        inner
            .peer_connections(peer)
            .inspect(|c| {
                deliver(&c.member.tx, &c.member.signal, frame, &self.stats);
            })
            .count()
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

    /// Peers present in `channel`, with their metadata, as this instance knows them.
    pub fn peers(&self, channel: &str) -> Roster {
        let inner = self.read();
        inner
            .channels
            .get(channel)
            .map_or_else(Vec::new, |entry| entry.roster_for(""))
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
        TaskGuard::count(&self.tasks)
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

    /// Removes `conn` from `channel`. In memory, a peer's last connection announces its
    /// departure; with Redis, presence changes come back from Redis and only the local
    /// subscription ends here.
    fn leave(
        &mut self,
        conn: ConnId,
        channel: &Arc<str>,
        stats: &HubStats,
        presence_out: &PresenceOut,
    ) {
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
        if let ChannelPresence::Counted(peers) = &mut entry.presence
            && let Some(presence) = peers.get_mut(&peer)
        {
            presence.connections -= 1;
            if presence.connections == 0 {
                let presence = peers.remove(&peer).expect("present");
                presence_out.emit(|| PresenceChange {
                    channel: channel.clone(),
                    peer: peer.clone(),
                    metadata: presence.metadata.clone(),
                    joined: false,
                    dedupe: None,
                });
                let left = [PeerEntry {
                    peer_id: &peer,
                    metadata: presence.metadata.as_deref(),
                }];
                let frame: Outbound = ServerFrame::Presence {
                    channel: unscoped(channel),
                    joined: &[],
                    left: &left,
                }
                .encode()
                .into();
                entry.broadcast_presence(&frame, None, stats);
            }
        }
        if entry.is_unused() {
            self.channels.remove(channel);
        }
    }
}

/// The channel's name, shared with its entry when there is one.
fn name_for(channels: &HashMap<Arc<str>, Channel>, channel: &str) -> Arc<str> {
    channels
        .get_key_value(channel)
        .map_or_else(|| Arc::from(channel), |(k, _)| k.clone())
}

impl Channel {
    /// Who is here, but `own`.
    pub fn roster_for(&self, own: &str) -> Roster {
        match &self.presence {
            ChannelPresence::Counted(peers) => peers
                .iter()
                .filter(|(peer, _)| &***peer != own)
                .map(|(peer, presence)| (peer.clone(), presence.metadata.clone()))
                .collect(),
            ChannelPresence::Mirrored(mirror) => mirror
                .peers
                .iter()
                .filter(|(peer, _)| &***peer != own)
                .map(|(peer, metadata)| (peer.clone(), metadata.clone()))
                .collect(),
        }
    }

    /// A repeated subscribe: updates the options and answers a fresh roster, or `None` when
    /// `conn` is not subscribed here.
    pub fn resubscribe(
        &mut self,
        conn: ConnId,
        peer: &str,
        include_sender_metadata: bool,
    ) -> Option<Roster> {
        let sub = self.subscribers.iter_mut().find(|s| s.conn == conn)?;
        sub.include_sender_metadata = include_sender_metadata;
        Some(self.roster_for(peer))
    }

    /// Neither subscribers nor subscriptions on their way: the entry can go.
    pub fn is_unused(&self) -> bool {
        self.subscribers.is_empty()
            && match &self.presence {
                ChannelPresence::Counted(_) => true,
                ChannelPresence::Mirrored(mirror) => mirror.reserved == 0,
            }
    }

    /// Delivers a message to every subscriber but `sender`; see [`deliver_to`].
    pub fn deliver(
        &self,
        sender: Option<ConnId>,
        plain: &Outbound,
        with_metadata: Option<&Outbound>,
        stats: &HubStats,
    ) -> usize {
        deliver_to(&self.subscribers, sender, plain, with_metadata, stats)
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
