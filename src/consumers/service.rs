//! What the consumer-group routes and MCP's `claim_messages` and `ack_messages` do, behind the
//! transport.

use std::{collections::BTreeSet, sync::atomic::Ordering, time::Duration};

use serde_json::Value;
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use super::{
    db::{self, Created, Group, Leases, NewGroup},
    model::{
        Acked, Claim, Consumer, CreateConsumer, DeadLetter, Delivery, Extended, Member, Nacked,
    },
};
use crate::{
    config::{format_api_duration, is_api_duration, parse_duration},
    error::{ApiError, FieldErrors},
    messages::model::is_printable_ascii,
    metrics::Waiting,
    state::AppState,
};

/// Longest claim `wait`, in seconds.
pub const MAX_WAIT_SECS: f64 = 30.0;
/// Most messages, and most delivery ids, per request.
pub const MAX_BATCH: usize = 100;
const ACK_WAIT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(12 * 3600));
const MAX_DELAY: Duration = Duration::from_secs(12 * 3600);
/// How many times a statement that PostgreSQL chose as a deadlock's victim is run again.
const DEADLOCK_RETRIES: usize = 3;

/// Runs `statement` again when PostgreSQL broke a deadlock by failing it (SQLSTATE 40P01): a
/// claim and an ack that lock the same deliveries from either side of a lease's expiry.
async fn retrying<T, F, Fut>(mut statement: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match statement().await {
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some("40P01") && tries < DEADLOCK_RETRIES =>
            {
                tries += 1;
            }
            done => return done,
        }
    }
}

/// `name` as a group's name: 1-64 of `a-z 0-9 _ -`.
pub fn is_consumer_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn not_found(channel_id: i64, name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "consumer group `{name}` not found on channel {channel_id}"
    ))
}

/// The group, or 404. The caller has checked that it may use the channel.
pub async fn group(state: &AppState, channel_id: i64, name: &str) -> Result<Group, ApiError> {
    if !is_consumer_name(name) {
        return Err(not_found(channel_id, name));
    }
    match db::find(&state.db, channel_id, name).await? {
        Some(group) => Ok(group),
        None if crate::channels::channel_state(&state.db, channel_id)
            .await?
            .is_none() =>
        {
            Err(ApiError::channel_not_found(channel_id))
        }
        None => Err(not_found(channel_id, name)),
    }
}

/// Creates a group; every bad field is named at once.
pub async fn create(
    state: &AppState,
    channel_id: i64,
    new: &CreateConsumer,
) -> Result<Consumer, ApiError> {
    let mut errors = FieldErrors::default();
    if !is_consumer_name(&new.name) {
        errors.add_with(
            "name",
            "format",
            "name: 1-64 characters of a-z, 0-9, `_` and `-`",
        );
    }
    let start_id = match &new.start {
        Some(Value::Number(id)) => crate::json::integral(id).filter(|id| *id >= 0),
        _ => None,
    };
    let (start, frontier) = match (&new.start, start_id) {
        (None, _) => ("latest".to_owned(), None),
        (Some(Value::String(named)), _) if named == "latest" => (named.clone(), None),
        (Some(Value::String(named)), _) if named == "earliest" => (named.clone(), Some(0)),
        (_, Some(id)) => (id.to_string(), Some(id)),
        (Some(_), None) => {
            errors.add_with(
                "start",
                "format",
                "start: \"latest\", \"earliest\" or a message id (the group takes the messages after it)",
            );
            (String::new(), None)
        }
    };
    let ack_wait = match new.ack_wait.as_deref() {
        None => Some(Duration::from_secs(30)),
        Some(text) => duration(text, ACK_WAIT_RANGE),
    };
    if ack_wait.is_none() {
        errors.add_with(
            "ack_wait",
            "format",
            "ack_wait: a duration from 1s to 12h, such as 30s, 5m or 1h30m",
        );
    }
    let max_deliveries = new.max_deliveries.unwrap_or(5);
    if !(1..=100).contains(&max_deliveries) {
        errors.add_with(
            "max_deliveries",
            "range",
            format!("max_deliveries must be 1-100 (got {max_deliveries})"),
        );
    }
    if let Some(name) = &new.mentions
        && !is_printable_ascii(name, 100)
    {
        errors.add_with(
            "mentions",
            "format",
            "mentions must be a name of 1-100 printable ASCII characters",
        );
    }
    errors.into_result()?;
    let ack_wait = ack_wait.unwrap_or_default();
    let created = db::create(
        &state.db,
        channel_id,
        &NewGroup {
            name: &new.name,
            start: &start,
            frontier,
            ack_wait_ms: ack_wait.as_millis() as i64,
            max_deliveries: max_deliveries as i32,
            mentions: new.mentions.as_deref(),
        },
    )
    .await?;
    match created {
        Created::Group(group) => shown(state, &group).await,
        Created::NoChannel => Err(ApiError::channel_not_found(channel_id)),
        Created::NameTaken => Err(ApiError::ConsumerExists(new.name.clone())),
    }
}

/// A duration as the API takes it, within `range`.
fn duration(text: &str, (min, max): (Duration, Duration)) -> Option<Duration> {
    is_api_duration(text)
        .then(|| parse_duration(text).ok())
        .flatten()
        .filter(|duration| (min..=max).contains(duration))
}

/// The group as the API shows it, with its counts.
pub async fn shown(state: &AppState, group: &Group) -> Result<Consumer, ApiError> {
    let counts = db::counts(&state.db, group).await?;
    let members = db::members(&state.db, group.id).await?;
    let start = match group.start.parse::<i64>() {
        Ok(id) => Value::from(id),
        Err(_) => Value::from(group.start.clone()),
    };
    Ok(Consumer {
        name: group.name.clone(),
        channel_id: group.channel_id,
        start,
        ack_wait: format_api_duration(Duration::from_millis(group.ack_wait_ms.unsigned_abs())),
        max_deliveries: group.max_deliveries,
        mentions: group.mentions.clone(),
        pending: counts.pending,
        in_flight: counts.in_flight,
        acked: counts.acked,
        dead: counts.dead,
        oldest_pending_age_ms: counts.oldest_pending_age_ms,
        members: members
            .into_iter()
            .map(|(member, last_seen)| Member { member, last_seen })
            .collect(),
        created_at: group.created_at,
    })
}

/// A claim's arguments, checked.
pub struct ClaimArgs {
    pub member: String,
    pub max: i64,
    pub wait: Duration,
}

pub fn claim_args(claim: Claim) -> Result<ClaimArgs, ApiError> {
    let mut errors = FieldErrors::default();
    if !is_printable_ascii(&claim.member, 100) {
        errors.add_with(
            "member",
            "format",
            "member must be 1-100 printable ASCII characters",
        );
    }
    let max = claim.max.unwrap_or(1);
    if !(1..=MAX_BATCH as i64).contains(&max) {
        errors.add_with("max", "range", format!("max must be 1-100 (got {max})"));
    }
    let wait = claim.wait.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECS).contains(&wait) {
        errors.add_with(
            "wait",
            "range",
            format!("wait must be 0-30 seconds (got {wait})"),
        );
    }
    errors.into_result()?;
    Ok(ClaimArgs {
        member: claim.member,
        max,
        wait: Duration::from_secs_f64(wait),
    })
}

/// Claims up to `max` messages. With a `wait`, an empty claim is held until a message is
/// committed (on any instance) that the group wants, a held-back one comes due, or the wait ends.
pub async fn claim(
    state: &AppState,
    group: &Group,
    args: &ClaimArgs,
) -> Result<Vec<Delivery>, ApiError> {
    // Followed before the first claim: a message committed after it still wakes the waiter.
    let follow = match args.wait.is_zero() {
        false => Some(state.delivery.follow(group.channel_id).await?),
        true => None,
    };
    let mut feed = follow
        .as_ref()
        .map(|_| state.delivery.feeds().subscribe(group.channel_id));
    let mut wakes = state.consumer_wakes.subscribe();
    let deadline = Instant::now() + args.wait;
    let mut shutdown = state.shutdown.subscribe();
    let mut waiting = None;
    // The first claim waits for its turn; one woken from waiting does not hold a connection
    // while another claim of the group has it, but tries again shortly.
    let mut wait_turn = true;
    loop {
        let claimed =
            retrying(|| db::claim(&state.db, group.id, &args.member, args.max, wait_turn)).await?;
        let claimed = match claimed {
            db::Claim::Claimed(claimed) => claimed,
            db::Claim::Gone => return Err(not_found(group.channel_id, &group.name)),
            db::Claim::Busy if Instant::now() >= deadline => return Ok(Vec::new()),
            db::Claim::Busy => {
                let pause = Duration::from_millis(5 + rand::random::<u64>() % 20);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if !claimed.leased.is_empty() {
            let redelivered = claimed.leased.iter().filter(|l| l.attempt > 1).count();
            state
                .metrics
                .consumer_redeliveries
                .fetch_add(redelivered as u64, Ordering::Relaxed);
            return Ok(claimed
                .leased
                .into_iter()
                .map(|leased| Delivery {
                    delivery_id: delivery_id(leased.message.id, leased.lease),
                    attempt: leased.attempt,
                    lease_expires_at: leased.lease_expires_at,
                    message: leased.message,
                })
                .collect());
        }
        let Some(feed) = feed.as_mut() else {
            return Ok(Vec::new());
        };
        if Instant::now() >= deadline {
            return Ok(Vec::new());
        }
        waiting.get_or_insert_with(|| Waiting::new(&state.metrics));
        wait_turn = false;
        // Look again when a held-back message comes due, and at least every recheck interval
        // (a nack on another instance wakes nobody here).
        let recheck = state.config.realtime.consumer_recheck_interval;
        let mut wake = deadline.min(Instant::now() + recheck);
        if let Some(until) = claimed.next_due {
            // Never sooner than 20 ms: a message due "now" that another claim holds is not
            // worth a transaction per millisecond.
            wake = wake.min(Instant::now() + until.max(Duration::from_millis(20)));
        }
        loop {
            tokio::select! {
                woken = tokio::time::timeout_at(wake, feed.recv()) => match woken {
                    Ok(Ok(message)) => {
                        let wanted = message.id > group.frontier
                            && group
                                .mentions
                                .as_ref()
                                .is_none_or(|name| message.mentions.contains(name));
                        if !wanted {
                            continue;
                        }
                    }
                    Ok(Err(RecvError::Lagged(_))) => {}
                    Ok(Err(RecvError::Closed)) => return Ok(Vec::new()),
                    Err(_) => {}
                },
                // A nack or a retry of this group on this instance.
                woken = wakes.recv() => match woken {
                    Ok(id) if id != group.id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Ok(Vec::new()),
                },
                _ = shutdown.wait_for(|stopping| *stopping) => return Ok(Vec::new()),
            }
            break;
        }
    }
}

/// `<message id>.<lease>`.
fn delivery_id(message_id: i64, lease: i64) -> String {
    format!("{message_id}.{lease}")
}

/// Delivery ids as given, parsed and deduplicated.
struct Given {
    ids: Vec<String>,
    leases: Leases,
}

fn given(ids: Vec<String>, mut errors: FieldErrors) -> Result<Given, ApiError> {
    if ids.is_empty() || ids.len() > MAX_BATCH {
        errors.add_with(
            "delivery_ids",
            "length",
            format!("delivery_ids holds 1-100 ids (got {})", ids.len()),
        );
    }
    let parsed: Vec<Option<(i64, i64)>> = ids.iter().map(|id| parse_delivery_id(id)).collect();
    if parsed.iter().any(Option::is_none) {
        errors.add_with(
            "delivery_ids",
            "format",
            "each delivery id is one that claim returned, such as \"42.17\"",
        );
    }
    errors.into_result()?;
    // Each lease once, in message id order (the order every statement locks deliveries in).
    let leases: BTreeSet<(i64, i64)> = parsed.into_iter().flatten().collect();
    let ids = leases
        .iter()
        .map(|&(message, lease)| delivery_id(message, lease))
        .collect();
    let (message_ids, leases) = leases.into_iter().unzip();
    Ok(Given {
        ids,
        leases: Leases {
            message_ids,
            leases,
        },
    })
}

/// `<message id>.<lease>`: two numbers of at most 18 digits without leading zeros, as
/// [`delivery_id`] writes them (what the OpenAPI pattern says).
fn parse_delivery_id(id: &str) -> Option<(i64, i64)> {
    let number = |part: &str| {
        let plain = (1..=18).contains(&part.len())
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'));
        plain.then(|| part.parse::<i64>().ok()).flatten()
    };
    let (message, lease) = id.split_once('.')?;
    Some((number(message)?, number(lease)?))
}

/// The ids given that are not among `done`.
fn lost(given: &Given, done: impl IntoIterator<Item = (i64, i64)>) -> Vec<String> {
    let done: BTreeSet<String> = done
        .into_iter()
        .map(|(message, lease)| delivery_id(message, lease))
        .collect();
    given
        .ids
        .iter()
        .filter(|id| !done.contains(*id))
        .cloned()
        .collect()
}

pub async fn ack(state: &AppState, group: &Group, ids: Vec<String>) -> Result<Acked, ApiError> {
    let given = given(ids, FieldErrors::default())?;
    let acked = retrying(|| db::ack(&state.db, group.id, &given.leases)).await?;
    Ok(Acked {
        acked: acked.len() as i64,
        lost: lost(&given, acked),
    })
}

pub async fn nack(
    state: &AppState,
    group: &Group,
    ids: Vec<String>,
    delay: Option<&str>,
) -> Result<Nacked, ApiError> {
    let mut errors = FieldErrors::default();
    let delay = match delay {
        None => Some(Duration::ZERO),
        Some(text) => duration(text, (Duration::ZERO, MAX_DELAY)),
    };
    if delay.is_none() {
        errors.add_with(
            "delay",
            "format",
            "delay: a duration up to 12h, such as 10s or 5m",
        );
    }
    let given = given(ids, errors)?;
    let delay = delay.unwrap_or_default();
    let delay_ms = delay.as_millis() as i64;
    let nacked = retrying(|| db::nack(&state.db, group, &given.leases, delay_ms)).await?;
    if !nacked.is_empty() {
        // Waiting claims of this instance look again (after the delay, they find it due).
        let _ = state.consumer_wakes.send(group.id);
    }
    Ok(Nacked {
        nacked: nacked.len() as i64,
        lost: lost(&given, nacked.into_iter().map(|(m, l, _)| (m, l))),
    })
}

pub async fn extend(
    state: &AppState,
    group: &Group,
    ids: Vec<String>,
) -> Result<Extended, ApiError> {
    let given = given(ids, FieldErrors::default())?;
    let extended = retrying(|| db::extend(&state.db, group, &given.leases)).await?;
    Ok(Extended {
        extended: extended.len() as i64,
        lost: lost(&given, extended.into_iter().map(|(m, l, _)| (m, l))),
    })
}

/// Deletes the group with its leases, counts and dead letters.
pub async fn delete(state: &AppState, group: &Group) -> Result<(), ApiError> {
    retrying(|| db::delete(&state.db, group.channel_id, &group.name)).await?;
    Ok(())
}

pub async fn dead(
    state: &AppState,
    group: &Group,
    after: i64,
    limit: i64,
) -> Result<Vec<DeadLetter>, ApiError> {
    Ok(db::dead(&state.db, group, after, limit)
        .await?
        .into_iter()
        .map(|dead| DeadLetter {
            message_id: dead.message.id,
            attempts: dead.attempts,
            last_member: dead.last_member,
            message: dead.message,
        })
        .collect())
}

pub async fn retry(state: &AppState, group: &Group, message_id: i64) -> Result<(), ApiError> {
    if db::retry(&state.db, group, message_id).await? {
        let _ = state.consumer_wakes.send(group.id);
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "message {message_id} is not a dead letter of consumer group `{}`",
            group.name
        )))
    }
}
