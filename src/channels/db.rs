//! SQL for channels.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::model::{Channel, ChannelSummary, CreateChannel, UpdateChannel, normalize_name};

/// One full row, as the compile-time checked queries return it.
struct ChannelRow {
    id: i64,
    name: String,
    description: Option<String>,
    repository_id: Option<i64>,
    ticket_slug: Option<String>,
    document: Option<String>,
    archived: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ChannelRow> for Channel {
    fn from(row: ChannelRow) -> Self {
        Channel {
            summary: ChannelSummary {
                id: row.id,
                name: row.name,
                description: row.description,
                repository_id: row.repository_id,
                ticket_slug: row.ticket_slug,
                archived: row.archived,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            document: row.document,
        }
    }
}

/// Filters and paging of `GET /v1/channels`.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub repository_id: Option<i64>,
    pub ticket_slug: Option<String>,
    pub include_archived: bool,
    pub limit: i64,
    pub offset: i64,
}

pub async fn insert(db: impl PgExecutor<'_>, new: &CreateChannel) -> Result<Channel, sqlx::Error> {
    let row = sqlx::query_as!(
        ChannelRow,
        r#"
        INSERT INTO channels (name, description, repository_id, ticket_slug, document)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING id, name, description, repository_id, ticket_slug, document, archived, created_at, updated_at
        "#,
        normalize_name(&new.name),
        new.description,
        new.repository_id,
        new.ticket_slug,
        new.document,
    )
    .fetch_one(db)
    .await?;
    Ok(row.into())
}

pub async fn find(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Channel>, sqlx::Error> {
    let row = sqlx::query_as!(
        ChannelRow,
        r#"
        SELECT id, name, description, repository_id, ticket_slug, document, archived, created_at, updated_at
        FROM channels WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Channel::from))
}

/// One page of channels, most recently active first.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &ListFilter,
) -> Result<Vec<ChannelSummary>, sqlx::Error> {
    sqlx::query_as!(
        ChannelSummary,
        r#"
        SELECT id, name, description, repository_id, ticket_slug, archived, created_at, updated_at
        FROM channels
        WHERE ($1::bigint IS NULL OR repository_id = $1)
          AND ($2::text IS NULL OR ticket_slug = $2)
          AND ($3 OR NOT archived)
        ORDER BY updated_at DESC, id DESC
        LIMIT $4 OFFSET $5
        "#,
        filter.repository_id,
        filter.ticket_slug,
        filter.include_archived,
        filter.limit,
        filter.offset,
    )
    .fetch_all(db)
    .await
}

/// How many channels match the filter, ignoring paging.
pub async fn count(db: impl PgExecutor<'_>, filter: &ListFilter) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT count(*) AS "total!"
        FROM channels
        WHERE ($1::bigint IS NULL OR repository_id = $1)
          AND ($2::text IS NULL OR ticket_slug = $2)
          AND ($3 OR NOT archived)
        "#,
        filter.repository_id,
        filter.ticket_slug,
        filter.include_archived,
    )
    .fetch_one(db)
    .await
}

/// Applies the fields present in `change` in one statement. `None` when the channel does not exist.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: i64,
    change: &UpdateChannel,
) -> Result<Option<Channel>, sqlx::Error> {
    let row = sqlx::query_as!(
        ChannelRow,
        r#"
        UPDATE channels SET
            name        = COALESCE($2, name),
            description = CASE WHEN $3 THEN $4 ELSE description END,
            document    = CASE WHEN $5 THEN $6 ELSE document END,
            archived    = COALESCE($7, archived),
            updated_at  = now()
        WHERE id = $1
        RETURNING id, name, description, repository_id, ticket_slug, document, archived, created_at, updated_at
        "#,
        id,
        change.name.as_deref().map(normalize_name),
        change.description.is_some(),
        change.description.clone().flatten(),
        change.document.is_some(),
        change.document.clone().flatten(),
        change.archived,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Channel::from))
}

/// Whether a channel exists and is archived: what a write to it needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Active,
    Archived,
}

pub async fn channel_state(
    db: impl PgExecutor<'_>,
    id: i64,
) -> Result<Option<ChannelState>, sqlx::Error> {
    let archived = sqlx::query_scalar!("SELECT archived FROM channels WHERE id = $1", id)
        .fetch_optional(db)
        .await?;
    Ok(archived.map(|archived| {
        if archived {
            ChannelState::Archived
        } else {
            ChannelState::Active
        }
    }))
}
