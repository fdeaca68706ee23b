//! Storage of API keys.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::{GeneratedKey, MasterKey, Scope, keys::generate_publishable};

/// A stored key, without its secret.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub key_id: String,
    pub name: String,
    pub secret_sha256: Vec<u8>,
    pub secret_encrypted: Option<Vec<u8>>,
    pub scopes: Vec<String>,
    pub channel_patterns: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Requests per second and burst of this key; `None` for the server's defaults.
    pub rate_limit: Option<i32>,
    pub rate_burst: Option<i32>,
    /// The app the key acts for.
    pub app_id: i64,
}

impl ApiKey {
    /// Neither revoked nor past its expiry.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        active(self.revoked_at, self.expires_at, now)
    }
}

fn active(
    revoked_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    revoked_at.is_none() && expires_at.is_none_or(|at| at > now)
}

/// What the operator asked for at `keys create`.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub channel_patterns: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<i32>,
    pub rate_burst: Option<i32>,
    pub app_id: i64,
}

/// Stores a new key and returns it with its secret, which is never available again.
pub async fn create_key(
    db: impl PgExecutor<'_>,
    new: &NewKey,
    master: &MasterKey,
) -> Result<(GeneratedKey, ApiKey), sqlx::Error> {
    let generated = GeneratedKey::generate();
    let encrypted = master.encrypt(&generated.key_id, &generated.secret);
    let scopes: Vec<String> = new.scopes.iter().map(|s| s.as_str().to_owned()).collect();
    let patterns = if new.channel_patterns.is_empty() {
        vec!["**".to_owned()]
    } else {
        new.channel_patterns.clone()
    };
    let stored = sqlx::query_as!(
        ApiKey,
        r#"
        INSERT INTO api_keys (key_id, name, secret_sha256, scopes, channel_patterns, expires_at, secret_encrypted,
                              rate_limit, rate_burst, app_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING key_id, name, secret_sha256, secret_encrypted, scopes, channel_patterns, created_at, expires_at, revoked_at,
               rate_limit, rate_burst, app_id
        "#,
        generated.key_id,
        new.name,
        &generated.digest()[..],
        &scopes,
        &patterns,
        new.expires_at,
        encrypted,
        new.rate_limit,
        new.rate_burst,
        new.app_id,
    )
    .fetch_one(db)
    .await?;
    Ok((generated, stored))
}

pub async fn find_key(
    db: impl PgExecutor<'_>,
    key_id: &str,
) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as!(
        ApiKey,
        r#"
        SELECT key_id, name, secret_sha256, secret_encrypted, scopes, channel_patterns, created_at, expires_at, revoked_at,
               rate_limit, rate_burst, app_id
        FROM api_keys WHERE key_id = $1
        "#,
        key_id,
    )
    .fetch_optional(db)
    .await
}

pub async fn list_keys(db: impl PgExecutor<'_>) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as!(
        ApiKey,
        r#"
        SELECT key_id, name, secret_sha256, secret_encrypted, scopes, channel_patterns, created_at, expires_at, revoked_at,
               rate_limit, rate_burst, app_id
        FROM api_keys ORDER BY created_at, key_id
        "#,
    )
    .fetch_all(db)
    .await
}

/// The secret keys of one app, oldest first.
pub async fn list_app_keys(
    db: impl PgExecutor<'_>,
    app_id: i64,
) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as!(
        ApiKey,
        r#"
        SELECT key_id, name, secret_sha256, secret_encrypted, scopes, channel_patterns, created_at, expires_at, revoked_at,
               rate_limit, rate_burst, app_id
        FROM api_keys WHERE app_id = $1 ORDER BY created_at, key_id
        "#,
        app_id,
    )
    .fetch_all(db)
    .await
}

/// Revokes a key of app `app_id`; `None` when the app has no such key (another app's key
/// included). Revoking twice keeps the first time.
pub async fn revoke_app_key(
    db: impl PgExecutor<'_>,
    app_id: i64,
    key_id: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
        WHERE key_id = $1 AND app_id = $2
        RETURNING revoked_at AS "revoked_at!"
        "#,
        key_id,
        app_id,
    )
    .fetch_optional(db)
    .await
}

/// Marks the key revoked. Returns `false` when no such key exists; revoking twice keeps the first time.
pub async fn revoke_key(db: impl PgExecutor<'_>, key_id: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE key_id = $1 RETURNING key_id",
        key_id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// A browser-safe WebSocket credential (`pk_live_…`), bound to origins and channel patterns.
#[derive(Debug, Clone)]
pub struct PublishableKey {
    pub key: String,
    pub name: String,
    pub actions: Vec<String>,
    pub channel_patterns: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub app_id: i64,
}

impl PublishableKey {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        active(self.revoked_at, self.expires_at, now)
    }

    /// Whether a browser at `origin` may use this key (`*` allows any origin).
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.iter().any(|allowed| {
            allowed == "*"
                || origin.is_some_and(|o| {
                    o.trim_end_matches('/')
                        .eq_ignore_ascii_case(allowed.trim_end_matches('/'))
                })
        })
    }
}

/// What the operator asked for at `keys create --publishable`.
#[derive(Debug, Clone)]
pub struct NewPublishableKey {
    pub name: String,
    pub actions: Vec<Scope>,
    pub channel_patterns: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub app_id: i64,
}

pub async fn create_publishable_key(
    db: impl PgExecutor<'_>,
    new: &NewPublishableKey,
) -> Result<PublishableKey, sqlx::Error> {
    let actions: Vec<String> = new.actions.iter().map(|s| s.as_str().to_owned()).collect();
    let patterns = if new.channel_patterns.is_empty() {
        vec!["**".to_owned()]
    } else {
        new.channel_patterns.clone()
    };
    sqlx::query_as!(
        PublishableKey,
        r#"
        INSERT INTO publishable_keys (key, name, actions, channel_patterns, allowed_origins, expires_at, app_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING key, name, actions, channel_patterns, allowed_origins, created_at, expires_at, revoked_at, app_id
        "#,
        generate_publishable(),
        new.name,
        &actions,
        &patterns,
        &new.allowed_origins,
        new.expires_at,
        new.app_id,
    )
    .fetch_one(db)
    .await
}

pub async fn find_publishable_key(
    db: impl PgExecutor<'_>,
    key: &str,
) -> Result<Option<PublishableKey>, sqlx::Error> {
    sqlx::query_as!(
        PublishableKey,
        r#"
        SELECT key, name, actions, channel_patterns, allowed_origins, created_at, expires_at, revoked_at, app_id
        FROM publishable_keys WHERE key = $1
        "#,
        key,
    )
    .fetch_optional(db)
    .await
}

pub async fn list_publishable_keys(
    db: impl PgExecutor<'_>,
) -> Result<Vec<PublishableKey>, sqlx::Error> {
    sqlx::query_as!(
        PublishableKey,
        r#"
        SELECT key, name, actions, channel_patterns, allowed_origins, created_at, expires_at, revoked_at, app_id
        FROM publishable_keys ORDER BY created_at, key
        "#,
    )
    .fetch_all(db)
    .await
}

pub async fn revoke_publishable_key(
    db: impl PgExecutor<'_>,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        "UPDATE publishable_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE key = $1 RETURNING key",
        key,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// Of `key_ids`, those revoked or expired now: connections made with them must close.
pub async fn inactive_among(
    db: impl PgExecutor<'_>,
    key_ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT key_id AS "id!" FROM api_keys
        WHERE key_id = ANY($1) AND (revoked_at IS NOT NULL OR expires_at <= now())
        UNION ALL
        SELECT key AS "id!" FROM publishable_keys
        WHERE key = ANY($1) AND (revoked_at IS NOT NULL OR expires_at <= now())
        "#,
        key_ids,
    )
    .fetch_all(db)
    .await
}
