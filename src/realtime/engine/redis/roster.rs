//! What an instance keeps of a channel's cluster-wide roster: the mirror's data, and the
//! versioned presence events Redis publishes. The rules that keep a mirror current are in
//! [`super::mirror`].

use std::{collections::HashMap, sync::Arc};

use crate::realtime::engine::hub::fanout::{ConnId, Metadata, Outbound, Roster};

/// A presence event's place in its channel's history: versions count up by one within an epoch,
/// and a channel gets a new epoch each time it is created again after emptying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Version {
    pub epoch: u64,
    pub seq: u64,
}

impl Version {
    /// Parses `<epoch>.<seq>` as the scripts write it (`0.0` for a channel nobody is in).
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.split_once('.')?;
        Some(Self {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// A roster change decided by a script.
#[derive(Debug, Clone)]
pub struct PresenceEvent {
    pub version: Version,
    pub joined: Roster,
    pub left: Vec<Arc<str>>,
}

/// Held while a mirror is read, and then applied or delivered in the order they came.
pub enum Pending {
    Presence(PresenceEvent),
    Message {
        sender: Option<ConnId>,
        plain: Outbound,
        with_metadata: Option<Outbound>,
    },
}

/// One channel's mirror of the cluster's roster.
#[derive(Default)]
pub struct Mirror {
    /// Who is in the channel, cluster-wide, as of `version`.
    pub peers: HashMap<Arc<str>, Option<Metadata>>,
    /// The roster version the mirror is at; `None` while it is being (re)read.
    pub version: Option<Version>,
    /// Presence events and messages that arrived while the mirror was being read, in order.
    pub pending: Vec<Pending>,
    /// Subscriptions on their way in (waiting on Redis).
    pub reserved: usize,
}
