//! A short-lived cache of key lookups, found and not found, shared by every request of one
//! instance.
//!
//! An entry is trusted for [`MAX_AGE`] after the read that filled it began, so a revocation or an
//! expiry made anywhere (the CLI, another instance) takes effect on every instance within that
//! long, with no notification to lose and no listener to keep healthy. Within it a busy key costs
//! one lookup per second instead of one per request.
//!
//! Keys that exist and ids that do not are kept apart. Unknown ids are cached too, so repeating a
//! well-formed but unknown credential costs nothing; distinct unknown ids each need a lookup, at
//! most [`MAX_CONCURRENT_LOOKUPS`] of them at once, and fill only their own bounded map: a flood
//! of random ids never evicts a key that exists, never holds more of the pool than that, and a
//! known key refreshes without queueing behind it. (Failed authentications per source are
//! bounded too, see [`super::failures`].)

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use super::{ApiKey, Pattern, ScopeSet, find_key, patterns::DigitNames};

/// How long a lookup's answer is trusted: the bound on how late a revocation takes effect.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Unknown ids remembered at most; beyond it, expired ones are dropped, and if none had expired,
/// all of them (never a key that exists).
const UNKNOWN_CAPACITY: usize = 10_000;
/// Keys that exist are as many as the database holds; past this many, the stale ones go.
const KNOWN_CAPACITY: usize = 100_000;
/// Lookups of ids not known to exist that may wait on the database at once.
const MAX_CONCURRENT_LOOKUPS: usize = 4;
/// Key ids are `sk_id_` and 16 characters; anything much longer is not looked up at all.
const MAX_KEY_ID_LEN: usize = 64;

/// A stored key as requests use it: the row, and what each request would otherwise work out
/// from it again (its scopes and patterns parsed, its sealed secret shared). Reads as the row.
pub struct KnownKey {
    pub row: ApiKey,
    pub scope_set: ScopeSet,
    pub patterns: Arc<[Pattern]>,
    /// The patterns cover every persistent channel's name (`*` or `**` among them).
    pub all_channels: bool,
    pub stored_patterns: Arc<[String]>,
    pub sealed_secret: Option<Arc<[u8]>>,
}

impl From<ApiKey> for KnownKey {
    fn from(row: ApiKey) -> Self {
        let patterns: Arc<[Pattern]> = row
            .channel_patterns
            .iter()
            .map(|p| Pattern::new(p))
            .collect();
        Self {
            scope_set: ScopeSet::from_stored(&row.scopes),
            all_channels: matches!(DigitNames::of(&patterns), DigitNames::All),
            patterns,
            stored_patterns: row.channel_patterns.as_slice().into(),
            sealed_secret: row.secret_encrypted.as_deref().map(Arc::from),
            row,
        }
    }
}

impl std::ops::Deref for KnownKey {
    type Target = ApiKey;

    fn deref(&self) -> &ApiKey {
        &self.row
    }
}

pub struct KeyCache {
    entries: Mutex<Entries>,
    lookups: Semaphore,
    reads: AtomicU64,
}

#[derive(Default)]
struct Entries {
    /// Keys that exist, with when the read that found them began.
    known: HashMap<String, (Arc<KnownKey>, Instant)>,
    /// Ids found to name no key, with when that read began.
    unknown: HashMap<String, Instant>,
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
    ) -> Result<Option<Arc<KnownKey>>, sqlx::Error> {
        if key_id.len() > MAX_KEY_ID_LEN {
            return Ok(None);
        }
        if let Some(cached) = self.fresh(key_id) {
            return Ok(cached);
        }
        // A key known to exist refreshes at once; only ids not known to exist queue for a
        // permit, so a flood of unknown ids never delays a real key's refresh.
        let known = self.lock().known.contains_key(key_id);
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
        let key = find_key(db, key_id)
            .await?
            .map(|row| Arc::new(KnownKey::from(row)));
        self.lock().store(key_id, key.clone(), read_at);
        Ok(key)
    }

    /// Database reads made so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Whether `key_id` names a key this instance has found (a key in use).
    pub fn is_known(&self, key_id: &str) -> bool {
        self.lock().known.contains_key(key_id)
    }

    /// The stored key `key_id` if this instance read it less than [`MAX_AGE`] ago: what
    /// [`Self::find`] would answer without waiting.
    pub fn fresh_key(&self, key_id: &str) -> Option<Arc<KnownKey>> {
        let entries = self.lock();
        let (key, read_at) = entries.known.get(key_id)?;
        (read_at.elapsed() < MAX_AGE).then(|| key.clone())
    }

    /// Keys that exist, in the cache now.
    pub fn known_keys(&self) -> usize {
        self.lock().known.len()
    }

    fn fresh(&self, key_id: &str) -> Option<Option<Arc<KnownKey>>> {
        let entries = self.lock();
        if let Some((key, read_at)) = entries.known.get(key_id)
            && read_at.elapsed() < MAX_AGE
        {
            return Some(Some(key.clone()));
        }
        match entries.unknown.get(key_id) {
            Some(read_at) if read_at.elapsed() < MAX_AGE => Some(None),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entries {
    /// Keeps what a read that began at `read_at` found; a read that began earlier than the one
    /// cached never replaces it.
    fn store(&mut self, key_id: &str, key: Option<Arc<KnownKey>>, read_at: Instant) {
        let newer = |cached: Option<Instant>| cached.is_none_or(|cached| cached <= read_at);
        match key {
            Some(key) => {
                if !newer(self.known.get(key_id).map(|(_, at)| *at)) {
                    return;
                }
                if self.known.len() >= KNOWN_CAPACITY && !self.known.contains_key(key_id) {
                    self.known.retain(|_, (_, at)| at.elapsed() < MAX_AGE);
                }
                self.unknown.remove(key_id);
                self.known.insert(key_id.to_owned(), (key, read_at));
            }
            None => {
                if !newer(self.unknown.get(key_id).copied())
                    || !newer(self.known.get(key_id).map(|(_, at)| *at))
                {
                    return;
                }
                if self.unknown.len() >= UNKNOWN_CAPACITY {
                    self.unknown.retain(|_, at| at.elapsed() < MAX_AGE);
                    if self.unknown.len() >= UNKNOWN_CAPACITY {
                        self.unknown.clear();
                    }
                }
                self.known.remove(key_id);
                self.unknown.insert(key_id.to_owned(), read_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Arc<KnownKey> {
        Arc::new(KnownKey::from(ApiKey {
            key_id: id.to_owned(),
            name: "real".into(),
            secret_sha256: Vec::new(),
            secret_encrypted: None,
            scopes: Vec::new(),
            channel_patterns: Vec::new(),
            created_at: chrono::Utc::now(),
            expires_at: None,
            revoked_at: None,
            rate_limit: None,
            rate_burst: None,
            app_id: crate::apps::DEFAULT_APP,
        }))
    }

    #[test]
    fn unknown_ids_past_the_capacity_never_evict_a_key_that_exists() {
        let mut entries = Entries::default();
        let now = Instant::now();
        entries.store("sk_id_real", Some(key("sk_id_real")), now);
        for n in 0..UNKNOWN_CAPACITY * 3 {
            entries.store(&format!("sk_id_{n:016}"), None, now);
            assert!(
                entries.known.contains_key("sk_id_real"),
                "evicted after {n}"
            );
        }
        assert!(entries.unknown.len() <= UNKNOWN_CAPACITY);
    }

    #[test]
    fn an_older_read_never_replaces_a_newer_one() {
        let mut entries = Entries::default();
        let earlier = Instant::now();
        let later = earlier + Duration::from_millis(5);
        entries.store("sk_id_a", Some(key("sk_id_a")), later);
        entries.store("sk_id_a", None, earlier);
        assert!(entries.known.contains_key("sk_id_a"));
        assert!(!entries.unknown.contains_key("sk_id_a"));
    }
}
