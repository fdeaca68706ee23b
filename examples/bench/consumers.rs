//! Consumer groups (`--only consumers`; scripts/consumer-bench.sh runs it on a server of its own):
//!
//! 1. throughput: 8 members claiming 10 at a time and acking, until a backlog of messages is all
//!    acked, beside the same workload on Redis Streams consumer groups (`XREADGROUP` + `XACK`):
//!    the Redis the machine runs, and a private one that appends and fsyncs every write
//!    (`appendfsync always`), the durability channeld's synchronous commit gives;
//! 2. latency: 8 members waiting in `claim` while messages are posted at a steady rate; from each
//!    post's request to the claim that hands it out;
//! 3. history: one member claiming and acking on a channel with a long history (10,000,000
//!    messages) against a fresh channel, with groups that start at its end and at its beginning.
//!
//! Messages are stored with psql (one statement per 1,000,000 rows, ids in order), not through
//! the API: the figures are of claiming, not of posting.

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::{Figures, Repeats};

impl Plan<'_> {
    fn api(&self) -> Api {
        Api {
            base: self.base.to_owned(),
            key: self.key.to_owned(),
        }
    }
}

pub struct Plan<'a> {
    pub base: &'a str,
    pub key: &'a str,
    pub database_url: &'a str,
    pub repeats: usize,
    /// Messages each throughput run works through.
    pub backlog: i64,
    /// Messages of the long channel.
    pub history: i64,
    /// The machine's Redis, and a private fsync-always one, when they answer.
    pub redis_url: Option<&'a str>,
    pub redis_durable_url: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub messages: i64,
    pub seconds: f64,
    pub per_sec: f64,
    /// One claim and its ack, per batch.
    pub batch: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub posted: usize,
    pub posts_per_sec: f64,
    pub post_to_claim: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimCost {
    pub channel_messages: i64,
    pub start: &'static str,
    pub claimed: i64,
    /// One member, claims of 10 then their ack, back to back.
    pub claim: Figures,
}

#[derive(Debug, Serialize)]
pub struct ConsumerFigures {
    pub members: usize,
    pub batch: i64,
    pub channeld: Repeats<Throughput>,
    pub redis: Option<Repeats<Throughput>>,
    pub redis_durable: Option<Repeats<Throughput>>,
    pub redis_note: String,
    pub latency: Repeats<Latency>,
    pub redis_latency: Option<Repeats<Latency>>,
    pub history: Vec<Repeats<ClaimCost>>,
}

const MEMBERS: usize = 8;
const BATCH: i64 = 10;
const LATENCY_POSTS: usize = 1000;
const LATENCY_RATE: f64 = 200.0;
const HISTORY_CLAIMED: i64 = 5000;

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-qtAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Stores `count` messages in `channel`, in id order, as posts would (the channel's counters
/// included).
fn store(url: &str, channel: i64, count: i64, label: &str) -> Result<(), String> {
    let mut left = count;
    while left > 0 {
        let n = left.min(1_000_000);
        psql(
            url,
            &format!(
                "WITH stored AS (INSERT INTO messages (channel_id, content, sender_type) \
                 SELECT {channel}, '{label} ' || g, 'api' FROM generate_series(1, {n}) g RETURNING id) \
                 UPDATE channels SET message_count = message_count + {n}, \
                 last_message_id = (SELECT max(id) FROM stored), last_message_at = now() \
                 WHERE id = {channel}"
            ),
        )?;
        left -= n;
    }
    Ok(())
}

/// Where requests go: the server's base URL and the key.
#[derive(Clone)]
struct Api {
    base: String,
    key: String,
}

async fn call(http: &reqwest::Client, api: &Api, path: &str, body: Value) -> Result<Value, String> {
    let response = http
        .post(format!("{}{path}", api.base))
        .bearer_auth(&api.key)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("{path}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{path}: {status} {body}"));
    }
    Ok(body)
}

async fn channel(http: &reqwest::Client, plan: &Plan<'_>, name: &str) -> Result<i64, String> {
    let body = call(http, &plan.api(), "/v1/channels", json!({"name": name})).await?;
    body["channel"]["id"]
        .as_i64()
        .ok_or_else(|| format!("no channel id: {body}"))
}

async fn group(
    http: &reqwest::Client,
    plan: &Plan<'_>,
    channel: i64,
    name: &str,
    start: Value,
) -> Result<(), String> {
    call(
        http,
        &plan.api(),
        &format!("/v1/channels/{channel}/consumers"),
        json!({"name": name, "start": start}),
    )
    .await
    .map(|_| ())
}

fn delivery_ids(body: &Value) -> Vec<Value> {
    body["deliveries"]
        .as_array()
        .map(|d| d.iter().map(|d| d["delivery_id"].clone()).collect())
        .unwrap_or_default()
}

/// 8 members work through the backlog of `name`; messages per second until all are acked.
async fn channeld_throughput(
    plan: &Plan<'_>,
    channel: i64,
    name: &str,
) -> Result<Throughput, String> {
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut members = Vec::new();
    for member in 0..MEMBERS {
        let (acked, api) = (acked.clone(), plan.api());
        let path = format!("/v1/channels/{channel}/consumers/{name}");
        let backlog = plan.backlog as u64;
        members.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            while acked.load(Ordering::Relaxed) < backlog {
                let sent = Instant::now();
                let claimed = call(
                    &http,
                    &api,
                    &format!("{path}/claim"),
                    json!({"member": format!("m{member}"), "max": BATCH}),
                )
                .await?;
                let ids = delivery_ids(&claimed);
                if ids.is_empty() {
                    continue;
                }
                let answer = call(
                    &http,
                    &api,
                    &format!("{path}/ack"),
                    json!({"delivery_ids": ids}),
                )
                .await?;
                latencies.push(sent.elapsed().as_micros() as u32);
                acked.fetch_add(answer["acked"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for member in members {
        latencies.extend(member.await.map_err(|e| e.to_string())??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let count = latencies.len() as u64;
    Ok(Throughput {
        messages: plan.backlog,
        seconds,
        per_sec: plan.backlog as f64 / seconds,
        batch: Figures::new(count, seconds, &mut latencies),
    })
}

/// The same workload on a Redis stream: XADD the backlog, then 8 consumers of one group
/// XREADGROUP 10 at a time and XACK them.
async fn redis_throughput(url: &str, backlog: i64, run: usize) -> Result<Throughput, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut setup = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let stream = format!("channeld-bench:stream:{run}:{}", std::process::id());
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut setup)
        .await
        .map_err(|e| e.to_string())?;
    let mut left = backlog;
    let mut n = 0;
    while left > 0 {
        let chunk = left.min(1000);
        let mut pipe = redis::pipe();
        for _ in 0..chunk {
            n += 1;
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("content")
                .arg(format!("backlog {n}"))
                .ignore();
        }
        let _: () = pipe
            .query_async(&mut setup)
            .await
            .map_err(|e| e.to_string())?;
        left -= chunk;
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("work")
        .arg("0")
        .query_async(&mut setup)
        .await
        .map_err(|e| e.to_string())?;
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut members = Vec::new();
    for member in 0..MEMBERS {
        let (acked, client, stream) = (acked.clone(), client.clone(), stream.clone());
        members.push(tokio::spawn(async move {
            // A connection of its own, as a separate worker process would have.
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let mut latencies = Vec::new();
            while acked.load(Ordering::Relaxed) < backlog as u64 {
                let sent = Instant::now();
                // [[stream, [[id, [field, value]]...]]], or nil when nothing is new.
                type Reply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;
                let read: Reply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("work")
                    .arg(format!("m{member}"))
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let ids: Vec<String> = read
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|(_, entries)| entries.into_iter().map(|(id, _)| id))
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let n: u64 = redis::cmd("XACK")
                    .arg(&stream)
                    .arg("work")
                    .arg(&ids)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(sent.elapsed().as_micros() as u32);
                acked.fetch_add(n, Ordering::Relaxed);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for member in members {
        latencies.extend(member.await.map_err(|e| e.to_string())??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut setup)
        .await
        .map_err(|e| e.to_string())?;
    let count = latencies.len() as u64;
    Ok(Throughput {
        messages: backlog,
        seconds,
        per_sec: backlog as f64 / seconds,
        batch: Figures::new(count, seconds, &mut latencies),
    })
}

/// 8 members wait in `claim`; messages are posted at LATENCY_RATE; each message's time from its
/// post's request to the claim that hands it out.
async fn latency(plan: &Plan<'_>, channel: i64, name: &str) -> Result<Latency, String> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for member in 0..MEMBERS {
        let (sent, seen, done) = (sent.clone(), seen.clone(), done.clone());
        let api = plan.api();
        let path = format!("/v1/channels/{channel}/consumers/{name}");
        members.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while (done.load(Ordering::Relaxed) as usize) < LATENCY_POSTS {
                let claimed = call(
                    &http,
                    &api,
                    &format!("{path}/claim"),
                    json!({"member": format!("m{member}"), "max": BATCH, "wait": 1}),
                )
                .await?;
                let now = Instant::now();
                let deliveries = claimed["deliveries"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if deliveries.is_empty() {
                    continue;
                }
                {
                    let sent = sent.lock().expect("sent");
                    let mut seen = seen.lock().expect("seen");
                    for d in &deliveries {
                        if let Some(at) = d["message"]["content"].as_str().and_then(|c| sent.get(c))
                        {
                            seen.push(now.saturating_duration_since(*at).as_micros() as u32);
                        }
                    }
                }
                done.fetch_add(deliveries.len() as u64, Ordering::Relaxed);
                call(
                    &http,
                    &api,
                    &format!("{path}/ack"),
                    json!({"delivery_ids": delivery_ids(&claimed)}),
                )
                .await?;
            }
            Ok::<_, String>(())
        }));
    }
    // Members are waiting before the first post.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / LATENCY_RATE);
    for n in 0..LATENCY_POSTS {
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let content = format!("latency {n}");
        sent.lock()
            .expect("sent")
            .insert(content.clone(), Instant::now());
        call(
            &http,
            &plan.api(),
            &format!("/v1/channels/{channel}/messages"),
            json!({"content": content}),
        )
        .await?;
    }
    let posting = started.elapsed().as_secs_f64();
    for member in members {
        member.await.map_err(|e| e.to_string())??;
    }
    let mut latencies = std::mem::take(&mut *seen.lock().expect("seen"));
    Ok(Latency {
        posted: LATENCY_POSTS,
        posts_per_sec: LATENCY_POSTS as f64 / posting,
        post_to_claim: Figures::new(latencies.len() as u64, posting, &mut latencies),
    })
}

/// The latency run on a Redis stream: 8 consumers block in `XREADGROUP` while entries are added
/// at LATENCY_RATE; each entry's time from its `XADD` to the read that hands it out.
async fn redis_latency(url: &str, run: usize) -> Result<Latency, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut poster = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let stream = format!("channeld-bench:live:{run}:{}", std::process::id());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("work")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut poster)
        .await
        .map_err(|e| e.to_string())?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let mut members = Vec::new();
    for member in 0..MEMBERS {
        let (sent, seen, done) = (sent.clone(), seen.clone(), done.clone());
        let (client, stream) = (client.clone(), stream.clone());
        members.push(tokio::spawn(async move {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            while (done.load(Ordering::Relaxed) as usize) < LATENCY_POSTS {
                type Reply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;
                let read: Reply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("work")
                    .arg(format!("m{member}"))
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("BLOCK")
                    .arg(200)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let now = Instant::now();
                let entries: Vec<(String, Vec<String>)> = read
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|(_, entries)| entries)
                    .collect();
                if entries.is_empty() {
                    continue;
                }
                {
                    let sent = sent.lock().expect("sent");
                    let mut seen = seen.lock().expect("seen");
                    for (_, fields) in &entries {
                        if let Some(at) = fields.get(1).and_then(|c| sent.get(c)) {
                            seen.push(now.saturating_duration_since(*at).as_micros() as u32);
                        }
                    }
                }
                done.fetch_add(entries.len() as u64, Ordering::Relaxed);
                let ids: Vec<&String> = entries.iter().map(|(id, _)| id).collect();
                let _: u64 = redis::cmd("XACK")
                    .arg(&stream)
                    .arg("work")
                    .arg(&ids)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / LATENCY_RATE);
    for n in 0..LATENCY_POSTS {
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let content = format!("latency {n}");
        sent.lock()
            .expect("sent")
            .insert(content.clone(), Instant::now());
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("content")
            .arg(&content)
            .query_async(&mut poster)
            .await
            .map_err(|e| e.to_string())?;
    }
    let posting = started.elapsed().as_secs_f64();
    for member in members {
        member.await.map_err(|e| e.to_string())??;
    }
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut poster)
        .await
        .map_err(|e| e.to_string())?;
    let mut latencies = std::mem::take(&mut *seen.lock().expect("seen"));
    Ok(Latency {
        posted: LATENCY_POSTS,
        posts_per_sec: LATENCY_POSTS as f64 / posting,
        post_to_claim: Figures::new(latencies.len() as u64, posting, &mut latencies),
    })
}

/// One member claims 10 and acks them, back to back, HISTORY_CLAIMED messages in all.
async fn claim_cost(
    plan: &Plan<'_>,
    channel: i64,
    name: &str,
    channel_messages: i64,
    start: &'static str,
) -> Result<ClaimCost, String> {
    let http = reqwest::Client::new();
    let path = format!("/v1/channels/{channel}/consumers/{name}");
    let mut latencies = Vec::new();
    let mut claimed = 0;
    let started = Instant::now();
    while claimed < HISTORY_CLAIMED {
        let sent = Instant::now();
        let body = call(
            &http,
            &plan.api(),
            &format!("{path}/claim"),
            json!({"member": "one", "max": BATCH}),
        )
        .await?;
        latencies.push(sent.elapsed().as_micros() as u32);
        let ids = delivery_ids(&body);
        if ids.is_empty() {
            return Err(format!("{name}: nothing to claim after {claimed}"));
        }
        claimed += ids.len() as i64;
        call(
            &http,
            &plan.api(),
            &format!("{path}/ack"),
            json!({"delivery_ids": ids}),
        )
        .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ClaimCost {
        channel_messages,
        start,
        claimed,
        claim: Figures::new(claimed as u64, seconds, &mut latencies),
    })
}

pub async fn run(plan: &Plan<'_>) -> Result<ConsumerFigures, String> {
    let http = reqwest::Client::new();
    let work = channel(&http, plan, "consumer-bench-backlog").await?;
    let mut channeld_runs = Vec::new();
    for repeat in 1..=plan.repeats {
        store(
            plan.database_url,
            work,
            plan.backlog,
            &format!("backlog{repeat}"),
        )?;
        let name = format!("tput-{repeat}");
        // Starts at the messages just stored: after the previous run's.
        let before: i64 = psql(
            plan.database_url,
            &format!(
                "SELECT max(id) - {} FROM messages WHERE channel_id = {work}",
                plan.backlog
            ),
        )?
        .parse()
        .map_err(|e| format!("{e}"))?;
        group(&http, plan, work, &name, json!(before)).await?;
        psql(plan.database_url, "VACUUM ANALYZE messages")?;
        let figures = channeld_throughput(plan, work, &name).await?;
        eprintln!(
            "bench: consumers: channeld {} messages by 8 members in {:.2} s = {:.0}/s (claim+ack p50 {:.2} ms, p99 {:.2} ms)",
            figures.messages,
            figures.seconds,
            figures.per_sec,
            figures.batch.p50_ms,
            figures.batch.p99_ms
        );
        channeld_runs.push(figures);
    }
    let mut redis_runs = Vec::new();
    let mut durable_runs = Vec::new();
    let mut redis_note = String::new();
    for (url, runs, label) in [
        (plan.redis_url, &mut redis_runs, "redis"),
        (
            plan.redis_durable_url,
            &mut durable_runs,
            "redis (appendfsync always)",
        ),
    ] {
        let Some(url) = url else { continue };
        for repeat in 1..=plan.repeats {
            match redis_throughput(url, plan.backlog, repeat).await {
                Ok(figures) => {
                    eprintln!(
                        "bench: consumers: {label} {} messages by 8 members in {:.2} s = {:.0}/s",
                        figures.messages, figures.seconds, figures.per_sec
                    );
                    runs.push(figures);
                }
                Err(error) => {
                    redis_note.push_str(&format!("{label} skipped: {error}; "));
                    break;
                }
            }
        }
    }
    if let Some(url) = plan.redis_url
        && let Ok(client) = redis::Client::open(url)
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let config: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let save: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("save")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        redis_note.push_str(&format!(
            "the machine's Redis runs with {} and {}",
            config.join(" "),
            save.join(" ")
        ));
    }

    let mut latency_runs = Vec::new();
    let live = channel(&http, plan, "consumer-bench-live").await?;
    for repeat in 1..=plan.repeats {
        let name = format!("live-{repeat}");
        group(&http, plan, live, &name, json!("latest")).await?;
        let figures = latency(plan, live, &name).await?;
        eprintln!(
            "bench: consumers: post to claim at {:.0} posts/s: p50 {:.2} ms, p99 {:.2} ms",
            figures.posts_per_sec, figures.post_to_claim.p50_ms, figures.post_to_claim.p99_ms
        );
        latency_runs.push(figures);
    }

    let mut redis_latency_runs = Vec::new();
    if let Some(url) = plan.redis_durable_url {
        for repeat in 1..=plan.repeats {
            let figures = redis_latency(url, repeat).await?;
            eprintln!(
                "bench: consumers: redis (appendfsync always) XADD to XREADGROUP at {:.0}/s: p50 {:.2} ms, p99 {:.2} ms",
                figures.posts_per_sec, figures.post_to_claim.p50_ms, figures.post_to_claim.p99_ms
            );
            redis_latency_runs.push(figures);
        }
    }

    eprintln!(
        "bench: consumers: storing {} messages in one channel",
        plan.history
    );
    let long = channel(&http, plan, "consumer-bench-history").await?;
    store(plan.database_url, long, plan.history, "history")?;
    let fresh = channel(&http, plan, "consumer-bench-fresh").await?;
    psql(plan.database_url, "VACUUM ANALYZE messages")?;
    let mut history = Vec::new();
    for (channel_id, messages, start) in [
        (fresh, 0, "latest"),
        (long, plan.history, "latest"),
        (long, plan.history, "earliest"),
    ] {
        let mut runs = Vec::new();
        for repeat in 1..=plan.repeats {
            let name = format!("cost-{start}-{repeat}");
            group(&http, plan, channel_id, &name, json!(start)).await?;
            if start == "latest" {
                store(plan.database_url, channel_id, HISTORY_CLAIMED, "new")?;
            }
            let figures = claim_cost(plan, channel_id, &name, messages, start).await?;
            eprintln!(
                "bench: consumers: channel of {messages} messages, start {start}: claim p50 {:.2} ms, p99 {:.2} ms, {:.0} claimed+acked/s",
                figures.claim.p50_ms, figures.claim.p99_ms, figures.claim.per_sec
            );
            runs.push(figures);
        }
        history.push(Repeats::of("claim p50 ms", runs, |r| r.claim.p50_ms));
    }
    Ok(ConsumerFigures {
        members: MEMBERS,
        batch: BATCH,
        channeld: Repeats::of("messages/s", channeld_runs, |r| r.per_sec),
        redis: (!redis_runs.is_empty())
            .then(|| Repeats::of("messages/s", redis_runs, |r| r.per_sec)),
        redis_durable: (!durable_runs.is_empty())
            .then(|| Repeats::of("messages/s", durable_runs, |r| r.per_sec)),
        redis_note,
        latency: Repeats::of("p99 ms", latency_runs, |r| r.post_to_claim.p99_ms),
        redis_latency: (!redis_latency_runs.is_empty())
            .then(|| Repeats::of("p99 ms", redis_latency_runs, |r| r.post_to_claim.p99_ms)),
        history,
    })
}

pub fn print(figures: &ConsumerFigures) {
    let spread = |r: &Repeats<Throughput>| {
        format!(
            "{:.0} ({:.0}–{:.0})",
            r.spread.median, r.spread.min, r.spread.max
        )
    };
    println!();
    println!(
        "Consumer groups: {} members claiming {} at a time, then acking (medians of runs, min–max)",
        figures.members, figures.batch
    );
    println!("| system | messages/s | claim+ack p50 / p99 ms (median run) |");
    println!("|---|---|---|");
    let rows = [
        (
            "channeld (PostgreSQL, synchronous_commit on)",
            Some(&figures.channeld),
        ),
        ("Redis Streams, the machine's Redis", figures.redis.as_ref()),
        (
            "Redis Streams, appendfsync always",
            figures.redis_durable.as_ref(),
        ),
    ];
    for (label, repeats) in rows {
        if let Some(r) = repeats {
            println!(
                "| {label} | {} | {:.2} / {:.2} |",
                spread(r),
                r.median.batch.p50_ms,
                r.median.batch.p99_ms
            );
        }
    }
    println!("{}", figures.redis_note);
    let l = &figures.latency;
    println!(
        "Post to claim by a waiting member at {:.0} posts/s: p99 {:.2} ms ({:.2}–{:.2}), p50 {:.2} ms",
        l.median.posts_per_sec,
        l.spread.median,
        l.spread.min,
        l.spread.max,
        l.median.post_to_claim.p50_ms
    );
    if let Some(l) = &figures.redis_latency {
        println!(
            "Redis Streams (appendfsync always), XADD to a blocked XREADGROUP at {:.0}/s: p99 {:.2} ms ({:.2}–{:.2}), p50 {:.2} ms",
            l.median.posts_per_sec,
            l.spread.median,
            l.spread.min,
            l.spread.max,
            l.median.post_to_claim.p50_ms
        );
    }
    println!("| channel | group starts | claim p50 ms | claim p99 ms | claimed+acked/s |");
    println!("|---|---|---|---|---|");
    for r in &figures.history {
        for run in &r.runs {
            println!(
                "| {} messages | {} | {:.2} | {:.2} | {:.0} |",
                run.channel_messages,
                run.start,
                run.claim.p50_ms,
                run.claim.p99_ms,
                run.claim.per_sec
            );
        }
    }
}
