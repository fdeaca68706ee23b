//! Storage of API keys.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::{GeneratedKey, Scope};

/// A stored key, without its secret.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub key_id: String,
    pub name: String,
    pub secret_sha256: Vec<u8>,
    pub scopes: Vec<String>,
    pub channel_patterns: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Neither revoked nor past its expiry.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// What the operator asked for at `keys create`.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub channel_patterns: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Stores a new key and returns it with its secret, which is never available again.
pub async fn create_key(
    db: impl PgExecutor<'_>,
    new: &NewKey,
) -> Result<(GeneratedKey, ApiKey), sqlx::Error> {
    let generated = GeneratedKey::generate();
    let scopes: Vec<String> = new.scopes.iter().map(|s| s.as_str().to_owned()).collect();
    let patterns = if new.channel_patterns.is_empty() {
        vec!["**".to_owned()]
    } else {
        new.channel_patterns.clone()
    };
    let stored = sqlx::query_as!(
        ApiKey,
        r#"
        INSERT INTO api_keys (key_id, name, secret_sha256, scopes, channel_patterns, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING key_id, name, secret_sha256, scopes, channel_patterns, created_at, expires_at, revoked_at
        "#,
        generated.key_id,
        new.name,
        &generated.digest()[..],
        &scopes,
        &patterns,
        new.expires_at,
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
        SELECT key_id, name, secret_sha256, scopes, channel_patterns, created_at, expires_at, revoked_at
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
        SELECT key_id, name, secret_sha256, scopes, channel_patterns, created_at, expires_at, revoked_at
        FROM api_keys ORDER BY created_at, key_id
        "#,
    )
    .fetch_all(db)
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
