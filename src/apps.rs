//! Apps: the tenants of one server. Every key and every persistent channel belongs to one app,
//! and nothing of one app is visible to another (docs/SPEC.md §3b). The migration creates
//! `default` (id [`DEFAULT_APP`]) and gives it everything that predates apps.
//!
//! Realtime names and peer ids are partitioned by [`scoped`]: the engine knows a channel or a
//! peer by its app and its name together, and frames show the name alone ([`unscoped`]).

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// The app that owns everything created before apps existed and every key made without `--app`.
pub const DEFAULT_APP: i64 = 1;

/// Separates an app id from a name inside the engine. A control character: no realtime name or
/// peer id may contain one, so a scoped name never collides with a plain one.
const SCOPE_SEPARATOR: char = '\u{1f}';

/// The engine's name for `name` of app `app`. The default app's names are their own, so a
/// single-tenant deployment (and every instance of a rolling deploy) sees the names it always saw.
pub fn scoped(app: i64, name: &str) -> Cow<'_, str> {
    if app == DEFAULT_APP {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("{app}{SCOPE_SEPARATOR}{name}"))
    }
}

/// The app and the name a client knows, from an engine name.
pub fn split_scoped(name: &str) -> (i64, &str) {
    match name.split_once(SCOPE_SEPARATOR) {
        Some((app, name)) => (app.parse().unwrap_or(DEFAULT_APP), name),
        None => (DEFAULT_APP, name),
    }
}

/// The name a client knows: [`scoped`] undone.
pub fn unscoped(name: &str) -> &str {
    name.split_once(SCOPE_SEPARATOR).map_or(name, |(_, n)| n)
}

/// An app as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub id: i64,
    pub name: String,
    /// Active (non-archived) persistent channels at most; `None` is unlimited.
    pub max_channels: Option<i32>,
    /// WebSocket connections at most; `None` is unlimited.
    pub max_connections: Option<i32>,
    /// Requests per second shared by all the app's keys; `None` is unlimited.
    pub rate_limit: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// Quotas as `apps create` and `apps update` set them: `None` leaves a field as it is,
/// `Some(None)` makes it unlimited.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    pub max_channels: Option<Option<i32>>,
    pub max_connections: Option<Option<i32>>,
    pub rate_limit: Option<Option<i32>>,
}

/// 1-64 characters of `a-z 0-9 _ -`.
pub fn is_app_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub async fn create_app(
    db: impl PgExecutor<'_>,
    name: &str,
    quotas: &Quotas,
) -> Result<App, sqlx::Error> {
    sqlx::query_as!(
        App,
        r#"
        INSERT INTO apps (name, max_channels, max_connections, rate_limit)
        VALUES ($1, $2, $3, $4)
        RETURNING id, name, max_channels, max_connections, rate_limit, created_at
        "#,
        name,
        quotas.max_channels.flatten(),
        quotas.max_connections.flatten(),
        quotas.rate_limit.flatten(),
    )
    .fetch_one(db)
    .await
}

/// Changes the quotas given; `None` when no app has this name.
pub async fn update_app(
    db: impl PgExecutor<'_>,
    name: &str,
    quotas: &Quotas,
) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as!(
        App,
        r#"
        UPDATE apps SET
            max_channels = CASE WHEN $2 THEN $3 ELSE max_channels END,
            max_connections = CASE WHEN $4 THEN $5 ELSE max_connections END,
            rate_limit = CASE WHEN $6 THEN $7 ELSE rate_limit END
        WHERE name = $1
        RETURNING id, name, max_channels, max_connections, rate_limit, created_at
        "#,
        name,
        quotas.max_channels.is_some(),
        quotas.max_channels.flatten(),
        quotas.max_connections.is_some(),
        quotas.max_connections.flatten(),
        quotas.rate_limit.is_some(),
        quotas.rate_limit.flatten(),
    )
    .fetch_optional(db)
    .await
}

pub async fn find_app_by_name(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as!(
        App,
        "SELECT id, name, max_channels, max_connections, rate_limit, created_at FROM apps WHERE name = $1",
        name,
    )
    .fetch_optional(db)
    .await
}

pub async fn find_app(db: impl PgExecutor<'_>, id: i64) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as!(
        App,
        "SELECT id, name, max_channels, max_connections, rate_limit, created_at FROM apps WHERE id = $1",
        id,
    )
    .fetch_optional(db)
    .await
}

pub async fn list_apps(db: impl PgExecutor<'_>) -> Result<Vec<App>, sqlx::Error> {
    sqlx::query_as!(
        App,
        "SELECT id, name, max_channels, max_connections, rate_limit, created_at FROM apps ORDER BY id",
    )
    .fetch_all(db)
    .await
}

/// How long an app's quotas are read from memory before PostgreSQL is asked again: `apps update`
/// reaches every instance within this.
const APP_TTL: Duration = Duration::from_secs(1);

/// Persistent channels whose owner is remembered; beyond, the memory starts over.
const MAX_OWNERS: usize = 100_000;

/// What every request asks about apps, mostly answered from memory: an app's quotas (read again
/// each second) and which app owns a persistent channel (which never changes, as channel ids are
/// never reused).
#[derive(Default)]
pub struct Directory {
    apps: RwLock<HashMap<i64, (Instant, Arc<App>)>>,
    owners: RwLock<HashMap<i64, i64>>,
}

impl Directory {
    /// App `id` as stored at most [`APP_TTL`] ago. Keys reference their app, so it exists.
    pub async fn app(&self, db: &PgPool, id: i64) -> Result<Arc<App>, sqlx::Error> {
        if let Some((read_at, app)) = self
            .apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            && read_at.elapsed() < APP_TTL
        {
            return Ok(app.clone());
        }
        let app = Arc::new(find_app(db, id).await?.ok_or(sqlx::Error::RowNotFound)?);
        self.apps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (Instant::now(), app.clone()));
        Ok(app)
    }

    /// The app that owns persistent channel `channel`; `None` when there is no such channel.
    pub async fn owner(&self, db: &PgPool, channel: i64) -> Result<Option<i64>, sqlx::Error> {
        if let Some(app) = self
            .owners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&channel)
        {
            return Ok(Some(*app));
        }
        let Some(app) = sqlx::query_scalar!("SELECT app_id FROM channels WHERE id = $1", channel)
            .fetch_optional(db)
            .await?
        else {
            return Ok(None);
        };
        self.remember(channel, app);
        Ok(Some(app))
    }

    /// Records the owner of a channel just created.
    pub fn remember(&self, channel: i64, app: i64) {
        let mut owners = self.owners.write().unwrap_or_else(PoisonError::into_inner);
        if owners.len() >= MAX_OWNERS {
            owners.clear();
        }
        owners.insert(channel, app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoping_keeps_the_default_app_plain_and_round_trips() {
        assert_eq!(scoped(DEFAULT_APP, "room-1"), "room-1");
        let other = scoped(7, "room-1");
        assert_ne!(other, "room-1");
        assert_ne!(other, scoped(8, "room-1"));
        assert_eq!(unscoped(&other), "room-1");
        assert_eq!(unscoped("room-1"), "room-1");
    }

    #[test]
    fn app_names() {
        assert!(is_app_name("team-b_2"));
        assert!(!is_app_name(""));
        assert!(!is_app_name("Team"));
        assert!(!is_app_name(&"a".repeat(65)));
    }
}
