//! Long-lived requests per key: Server-Sent Events streams, long polls and MCP waits.
//!
//! Each one holds a [`Stream`] while it lasts. That bounds them per key (`--max-streams-per-key`;
//! beyond, 429 with `Retry-After`), and lets the key check (see `realtime::watch_keys`) end every
//! one of a key that was revoked or has expired, as it closes that key's WebSockets: a stream
//! sends an `error` event and ends, a long poll or an MCP wait answers 401.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;

use crate::error::{ApiError, AuthFailure};

#[derive(Debug)]
pub struct Streams {
    max_per_key: usize,
    keys: Mutex<HashMap<String, Open>>,
}

#[derive(Debug)]
struct Open {
    count: usize,
    /// Set once the key is found revoked or expired.
    ended: watch::Sender<bool>,
}

/// One open long-lived request; dropping it frees its place.
#[derive(Debug)]
pub struct Stream {
    streams: Arc<Streams>,
    key_id: String,
    ended: watch::Receiver<bool>,
}

impl Streams {
    pub fn new(max_per_key: usize) -> Self {
        Self {
            max_per_key,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a long-lived request of `key_id`; 429 `rate_limited` when the key has its maximum
    /// open already.
    pub fn open(self: &Arc<Self>, key_id: &str) -> Result<Stream, ApiError> {
        let mut keys = self.lock();
        let open = keys.entry(key_id.to_owned()).or_insert_with(|| Open {
            count: 0,
            ended: watch::channel(false).0,
        });
        if open.count >= self.max_per_key {
            return Err(ApiError::RateLimited {
                retry_after_secs: 1,
            });
        }
        open.count += 1;
        Ok(Stream {
            streams: self.clone(),
            key_id: key_id.to_owned(),
            ended: open.ended.subscribe(),
        })
    }

    /// The keys with long-lived requests open.
    pub fn key_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Ends every open request of `keys`. Returns how many there were.
    pub fn end(&self, keys: &HashSet<String>) -> usize {
        let keys_open = self.lock();
        let mut ended = 0;
        for open in keys.iter().filter_map(|key| keys_open.get(key)) {
            open.ended.send_replace(true);
            ended += open.count;
        }
        ended
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Stream {
    /// Whether the key behind this request was found revoked or expired.
    pub fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Resolves once the key behind this request was found revoked or expired.
    pub async fn ended(&mut self) -> ApiError {
        let _ = self.ended.wait_for(|ended| *ended).await;
        ApiError::Unauthorized(AuthFailure::KeyInactive)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut keys = self.streams.lock();
        if let Some(open) = keys.get_mut(&self.key_id) {
            open.count -= 1;
            if open.count == 0 {
                keys.remove(&self.key_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_are_bounded_per_key_and_end_with_their_key() {
        let streams = Arc::new(Streams::new(2));
        let mut first = streams.open("sk_id_a").expect("first");
        let second = streams.open("sk_id_a").expect("second");
        assert!(matches!(
            streams.open("sk_id_a"),
            Err(ApiError::RateLimited { .. })
        ));
        let other = streams.open("sk_id_b").expect("another key has its own");
        drop(second);
        let _third = streams.open("sk_id_a").expect("a freed place");
        let ended = streams.end(&HashSet::from(["sk_id_a".to_owned()]));
        assert_eq!(ended, 2);
        assert!(matches!(
            first.ended().await,
            ApiError::Unauthorized(AuthFailure::KeyInactive)
        ));
        drop(other);
        assert_eq!(streams.key_ids(), vec!["sk_id_a".to_owned()]);
    }
}
