//! Feeds: stored messages of each persistent channel, broadcast in commit order to in-process
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
const FEED_CAPACITY: usize = 256;

#[derive(Clone, Default)]
pub struct Feeds {
    channels: Arc<Mutex<HashMap<i64, broadcast::Sender<Arc<Message>>>>>,
}

impl Feeds {
    pub fn subscribe(&self, channel_id: i64) -> broadcast::Receiver<Arc<Message>> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .entry(channel_id)
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Hands a just-stored message to the channel's followers; forgets feeds nobody follows.
    pub fn publish(&self, message: &Message) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = channels.get(&message.channel_id) {
            if sender.send(Arc::new(message.clone())).is_err() {
                channels.remove(&message.channel_id);
            }
        }
    }

    /// Followers of one channel right now.
    pub fn followers(&self, channel_id: i64) -> usize {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .get(&channel_id)
            .map_or(0, broadcast::Sender::receiver_count)
    }
}
