//! SQL of stored-message delivery: where a newly followed channel starts, and what is newer than
//! each followed channel's cursor.

use sqlx::PgExecutor;

use crate::messages::model::Message;

/// The app that owns a channel and its newest message id (0 when it has none): a new follower's
/// starting cursor. `None` when there is no such channel.
pub async fn start_of(
    db: impl PgExecutor<'_>,
    channel_id: i64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT app_id,
               COALESCE((SELECT max(id) FROM messages WHERE channel_id = $1), 0) AS "last!"
        FROM channels WHERE id = $1
        "#,
        channel_id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| (row.app_id, row.last)))
}

/// For each `(channel, cursor)` pair, up to `per_channel` messages newer than the cursor; ordered
/// by channel, then id. One round trip for every channel with something pending, each one an
/// index range scan of `messages (channel_id, id)`.
pub async fn newer_than(
    db: impl PgExecutor<'_>,
    channels: &[i64],
    cursors: &[i64],
    per_channel: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as!(
        Message,
        r#"
        SELECT m.id AS "id!", m.channel_id AS "channel_id!", m.content AS "content!",
               m.sender_type AS "sender_type!", m.pod_key AS "pod_key?", m.created_at AS "created_at!",
               m.mentions AS "mentions!", m.metadata AS "metadata?", m.reply_to AS "reply_to?",
               m.thread_id AS "thread_id!"
        FROM unnest($1::bigint[], $2::bigint[]) AS f (channel_id, cursor)
        CROSS JOIN LATERAL (
            SELECT id, channel_id, content, sender_type, pod_key, created_at,
                   mentions, metadata, reply_to, COALESCE(thread_id, id) AS thread_id
            FROM messages
            WHERE messages.channel_id = f.channel_id AND messages.id > f.cursor
            ORDER BY id
            LIMIT $3
        ) m
        ORDER BY m.channel_id, m.id
        "#,
        channels,
        cursors,
        per_channel,
    )
    .fetch_all(db)
    .await
}
