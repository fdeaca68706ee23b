//! The SQL of webhooks: registrations, the outbox, deliveries.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::model::{Webhook, WebhookDelivery, event_id};
use crate::messages::model::Message;

/// Events, dispatches and leases of all instances take turns on this advisory lock, so that a
/// channel's events become deliveries, and are leased, in id order.
const TURN: i64 = 0x7765_6268_6f6f_6b73; // "webhooks"

pub struct WebhookRow {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub channels: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl From<WebhookRow> for Webhook {
    fn from(row: WebhookRow) -> Self {
        Self {
            id: row.id,
            url: row.url,
            events: row.events,
            channels: row.channels,
            description: row.description,
            enabled: row.enabled,
            created_at: row.created_at,
        }
    }
}

pub struct NewWebhook<'a> {
    pub id: &'a str,
    pub app_id: i64,
    pub url: &'a str,
    pub events: &'a [String],
    pub channels: &'a [String],
    pub description: Option<&'a str>,
    pub secret: &'a [u8],
}

pub async fn insert(db: impl PgExecutor<'_>, new: NewWebhook<'_>) -> Result<Webhook, sqlx::Error> {
    let row = sqlx::query_as!(
        WebhookRow,
        r#"
        INSERT INTO webhooks (id, app_id, url, events, channels, description, secret)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING id, url, events, channels, description, enabled, created_at
        "#,
        new.id,
        new.app_id,
        new.url,
        new.events,
        new.channels,
        new.description,
        new.secret,
    )
    .fetch_one(db)
    .await?;
    Ok(row.into())
}

pub async fn list(db: impl PgExecutor<'_>, app_id: i64) -> Result<Vec<Webhook>, sqlx::Error> {
    let rows = sqlx::query_as!(
        WebhookRow,
        r#"
        SELECT id, url, events, channels, description, enabled, created_at
        FROM webhooks WHERE app_id = $1 ORDER BY created_at, id
        "#,
        app_id,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Webhook::from).collect())
}

pub async fn find(
    db: impl PgExecutor<'_>,
    app_id: i64,
    id: &str,
) -> Result<Option<Webhook>, sqlx::Error> {
    let row = sqlx::query_as!(
        WebhookRow,
        r#"
        SELECT id, url, events, channels, description, enabled, created_at
        FROM webhooks WHERE id = $1 AND app_id = $2
        "#,
        id,
        app_id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Webhook::from))
}

pub struct Change<'a> {
    pub enabled: Option<bool>,
    pub url: Option<&'a str>,
    pub events: Option<&'a [String]>,
    pub channels: Option<&'a [String]>,
    pub description: Option<&'a str>,
}

pub async fn update(
    db: impl PgExecutor<'_>,
    app_id: i64,
    id: &str,
    change: Change<'_>,
) -> Result<Option<Webhook>, sqlx::Error> {
    let row = sqlx::query_as!(
        WebhookRow,
        r#"
        UPDATE webhooks SET
            enabled     = COALESCE($3, enabled),
            url         = COALESCE($4, url),
            events      = COALESCE($5, events),
            channels    = COALESCE($6, channels),
            description = COALESCE($7, description),
            updated_at  = now()
        WHERE id = $1 AND app_id = $2
        RETURNING id, url, events, channels, description, enabled, created_at
        "#,
        id,
        app_id,
        change.enabled,
        change.url,
        change.events,
        change.channels,
        change.description,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Webhook::from))
}

pub async fn delete(db: impl PgExecutor<'_>, app_id: i64, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM webhooks WHERE id = $1 AND app_id = $2",
        id,
        app_id
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The new secret signs from now on; the current one keeps signing beside it until `until`.
pub async fn rotate(
    db: impl PgExecutor<'_>,
    app_id: i64,
    id: &str,
    secret: &[u8],
    until: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        UPDATE webhooks SET previous_secret = secret, previous_secret_until = $4, secret = $3,
                            updated_at = now()
        WHERE id = $1 AND app_id = $2
        "#,
        id,
        app_id,
        secret,
        until,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

struct WebhookDeliveryRow {
    event_id: i64,
    event_type: String,
    channel: String,
    attempts: i32,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    next_attempt_at: DateTime<Utc>,
    state: String,
    created_at: DateTime<Utc>,
}

impl From<WebhookDeliveryRow> for WebhookDelivery {
    fn from(row: WebhookDeliveryRow) -> Self {
        Self {
            event_id: event_id(row.event_id),
            event_type: row.event_type,
            channel: row.channel,
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            next_attempt_at: (row.state == "pending").then_some(row.next_attempt_at),
            state: row.state,
            created_at: row.created_at,
        }
    }
}

/// A webhook's deliveries, newest first, optionally of one state and before an event.
pub async fn deliveries(
    db: impl PgExecutor<'_>,
    webhook_id: &str,
    state: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<WebhookDelivery>, sqlx::Error> {
    let rows = sqlx::query_as!(
        WebhookDeliveryRow,
        r#"
        SELECT d.event_id, e.type AS event_type, d.channel, d.attempts, d.last_status_code,
               d.last_error, d.next_attempt_at, d.state, d.created_at
        FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
        WHERE d.webhook_id = $1 AND ($2::text IS NULL OR d.state = $2)
          AND ($3::bigint IS NULL OR d.event_id < $3)
        ORDER BY d.event_id DESC
        LIMIT $4
        "#,
        webhook_id,
        state,
        before,
        limit,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(WebhookDelivery::from).collect())
}

/// Makes a delivery due now, whatever its state: one more attempt, which leaves it `failed`
/// again if it fails after the schedule ran out. A lane sending it now loses its lease, so its
/// outcome does not overwrite the retry.
pub async fn retry(
    db: impl PgExecutor<'_>,
    webhook_id: &str,
    event_id: i64,
) -> Result<Option<WebhookDelivery>, sqlx::Error> {
    let row = sqlx::query_as!(
        WebhookDeliveryRow,
        r#"
        WITH retried AS (
            UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now(),
                                          lease = NULL, leased_until = NULL
            WHERE webhook_id = $1 AND event_id = $2
            RETURNING event_id, channel, attempts, last_status_code, last_error, next_attempt_at,
                      state, created_at
        )
        SELECT r.event_id AS "event_id!", e.type AS event_type, r.channel AS "channel!",
               r.attempts AS "attempts!", r.last_status_code, r.last_error,
               r.next_attempt_at AS "next_attempt_at!", r.state AS "state!",
               r.created_at AS "created_at!"
        FROM retried r JOIN webhook_events e ON e.id = r.event_id
        "#,
        webhook_id,
        event_id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(WebhookDelivery::from))
}

/// Records an event in the caller's transaction when the app has an enabled webhook that wants
/// its type. Returns whether it was recorded. A `dedupe` key already recorded records nothing.
pub async fn record(
    db: impl PgExecutor<'_>,
    app_id: i64,
    event_type: &str,
    channel: &str,
    data: &serde_json::Value,
    dedupe: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO webhook_events (app_id, type, channel, data, dedupe)
        SELECT $1, $2, $3, $4, $5
        WHERE EXISTS (SELECT 1 FROM webhooks w
                      WHERE w.app_id = $1 AND w.enabled AND $2 = ANY (w.events))
        ON CONFLICT (dedupe) DO NOTHING
        "#,
        app_id,
        event_type,
        channel,
        data,
        dedupe,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Apps with at least one enabled webhook.
pub async fn apps_with_webhooks(db: impl PgExecutor<'_>) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!("SELECT DISTINCT app_id FROM webhooks WHERE enabled")
        .fetch_all(db)
        .await
}

/// Waits for this instance's turn (see [`TURN`]); it ends with the transaction.
pub async fn take_turn(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", TURN)
        .execute(tx)
        .await?;
    Ok(())
}

pub struct Undispatched {
    pub id: i64,
    pub app_id: i64,
    pub event_type: String,
    pub channel: String,
}

/// Events not yet made into deliveries, oldest first.
pub async fn undispatched(
    tx: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Undispatched>, sqlx::Error> {
    sqlx::query_as!(
        Undispatched,
        r#"
        SELECT id, app_id, type AS event_type, channel FROM webhook_events
        WHERE NOT dispatched ORDER BY id LIMIT $1
        "#,
        limit,
    )
    .fetch_all(tx)
    .await
}

pub struct Subscriber {
    pub id: String,
    pub app_id: i64,
    pub events: Vec<String>,
    pub channels: Vec<String>,
}

/// The enabled webhooks of these apps.
pub async fn subscribers(
    tx: &mut PgConnection,
    apps: &[i64],
) -> Result<Vec<Subscriber>, sqlx::Error> {
    sqlx::query_as!(
        Subscriber,
        "SELECT id, app_id, events, channels FROM webhooks WHERE enabled AND app_id = ANY($1)",
        apps,
    )
    .fetch_all(tx)
    .await
}

/// One delivery row per (webhook, event); marks the events dispatched, and drops those that no
/// webhook wanted (`unwanted`).
pub async fn dispatch(
    tx: &mut PgConnection,
    events: &[i64],
    unwanted: &[i64],
    webhooks: &[String],
    event_ids: &[i64],
    channels: &[String],
    ordered: &[bool],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO webhook_deliveries (webhook_id, event_id, channel, ordered)
        SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bool[])
        ON CONFLICT DO NOTHING
        "#,
        webhooks,
        event_ids,
        channels,
        ordered,
    )
    .execute(&mut *tx)
    .await?;
    // Joined with the ids rather than `id = ANY($1)`: a generic plan for a long array can scan
    // the whole table (seconds, on a backlog of 100,000).
    sqlx::query!(
        r#"
        UPDATE webhook_events e SET dispatched = true
        FROM UNNEST($1::bigint[]) AS u(id) WHERE e.id = u.id
        "#,
        events
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM webhook_events e USING UNNEST($1::bigint[]) AS u(id) WHERE e.id = u.id",
        unwanted
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub struct Leased {
    pub webhook_id: String,
    pub event_id: i64,
    pub lease: i64,
    pub attempts: i32,
    pub channel: String,
    pub ordered: bool,
}

/// Leases up to `limit` due deliveries of enabled webhooks not in `busy`, in event id order, for
/// `lease_ms` from the moment the statement runs (`clock_timestamp()`: the transaction may have
/// waited for its turn); returned in event id order.
///
/// It reads lane by lane (a webhook and a channel): the lanes with pending deliveries are found by
/// skipping through the lane index, and of each lane only its first `per_lane` deliveries that
/// are due or hold the lane back. A `message.created` delivery is left while an earlier one of its
/// lane is leased, or waits for a retry within `hold_ms` of its first attempt; other types are
/// never held back. So a round costs a probe per lane and `per_lane` rows at most, however long
/// a lane's backlog.
pub async fn lease(
    tx: &mut PgConnection,
    limit: i64,
    per_lane: i64,
    busy: &[String],
    hold_ms: i64,
    lease_ms: i64,
) -> Result<Vec<Leased>, sqlx::Error> {
    sqlx::query_as!(
        Leased,
        r#"
        WITH RECURSIVE lanes (webhook_id, channel) AS (
            (SELECT webhook_id, channel FROM webhook_deliveries
             WHERE state = 'pending' ORDER BY webhook_id, channel LIMIT 1)
            UNION ALL
            SELECT next.webhook_id, next.channel FROM lanes l CROSS JOIN LATERAL (
                SELECT webhook_id, channel FROM webhook_deliveries
                WHERE state = 'pending' AND (webhook_id, channel) > (l.webhook_id, l.channel)
                ORDER BY webhook_id, channel LIMIT 1
            ) next
        ), heads AS (
            SELECT r.webhook_id, r.event_id, r.ordered,
                   r.next_attempt_at <= now()
                       AND (r.leased_until IS NULL OR r.leased_until <= now()) AS ready,
                   COALESCE(bool_or(COALESCE(
                       r.ordered AND (r.leased_until > now()
                                      OR (r.next_attempt_at > now()
                                          AND r.first_attempt_at > now() - make_interval(secs => $4::float8 / 1000))),
                       false)) OVER (PARTITION BY r.webhook_id, r.channel ORDER BY r.event_id), false) AS held
            FROM lanes l
            JOIN webhooks w ON w.id = l.webhook_id AND w.enabled AND NOT (w.id = ANY ($3))
            CROSS JOIN LATERAL (
                SELECT d.webhook_id, d.channel, d.event_id, d.ordered, d.next_attempt_at,
                       d.leased_until, d.first_attempt_at
                FROM webhook_deliveries d
                WHERE d.webhook_id = l.webhook_id AND d.channel = l.channel AND d.state = 'pending'
                  AND (d.next_attempt_at <= now() OR d.leased_until > now()
                       OR d.first_attempt_at > now() - make_interval(secs => $4::float8 / 1000))
                ORDER BY d.event_id
                LIMIT $2
            ) r
        ), due AS (
            SELECT webhook_id, event_id FROM heads
            WHERE ready AND NOT (ordered AND held)
            ORDER BY event_id
            LIMIT $1
        ), leased AS (
            UPDATE webhook_deliveries d
            SET lease = nextval('webhook_leases_seq'),
                leased_until = clock_timestamp() + make_interval(secs => $5::float8 / 1000)
            FROM due WHERE d.webhook_id = due.webhook_id AND d.event_id = due.event_id
            RETURNING d.webhook_id, d.event_id, d.lease, d.attempts, d.channel, d.ordered
        )
        SELECT webhook_id AS "webhook_id!", event_id AS "event_id!", lease AS "lease!",
               attempts AS "attempts!", channel AS "channel!", ordered AS "ordered!"
        FROM leased ORDER BY event_id
        "#,
        limit,
        per_lane,
        busy,
        hold_ms as f64,
        lease_ms as f64,
    )
    .fetch_all(tx)
    .await
}

pub struct EventRow {
    pub id: i64,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub data: Option<serde_json::Value>,
    pub message_id: Option<i64>,
}

pub async fn events(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as!(
        EventRow,
        r#"
        SELECT e.id, e.type AS event_type, e.created_at, e.data, e.message_id
        FROM UNNEST($1::bigint[]) AS u(id) JOIN webhook_events e ON e.id = u.id
        "#,
        ids,
    )
    .fetch_all(db)
    .await
}

/// Stored messages by id (those still stored).
pub async fn messages(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as!(
        Message,
        r#"
        SELECT m.id, m.channel_id, m.content, m.sender_type, m.pod_key, m.created_at, m.mentions,
               m.metadata, m.reply_to, COALESCE(m.thread_id, m.id) AS "thread_id!"
        FROM UNNEST($1::bigint[]) AS u(id) JOIN messages m ON m.id = u.id
        "#,
        ids,
    )
    .fetch_all(db)
    .await
}

pub struct Signing {
    pub id: String,
    pub url: String,
    pub secret: Vec<u8>,
    pub previous_secret: Option<Vec<u8>>,
}

/// Where and how to send for these webhooks: the URL and the secrets that sign now.
pub async fn signing(db: impl PgExecutor<'_>, ids: &[String]) -> Result<Vec<Signing>, sqlx::Error> {
    sqlx::query_as!(
        Signing,
        r#"
        SELECT id, url, secret,
               CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous_secret
        FROM webhooks WHERE id = ANY($1)
        "#,
        ids,
    )
    .fetch_all(db)
    .await
}

/// Attempts made under their leases, recorded in one statement (an attempt whose lease was
/// taken since records nothing).
#[derive(Default)]
pub struct Attempts {
    pub webhook_ids: Vec<String>,
    pub event_ids: Vec<i64>,
    pub leases: Vec<i64>,
    pub states: Vec<String>,
    pub status_codes: Vec<Option<i32>>,
    pub errors: Vec<Option<String>>,
    pub next_attempts: Vec<DateTime<Utc>>,
}

pub async fn record_attempts(
    db: impl PgExecutor<'_>,
    attempts: &Attempts,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE webhook_deliveries d SET
            state = a.state, attempts = d.attempts + 1, last_status_code = a.status_code,
            last_error = a.error, next_attempt_at = a.next_attempt_at,
            first_attempt_at = COALESCE(d.first_attempt_at, now()),
            lease = NULL, leased_until = NULL
        FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::int[], $6::text[],
                    $7::timestamptz[])
             AS a(webhook_id, event_id, lease, state, status_code, error, next_attempt_at)
        WHERE d.webhook_id = a.webhook_id AND d.event_id = a.event_id AND d.lease = a.lease
        "#,
        &attempts.webhook_ids,
        &attempts.event_ids,
        &attempts.leases,
        &attempts.states,
        &attempts.status_codes as &[Option<i32>],
        &attempts.errors as &[Option<String>],
        &attempts.next_attempts,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Gives back leases not used.
pub async fn release(
    db: impl PgExecutor<'_>,
    webhook_ids: &[String],
    event_ids: &[i64],
    leases: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE webhook_deliveries d SET lease = NULL, leased_until = NULL
        FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS r(webhook_id, event_id, lease)
        WHERE d.webhook_id = r.webhook_id AND d.event_id = r.event_id AND d.lease = r.lease
        "#,
        webhook_ids,
        event_ids,
        leases,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// 410 Gone: the webhook stops until it is enabled again.
pub async fn disable(db: impl PgExecutor<'_>, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE webhooks SET enabled = false, updated_at = now() WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Drops up to 10,000 events older than `retention_ms` that nothing waits to send; returns how
/// many (the worker repeats while batches come back full).
pub async fn prune(db: impl PgExecutor<'_>, retention_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        DELETE FROM webhook_events WHERE id IN (
            SELECT e.id FROM webhook_events e
            WHERE e.created_at < now() - make_interval(secs => $1::float8 / 1000) AND e.dispatched
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                              WHERE d.event_id = e.id AND d.state = 'pending')
            ORDER BY e.created_at
            LIMIT 10000)
        "#,
        retention_ms as f64,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// What `/metrics` shows of the queue.
#[derive(Debug)]
pub struct Queue {
    /// Deliveries pending, and events not yet made into deliveries.
    pub depth: i64,
    /// Age of the oldest of those, in seconds (0 when there is none).
    pub oldest_age_seconds: f64,
}

pub async fn queue(db: impl PgExecutor<'_>) -> Result<Queue, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        WITH pending AS (
            SELECT created_at FROM webhook_deliveries WHERE state = 'pending'
            UNION ALL
            SELECT created_at FROM webhook_events WHERE NOT dispatched
        )
        SELECT count(*) AS "depth!",
               COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS "oldest!"
        FROM pending
        "#,
    )
    .fetch_one(db)
    .await?;
    Ok(Queue {
        depth: row.depth,
        oldest_age_seconds: row.oldest,
    })
}
