//! A short-lived cache of key lookups, found and not found, shared by every request of one
//! instance.
//!
//! An entry is trusted for [`MAX_AGE`] after the read that filled it began, so a revocation or an
//! expiry made anywhere (the CLI, another instance) takes effect on every instance within that
//! long, with no notification to lose and no listener to keep healthy. Within it a busy key costs
//! one lookup per second instead of one per request. Unknown ids are cached too, so repeating a
//! well-formed but unknown credential costs nothing; distinct unknown ids each need a lookup, and
//! at most [`MAX_CONCURRENT_LOOKUPS`] of them run at once, so such a flood never holds more of the
//! pool than that, and keys known to exist refresh without queueing behind it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use super::{ApiKey, find_key};

/// How long a lookup's answer is trusted: the bound on how late a revocation takes effect.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Entries kept at most; beyond it, expired entries are dropped, and if none had expired, all.
const CAPACITY: usize = 10_000;
/// Lookups of ids not known to exist that may wait on the database at once.
const MAX_CONCURRENT_LOOKUPS: usize = 4;
/// Key ids are `sk_id_` and 16 characters; anything much longer is not looked up at all.
const MAX_KEY_ID_LEN: usize = 64;

pub struct KeyCache {
    entries: Mutex<HashMap<String, Entry>>,
    lookups: Semaphore,
    reads: AtomicU64,
}

struct Entry {
    key: Option<Arc<ApiKey>>,
    read_at: Instant,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            lookups: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
            reads: AtomicU64::new(0),
        }
    }
}

impl KeyCache {
    /// The stored key `key_id`, or `None` when there is none, at most [`MAX_AGE`] old.
    pub async fn find(
        &self,
        db: &sqlx::PgPool,
        key_id: &str,
    ) -> Result<Option<Arc<ApiKey>>, sqlx::Error> {
        if key_id.len() > MAX_KEY_ID_LEN {
            return Ok(None);
        }
        if let Some(cached) = self.fresh(key_id) {
            return Ok(cached);
        }
        // A key known to exist refreshes at once; only ids not known to exist queue for a
        // permit, so a flood of unknown ids never delays a real key's refresh.
        let known = self
            .lock()
            .get(key_id)
            .is_some_and(|entry| entry.key.is_some());
        let _permit = match known {
            true => None,
            false => Some(
                self.lookups
                    .acquire()
                    .await
                    .expect("the lookup semaphore is never closed"),
            ),
        };
        // Requests for the same unknown id queue here; the first answered it for the rest.
        if let Some(cached) = self.fresh(key_id) {
            return Ok(cached);
        }
        let read_at = Instant::now();
        self.reads.fetch_add(1, Ordering::Relaxed);
        let key = find_key(db, key_id).await?.map(Arc::new);
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.retain(|_, entry| entry.read_at.elapsed() < MAX_AGE);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        // A read that began earlier than the cached one never replaces it.
        if entries
            .get(key_id)
            .is_none_or(|entry| entry.read_at <= read_at)
        {
            entries.insert(
                key_id.to_owned(),
                Entry {
                    key: key.clone(),
                    read_at,
                },
            );
        }
        Ok(key)
    }

    /// Database reads made so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn fresh(&self, key_id: &str) -> Option<Option<Arc<ApiKey>>> {
        self.lock()
            .get(key_id)
            .filter(|entry| entry.read_at.elapsed() < MAX_AGE)
            .map(|entry| entry.key.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
