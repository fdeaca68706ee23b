//! Feeds: stored messages of each persistent channel, broadcast in id order to in-process
//! followers that are not WebSocket peers (Server-Sent Events streams and long-poll waiters).
//!
//! A follower subscribes *before* it reads the database, so a message committed between its read
//! and its wait still reaches it. Feeds are bounded: a follower that falls behind is told it
//! lagged and catches up from the database, never from memory.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::broadcast;

use crate::messages::model::Message;

/// Messages one follower may fall behind by before it re-reads from the database.
const FEED_CAPACITY: usize = 64;
/// Feeds kept before those nobody follows any more are dropped.
const PRUNE_FLOOR: usize = 1024;

#[derive(Clone, Default)]
pub struct Feeds {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    channels: HashMap<i64, broadcast::Sender<Arc<Message>>>,
    /// Size at which the next prune runs; doubles with what survives, so pruning stays amortized.
    prune_at: usize,
}

impl Feeds {
    pub fn subscribe(&self, channel_id: i64) -> broadcast::Receiver<Arc<Message>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.channels.len() >= inner.prune_at.max(PRUNE_FLOOR) {
            // Followers that went away (a long poll answered, a stream closed) leave their
            // channel's sender behind; drop those so quiet channels do not hold buffers forever.
            inner
                .channels
                .retain(|_, sender| sender.receiver_count() > 0);
            inner.prune_at = inner.channels.len() * 2;
        }
        inner
            .channels
            .entry(channel_id)
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Hands a message the reader found to the channel's followers; forgets feeds nobody
    /// follows.
    pub fn publish(&self, message: &Arc<Message>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = inner.channels.get(&message.channel_id)
            && sender.send(message.clone()).is_err()
        {
            inner.channels.remove(&message.channel_id);
        }
    }

    /// Followers of one channel right now.
    pub fn followers(&self, channel_id: i64) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .channels
            .get(&channel_id)
            .map_or(0, broadcast::Sender::receiver_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_nobody_follows_are_pruned_as_the_map_grows() {
        let feeds = Feeds::default();
        let kept = feeds.subscribe(0);
        for channel in 1..=(PRUNE_FLOOR as i64 * 3) {
            drop(feeds.subscribe(channel));
        }
        let held = feeds.inner.lock().unwrap().channels.len();
        assert!(held <= PRUNE_FLOOR + 1, "{held} feeds held for 1 follower");
        assert_eq!(feeds.followers(0), 1, "followed feeds survive");
        drop(kept);
    }
}
