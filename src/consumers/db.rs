//! The SQL of consumer groups (see the migration `consumer_groups` for the tables).
//!
//! Exactly one holder: a claim takes the group's row lock (`FOR UPDATE`) for its transaction, so
//! claims of one group run one at a time on any number of instances, and `ack`, `nack` and
//! `extend` each change a delivery only while its lease (`lease`, drawn anew at every claim) is
//! the one they name and has not expired. Whichever of a claim and an ack locks the delivery
//! first wins; the other sees the row it left and does nothing.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::messages::model::Message;

/// The [`Message`] in a row whose columns are a message's, as the claim and dead-letter
/// queries select them beside their own.
macro_rules! message_of {
    ($row:ident) => {
        Message {
            id: $row.id,
            channel_id: $row.channel_id,
            content: $row.content,
            sender_type: $row.sender_type,
            pod_key: $row.pod_key,
            created_at: $row.created_at,
            mentions: $row.mentions,
            metadata: $row.metadata,
            reply_to: $row.reply_to,
            thread_id: $row.thread_id,
        }
    };
}

/// A group's settings and position.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: i64,
    pub channel_id: i64,
    pub name: String,
    pub start: String,
    pub ack_wait_ms: i64,
    pub max_deliveries: i32,
    pub mentions: Option<String>,
    pub frontier: i64,
    pub created_at: DateTime<Utc>,
}

/// A group to create; `frontier` is the message id it starts after (`None`: the channel's
/// newest now).
pub struct NewGroup<'a> {
    pub name: &'a str,
    pub start: &'a str,
    pub frontier: Option<i64>,
    pub ack_wait_ms: i64,
    pub max_deliveries: i32,
    pub mentions: Option<&'a str>,
}

/// The group created, or why not.
pub enum Created {
    Group(Group),
    NoChannel,
    NameTaken,
}

pub async fn create(
    db: &PgPool,
    channel_id: i64,
    new: &NewGroup<'_>,
) -> Result<Created, sqlx::Error> {
    let mut tx = db.begin().await?;
    // Posts to the channel hold its row until they commit: once this share lock is held, every
    // message of the channel up to its newest is committed, and none is stored before this
    // group is.
    let Some(channel) = sqlx::query!(
        r#"
        SELECT COALESCE(last_message_id, 0) AS "last!", message_count
        FROM channels WHERE id = $1 FOR SHARE
        "#,
        channel_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Created::NoChannel);
    };
    // A start past the channel's newest message starts there: later messages of this channel
    // all get higher ids.
    let frontier = new.frontier.map_or(channel.last, |id| id.min(channel.last));
    let skipped = if frontier == channel.last {
        channel.message_count
    } else {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM messages WHERE channel_id = $1 AND id <= $2"#,
            channel_id,
            frontier,
        )
        .fetch_one(&mut *tx)
        .await?
    };
    let created = sqlx::query_as!(
        Group,
        r#"
        WITH stored AS (
            INSERT INTO consumers (channel_id, name, start, frontier, skipped, ack_wait_ms,
                                   max_deliveries, mentions)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            RETURNING id, channel_id, name, start, ack_wait_ms, max_deliveries, mentions, frontier,
                      created_at
        ), counts AS (
            INSERT INTO consumer_counts (consumer_id) SELECT id FROM stored
        )
        SELECT id AS "id!", channel_id AS "channel_id!", name AS "name!", start AS "start!",
               ack_wait_ms AS "ack_wait_ms!", max_deliveries AS "max_deliveries!", mentions,
               frontier AS "frontier!", created_at AS "created_at!"
        FROM stored
        "#,
        channel_id,
        new.name,
        new.start,
        frontier,
        skipped,
        new.ack_wait_ms,
        new.max_deliveries,
        new.mentions,
    )
    .fetch_one(&mut *tx)
    .await;
    match created {
        Ok(group) => {
            tx.commit().await?;
            Ok(Created::Group(group))
        }
        Err(sqlx::Error::Database(error))
            if error.constraint() == Some("consumers_channel_id_name_key") =>
        {
            Ok(Created::NameTaken)
        }
        Err(error) => Err(error),
    }
}

pub async fn find(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    name: &str,
) -> Result<Option<Group>, sqlx::Error> {
    sqlx::query_as!(
        Group,
        r#"
        SELECT id, channel_id, name, start, ack_wait_ms, max_deliveries, mentions, frontier,
               created_at
        FROM consumers WHERE channel_id = $1 AND name = $2
        "#,
        channel_id,
        name,
    )
    .fetch_optional(db)
    .await
}

pub async fn list(db: impl PgExecutor<'_>, channel_id: i64) -> Result<Vec<Group>, sqlx::Error> {
    sqlx::query_as!(
        Group,
        r#"
        SELECT id, channel_id, name, start, ack_wait_ms, max_deliveries, mentions, frontier,
               created_at
        FROM consumers WHERE channel_id = $1 ORDER BY name
        "#,
        channel_id,
    )
    .fetch_all(db)
    .await
}

pub async fn delete(
    db: impl PgExecutor<'_>,
    channel_id: i64,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM consumers WHERE channel_id = $1 AND name = $2",
        channel_id,
        name,
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected() > 0)
}

/// Most messages past a `mentions` group's frontier that a count reads (`pending` says at most
/// this many of them).
pub const UNSEEN_COUNTED: i64 = 1_000_000;

/// Where a group's work stands (settled first: see [`settle`]).
pub struct Counts {
    pub acked: i64,
    pub dead: i64,
    pub in_flight: i64,
    pub pending: i64,
    pub oldest_pending_age_ms: Option<i64>,
}

pub async fn counts(db: &PgPool, group: &Group) -> Result<Counts, sqlx::Error> {
    settle(db, group).await?;
    let held = sqlx::query!(
        r#"
        SELECT
            (SELECT acked FROM consumer_counts WHERE consumer_id = $1) AS "acked",
            count(*) FILTER (WHERE dead) AS "dead!",
            count(*) FILTER (WHERE NOT dead AND leased AND due_at > now()) AS "in_flight!",
            count(*) FILTER (WHERE NOT dead AND NOT (leased AND due_at > now())) AS "waiting!",
            min(message_id) FILTER (WHERE NOT dead AND NOT (leased AND due_at > now()))
                AS "oldest_waiting"
        FROM consumer_deliveries WHERE consumer_id = $1
        "#,
        group.id,
    )
    .fetch_one(db)
    .await?;
    // Messages past the frontier, never handed out yet: from the channel's counter, or counted
    // (up to UNSEEN_COUNTED) among those that mention the group's name.
    let unseen = sqlx::query!(
        r#"
        SELECT
            CASE WHEN c.mentions IS NULL THEN ch.message_count - c.skipped - c.taken
                 ELSE (SELECT count(*) FROM (
                          SELECT 1 FROM message_mentions mm
                          WHERE mm.channel_id = c.channel_id AND mm.name = c.mentions
                            AND mm.message_id > c.frontier
                          LIMIT $2) counted)
            END AS "count!",
            CASE WHEN c.mentions IS NULL
                 THEN (SELECT min(id) FROM messages m
                       WHERE m.channel_id = c.channel_id AND m.id > c.frontier)
                 ELSE (SELECT min(message_id) FROM message_mentions mm
                       WHERE mm.channel_id = c.channel_id AND mm.name = c.mentions
                         AND mm.message_id > c.frontier)
            END AS "first"
        FROM consumers c JOIN channels ch ON ch.id = c.channel_id
        WHERE c.id = $1
        "#,
        group.id,
        UNSEEN_COUNTED,
    )
    .fetch_one(db)
    .await?;
    let oldest = match (held.oldest_waiting, unseen.first) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let oldest_pending_age_ms = match oldest {
        Some(id) => sqlx::query_scalar!(
            r#"SELECT (extract(epoch FROM now() - created_at) * 1000)::bigint AS "age!"
               FROM messages WHERE id = $1"#,
            id,
        )
        .fetch_optional(db)
        .await?
        .map(|age| age.max(0)),
        None => None,
    };
    Ok(Counts {
        acked: held.acked.unwrap_or(0),
        dead: held.dead,
        in_flight: held.in_flight,
        pending: held.waiting + unseen.count,
        oldest_pending_age_ms,
    })
}

/// Members that claimed in the last 5 minutes, most recent first (at most 100).
pub async fn members(
    db: impl PgExecutor<'_>,
    consumer_id: i64,
) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT member, last_seen FROM consumer_members
        WHERE consumer_id = $1 AND last_seen > now() - interval '5 minutes'
        ORDER BY last_seen DESC, member LIMIT 100
        "#,
        consumer_id,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.member, row.last_seen))
        .collect())
}

/// Leases that expired on their last allowed attempt become dead letters. Claims do this as
/// they go; counts and the dead list do it first so that they show it at once.
pub async fn settle(db: impl PgExecutor<'_>, group: &Group) -> Result<u64, sqlx::Error> {
    let settled = sqlx::query!(
        r#"
        UPDATE consumer_deliveries SET dead = true, leased = false
        WHERE consumer_id = $1 AND NOT dead AND due_at <= now() AND attempts >= $2
        "#,
        group.id,
        group.max_deliveries,
    )
    .execute(db)
    .await?;
    Ok(settled.rows_affected())
}

/// A message leased by a claim.
pub struct Leased {
    pub attempt: i32,
    pub lease: i64,
    pub lease_expires_at: DateTime<Utc>,
    pub message: Message,
}

/// What a claim took.
pub struct Claimed {
    pub leased: Vec<Leased>,
    /// How long until the next message held back (nacked with a delay, or leased) becomes
    /// claimable, if any is: a waiting claim looks again then.
    pub next_due: Option<std::time::Duration>,
}

/// What a claim found.
pub enum Claim {
    Claimed(Claimed),
    /// Another claim of the group holds its turn (only when asked not to wait for it).
    Busy,
    /// The group no longer exists.
    Gone,
}

/// Leases up to `max` messages to `member`, in id order: first those due again (nacked, or
/// whose lease expired), then messages past the frontier. Claims of one group take turns on its
/// row; with `wait_turn` false, a claim that would wait for its turn answers [`Claim::Busy`] at
/// once instead, holding no connection while another works.
///
/// Times are the statement's own (`statement_timestamp()`), not the transaction's: a claim that
/// waited for its turn still leases for the whole `ack_wait`.
pub async fn claim(
    db: &PgPool,
    consumer_id: i64,
    member: &str,
    max: i64,
    wait_turn: bool,
) -> Result<Claim, sqlx::Error> {
    let mut tx = db.begin().await?;
    let turn = if wait_turn {
        sqlx::query_as!(
            Turn,
            r#"
            SELECT channel_id, frontier, ack_wait_ms, max_deliveries, mentions
            FROM consumers WHERE id = $1 FOR UPDATE
            "#,
            consumer_id,
        )
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query_as!(
            Turn,
            r#"
            SELECT channel_id, frontier, ack_wait_ms, max_deliveries, mentions
            FROM consumers WHERE id = $1 FOR UPDATE SKIP LOCKED
            "#,
            consumer_id,
        )
        .fetch_optional(&mut *tx)
        .await?
    };
    let Some(group) = turn else {
        let exists = sqlx::query_scalar!(
            r#"SELECT true AS "exists!" FROM consumers WHERE id = $1"#,
            consumer_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        return Ok(if exists && !wait_turn {
            Claim::Busy
        } else {
            Claim::Gone
        });
    };
    let again = sqlx::query!(
        r#"
        WITH seen AS (
            INSERT INTO consumer_members (consumer_id, member, last_seen)
            VALUES ($1, $2, statement_timestamp())
            ON CONFLICT (consumer_id, member) DO UPDATE SET last_seen = statement_timestamp()
            WHERE consumer_members.last_seen < statement_timestamp() - interval '10 seconds'
        ), forgotten AS (
            DELETE FROM consumer_members
            WHERE consumer_id = $1 AND last_seen < statement_timestamp() - interval '1 hour'
        ), settled AS (
            UPDATE consumer_deliveries SET dead = true, leased = false
            WHERE consumer_id = $1 AND NOT dead AND due_at <= statement_timestamp()
              AND attempts >= $3
        ), due AS (
            SELECT message_id FROM consumer_deliveries
            WHERE consumer_id = $1 AND NOT dead AND due_at <= statement_timestamp()
              AND attempts < $3
            ORDER BY message_id LIMIT $4
            FOR UPDATE
        ), taken AS (
            UPDATE consumer_deliveries d
            SET attempts = d.attempts + 1, lease = nextval('consumer_leases_seq'), member = $2,
                leased = true,
                due_at = statement_timestamp() + $5 * interval '1 millisecond'
            FROM due WHERE d.consumer_id = $1 AND d.message_id = due.message_id
            RETURNING d.message_id, d.attempts, d.lease, d.due_at
        )
        SELECT t.attempts AS "attempts!", t.lease AS "lease!", t.due_at AS "due_at!",
               m.id, m.channel_id, m.content, m.sender_type, m.pod_key, m.created_at,
               m.mentions, m.metadata, m.reply_to, COALESCE(m.thread_id, m.id) AS "thread_id!"
        FROM taken t JOIN messages m ON m.id = t.message_id
        ORDER BY m.id
        "#,
        consumer_id,
        member,
        group.max_deliveries,
        max,
        group.ack_wait_ms as f64,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut leased: Vec<Leased> = again
        .into_iter()
        .map(|row| Leased {
            attempt: row.attempts,
            lease: row.lease,
            lease_expires_at: row.due_at,
            message: message_of!(row),
        })
        .collect();
    let room = max - leased.len() as i64;
    if room > 0 {
        let fresh = sqlx::query!(
            r#"
            WITH fresh AS (
                SELECT id FROM (
                    SELECT id FROM messages
                    WHERE $7::text IS NULL AND channel_id = $2 AND id > $3
                    ORDER BY id LIMIT $4
                ) everything
                UNION ALL
                SELECT id FROM (
                    SELECT message_id AS id FROM message_mentions
                    WHERE $7::text IS NOT NULL AND channel_id = $2 AND name = $7
                      AND message_id > $3
                    ORDER BY message_id LIMIT $4
                ) mentioning
            ), stored AS (
                INSERT INTO consumer_deliveries (consumer_id, message_id, attempts, lease, member,
                                                 leased, due_at)
                SELECT $1, id, 1, nextval('consumer_leases_seq'), $5, true,
                       statement_timestamp() + $6 * interval '1 millisecond'
                FROM fresh
                RETURNING message_id, attempts, lease, due_at
            ), moved AS (
                UPDATE consumers SET frontier = (SELECT max(id) FROM fresh),
                                     taken = taken + (SELECT count(*) FROM fresh)
                WHERE id = $1 AND EXISTS (SELECT 1 FROM fresh)
            )
            SELECT s.attempts AS "attempts!", s.lease AS "lease!", s.due_at AS "due_at!",
                   m.id, m.channel_id, m.content, m.sender_type, m.pod_key, m.created_at,
                   m.mentions, m.metadata, m.reply_to, COALESCE(m.thread_id, m.id) AS "thread_id!"
            FROM stored s JOIN messages m ON m.id = s.message_id
            ORDER BY m.id
            "#,
            consumer_id,
            group.channel_id,
            group.frontier,
            room,
            member,
            group.ack_wait_ms as f64,
            group.mentions,
        )
        .fetch_all(&mut *tx)
        .await?;
        leased.extend(fresh.into_iter().map(|row| Leased {
            attempt: row.attempts,
            lease: row.lease,
            lease_expires_at: row.due_at,
            message: message_of!(row),
        }));
    }
    let next_due = if leased.is_empty() {
        // How long until then, by the database's clock (the one leases are timed by).
        sqlx::query_scalar!(
            r#"
            SELECT (extract(epoch FROM min(due_at) - statement_timestamp()) * 1000)::float8
            FROM consumer_deliveries WHERE consumer_id = $1 AND NOT dead
            "#,
            consumer_id,
        )
        .fetch_one(&mut *tx)
        .await?
        .map(|ms| std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    } else {
        None
    };
    tx.commit().await?;
    Ok(Claim::Claimed(Claimed { leased, next_due }))
}

/// A group's settings as its claim reads them, holding its turn.
struct Turn {
    channel_id: i64,
    frontier: i64,
    ack_wait_ms: i64,
    max_deliveries: i32,
    mentions: Option<String>,
}

/// Leases as `ack`, `nack` and `extend` name them: (message id, lease).
pub struct Leases {
    pub message_ids: Vec<i64>,
    pub leases: Vec<i64>,
}

/// Acknowledges the leases that are current and unexpired (removing their messages from the
/// group for good); returns those it acked.
pub async fn ack(
    db: impl PgExecutor<'_>,
    consumer_id: i64,
    given: &Leases,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        WITH locked AS (
            SELECT d.message_id FROM consumer_deliveries d
            JOIN unnest($2::bigint[], $3::bigint[]) AS g(message_id, lease)
              ON d.message_id = g.message_id AND d.lease = g.lease
            WHERE d.consumer_id = $1 AND d.leased AND NOT d.dead AND d.due_at > now()
            ORDER BY d.message_id
            FOR UPDATE OF d
        ), acked AS (
            DELETE FROM consumer_deliveries d USING locked l
            WHERE d.consumer_id = $1 AND d.message_id = l.message_id
            RETURNING d.message_id, d.lease
        ), counted AS (
            UPDATE consumer_counts SET acked = acked + (SELECT count(*) FROM acked)
            WHERE consumer_id = $1 AND EXISTS (SELECT 1 FROM acked)
        )
        SELECT message_id AS "message_id!", lease AS "lease!" FROM acked
        "#,
        consumer_id,
        &given.message_ids,
        &given.leases,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.message_id, row.lease))
        .collect())
}

/// Gives current leases back, claimable again after `delay_ms`; a message on its last allowed
/// attempt becomes dead instead. Returns the leases given back, and whether each died.
pub async fn nack(
    db: impl PgExecutor<'_>,
    group: &Group,
    given: &Leases,
    delay_ms: i64,
) -> Result<Vec<(i64, i64, bool)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        WITH locked AS (
            SELECT d.message_id FROM consumer_deliveries d
            JOIN unnest($2::bigint[], $3::bigint[]) AS g(message_id, lease)
              ON d.message_id = g.message_id AND d.lease = g.lease
            WHERE d.consumer_id = $1 AND d.leased AND NOT d.dead AND d.due_at > now()
            ORDER BY d.message_id
            FOR UPDATE OF d
        )
        UPDATE consumer_deliveries d
        SET leased = false, due_at = now() + $4 * interval '1 millisecond',
            dead = d.attempts >= $5
        FROM locked l
        WHERE d.consumer_id = $1 AND d.message_id = l.message_id
        RETURNING d.message_id, d.lease, d.dead
        "#,
        group.id,
        &given.message_ids,
        &given.leases,
        delay_ms as f64,
        group.max_deliveries,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.message_id, row.lease, row.dead))
        .collect())
}

/// Renews current leases for another `ack_wait`; returns those renewed.
pub async fn extend(
    db: impl PgExecutor<'_>,
    group: &Group,
    given: &Leases,
) -> Result<Vec<(i64, i64, DateTime<Utc>)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        WITH locked AS (
            SELECT d.message_id FROM consumer_deliveries d
            JOIN unnest($2::bigint[], $3::bigint[]) AS g(message_id, lease)
              ON d.message_id = g.message_id AND d.lease = g.lease
            WHERE d.consumer_id = $1 AND d.leased AND NOT d.dead AND d.due_at > now()
            ORDER BY d.message_id
            FOR UPDATE OF d
        )
        UPDATE consumer_deliveries d SET due_at = now() + $4 * interval '1 millisecond'
        FROM locked l
        WHERE d.consumer_id = $1 AND d.message_id = l.message_id
        RETURNING d.message_id, d.lease, d.due_at
        "#,
        group.id,
        &given.message_ids,
        &given.leases,
        group.ack_wait_ms as f64,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.message_id, row.lease, row.due_at))
        .collect())
}

/// A dead letter and its message.
pub struct Dead {
    pub attempts: i32,
    pub last_member: String,
    pub message: Message,
}

/// Dead letters after message `after`, oldest first.
pub async fn dead(
    db: &PgPool,
    group: &Group,
    after: i64,
    limit: i64,
) -> Result<Vec<Dead>, sqlx::Error> {
    settle(db, group).await?;
    let rows = sqlx::query!(
        r#"
        SELECT d.attempts, d.member,
               m.id, m.channel_id, m.content, m.sender_type, m.pod_key, m.created_at,
               m.mentions, m.metadata, m.reply_to, COALESCE(m.thread_id, m.id) AS "thread_id!"
        FROM consumer_deliveries d JOIN messages m ON m.id = d.message_id
        WHERE d.consumer_id = $1 AND d.dead AND d.message_id > $2
        ORDER BY d.message_id LIMIT $3
        "#,
        group.id,
        after,
        limit,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Dead {
            attempts: row.attempts,
            last_member: row.member,
            message: message_of!(row),
        })
        .collect())
}

/// Makes a dead letter claimable again, as a first attempt. False when it is not dead.
pub async fn retry(db: &PgPool, group: &Group, message_id: i64) -> Result<bool, sqlx::Error> {
    settle(db, group).await?;
    let retried = sqlx::query!(
        r#"
        UPDATE consumer_deliveries SET dead = false, leased = false, attempts = 0, due_at = now()
        WHERE consumer_id = $1 AND message_id = $2 AND dead
        "#,
        group.id,
        message_id,
    )
    .execute(db)
    .await?;
    Ok(retried.rows_affected() > 0)
}

/// Every group's counts for `/metrics`: the app's name, the channel, the group, and its pending
/// (messages past the frontier counted up to `cap`), in-flight and dead messages.
#[derive(Debug)]
pub struct Gauges {
    pub app: String,
    pub channel_id: i64,
    pub name: String,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
}

pub async fn gauges(db: &PgPool, cap: i64, groups: i64) -> Result<Vec<Gauges>, sqlx::Error> {
    sqlx::query_as!(
        Gauges,
        r#"
        SELECT a.name AS "app!", c.channel_id AS "channel_id!", c.name AS "name!",
               (SELECT count(*) FROM consumer_deliveries d
                WHERE d.consumer_id = c.id AND NOT d.dead
                  AND NOT (d.leased AND d.due_at > now())
                  AND NOT (d.leased AND d.attempts >= c.max_deliveries))
               + CASE WHEN c.mentions IS NULL THEN ch.message_count - c.skipped - c.taken
                      ELSE (SELECT count(*) FROM (
                               SELECT 1 FROM message_mentions mm
                               WHERE mm.channel_id = c.channel_id AND mm.name = c.mentions
                                 AND mm.message_id > c.frontier
                               LIMIT $1) unseen)
                 END AS "pending!",
               (SELECT count(*) FROM consumer_deliveries d
                WHERE d.consumer_id = c.id AND NOT d.dead AND d.leased AND d.due_at > now())
                   AS "in_flight!",
               (SELECT count(*) FROM consumer_deliveries d
                WHERE d.consumer_id = c.id AND (d.dead OR (d.leased AND d.due_at <= now()
                      AND d.attempts >= c.max_deliveries))) AS "dead!"
        FROM consumers c
        JOIN channels ch ON ch.id = c.channel_id
        JOIN apps a ON a.id = ch.app_id
        ORDER BY c.id LIMIT $2
        "#,
        cap,
        groups,
    )
    .fetch_all(db)
    .await
}
