//! The delivery worker, one per instance.
//!
//! A round, on every instance's turn of one advisory lock: events not yet dispatched become one
//! delivery per webhook of their app whose `events` and `channels` match, then due deliveries are
//! leased, oldest event first. Leased deliveries of one webhook and channel form a lane, sent one
//! after the other by a task of its own, so a slow receiver holds only its own lanes (at most
//! [`LANES_PER_WEBHOOK`] of them, among `--webhook-concurrency` for the instance).
//!
//! A lease lasts two attempt timeouts and a second; an attempt starts only while its lease has
//! a full timeout left, and is recorded only under its lease, so no attempt is made twice, by
//! one instance or two. An instance that dies leaves leases that lapse, and another sends again
//! (at least once).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::Instant,
};

use super::{
    db::{self, Attempts, Leased},
    model::event_id,
    send::{Outcome, Sender, signature},
};
use crate::{auth::patterns::Pattern, state::AppState};

/// Events dispatched per round.
const DISPATCH_BATCH: i64 = 2000;
/// Deliveries leased per round.
const LEASE_BATCH: i64 = 2000;
/// Lanes one webhook may have in flight on one instance.
pub const LANES_PER_WEBHOOK: usize = 8;
/// A lease lasts this many attempt timeouts, and a second more: a lane starts an attempt only
/// while a whole timeout is left.
const LEASE_TIMEOUTS: u32 = 2;
/// How long a woken worker waits for more events before its round.
const GATHER: Duration = Duration::from_millis(5);
/// Old events are pruned this often, in batches of this many.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: u64 = 10_000;
/// Deliveries leased per free lane (a round leases no more than its free lanes can take), and
/// read of one lane at most: a lane with a backlog sends this many per round.
const LEASE_PER_LANE: i64 = 500;

/// Presence changes waiting to be recorded, at most.
const PRESENCE_QUEUE: usize = 10_000;

/// Starts the worker, and the task that records the engine's presence changes.
pub fn start(state: &AppState) -> JoinHandle<()> {
    let (sink, changes) = tokio::sync::mpsc::channel(PRESENCE_QUEUE);
    let presence_out = state.realtime.engine.hub().presence_out.clone();
    presence_out.connect(sink);
    let presence = AbortOnDrop(tokio::spawn(record_presence(state.clone(), changes)));
    let state = state.clone();
    tokio::spawn(async move {
        // Stopped with the worker, however the worker ends (it is aborted at shutdown).
        let _presence = presence;
        run(state).await;
    })
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records `presence.joined` and `presence.left` for apps with webhooks that want them.
async fn record_presence(
    state: AppState,
    mut changes: tokio::sync::mpsc::Receiver<crate::realtime::engine::hub::PresenceChange>,
) {
    while let Some(change) = changes.recv().await {
        let (app, channel) = crate::apps::split_scoped(&change.channel);
        // Apps without webhooks (as far as this instance knows, a second old at most) record
        // nothing, and cost no round trip.
        if !state.webhooks.knows_app(app) {
            continue;
        }
        let event_type = match change.joined {
            true => "presence.joined",
            false => "presence.left",
        };
        let mut body = serde_json::json!({"channel": channel, "peerId": &*change.peer});
        if let Some(metadata) = &change.metadata
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(metadata.get())
        {
            body["metadata"] = value;
        }
        match db::record(
            &state.db,
            app,
            event_type,
            channel,
            &body,
            change.dedupe.as_deref(),
        )
        .await
        {
            Ok(true) => state.webhooks.wake(),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "a presence event was not recorded for webhooks"),
        }
    }
}

/// Lanes in flight on this instance.
struct Lanes {
    permits: Arc<Semaphore>,
    per_webhook: Mutex<HashMap<String, usize>>,
}

impl Lanes {
    fn busy(&self) -> Vec<String> {
        self.per_webhook
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, n)| **n >= LANES_PER_WEBHOOK)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A place for a lane of `webhook`, if one is free.
    fn enter(self: &Arc<Self>, webhook: &str) -> Option<LaneGuard> {
        let mut per_webhook = self.per_webhook.lock().expect("not poisoned");
        if per_webhook
            .get(webhook)
            .is_some_and(|n| *n >= LANES_PER_WEBHOOK)
        {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        *per_webhook.entry(webhook.to_owned()).or_default() += 1;
        Some(LaneGuard {
            lanes: self.clone(),
            webhook: webhook.to_owned(),
            _permit: permit,
        })
    }
}

struct LaneGuard {
    lanes: Arc<Lanes>,
    webhook: String,
    _permit: OwnedSemaphorePermit,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        let mut per_webhook = self.lanes.per_webhook.lock().expect("not poisoned");
        if let Some(count) = per_webhook.get_mut(&self.webhook) {
            *count -= 1;
            if *count == 0 {
                per_webhook.remove(&self.webhook);
            }
        }
    }
}

async fn run(state: AppState) {
    let config = state.config.webhooks.clone();
    let sender = Sender::new(config.timeout, config.allow_private_networks);
    let lanes = Arc::new(Lanes {
        permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
        per_webhook: Mutex::default(),
    });
    let mut shutdown = state.shutdown.subscribe();
    let mut next_refresh = Instant::now();
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = Instant::now();
        if now >= next_refresh {
            match db::apps_with_webhooks(&state.db).await {
                Ok(apps) => {
                    let hub = state.realtime.engine.hub();
                    hub.presence_out.want(!apps.is_empty());
                    state.webhooks.set_apps(apps.into_iter().collect());
                }
                Err(error) => tracing::warn!(%error, "webhook apps not read"),
            }
            next_refresh = now + config.poll_interval;
        }
        if now >= next_prune {
            let retention = config.retention.as_millis() as i64;
            // Batches of 10,000 until one comes back short (at most a million a minute).
            for _ in 0..100 {
                match db::prune(&state.db, retention).await {
                    Ok(n) if n == PRUNE_BATCH => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "old webhook events not pruned");
                        break;
                    }
                }
            }
            next_prune = now + PRUNE_EVERY;
        }
        let more = match round(&state, &sender, &lanes).await {
            Ok(more) => more,
            Err(error) => {
                tracing::warn!(%error, "webhook round failed; trying again at the next poll");
                false
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            () = state.webhooks.wake.notified() => {
                // Woken by an event: the events of the next few milliseconds go in the same
                // round, so a busy channel costs a round per few milliseconds, not per post.
                tokio::time::sleep(GATHER).await;
            }
            () = tokio::time::sleep(config.poll_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// One round: dispatch, lease, and start a lane per webhook and channel. Returns whether there
/// may be more to do at once.
async fn round(state: &AppState, sender: &Sender, lanes: &Arc<Lanes>) -> Result<bool, sqlx::Error> {
    let config = &state.config.webhooks;
    let lease_for = config.timeout * LEASE_TIMEOUTS + Duration::from_secs(1);
    // Taken before the leases are, so the lanes' deadline passes before the leases lapse.
    let deadline = Instant::now() + lease_for;
    let limit = (lanes.permits.available_permits() as i64 * LEASE_PER_LANE).min(LEASE_BATCH);
    let mut tx = state.db.begin().await?;
    db::take_turn(&mut tx).await?;
    let dispatched = dispatch(&mut tx).await?;
    let leased = match limit {
        0 => Vec::new(),
        _ => {
            db::lease(
                &mut tx,
                limit,
                LEASE_PER_LANE,
                &lanes.busy(),
                config.order_hold.as_millis() as i64,
                lease_for.as_millis() as i64,
            )
            .await?
        }
    };
    tx.commit().await?;
    let full =
        dispatched == DISPATCH_BATCH as usize || (limit > 0 && leased.len() == limit as usize);
    if leased.is_empty() {
        return Ok(full);
    }
    let batch = match Batch::load(state, &leased).await {
        Ok(batch) => Arc::new(batch),
        Err(error) => {
            // Given back at once rather than held until the leases lapse.
            release(state, &leased).await?;
            return Err(error);
        }
    };
    // Lanes in the order of their first event.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut groups: HashMap<(String, String), Vec<Leased>> = HashMap::new();
    for row in leased {
        let key = (row.webhook_id.clone(), row.channel.clone());
        let group = groups.entry(key.clone()).or_default();
        if group.is_empty() {
            order.push(key);
        }
        group.push(row);
    }
    let mut unsent = Vec::new();
    for key in order {
        let rows = groups.remove(&key).expect("grouped");
        match lanes.enter(&key.0) {
            Some(guard) => {
                let lane = Lane {
                    state: state.clone(),
                    sender: sender.clone(),
                    batch: batch.clone(),
                    rows,
                    deadline,
                };
                tokio::spawn(lane.run(guard));
            }
            None => unsent.extend(rows),
        }
    }
    if !unsent.is_empty() {
        release(state, &unsent).await?;
        // Lanes are full: a lane that ends wakes the worker.
        return Ok(false);
    }
    Ok(full)
}

/// Makes undispatched events into deliveries; returns how many events it took.
async fn dispatch(tx: &mut sqlx::PgConnection) -> Result<usize, sqlx::Error> {
    let events = db::undispatched(tx, DISPATCH_BATCH).await?;
    if events.is_empty() {
        return Ok(0);
    }
    let apps: Vec<i64> = events
        .iter()
        .map(|e| e.app_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let subscribers: Vec<(db::Subscriber, Vec<Pattern>)> = db::subscribers(tx, &apps)
        .await?
        .into_iter()
        .map(|s| {
            let patterns = s.channels.iter().map(|p| Pattern::new(p)).collect();
            (s, patterns)
        })
        .collect();
    let (mut webhooks, mut event_ids, mut channels, mut ordered) = (vec![], vec![], vec![], vec![]);
    let mut unwanted = Vec::new();
    for event in &events {
        let before = webhooks.len();
        for (subscriber, patterns) in &subscribers {
            if subscriber.app_id == event.app_id
                && subscriber.events.contains(&event.event_type)
                && patterns.iter().any(|p| p.matches(&event.channel))
            {
                webhooks.push(subscriber.id.clone());
                event_ids.push(event.id);
                channels.push(event.channel.clone());
                ordered.push(event.event_type == "message.created");
            }
        }
        if webhooks.len() == before {
            unwanted.push(event.id);
        }
    }
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    db::dispatch(
        tx, &ids, &unwanted, &webhooks, &event_ids, &channels, &ordered,
    )
    .await?;
    Ok(events.len())
}

async fn release(state: &AppState, rows: &[Leased]) -> Result<(), sqlx::Error> {
    let webhooks: Vec<String> = rows.iter().map(|r| r.webhook_id.clone()).collect();
    let events: Vec<i64> = rows.iter().map(|r| r.event_id).collect();
    let leases: Vec<i64> = rows.iter().map(|r| r.lease).collect();
    db::release(&state.db, &webhooks, &events, &leases).await
}

/// What one round's lanes send: each event's body, each webhook's URL and signing keys.
struct Batch {
    bodies: HashMap<i64, Bytes>,
    targets: HashMap<String, Target>,
}

struct Target {
    url: String,
    keys: Vec<Vec<u8>>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    timestamp: DateTime<Utc>,
    data: serde_json::Value,
}

impl Batch {
    async fn load(state: &AppState, leased: &[Leased]) -> Result<Self, sqlx::Error> {
        let event_ids: Vec<i64> = leased
            .iter()
            .map(|r| r.event_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let events = db::events(&state.db, &event_ids).await?;
        let message_ids: Vec<i64> = events.iter().filter_map(|e| e.message_id).collect();
        let mut messages: HashMap<i64, serde_json::Value> = HashMap::new();
        if !message_ids.is_empty() {
            for message in db::messages(&state.db, &message_ids).await? {
                let value = serde_json::to_value(&message).unwrap_or_default();
                messages.insert(message.id, value);
            }
        }
        let bodies = events
            .into_iter()
            .map(|event| {
                let data = match event.message_id {
                    Some(id) => messages.remove(&id).unwrap_or_default(),
                    None => event.data.unwrap_or_default(),
                };
                let body = Body {
                    event_type: &event.event_type,
                    timestamp: event.created_at,
                    data,
                };
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                (event.id, Bytes::from(bytes))
            })
            .collect();
        let webhook_ids: Vec<String> = leased
            .iter()
            .map(|r| r.webhook_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let master = &state.config.master_key;
        let targets = db::signing(&state.db, &webhook_ids)
            .await?
            .into_iter()
            .map(|row| {
                let secrets = std::iter::once(row.secret).chain(row.previous_secret);
                let keys = secrets
                    .filter_map(|blob| master.decrypt(&row.id, &blob))
                    .filter_map(|secret| super::send::secret_key(&secret))
                    .collect();
                (row.id, Target { url: row.url, keys })
            })
            .collect();
        Ok(Self { bodies, targets })
    }
}

/// Deliveries of one webhook and channel, sent in event order.
struct Lane {
    state: AppState,
    sender: Sender,
    batch: Arc<Batch>,
    rows: Vec<Leased>,
    /// When the leases lapse.
    deadline: Instant,
}

impl Lane {
    async fn run(self, _guard: LaneGuard) {
        let config = &self.state.config.webhooks;
        let stats = &self.state.webhooks.stats;
        let mut attempts = Attempts::default();
        let mut unsent: Vec<Leased> = Vec::new();
        let mut gone = None;
        let mut rows = self.rows.into_iter();
        for row in rows.by_ref() {
            let shutting_down = *self.state.shutdown.subscribe().borrow();
            if shutting_down
                || Instant::now() + config.timeout + Duration::from_secs(1) > self.deadline
            {
                unsent.push(row);
                break;
            }
            let (Some(body), Some(target)) = (
                self.batch.bodies.get(&row.event_id),
                self.batch.targets.get(&row.webhook_id),
            ) else {
                // The webhook or the event was deleted since the lease.
                continue;
            };
            let id = event_id(row.event_id);
            let timestamp = Utc::now().timestamp();
            let outcome = if target.keys.is_empty() {
                // Never sent unsigned.
                Outcome::Failed {
                    status: None,
                    error: "the webhook's secret does not open with this instance's master key"
                        .to_owned(),
                }
            } else {
                let signed = signature(&target.keys, &id, timestamp, body);
                self.sender
                    .post(&target.url, &id, timestamp, &signed, body.clone())
                    .await
            };
            let stop = match &outcome {
                Outcome::Delivered(_) => false,
                Outcome::Gone => {
                    gone = Some(row.webhook_id.clone());
                    true
                }
                // A later message.created of this lane waits for this one.
                Outcome::Failed { .. } => row.ordered,
            };
            let (state, status, error, next) = settle(&row, &outcome, &config.retry_schedule);
            let counter = match (&outcome, state) {
                (Outcome::Delivered(_), _) => &stats.delivered,
                (Outcome::Gone, _) => &stats.gone,
                (_, "failed") => &stats.failed,
                _ => &stats.retried,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            attempts.webhook_ids.push(row.webhook_id.clone());
            attempts.event_ids.push(row.event_id);
            attempts.leases.push(row.lease);
            attempts.states.push(state.to_owned());
            attempts.status_codes.push(status);
            attempts.errors.push(error);
            attempts.next_attempts.push(next);
            if stop {
                break;
            }
        }
        unsent.extend(rows);
        let db = &self.state.db;
        if let Some(webhook) = &gone
            && let Err(error) = db::disable(db, webhook).await
        {
            tracing::warn!(%error, webhook, "a webhook answered 410 but was not disabled");
        }
        if !attempts.event_ids.is_empty()
            && let Err(error) = db::record_attempts(db, &attempts).await
        {
            // The leases lapse and the events are sent again: at least once.
            tracing::warn!(%error, "webhook attempts not recorded");
        }
        if !unsent.is_empty()
            && let Err(error) = release(&self.state, &unsent).await
        {
            tracing::warn!(%error, "webhook leases not given back; they lapse");
        }
        self.state.webhooks.wake();
    }
}

/// An attempt's record: state, status code, error and when the next attempt is due.
fn settle(
    row: &Leased,
    outcome: &Outcome,
    schedule: &[Duration],
) -> (&'static str, Option<i32>, Option<String>, DateTime<Utc>) {
    let now = Utc::now();
    match outcome {
        Outcome::Delivered(status) => ("delivered", Some(i32::from(*status)), None, now),
        // Pending, due at once: it goes when the webhook is enabled again.
        Outcome::Gone => (
            "pending",
            Some(410),
            Some("HTTP 410: the webhook was disabled".to_owned()),
            now,
        ),
        Outcome::Failed { status, error } => {
            let status = status.map(i32::from);
            let made = row.attempts.max(0) as usize + 1;
            match schedule.get(made - 1) {
                Some(wait) => {
                    let jitter = 0.9 + rand::random::<f64>() * 0.2;
                    let wait = wait.mul_f64(jitter);
                    let next = now + chrono::Duration::from_std(wait).unwrap_or_default();
                    ("pending", status, Some(error.clone()), next)
                }
                None => ("failed", status, Some(error.clone()), now),
            }
        }
    }
}
