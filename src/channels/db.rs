//! SQL for channels.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::model::{
    Channel, ChannelSummary, CreateChannel, LastMessage, ReadState, UpdateChannel, normalize_name,
};
use crate::auth::patterns::DigitNames;

/// One full row, as the compile-time checked queries return it.
#[derive(sqlx::FromRow)]
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
    message_count: i64,
    last_message_id: Option<i64>,
    last_message_at: Option<DateTime<Utc>>,
    last_sender_type: Option<String>,
    last_pod_key: Option<String>,
    last_content: Option<String>,
}

impl From<ChannelRow> for Channel {
    fn from(row: ChannelRow) -> Self {
        let last_message = match (
            row.last_message_id,
            row.last_message_at,
            row.last_sender_type,
            row.last_content,
        ) {
            (Some(id), Some(created_at), Some(sender_type), Some(content)) => Some(LastMessage {
                id,
                created_at,
                sender_type,
                pod_key: row.last_pod_key,
                content,
            }),
            _ => None,
        };
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
                message_count: row.message_count,
                last_message,
                unread_count: None,
                unread_mentions: None,
            },
            document: row.document,
        }
    }
}

/// The column a list is ordered by; the id breaks ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    UpdatedAt,
    CreatedAt,
    Name,
}

impl Sort {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "updated_at" => Some(Self::UpdatedAt),
            "created_at" => Some(Self::CreatedAt),
            "name" => Some(Self::Name),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpdatedAt => "updated_at",
            Self::CreatedAt => "created_at",
            Self::Name => "name",
        }
    }
}

/// Where a keyset page starts: after the row with this sort key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Time(DateTime<Utc>, i64),
    Name(String, i64),
}

/// Filters, order and paging of `GET /v1/channels`.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub repository_id: Option<i64>,
    pub ticket_slug: Option<String>,
    /// `Some(true)` only archived, `Some(false)` only active, `None` both.
    pub archived: Option<bool>,
    /// Names containing this text, case-insensitively.
    pub name_contains: Option<String>,
    pub sort: Sort,
    pub descending: bool,
    pub after: Option<After>,
    pub limit: i64,
    pub offset: i64,
    /// Adds each channel's unread counts for this reader.
    pub reader: Option<String>,
    /// The caller's app: no other app's channel is listed or counted.
    pub app_id: i64,
    /// Only the channels the caller's key patterns cover (by their all-digit names).
    pub covered: DigitNames,
}

const COLUMNS: &str = "id, name, description, repository_id, ticket_slug, archived, created_at, \
    updated_at, message_count, last_message_id, last_message_at, last_sender_type, last_pod_key, \
    last_content";

/// `text` as an `ILIKE` pattern matching names that contain it: `\`, `%` and `_` stand for
/// themselves.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn pattern_of(filter: &ListFilter) -> Option<String> {
    filter.name_contains.as_deref().map(contains_pattern)
}

/// A listed row and the number of rows matching the filters.
#[derive(sqlx::FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    channel: ChannelRow,
    total: i64,
}

/// Whether the list's only filters are the app and the state (active, archived or both): then
/// `total` is the sum of the app's maintained counts (`channel_counts`), read in constant time,
/// rather than a count of the matching channels, whose cost grows with their number.
fn counted(filter: &ListFilter) -> bool {
    filter.repository_id.is_none()
        && filter.ticket_slug.is_none()
        && filter.name_contains.is_none()
        && matches!(filter.covered, DigitNames::All)
}

/// The expression of `total`: the app is parameter `$app`, the state `$3`.
fn total_of(filter: &ListFilter, filters: &str, app: usize) -> String {
    if counted(filter) {
        format!(
            "(SELECT COALESCE(sum(count), 0)::bigint FROM channel_counts \
              WHERE app_id = ${app} AND ($3::boolean IS NULL OR archived = $3))"
        )
    } else {
        format!("(SELECT count(*) FROM channels WHERE {filters})")
    }
}

/// How many channels match the filters, ignoring paging.
async fn count(db: &PgPool, filter: &ListFilter) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT {}", total_of(filter, &conditions(filter, 5), 5));
    let query = sqlx::query_as::<_, (i64,)>(&sql)
        .bind(filter.repository_id)
        .bind(filter.ticket_slug.as_deref())
        .bind(filter.archived)
        .bind(pattern_of(filter));
    let (total,) = bind_scope(query, filter).fetch_one(db).await?;
    Ok(total)
}

/// The list's conditions; the app is parameter `$first`, and the key patterns' ids and regular
/// expression, when they restrict the list, are `$first + 1` and (with a wildcard) `$first + 2`.
fn conditions(filter: &ListFilter, app: usize) -> String {
    let mut conditions = format!(
        "app_id = ${app} \
        AND ($1::bigint IS NULL OR repository_id = $1) \
        AND ($2::text IS NULL OR ticket_slug = $2) \
        AND ($3::boolean IS NULL OR archived = $3) \
        AND ($4::text IS NULL OR name ILIKE $4)"
    );
    let first = app + 1;
    // Exact ids and ranges of ids (a prefix such as `4711*`) ride the primary key; any other
    // wildcard over digits reads `id::text`. The ranges are numbers computed from the patterns,
    // written into the statement so that the planner sees them.
    if let DigitNames::Some { ranges, regex, .. } = &filter.covered {
        conditions.push_str(&format!(" AND (id = ANY(${first}::bigint[])"));
        for (low, high) in ranges {
            conditions.push_str(&format!(" OR id BETWEEN {low} AND {high}"));
        }
        if regex.is_some() {
            let regex = first + 1;
            conditions.push_str(&format!(" OR id::text ~ ${regex}"));
        }
        conditions.push(')');
    }
    conditions
}

/// Binds what [`conditions`] asks for the app and the key patterns, in order.
fn bind_scope<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: &'q ListFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let query = query.bind(filter.app_id);
    match &filter.covered {
        DigitNames::All => query,
        DigitNames::Some {
            ids, regex: None, ..
        } => query.bind(ids.as_slice()),
        DigitNames::Some {
            ids,
            regex: Some(regex),
            ..
        } => query.bind(ids.as_slice()).bind(regex.as_str()),
    }
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    app_id: i64,
    new: &CreateChannel,
) -> Result<Channel, sqlx::Error> {
    let row = sqlx::query_as!(
        ChannelRow,
        r#"
        INSERT INTO channels (name, description, repository_id, ticket_slug, document, app_id)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING id, name, description, repository_id, ticket_slug, document, archived, created_at,
                  updated_at, message_count, last_message_id, last_message_at, last_sender_type,
                  last_pod_key, last_content
        "#,
        normalize_name(&new.name),
        new.description,
        new.repository_id,
        new.ticket_slug,
        new.document,
        app_id,
    )
    .fetch_one(db)
    .await?;
    Ok(row.into())
}

/// Takes the app's channel-creation lock until the transaction ends, then reads its
/// `max_channels` and counts its active channels (`except` one).
pub async fn lock_and_count_active(
    db: &mut sqlx::PgConnection,
    app_id: i64,
    except: Option<i64>,
) -> Result<(Option<i32>, i64), sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('channeld/channels-of-app', $1))",
        app_id
    )
    .execute(&mut *db)
    .await?;
    let row = sqlx::query!(
        r#"
        SELECT max_channels,
               (SELECT count(*) FROM channels
                WHERE app_id = $1 AND NOT archived AND id IS DISTINCT FROM $2) AS "active!"
        FROM apps WHERE id = $1
        "#,
        app_id,
        except,
    )
    .fetch_one(&mut *db)
    .await?;
    Ok((row.max_channels, row.active))
}

pub async fn find(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Channel>, sqlx::Error> {
    let row = sqlx::query_as!(
        ChannelRow,
        r#"
        SELECT id, name, description, repository_id, ticket_slug, document, archived, created_at,
               updated_at, message_count, last_message_id, last_message_at, last_sender_type,
               last_pod_key, last_content
        FROM channels WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Channel::from))
}

/// One page of channels and how many match the filters in all (`total` ignores paging), read in
/// one statement.
///
/// The statement is put together from fixed fragments, since an `ORDER BY` column and direction
/// cannot be bind parameters: three sort columns, two directions, with or without a keyset start.
/// Every value the client sent is a bind parameter. Each form is served by an index:
/// `channels_updated_at_idx`, `channels_created_at_idx`, `channels_name_idx` (read backwards for
/// the other direction), and `q` by `channels_name_trgm_idx`.
pub async fn list(
    db: &PgPool,
    filter: &ListFilter,
) -> Result<(Vec<ChannelSummary>, i64), sqlx::Error> {
    let column = filter.sort.as_str();
    let direction = if filter.descending { "DESC" } else { "ASC" };
    // $5 and $6 page; a keyset takes $7 and $8; the app and the key patterns come next.
    let app = if filter.after.is_some() { 9 } else { 7 };
    let filters = conditions(filter, app);
    let total = total_of(filter, &filters, app);
    let keyset = match (&filter.after, filter.descending) {
        (None, _) => String::new(),
        (Some(After::Time(..)), true) => format!(" AND ({column}, id) < ($7::timestamptz, $8)"),
        (Some(After::Time(..)), false) => format!(" AND ({column}, id) > ($7::timestamptz, $8)"),
        (Some(After::Name(..)), true) => format!(" AND ({column}, id) < ($7::text, $8)"),
        (Some(After::Name(..)), false) => format!(" AND ({column}, id) > ($7::text, $8)"),
    };
    let sql = format!(
        "SELECT {COLUMNS}, NULL::text AS document, \
                {total} AS total \
         FROM channels WHERE {filters}{keyset} \
         ORDER BY {column} {direction}, id {direction} LIMIT $5 OFFSET $6"
    );
    let pattern = pattern_of(filter);
    let mut query = sqlx::query_as::<_, ListedRow>(&sql)
        .bind(filter.repository_id)
        .bind(filter.ticket_slug.as_deref())
        .bind(filter.archived)
        .bind(pattern)
        .bind(filter.limit)
        .bind(filter.offset);
    query = match &filter.after {
        None => query,
        Some(After::Time(at, id)) => query.bind(*at).bind(*id),
        Some(After::Name(name, id)) => query.bind(name.clone()).bind(*id),
    };
    let rows = bind_scope(query, filter).fetch_all(db).await?;
    let total = match rows.first() {
        Some(row) => row.total,
        // An empty first page means nothing matches.
        None if filter.after.is_none() && filter.offset == 0 => 0,
        // A page past the end has no row to carry the total.
        None => count(db, filter).await?,
    };
    Ok((
        rows.into_iter()
            .map(|row| Channel::from(row.channel).summary)
            .collect(),
        total,
    ))
}
/// Whether channel `id` is archived, its row locked until the transaction ends; `None` when there
/// is no such channel.
pub async fn lock_archived(db: impl PgExecutor<'_>, id: i64) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!("SELECT archived FROM channels WHERE id = $1 FOR UPDATE", id)
        .fetch_optional(db)
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
        RETURNING id, name, description, repository_id, ticket_slug, document, archived, created_at,
                  updated_at, message_count, last_message_id, last_message_at, last_sender_type,
                  last_pod_key, last_content
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

/// Records that `reader` has read persistent channel `channel_id` up to `last_read_id` (at most
/// its newest message), never moving backwards. `None` when there is no such channel.
pub async fn mark_read(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    reader: &str,
    last_read_id: i64,
) -> Result<Option<ReadState>, sqlx::Error> {
    sqlx::query_as!(
        ReadState,
        r#"
        INSERT INTO read_states (channel_id, reader, last_read_id)
        SELECT id, $2, LEAST($3, COALESCE(last_message_id, 0)) FROM channels WHERE id = $1
        ON CONFLICT (channel_id, reader) DO UPDATE SET
            last_read_id = GREATEST(read_states.last_read_id, EXCLUDED.last_read_id),
            updated_at   = now()
        RETURNING reader, last_read_id
        "#,
        channel_id,
        reader,
        last_read_id,
    )
    .fetch_optional(db)
    .await
}

/// Adds `unread_count` and `unread_mentions` for `reader` to every channel given, in one
/// statement: each count is an index range after the reader's `last_read_id` (messages by
/// `(channel_id, id)`, mentions by `(channel_id, name, message_id)`), and a reader with no state
/// has every message unread, which `message_count` already says.
pub async fn add_unread(
    db: impl PgExecutor<'_>,
    channels: &mut [ChannelSummary],
    reader: &str,
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = channels.iter().map(|c| c.id).collect();
    let rows = sqlx::query!(
        r#"
        SELECT c.id AS "id!",
               CASE WHEN r.last_read_id IS NULL THEN c.message_count
                    ELSE (SELECT count(*) FROM messages m
                          WHERE m.channel_id = c.id AND m.id > r.last_read_id)
               END AS "unread_count!",
               (SELECT count(*) FROM message_mentions mm
                WHERE mm.channel_id = c.id AND mm.name = $2
                  AND mm.message_id > COALESCE(r.last_read_id, 0)) AS "unread_mentions!"
        FROM channels c
        LEFT JOIN read_states r ON r.channel_id = c.id AND r.reader = $2
        WHERE c.id = ANY($1)
        "#,
        &ids,
        reader,
    )
    .fetch_all(db)
    .await?;
    for row in rows {
        if let Some(channel) = channels.iter_mut().find(|c| c.id == row.id) {
            channel.unread_count = Some(row.unread_count);
            channel.unread_mentions = Some(row.unread_mentions);
        }
    }
    Ok(())
}
