//! SQL for messages.
//!
//! Ordering guarantee: within one channel, ids become visible in increasing order, so a reader
//! that pages with `after=<last id seen>` can never skip a message that commits later with a
//! smaller id. Every statement that stores a message writes the channel's row, and holds that row
//! lock until commit; the id it keeps is never smaller than one already committed on the channel:
//! - `insert_plain` draws the id with `nextval` in the channel's `UPDATE`. PostgreSQL evaluates it
//!   while reading the row and, if another transaction changed the row meanwhile, waits for the
//!   lock and evaluates it again, so the id kept was drawn after every earlier writer committed.
//! - `insert_once` locks the row (`FOR UPDATE`) before its insert draws the id.
//! - `insert_many` locks the rows of all its channels (`FOR UPDATE`, in id order) before it draws
//!   any id, so each id is drawn after every earlier writer of its channel committed.

use serde_json::Value;
use sqlx::PgExecutor;

use super::model::Message;

/// What a new message carries besides its text and sender.
#[derive(Debug, Clone, Copy)]
pub struct Addressing<'a> {
    pub mentions: &'a [String],
    pub metadata: Option<&'a Value>,
    /// The message it answers, and that message's thread (stored as `thread_id`; a message
    /// that answers nothing stores NULL there and reads as its own thread).
    pub reply: Option<(i64, i64)>,
}

/// Stores a message on an active channel and, in the same statement, brings the channel up to
/// date (`updated_at`, `message_count` and the last message) and records its mentions. `None`
/// when nothing was stored: the channel is missing or archived, or `idempotency_key` was already
/// used on this channel (then the channel is left as it was).
pub async fn insert(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    content: &str,
    sender_type: &str,
    pod_key: Option<&str>,
    addressing: Addressing<'_>,
    idempotency_key: Option<&str>,
) -> Result<Option<Message>, sqlx::Error> {
    match idempotency_key {
        None => insert_plain(db, channel_id, content, sender_type, pod_key, addressing).await,
        Some(key) => {
            insert_once(
                db,
                channel_id,
                content,
                sender_type,
                pod_key,
                addressing,
                key,
            )
            .await
        }
    }
}

/// The thread of message `id` of this channel, if the channel has such a message.
pub async fn thread_of(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT COALESCE(thread_id, id) AS "thread!" FROM messages WHERE id = $1 AND channel_id = $2"#,
        id,
        channel_id,
    )
    .fetch_optional(db)
    .await
}

/// Without an idempotency key nothing can conflict: one `UPDATE` of the channel draws the id
/// (`nextval` in its `SET`, drawn again if the row changed under it; see the module's note) and
/// records the message, and the `INSERT` stores it with that id. One new
/// version of the channel row, as a plain `updated_at` bump costs.
async fn insert_plain(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    content: &str,
    sender_type: &str,
    pod_key: Option<&str>,
    addressing: Addressing<'_>,
) -> Result<Option<Message>, sqlx::Error> {
    let (reply_to, thread) = addressing.reply.unzip();
    sqlx::query_as!(
        Message,
        r#"
        WITH channel AS (
            UPDATE channels SET
                updated_at       = now(),
                message_count    = message_count + 1,
                last_message_id  = nextval('messages_id_seq'),
                last_message_at  = now(),
                last_sender_type = $3,
                last_pod_key     = $4,
                last_content     = left($2, 200)
            WHERE id = $1 AND NOT archived
            RETURNING id, last_message_id
        ), stored AS (
            INSERT INTO messages (id, channel_id, content, sender_type, pod_key, created_at,
                                  mentions, metadata, reply_to, thread_id)
            OVERRIDING SYSTEM VALUE
            SELECT last_message_id, id, $2, $3, $4, now(), $5, $6, $7, $8 FROM channel
            RETURNING id, channel_id, content, sender_type, pod_key, created_at,
                      mentions, metadata, reply_to, COALESCE(thread_id, id) AS thread_id
        ), mentioned AS (
            INSERT INTO message_mentions (channel_id, name, message_id)
            SELECT channel_id, unnest(mentions), id FROM stored
        )
        SELECT id AS "id!", channel_id AS "channel_id!", content AS "content!",
               sender_type AS "sender_type!", pod_key, created_at AS "created_at!",
               mentions AS "mentions!", metadata, reply_to, thread_id AS "thread_id!"
        FROM stored
        "#,
        channel_id,
        content,
        sender_type,
        pod_key,
        addressing.mentions,
        addressing.metadata,
        reply_to,
        thread,
    )
    .fetch_optional(db)
    .await
}

/// With an idempotency key the insert may find the key taken and store nothing, so the channel
/// is updated from what the insert returned: the row is locked first (`FOR UPDATE`), the message
/// inserted (its id drawn under the lock), and the row updated only if a message was stored.
#[allow(clippy::too_many_arguments)]
async fn insert_once(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    content: &str,
    sender_type: &str,
    pod_key: Option<&str>,
    addressing: Addressing<'_>,
    idempotency_key: &str,
) -> Result<Option<Message>, sqlx::Error> {
    let (reply_to, thread) = addressing.reply.unzip();
    sqlx::query_as!(
        Message,
        r#"
        WITH channel AS (
            SELECT id FROM channels WHERE id = $1 AND NOT archived FOR UPDATE
        ), stored AS (
            INSERT INTO messages (channel_id, content, sender_type, pod_key, idempotency_key,
                                  mentions, metadata, reply_to, thread_id)
            SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM channel
            ON CONFLICT (channel_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id, channel_id, content, sender_type, pod_key, created_at,
                      mentions, metadata, reply_to, COALESCE(thread_id, id) AS thread_id
        ), mentioned AS (
            INSERT INTO message_mentions (channel_id, name, message_id)
            SELECT channel_id, unnest(mentions), id FROM stored
        ), counted AS (
            UPDATE channels SET
                updated_at       = now(),
                message_count    = message_count + 1,
                last_message_id  = stored.id,
                last_message_at  = stored.created_at,
                last_sender_type = stored.sender_type,
                last_pod_key     = stored.pod_key,
                last_content     = left(stored.content, 200)
            FROM stored WHERE channels.id = stored.channel_id
        )
        SELECT id AS "id!", channel_id AS "channel_id!", content AS "content!",
               sender_type AS "sender_type!", pod_key, created_at AS "created_at!",
               mentions AS "mentions!", metadata, reply_to, thread_id AS "thread_id!"
        FROM stored
        "#,
        channel_id,
        content,
        sender_type,
        pod_key,
        idempotency_key,
        addressing.mentions,
        addressing.metadata,
        reply_to,
        thread,
    )
    .fetch_optional(db)
    .await
}

/// A message to store, as validated.
#[derive(Debug)]
pub struct Post {
    pub channel_id: i64,
    pub content: String,
    pub sender_type: &'static str,
    pub pod_key: Option<String>,
    pub mentions: Vec<String>,
    pub metadata: Option<Value>,
    /// The message it answers and that message's thread.
    pub reply: Option<(i64, i64)>,
}

impl Post {
    /// Stores it in a statement of its own (with an idempotency key: unless one was used).
    pub async fn insert(
        &self,
        db: &sqlx::PgPool,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Message>, sqlx::Error> {
        let addressing = Addressing {
            mentions: &self.mentions,
            metadata: self.metadata.as_ref(),
            reply: self.reply,
        };
        insert(
            db,
            self.channel_id,
            &self.content,
            self.sender_type,
            self.pod_key.as_deref(),
            addressing,
            idempotency_key,
        )
        .await
    }
}

/// Stores several posts (to any channels) in one statement, as [`insert_plain`] stores one, and
/// returns each post's message in the order given (`None`: its channel is missing or archived).
/// The channels' rows are locked first, in id order (so that two such statements cannot
/// deadlock), and the ids are drawn under those locks; each channel's row is updated once, for
/// all of its posts. Posts stored together share `created_at`, the time their statement began.
///
/// The arrays are read through sub-selects so that PostgreSQL plans the statement once per
/// connection: given the arrays themselves, it plans anew for their lengths on every call (its
/// "custom plan", here 0.5 ms of planning, more than the statement's own work), and never settles
/// on the cached plan.
pub async fn insert_many(
    db: impl PgExecutor<'_>,
    posts: &[&Post],
) -> Result<Vec<Option<Message>>, sqlx::Error> {
    let channel_ids: Vec<i64> = posts.iter().map(|post| post.channel_id).collect();
    let contents: Vec<&str> = posts.iter().map(|post| post.content.as_str()).collect();
    let sender_types: Vec<&str> = posts.iter().map(|post| post.sender_type).collect();
    let pod_keys: Vec<Option<&str>> = posts.iter().map(|post| post.pod_key.as_deref()).collect();
    let mentions: Vec<Value> = posts
        .iter()
        .map(|post| Value::from(post.mentions.clone()))
        .collect();
    let metadata: Vec<Option<Value>> = posts.iter().map(|post| post.metadata.clone()).collect();
    let replies: Vec<Option<i64>> = posts.iter().map(|post| post.reply.map(|r| r.0)).collect();
    let threads: Vec<Option<i64>> = posts.iter().map(|post| post.reply.map(|r| r.1)).collect();
    let rows = sqlx::query!(
        r#"
        WITH posted AS MATERIALIZED (
            SELECT * FROM unnest((SELECT $1::int8[]), (SELECT $2::text[]), (SELECT $3::text[]),
                                 (SELECT $4::text[]), (SELECT $5::jsonb[]), (SELECT $6::jsonb[]),
                                 (SELECT $7::int8[]), (SELECT $8::int8[]))
                WITH ORDINALITY AS p(channel_id, content, sender_type, pod_key, mentions,
                                     metadata, reply_to, thread_id, n)
        ), locked AS MATERIALIZED (
            SELECT id FROM channels
            WHERE id IN (SELECT channel_id FROM posted) AND NOT archived
            ORDER BY id FOR UPDATE
        ), drawn AS MATERIALIZED (
            SELECT p.*, nextval('messages_id_seq') AS id
            FROM posted p JOIN locked ON locked.id = p.channel_id
            ORDER BY p.n
        ), stored AS (
            INSERT INTO messages (id, channel_id, content, sender_type, pod_key, created_at,
                                  mentions, metadata, reply_to, thread_id)
            OVERRIDING SYSTEM VALUE
            SELECT id, channel_id, content, sender_type, pod_key, now(),
                   ARRAY(SELECT jsonb_array_elements_text(mentions)), metadata, reply_to,
                   thread_id
            FROM drawn
            RETURNING id, channel_id, content, sender_type, pod_key, created_at,
                      mentions, metadata, reply_to, COALESCE(thread_id, id) AS thread_id
        ), mentioned AS (
            INSERT INTO message_mentions (channel_id, name, message_id)
            SELECT channel_id, unnest(mentions), id FROM stored
        ), newest AS (
            SELECT DISTINCT ON (channel_id) channel_id, id, sender_type, pod_key, content,
                   count(*) OVER (PARTITION BY channel_id) AS posted
            FROM stored ORDER BY channel_id, id DESC
        ), counted AS (
            UPDATE channels SET
                updated_at       = now(),
                message_count    = message_count + newest.posted,
                last_message_id  = newest.id,
                last_message_at  = now(),
                last_sender_type = newest.sender_type,
                last_pod_key     = newest.pod_key,
                last_content     = left(newest.content, 200)
            FROM newest WHERE channels.id = newest.channel_id
        )
        SELECT drawn.n AS "n!", stored.id AS "id!", stored.channel_id AS "channel_id!",
               stored.content AS "content!", stored.sender_type AS "sender_type!",
               stored.pod_key, stored.created_at AS "created_at!",
               stored.mentions AS "mentions!", stored.metadata, stored.reply_to,
               stored.thread_id AS "thread_id!"
        FROM stored JOIN drawn ON drawn.id = stored.id
        "#,
        &channel_ids,
        &contents as &[&str],
        &sender_types as &[&str],
        &pod_keys as _,
        &mentions,
        &metadata as _,
        &replies as _,
        &threads as _,
    )
    .fetch_all(db)
    .await?;
    let mut stored: Vec<Option<Message>> =
        std::iter::repeat_with(|| None).take(posts.len()).collect();
    for row in rows {
        let message = Message {
            id: row.id,
            channel_id: row.channel_id,
            content: row.content,
            sender_type: row.sender_type,
            pod_key: row.pod_key,
            created_at: row.created_at,
            mentions: row.mentions,
            metadata: row.metadata,
            reply_to: row.reply_to,
            thread_id: row.thread_id,
        };
        if let Some(slot) = usize::try_from(row.n - 1)
            .ok()
            .and_then(|i| stored.get_mut(i))
        {
            *slot = Some(message);
        }
    }
    Ok(stored)
}

/// The message first stored with this idempotency key on this channel.
pub async fn find_by_idempotency_key(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    idempotency_key: &str,
) -> Result<Option<Message>, sqlx::Error> {
    sqlx::query_as!(
        Message,
        r#"
        SELECT id, channel_id, content, sender_type, pod_key, created_at,
               mentions, metadata, reply_to, COALESCE(thread_id, id) AS "thread_id!"
        FROM messages WHERE channel_id = $1 AND idempotency_key = $2
        "#,
        channel_id,
        idempotency_key,
    )
    .fetch_optional(db)
    .await
}

/// Which page of history to read.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    /// The newest messages, newest first.
    Latest,
    /// Messages older than this id, newest first.
    Before(i64),
    /// Messages newer than this id, oldest first.
    After(i64),
}

/// Up to `limit` messages of the page, in the page's order.
pub async fn page(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    page: Page,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    // Three statements rather than one with optional bounds, so each uses the
    // (channel_id, id) index with a real range instead of a filter. Each names its range and
    // order in that index's own terms (a range of `channel_id`, a row comparison, `ORDER BY
    // channel_id, id`), which the primary key cannot serve: otherwise, for a channel holding
    // most of the table, the planner may walk the primary key and filter by channel, passing
    // over every newer message of other channels (docs/BENCHMARKS.md, "Cost as work grows").
    match page {
        Page::Latest => {
            sqlx::query_as!(
                Message,
                r#"
                SELECT id, channel_id, content, sender_type, pod_key, created_at,
                       mentions, metadata, reply_to, COALESCE(thread_id, id) AS "thread_id!"
                FROM messages WHERE channel_id >= $1 AND channel_id <= $1
                ORDER BY channel_id DESC, id DESC LIMIT $2
                "#,
                channel_id,
                limit,
            )
            .fetch_all(db)
            .await
        }
        Page::Before(before) => {
            sqlx::query_as!(
                Message,
                r#"
                SELECT id, channel_id, content, sender_type, pod_key, created_at,
                       mentions, metadata, reply_to, COALESCE(thread_id, id) AS "thread_id!"
                FROM messages WHERE channel_id >= $1 AND (channel_id, id) < ($1, $2)
                ORDER BY channel_id DESC, id DESC LIMIT $3
                "#,
                channel_id,
                before,
                limit,
            )
            .fetch_all(db)
            .await
        }
        Page::After(after) => {
            sqlx::query_as!(
                Message,
                r#"
                SELECT id, channel_id, content, sender_type, pod_key, created_at,
                       mentions, metadata, reply_to, COALESCE(thread_id, id) AS "thread_id!"
                FROM messages WHERE channel_id <= $1 AND (channel_id, id) > ($1, $2)
                ORDER BY channel_id, id LIMIT $3
                "#,
                channel_id,
                after,
                limit,
            )
            .fetch_all(db)
            .await
        }
    }
}

/// The channel's newest message id (0 before its first message); `None` when there is no such
/// channel. One primary-key lookup: what decides whether a held latest page is current (the
/// statement that stores a message writes `last_message_id` in the same transaction).
pub async fn head(db: impl PgExecutor<'_>, channel_id: i64) -> Result<Option<i64>, sqlx::Error> {
    let head = sqlx::query_scalar!(
        "SELECT last_message_id FROM channels WHERE id = $1",
        channel_id
    )
    .fetch_optional(db)
    .await?;
    Ok(head.map(|last| last.unwrap_or(0)))
}

/// How many messages of the channel are newer than `after`, counting no further than `cap`.
pub async fn count_after(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    after: i64,
    cap: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT count(*) AS "count!" FROM (
            SELECT 1 FROM messages WHERE channel_id <= $1 AND (channel_id, id) > ($1, $2)
            ORDER BY channel_id, id LIMIT $3
        ) newer
        "#,
        channel_id,
        after,
        cap,
    )
    .fetch_one(db)
    .await
}

/// The id of the message that has exactly `newer` messages after it in the channel, if any:
/// where a replay of the newest `newer` messages starts.
pub async fn id_before_newest(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    newer: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT id FROM messages WHERE channel_id >= $1 AND channel_id <= $1
        ORDER BY channel_id DESC, id DESC OFFSET $2 LIMIT 1
        "#,
        channel_id,
        newer,
    )
    .fetch_optional(db)
    .await
}

/// Which messages of a channel a reader wants: those that mention a name, those of one thread,
/// or both. The default wants them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only messages whose `mentions` hold this name exactly.
    pub mentions: Option<String>,
    /// Only messages of this thread (its first message's id).
    pub thread: Option<i64>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.mentions.is_none() && self.thread.is_none()
    }

    /// Whether `message` is one this filter wants: what a waiter checks on each new message.
    pub fn matches(&self, message: &Message) -> bool {
        self.mentions
            .as_ref()
            .is_none_or(|name| message.mentions.contains(name))
            && self.thread.is_none_or(|thread| message.thread_id == thread)
    }
}

/// [`page`] of only the messages `filter` wants. A mentions filter walks `message_mentions`
/// (channel, name, id) and a thread filter `messages_thread_idx` (channel, thread, id) as
/// ranges, so a page costs what its rows cost however rare the matches are in a long channel.
pub async fn page_filtered(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    page_of: Page,
    limit: i64,
    filter: &Filter,
) -> Result<Vec<Message>, sqlx::Error> {
    let (before, after) = match page_of {
        Page::Latest => (i64::MAX, None),
        Page::Before(before) => (before, None),
        Page::After(after) => (i64::MAX, Some(after)),
    };
    match (&filter.mentions, filter.thread, after) {
        (None, None, _) => page(db, channel_id, page_of, limit).await,
        (Some(name), thread, None) => {
            sqlx::query_as!(
                Message,
                r#"
                SELECT m.id, m.channel_id, m.content, m.sender_type, m.pod_key, m.created_at,
                       m.mentions, m.metadata, m.reply_to,
                       COALESCE(m.thread_id, m.id) AS "thread_id!"
                FROM message_mentions mm JOIN messages m ON m.id = mm.message_id
                WHERE mm.channel_id = $1 AND mm.name = $2 AND mm.message_id < $3
                  AND ($4::bigint IS NULL OR COALESCE(m.thread_id, m.id) = $4)
                ORDER BY mm.message_id DESC LIMIT $5
                "#,
                channel_id,
                name,
                before,
                thread,
                limit,
            )
            .fetch_all(db)
            .await
        }
        (Some(name), thread, Some(after)) => {
            sqlx::query_as!(
                Message,
                r#"
                SELECT m.id, m.channel_id, m.content, m.sender_type, m.pod_key, m.created_at,
                       m.mentions, m.metadata, m.reply_to,
                       COALESCE(m.thread_id, m.id) AS "thread_id!"
                FROM message_mentions mm JOIN messages m ON m.id = mm.message_id
                WHERE mm.channel_id = $1 AND mm.name = $2 AND mm.message_id > $3
                  AND ($4::bigint IS NULL OR COALESCE(m.thread_id, m.id) = $4)
                ORDER BY mm.message_id ASC LIMIT $5
                "#,
                channel_id,
                name,
                after,
                thread,
                limit,
            )
            .fetch_all(db)
            .await
        }
        (None, Some(thread), None) => {
            sqlx::query_as!(
                Message,
                r#"
                SELECT id AS "id!", channel_id AS "channel_id!", content AS "content!",
                       sender_type AS "sender_type!", pod_key, created_at AS "created_at!",
                       mentions AS "mentions!", metadata, reply_to, thread_id AS "thread_id!"
                FROM (
                    SELECT id, channel_id, content, sender_type, pod_key, created_at,
                           mentions, metadata, reply_to, thread_id
                    FROM messages WHERE channel_id = $1 AND thread_id = $2 AND id < $3
                    UNION ALL
                    SELECT id, channel_id, content, sender_type, pod_key, created_at,
                           mentions, metadata, reply_to, id
                    FROM messages
                    WHERE id = $2 AND channel_id = $1 AND thread_id IS NULL AND id < $3
                ) thread
                ORDER BY id DESC LIMIT $4
                "#,
                channel_id,
                thread,
                before,
                limit,
            )
            .fetch_all(db)
            .await
        }
        (None, Some(thread), Some(after)) => {
            sqlx::query_as!(
                Message,
                r#"
                SELECT id AS "id!", channel_id AS "channel_id!", content AS "content!",
                       sender_type AS "sender_type!", pod_key, created_at AS "created_at!",
                       mentions AS "mentions!", metadata, reply_to, thread_id AS "thread_id!"
                FROM (
                    SELECT id, channel_id, content, sender_type, pod_key, created_at,
                           mentions, metadata, reply_to, thread_id
                    FROM messages WHERE channel_id = $1 AND thread_id = $2 AND id > $3
                    UNION ALL
                    SELECT id, channel_id, content, sender_type, pod_key, created_at,
                           mentions, metadata, reply_to, id
                    FROM messages
                    WHERE id = $2 AND channel_id = $1 AND thread_id IS NULL AND id > $3
                ) thread
                ORDER BY id ASC LIMIT $4
                "#,
                channel_id,
                thread,
                after,
                limit,
            )
            .fetch_all(db)
            .await
        }
    }
}
