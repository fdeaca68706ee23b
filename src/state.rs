//! [`AppState`]: everything a handler may need, built once and cloned cheaply per request (one
//! reference count: every middleware and handler of a request extracts its own copy).
//!
//! A leaf module: it names each feature's state type but no handler and no router, so handlers
//! import it and the router imports handlers without either importing the other back.

use std::sync::Arc;

use sqlx::PgPool;

use crate::{
    apps::Directory,
    auth::{KeyCache, failures::AuthFailures, streams::Streams},
    config::Config,
    delivery::Delivery,
    metrics::Metrics,
    ratelimit::RateLimiter,
    realtime::Realtime,
    shutdown::Shutdown,
};

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub realtime: Realtime,
    /// Stored messages to live followers: cursors per followed channel, doorbell, reader.
    pub delivery: Delivery,
    pub rate_limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// Apps' quotas and persistent channels' owners, mostly from memory.
    pub apps: Arc<Directory>,
    /// Key lookups of the last second, shared by REST requests and WebSocket upgrades.
    pub keys: Arc<KeyCache>,
    /// Failed authentications per source.
    pub auth_failures: Arc<AuthFailures>,
    /// Long-lived requests (SSE, long polls, MCP waits) per key.
    pub streams: Arc<Streams>,
    /// Consumer groups whose messages a nack or a retry on this instance made claimable: waiting
    /// claims of the group look again.
    pub consumer_wakes: tokio::sync::broadcast::Sender<i64>,
    /// Plain posts' statements, and the posts waiting to be stored together.
    pub posts: Arc<crate::messages::batch::Posts>,
    /// Webhooks: the worker's wake-up and counters.
    pub webhooks: Arc<crate::webhooks::wake::Webhooks>,
    /// Set once the server is shutting down.
    pub shutdown: Shutdown,
}

impl AppState {
    pub fn new(db: PgPool, config: Config) -> Self {
        let realtime = Realtime::new(&config);
        // Half the pool stores posts at most; the other half is left to reads.
        let half_pool = db.options().get_max_connections() as usize / 2;
        let post_statements = config.post_statements.min(half_pool);
        let delivery = Delivery::new(db.clone(), Arc::new(realtime.engine.clone()), &config);
        Self(Arc::new(Shared {
            db,
            realtime,
            delivery,
            rate_limiter: Arc::new(RateLimiter::default()),
            posts: Arc::new(crate::messages::batch::Posts::new(
                post_statements,
                config.post_batch_wait,
            )),
            metrics: Arc::new(Metrics::default()),
            keys: Arc::new(KeyCache::default()),
            apps: Arc::new(Directory::default()),
            auth_failures: Arc::new(AuthFailures::new(config.auth_failures_per_minute)),
            streams: Arc::new(Streams::new(config.max_streams_per_key)),
            consumer_wakes: tokio::sync::broadcast::channel(256).0,
            webhooks: Arc::default(),
            shutdown: Shutdown::default(),
            config: Arc::new(config),
        }))
    }
}
