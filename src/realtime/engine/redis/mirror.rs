//! Each channel served here mirrors the cluster's roster, kept by Redis.
//!
//! Redis decides every join and leave (see [`super::scripts`]) and publishes it as a versioned
//! event in the channel's one order. The mirror applies event `v` only right after `v - 1`; on
//! a gap it is read again whole and the difference is sent as presence frames. Local
//! subscribers only ever see the mirror change: a new subscriber gets the mirror as its roster
//! and every later change as frames, under the same lock, so it sees no duplicate and no hole.
//! A peer is never told about itself, as in memory.
//!
//! Messages from Redis are held back with the presence events while a mirror is read, so that
//! subscribers see one order of messages and presence. (Stored messages, from PostgreSQL, are
//! never held: see `Engine::publish_stored`.)

use std::sync::Arc;

use super::roster::{Mirror, Pending, PresenceEvent, Version};
use crate::{
    apps::unscoped,
    realtime::{
        engine::hub::{
            Channel, ChannelPresence, Hub, PresenceChange, SubscribeError,
            fanout::{
                ConnId, HubStats, Metadata, Outbound, Roster, Subscriber, deliver, deliver_to,
            },
        },
        protocol::{PeerEntry, ServerFrame},
    },
};

/// Events held while a mirror is read; past this, later ones are dropped and the gap they leave
/// is found (and read again) when the next event arrives.
const MAX_PENDING_EVENTS: usize = 10_000;

/// The first step of a subscribe.
#[derive(Debug)]
pub enum Reservation {
    /// Already subscribed: only its options changed; the roster as it is now.
    Subscribed(Roster),
    /// Room is kept for the subscription; `needs_roster` when the channel has no mirror yet.
    Reserved { needs_roster: bool },
}

impl Hub {
    /// Holds a place in `channel` for `conn` while its join goes to Redis. The channel's entry
    /// exists from now on, so events published from here on are kept for its mirror.
    pub fn reserve(
        &self,
        conn: ConnId,
        channel: &str,
        include_sender_metadata: bool,
        max_subscriptions: usize,
    ) -> Result<Reservation, SubscribeError> {
        let mut guard = self.write();
        let inner = &mut *guard;
        let Some(connection) = inner.connections.get(&conn) else {
            return Ok(Reservation::Subscribed(Roster::new()));
        };
        if let Some(roster) = inner.channels.get_mut(channel).and_then(|existing| {
            existing.resubscribe(conn, &connection.member.peer_id, include_sender_metadata)
        }) {
            return Ok(Reservation::Subscribed(roster));
        }
        if connection.channels.len() >= max_subscriptions {
            return Err(SubscribeError::LimitExceeded);
        }
        let entry = inner
            .channels
            .entry(Arc::from(channel))
            .or_insert_with(|| Channel {
                subscribers: Vec::new(),
                presence: ChannelPresence::Mirrored(Mirror::default()),
            });
        let mirror = mirror_of(entry);
        mirror.reserved += 1;
        Ok(Reservation::Reserved {
            needs_roster: mirror.version.is_none(),
        })
    }

    /// Completes a reserved subscription once Redis has the join. `snapshot` is the roster that
    /// came with the join, for a channel without a mirror. Returns the roster to show the new
    /// subscriber (its own peer left out), or `None` if the connection is gone.
    pub fn attach(
        &self,
        conn: ConnId,
        channel: &str,
        include_sender_metadata: bool,
        snapshot: Option<(Version, Roster)>,
    ) -> Option<Roster> {
        let mut guard = self.write();
        let inner = &mut *guard;
        let name = inner.channels.get_key_value(channel)?.0.clone();
        let entry = inner.channels.get_mut(channel)?;
        {
            let Channel {
                subscribers,
                presence,
            } = &mut *entry;
            let mirror = mirrored(presence);
            mirror.reserved = mirror.reserved.saturating_sub(1);
            if let Some((version, roster)) = snapshot {
                mirror.resync(subscribers, &name, version, roster, &self.stats);
            }
        }
        let Some(connection) = inner.connections.get_mut(&conn) else {
            if entry.is_unused() {
                inner.channels.remove(channel);
            }
            return None;
        };
        connection.channels.push(name);
        let member = &connection.member;
        entry
            .subscribers
            .push(Subscriber::of(conn, member, include_sender_metadata));
        Some(entry.roster_for(&member.peer_id))
    }

    /// Gives back a reservation whose join failed.
    pub fn abandon(&self, channel: &str) {
        let mut inner = self.write();
        if let Some(entry) = inner.channels.get_mut(channel) {
            let mirror = mirror_of(entry);
            mirror.reserved = mirror.reserved.saturating_sub(1);
            if entry.is_unused() {
                inner.channels.remove(channel);
            }
        }
    }

    /// Applies a presence event from Redis. Returns `true` when the mirror fell behind and must
    /// be read again (see [`Hub::resync`]).
    pub fn apply_presence(&self, channel: &str, event: PresenceEvent) -> bool {
        // Every instance serving the channel sees this event, with the same version: the
        // version makes it one record.
        let version = event.version;
        let changes = event
            .joined
            .iter()
            .map(|(peer, metadata)| (peer, metadata.clone(), true))
            .chain(event.left.iter().map(|peer| (peer, None, false)));
        for (peer, metadata, joined) in changes {
            self.presence_out.emit(|| PresenceChange {
                channel: Arc::from(channel),
                peer: peer.clone(),
                metadata,
                joined,
                dedupe: Some(format!(
                    "presence\u{1f}{channel}\u{1f}{}.{}\u{1f}{peer}\u{1f}{joined}",
                    version.epoch, version.seq
                )),
            });
        }
        self.with_mirror(channel, |mirror, subscribers, name, stats| {
            mirror.apply(subscribers, name, event, stats)
        })
    }

    /// Runs `f` on `channel`'s mirror and its subscribers, under the lock; `false` when this
    /// instance does not serve the channel.
    fn with_mirror(
        &self,
        channel: &str,
        f: impl FnOnce(&mut Mirror, &[Subscriber], &str, &HubStats) -> bool,
    ) -> bool {
        let mut inner = self.write();
        let Some((name, _)) = inner.channels.get_key_value(channel) else {
            return false;
        };
        let name = name.clone();
        let Channel {
            subscribers,
            presence,
        } = inner.channels.get_mut(channel).expect("looked up above");
        f(mirrored(presence), subscribers, &name, &self.stats)
    }

    /// Delivers a message from Redis: at once, or after the presence events before it when the
    /// mirror is being read, so that subscribers see one order of messages and presence.
    pub fn deliver_message(
        &self,
        channel: &str,
        sender: Option<ConnId>,
        plain: Outbound,
        with_metadata: Option<Outbound>,
    ) {
        {
            let inner = self.read();
            let Some(entry) = inner.channels.get(channel) else {
                return;
            };
            if is_current(entry) {
                entry.deliver(sender, &plain, with_metadata.as_ref(), &self.stats);
                return;
            }
        }
        let mut inner = self.write();
        let Some(entry) = inner.channels.get_mut(channel) else {
            return;
        };
        if is_current(entry) {
            entry.deliver(sender, &plain, with_metadata.as_ref(), &self.stats);
            return;
        }
        let mirror = mirror_of(entry);
        if mirror.pending.len() < MAX_PENDING_EVENTS {
            mirror.pending.push(Pending::Message {
                sender,
                plain,
                with_metadata,
            });
        }
    }

    /// Replaces a mirror with the roster read from Redis at `version`, sending the difference.
    /// Returns `true` when held events show it must be read yet again.
    pub fn resync(&self, channel: &str, version: Version, roster: Roster) -> bool {
        self.with_mirror(channel, |mirror, subscribers, name, stats| {
            mirror.resync(subscribers, name, version, roster, stats)
        })
    }

    /// Marks every mirror as behind, e.g. after the pub/sub connection was lost: events from
    /// then on are held until each is read again. Returns the channels.
    pub fn invalidate_mirrors(&self) -> Vec<Arc<str>> {
        let mut inner = self.write();
        inner
            .channels
            .iter_mut()
            .map(|(name, entry)| {
                mirror_of(entry).version = None;
                name.clone()
            })
            .collect()
    }

    /// Whether this instance has subscribers (or subscriptions on their way) in `channel`.
    pub fn serves(&self, channel: &str) -> bool {
        self.read().channels.contains_key(channel)
    }

    pub fn has_connection(&self, conn: ConnId) -> bool {
        self.read().connections.contains_key(&conn)
    }

    pub fn is_subscribed(&self, conn: ConnId, channel: &str) -> bool {
        self.read()
            .channels
            .get(channel)
            .is_some_and(|c| c.subscribers.iter().any(|s| s.conn == conn))
    }

    /// Every connection (id, peer address) and every subscription (channel, connection, peer,
    /// metadata) held here, for registering them again in Redis. A connection is registered under
    /// its peer's address (app and id, as `send` and kicks find it); a subscription under the
    /// bare peer id, as the channel (already the app's) lists it.
    pub fn local_state(&self) -> LocalState {
        let inner = self.read();
        let mut state = LocalState::default();
        for (id, connection) in &inner.connections {
            let member = &connection.member;
            state.connections.push((*id, member.address.clone()));
            for channel in &connection.channels {
                state.subscriptions.push((
                    channel.clone(),
                    *id,
                    member.peer_id.clone(),
                    member.peer_metadata.clone(),
                ));
            }
        }
        state
    }
}

/// See [`Hub::local_state`].
#[derive(Default)]
pub struct LocalState {
    pub connections: Vec<(ConnId, Arc<str>)>,
    #[allow(clippy::type_complexity)]
    pub subscriptions: Vec<(Arc<str>, ConnId, Arc<str>, Option<Metadata>)>,
}

/// A channel of the Redis engine's hub mirrors the cluster; one that counted presence here
/// would be a channel the in-memory engine made, which this hub never holds.
fn mirror_of(entry: &mut Channel) -> &mut Mirror {
    mirrored(&mut entry.presence)
}

fn mirrored(presence: &mut ChannelPresence) -> &mut Mirror {
    if let ChannelPresence::Counted(_) = presence {
        *presence = ChannelPresence::Mirrored(Mirror::default());
    }
    match presence {
        ChannelPresence::Mirrored(mirror) => mirror,
        ChannelPresence::Counted(_) => unreachable!("replaced above"),
    }
}

/// The mirror is at a known version: messages go out at once rather than being held.
fn is_current(entry: &Channel) -> bool {
    match &entry.presence {
        ChannelPresence::Mirrored(mirror) => mirror.version.is_some(),
        ChannelPresence::Counted(_) => true,
    }
}

impl Mirror {
    fn apply(
        &mut self,
        subscribers: &[Subscriber],
        name: &str,
        event: PresenceEvent,
        stats: &HubStats,
    ) -> bool {
        let Some(current) = self.version else {
            if self.pending.len() < MAX_PENDING_EVENTS {
                self.pending.push(Pending::Presence(event));
            }
            return false;
        };
        let next = event.version;
        if next <= current {
            return false;
        }
        if next.epoch == current.epoch && next.seq == current.seq + 1 {
            let joined: Roster = event
                .joined
                .into_iter()
                .filter(|(peer, _)| !self.peers.contains_key(peer))
                .collect();
            let left: Roster = event
                .left
                .into_iter()
                .filter_map(|peer| {
                    let metadata = self.peers.remove(&peer)?;
                    Some((peer, metadata))
                })
                .collect();
            self.peers.extend(joined.iter().cloned());
            self.version = Some(next);
            announce(subscribers, name, &joined, &left, stats);
            return false;
        }
        if next.epoch > current.epoch && next.seq == 1 {
            // The channel emptied and started again: before this event nobody was in it.
            let roster: Roster = event.joined;
            return self.resync(subscribers, name, next, roster, stats);
        }
        // A gap: read the roster again; hold this and later events until then.
        self.version = None;
        self.pending.push(Pending::Presence(event));
        true
    }

    fn resync(
        &mut self,
        subscribers: &[Subscriber],
        name: &str,
        version: Version,
        roster: Roster,
        stats: &HubStats,
    ) -> bool {
        if self.version.is_some_and(|current| current >= version) {
            return false;
        }
        let left: Roster = self
            .peers
            .iter()
            .filter(|(peer, _)| !roster.iter().any(|(p, _)| p == *peer))
            .map(|(peer, metadata)| (peer.clone(), metadata.clone()))
            .collect();
        for (peer, _) in &left {
            self.peers.remove(peer);
        }
        let joined: Roster = roster
            .into_iter()
            .filter(|(peer, _)| !self.peers.contains_key(peer))
            .collect();
        self.peers.extend(joined.iter().cloned());
        self.version = Some(version);
        announce(subscribers, name, &joined, &left, stats);
        let mut again = false;
        let mut held = std::mem::take(&mut self.pending).into_iter();
        for item in held.by_ref() {
            match item {
                Pending::Presence(event) => again |= self.apply(subscribers, name, event, stats),
                Pending::Message {
                    sender,
                    plain,
                    with_metadata,
                } if self.version.is_some() => {
                    deliver_to(subscribers, sender, &plain, with_metadata.as_ref(), stats);
                }
                message @ Pending::Message { .. } => self.pending.push(message),
            }
        }
        again
    }
}

/// Sends a mirror change to the local presence subscribers, leaving out each subscriber's own
/// peer.
fn announce(
    subscribers: &[Subscriber],
    name: &str,
    joined: &Roster,
    left: &Roster,
    stats: &HubStats,
) {
    if joined.is_empty() && left.is_empty() {
        return;
    }
    let encode = |skip: Option<&str>| -> Option<Outbound> {
        let joined: Vec<PeerEntry<'_>> = joined.iter().filter_map(|e| entry(e, skip)).collect();
        let left: Vec<PeerEntry<'_>> = left.iter().filter_map(|e| entry(e, skip)).collect();
        if joined.is_empty() && left.is_empty() {
            return None;
        }
        Some(
            ServerFrame::Presence {
                channel: unscoped(name),
                joined: &joined,
                left: &left,
            }
            .encode()
            .into(),
        )
    };
    let Some(shared) = encode(None) else {
        return;
    };
    let mentions = |peer: &str| joined.iter().chain(left.iter()).any(|(p, _)| &**p == peer);
    for sub in subscribers.iter().filter(|s| s.presence) {
        if mentions(&sub.peer) {
            if let Some(own) = encode(Some(&sub.peer)) {
                deliver(&sub.tx, &sub.signal, &own, stats);
            }
        } else {
            deliver(&sub.tx, &sub.signal, &shared, stats);
        }
    }
}

/// A presence frame's entry for `peer`, unless it is the peer to leave out.
fn entry<'a>(
    (peer, metadata): &'a (Arc<str>, Option<Metadata>),
    skip: Option<&str>,
) -> Option<PeerEntry<'a>> {
    (Some(&**peer) != skip).then(|| PeerEntry {
        peer_id: peer,
        metadata: metadata.as_deref(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::extract::ws::Utf8Bytes;
    use serde_json::Value;
    use tokio::sync::mpsc;

    use super::*;
    use crate::realtime::engine::hub::fanout::{CloseSignal, Member};

    fn version(epoch: u64, seq: u64) -> Version {
        Version { epoch, seq }
    }

    fn event(epoch: u64, seq: u64, joined: &[&str], left: &[&str]) -> PresenceEvent {
        PresenceEvent {
            version: version(epoch, seq),
            joined: joined.iter().map(|p| (Arc::from(*p), None)).collect(),
            left: left.iter().map(|p| Arc::from(*p)).collect(),
        }
    }

    fn roster(peers: &[&str]) -> Roster {
        peers.iter().map(|p| (Arc::from(*p), None)).collect()
    }

    /// A clustered hub with one subscriber, peer `me`, attached to `room` with a mirror at 1.1
    /// holding `a`; returns the hub and what the subscriber receives.
    fn subscribed() -> (Hub, mpsc::Receiver<Outbound>) {
        let hub = Hub::default();
        let (tx, rx) = mpsc::channel(64);
        let conn = hub.register(Member {
            peer_id: Arc::from("me"),
            address: Arc::from("me"),
            key_id: Arc::from("key"),
            presence: true,
            peer_metadata: None,
            tx,
            signal: Arc::new(CloseSignal::new(1 << 20)),
        });
        assert!(matches!(
            hub.reserve(conn, "room", false, 10),
            Ok(Reservation::Reserved { needs_roster: true })
        ));
        let shown = hub
            .attach(
                conn,
                "room",
                false,
                Some((version(1, 1), roster(&["a", "me"]))),
            )
            .expect("attached");
        let names: Vec<&str> = shown.iter().map(|(p, _)| &**p).collect();
        assert_eq!(
            names,
            ["a"],
            "the roster leaves out the subscriber's own peer"
        );
        (hub, rx)
    }

    /// The frames queued so far, as (type, joined, left) or (type, data).
    fn frames(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            let frame: Value = serde_json::from_str(&item.frame).expect("JSON");
            let peers = |field: &str| -> Vec<String> {
                frame[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e["peerId"].as_str().unwrap_or_default().to_owned())
                    .collect()
            };
            out.push(match frame["type"].as_str() {
                Some("presence") => format!("+{:?} -{:?}", peers("joined"), peers("left")),
                _ => format!("message {}", frame["data"]),
            });
        }
        out
    }

    fn message(data: &str) -> Outbound {
        Utf8Bytes::from(format!(
            r#"{{"type":"message","channel":"room","from":"x","data":"{data}"}}"#
        ))
        .into()
    }

    #[test]
    fn events_apply_in_order_and_a_gap_is_filled_by_reading_the_roster() {
        let (hub, mut rx) = subscribed();
        assert!(!hub.apply_presence("room", event(1, 2, &["b"], &[])));
        assert!(
            !hub.apply_presence("room", event(1, 2, &["b"], &[])),
            "a repeat is ignored"
        );
        assert_eq!(frames(&mut rx), [r#"+["b"] -[]"#]);

        // 1.3 never arrives: 1.4 shows the gap, and it and what follows wait for the roster.
        assert!(hub.apply_presence("room", event(1, 4, &["d"], &[])));
        hub.deliver_message("room", None, message("after"), None);
        assert!(frames(&mut rx).is_empty(), "held while the roster is read");
        // Read at 1.4: c joined at 1.3, a left meanwhile too.
        assert!(!hub.resync("room", version(1, 4), roster(&["b", "c", "d", "me"])));
        assert_eq!(
            frames(&mut rx),
            [r#"+["c", "d"] -["a"]"#, r#"message "after""#],
            "the difference, then what was held, in order"
        );
    }

    #[test]
    fn a_new_epoch_starts_from_an_empty_channel_and_own_peer_is_never_announced() {
        let (hub, mut rx) = subscribed();
        assert!(!hub.apply_presence("room", event(1, 2, &["me"], &[])));
        assert!(
            frames(&mut rx).is_empty(),
            "a peer is not told about itself"
        );
        // The channel emptied elsewhere and started again: whoever the mirror held is gone.
        assert!(!hub.apply_presence("room", event(7, 1, &["z"], &[])));
        assert_eq!(frames(&mut rx), [r#"+["z"] -["a"]"#]);
        assert!(
            !hub.apply_presence("room", event(1, 3, &["old"], &[])),
            "older epochs are stale"
        );
        assert!(frames(&mut rx).is_empty());
    }
}
