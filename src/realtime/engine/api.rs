//! The types the engine's operations take and answer, shared by both engines.

use crate::realtime::engine::hub::{
    SubscribeError,
    fanout::{ConnId, Metadata},
};

/// Realtime needs Redis, and this instance cannot reach it: the action failed, and may be
/// retried shortly. (The in-memory engine never answers this.)
#[derive(Debug, thiserror::Error)]
#[error("realtime is unavailable: this instance cannot reach Redis")]
pub struct Unavailable;

/// Why a subscribe failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeFailure {
    LimitExceeded,
    Unavailable,
}

impl From<SubscribeError> for SubscribeFailure {
    fn from(SubscribeError::LimitExceeded: SubscribeError) -> Self {
        Self::LimitExceeded
    }
}

/// One connection's subscription to one channel.
pub struct Subscription<'a> {
    pub conn: ConnId,
    pub channel: &'a str,
    /// Messages reach this subscriber with the sender's metadata (`fromMetadata`).
    pub include_sender_metadata: bool,
    pub max_subscriptions: usize,
    pub peer: &'a str,
    pub peer_metadata: Option<&'a Metadata>,
}
