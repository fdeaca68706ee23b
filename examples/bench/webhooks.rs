//! Webhooks (`--only webhooks`; scripts/webhook-bench.sh runs it on a server of its own that may
//! post to loopback):
//!
//! 1. steady: posts at a fixed rate (1,000/s) for a while, with no webhook and with one webhook
//!    whose receiver (in this process, on loopback) answers 204 at once; the post latency, and
//!    from each message's `created_at` (stamped by PostgreSQL in the posting transaction) to its
//!    arrival at the receiver;
//! 2. most: as many posts as 16 posters make back to back, with no webhook and with one;
//! 3. backlog: 100,000 events on 8 channels recorded while nothing could send them (stored with
//!    psql in one transaction, the trigger recording `message.created` for the webhook), then
//!    sent: from the commit to the last arrival;
//! 4. slow beside fast: two webhooks, one whose receiver answers only after 16 s (past the 15 s
//!    attempt timeout), one that answers at once; the fast one's arrivals at 200 posts/s.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    rest::psql,
    stats::{Figures, Repeats},
};

pub struct Plan<'a> {
    pub base: &'a str,
    pub key: &'a str,
    pub database_url: &'a str,
    pub repeats: usize,
    pub seconds: u64,
    pub backlog: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub webhook: bool,
    pub posted: usize,
    pub posts_per_sec: f64,
    pub post: Figures,
    /// Commit to arrival at the receiver (absent without a webhook).
    pub delivery: Option<Figures>,
    pub delivered: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Most {
    pub webhook: bool,
    pub posters: usize,
    pub post: Figures,
    pub delivered_during: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    pub events: i64,
    pub channels: usize,
    pub seconds: f64,
    pub per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowBeside {
    pub posted: usize,
    pub posts_per_sec: f64,
    /// The fast receiver's arrivals, commit to arrival.
    pub fast: Figures,
    pub fast_delivered: usize,
    pub slow_received: usize,
}

#[derive(Debug, Serialize)]
pub struct WebhookFigures {
    pub rate: f64,
    pub steady_without: Repeats<Steady>,
    pub steady_with: Repeats<Steady>,
    pub most_without: Repeats<Most>,
    pub most_with: Repeats<Most>,
    pub backlog: Repeats<Backlog>,
    pub slow_beside_fast: Repeats<SlowBeside>,
}

const RATE: f64 = 1000.0;
const SLOW_RATE: f64 = 200.0;
const POSTERS: usize = 16;
/// Channels the backlog is spread over (each a lane, sent in order).
const BACKLOG_CHANNELS: usize = 8;

/// One arrival: the event id, its message's `created_at`, and when it arrived.
type Arrival = (String, DateTime<Utc>, DateTime<Utc>);

/// A receiver in this process: records when each event arrived and its message's `created_at`.
#[derive(Clone)]
struct Receiver {
    url: String,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    delay: Duration,
}

impl Receiver {
    async fn start(delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            arrivals: Arc::default(),
            delay,
        };
        let app = Router::new().fallback(arrive).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Commit-to-arrival figures of distinct events.
    fn figures(&self, seconds: f64) -> (Figures, usize) {
        let arrivals = self.arrivals.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut latencies: Vec<u32> = arrivals
            .iter()
            .filter(|(id, _, _)| seen.insert(id.clone()))
            .map(|(_, created, arrived)| {
                (*arrived - *created).num_microseconds().unwrap_or(0).max(0) as u32
            })
            .collect();
        let n = latencies.len();
        (Figures::new(n as u64, seconds, &mut latencies), n)
    }
}

async fn arrive(
    State(receiver): State<Receiver>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    let arrived = Utc::now();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let created = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["data"]["created_at"].as_str().map(str::to_owned))
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map_or(arrived, |t| t.with_timezone(&Utc));
    receiver
        .arrivals
        .lock()
        .unwrap()
        .push((id, created, arrived));
    if !receiver.delay.is_zero() {
        tokio::time::sleep(receiver.delay).await;
    }
    axum::http::StatusCode::NO_CONTENT
}

struct Api<'a> {
    http: reqwest::Client,
    plan: &'a Plan<'a>,
}

impl Api<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.plan.base))
            .bearer_auth(self.plan.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("{path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{path}: {status} {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn channel(&self, name: &str) -> Result<i64, String> {
        let body = self
            .call(
                reqwest::Method::POST,
                "/v1/channels",
                Some(json!({"name": name})),
            )
            .await?;
        body["channel"]["id"]
            .as_i64()
            .ok_or_else(|| format!("no channel id: {body}"))
    }

    /// A webhook for `message.created` on these channels.
    async fn webhook(&self, url: &str, channels: &[i64]) -> Result<String, String> {
        let channels: Vec<String> = channels.iter().map(i64::to_string).collect();
        let body = self
            .call(
                reqwest::Method::POST,
                "/v1/webhooks",
                Some(json!({"url": url, "events": ["message.created"], "channels": channels})),
            )
            .await?;
        Ok(body["webhook"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    async fn delete_webhook(&self, id: &str) -> Result<(), String> {
        self.call(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), None)
            .await
            .map(|_| ())
    }
}

/// Posts at `rate` for `seconds`; the post latencies.
async fn post_at(api: &Api<'_>, channel: i64, rate: f64, seconds: u64) -> (usize, f64, Vec<u32>) {
    let total = (rate * seconds as f64) as usize;
    let path = format!("{}/v1/channels/{channel}/messages", api.plan.base);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
        let (http, path, key, latencies) = (
            api.http.clone(),
            path.clone(),
            api.plan.key.to_owned(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let ok = http
                .post(&path)
                .bearer_auth(key)
                .json(&json!({"content": format!("steady {n}")}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                latencies
                    .lock()
                    .unwrap()
                    .push(began.elapsed().as_micros() as u32);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    (latencies.len(), elapsed, latencies)
}

async fn wait_for(receiver: &Receiver, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while receiver.count() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn steady(api: &Api<'_>, webhook: bool, run: usize) -> Result<Steady, String> {
    let channel = api
        .channel(&format!("webhook steady {webhook} {run} {}", rand_suffix()))
        .await?;
    let receiver = Receiver::start(Duration::ZERO).await;
    let hook = match webhook {
        true => Some(api.webhook(&receiver.url, &[channel]).await?),
        false => None,
    };
    let (posted, seconds, mut latencies) = post_at(api, channel, RATE, api.plan.seconds).await;
    let post = Figures::new(posted as u64, seconds, &mut latencies);
    let mut delivery = None;
    let mut delivered = 0;
    if let Some(hook) = hook {
        wait_for(&receiver, posted, Duration::from_secs(30)).await;
        let (figures, n) = receiver.figures(seconds);
        delivery = Some(figures);
        delivered = n;
        api.delete_webhook(&hook).await?;
    }
    Ok(Steady {
        webhook,
        posted,
        posts_per_sec: post.per_sec,
        post,
        delivery,
        delivered,
    })
}

async fn most(api: &Api<'_>, webhook: bool, run: usize) -> Result<Most, String> {
    let channels: Vec<i64> = {
        let mut channels = Vec::new();
        for n in 0..POSTERS {
            channels.push(
                api.channel(&format!(
                    "webhook most {webhook} {run} {n} {}",
                    rand_suffix()
                ))
                .await?,
            );
        }
        channels
    };
    let receiver = Receiver::start(Duration::ZERO).await;
    let mut hooks = Vec::new();
    if webhook {
        // One webhook for all the posters' channels.
        hooks.push(api.webhook(&receiver.url, &channels).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(api.plan.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for channel in channels {
        let (http, key) = (api.http.clone(), api.plan.key.to_owned());
        let path = format!("{}/v1/channels/{channel}/messages", api.plan.base);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let began = Instant::now();
                let ok = http
                    .post(&path)
                    .bearer_auth(&key)
                    .json(&json!({"content": "most"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    latencies.push(began.elapsed().as_micros() as u32);
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    let seconds = started.elapsed().as_secs_f64();
    let delivered_during = receiver.count();
    let posted = latencies.len();
    if webhook {
        wait_for(&receiver, posted, Duration::from_secs(60)).await;
    }
    for hook in hooks {
        api.delete_webhook(&hook).await?;
    }
    Ok(Most {
        webhook,
        posters: POSTERS,
        post: Figures::new(posted as u64, seconds, &mut latencies),
        delivered_during,
    })
}

async fn backlog(api: &Api<'_>, run: usize) -> Result<Backlog, String> {
    let mut channels = Vec::new();
    for n in 0..BACKLOG_CHANNELS {
        channels.push(
            api.channel(&format!("webhook backlog {run} {n} {}", rand_suffix()))
                .await?,
        );
    }
    let receiver = Receiver::start(Duration::ZERO).await;
    let hook = api.webhook(&receiver.url, &channels).await?;
    let n = api.plan.backlog;
    let list = channels
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    psql(
        api.plan.database_url,
        &format!(
            "INSERT INTO messages (channel_id, content, sender_type) \
             SELECT (ARRAY[{list}])[1 + g % {BACKLOG_CHANNELS}], 'backlog ' || g, 'api' \
             FROM generate_series(1, {n}) g"
        ),
    )?;
    let committed = Instant::now();
    wait_for(&receiver, n as usize, Duration::from_secs(600)).await;
    let seconds = committed.elapsed().as_secs_f64();
    let got = receiver.count() as i64;
    api.delete_webhook(&hook).await?;
    Ok(Backlog {
        events: got,
        channels: BACKLOG_CHANNELS,
        seconds,
        per_sec: got as f64 / seconds,
    })
}

async fn slow_beside_fast(api: &Api<'_>, run: usize) -> Result<SlowBeside, String> {
    let channel = api
        .channel(&format!("webhook slow {run} {}", rand_suffix()))
        .await?;
    let slow = Receiver::start(Duration::from_secs(16)).await;
    let fast = Receiver::start(Duration::ZERO).await;
    let slow_hook = api.webhook(&slow.url, &[channel]).await?;
    let fast_hook = api.webhook(&fast.url, &[channel]).await?;
    let (posted, seconds, _) = post_at(api, channel, SLOW_RATE, api.plan.seconds).await;
    wait_for(&fast, posted, Duration::from_secs(30)).await;
    let (figures, delivered) = fast.figures(seconds);
    let slow_received = slow.count();
    api.delete_webhook(&slow_hook).await?;
    api.delete_webhook(&fast_hook).await?;
    Ok(SlowBeside {
        posted,
        posts_per_sec: posted as f64 / seconds,
        fast: figures,
        fast_delivered: delivered,
        slow_received,
    })
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 % 1_000_000_007)
}

pub async fn run(plan: &Plan<'_>) -> Result<WebhookFigures, String> {
    let api = Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| e.to_string())?,
        plan,
    };
    let (mut steady_without, mut steady_with, mut most_without, mut most_with) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut backlogs, mut slows) = (Vec::new(), Vec::new());
    // Alternating, so that drift (autovacuum, a warming cache) falls on both sides.
    // The backlog row goes last in a round: it leaves 100,000 rows for VACUUM and the
    // checkpointer, which the next round's first rows then share the machine with.
    for run in 0..plan.repeats {
        eprintln!("webhooks: round {} of {}", run + 1, plan.repeats);
        steady_without.push(steady(&api, false, run).await?);
        steady_with.push(steady(&api, true, run).await?);
        most_without.push(most(&api, false, run).await?);
        most_with.push(most(&api, true, run).await?);
        slows.push(slow_beside_fast(&api, run).await?);
        backlogs.push(backlog(&api, run).await?);
    }
    let p99 = |s: &Steady| s.delivery.map_or(0.0, |d| d.p99_ms);
    Ok(WebhookFigures {
        rate: RATE,
        steady_without: Repeats::of("post p99 ms", steady_without, |s| s.post.p99_ms),
        steady_with: Repeats::of("commit-to-delivery p99 ms", steady_with, p99),
        most_without: Repeats::of("posts/s", most_without, |m| m.post.per_sec),
        most_with: Repeats::of("posts/s", most_with, |m| m.post.per_sec),
        backlog: Repeats::of("events/s", backlogs, |b| b.per_sec),
        slow_beside_fast: Repeats::of("fast p99 ms", slows, |s| s.fast.p99_ms),
    })
}

pub fn print(figures: &WebhookFigures) {
    let spread = |s: &crate::stats::Spread, digits: usize| {
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        )
    };
    println!();
    println!("Webhooks: one receiver on loopback answering 204 (medians of runs, min–max)");
    println!("| row | posts/s | post p50 / p99 ms | commit→delivery p50 / p99 ms | delivered |");
    println!("|---|---|---|---|---|");
    for (label, r) in [
        (
            format!("{:.0} posts/s, no webhook", figures.rate),
            &figures.steady_without,
        ),
        (
            format!("{:.0} posts/s, one webhook", figures.rate),
            &figures.steady_with,
        ),
    ] {
        let m = &r.median;
        let delivery = m.delivery.map_or("–".to_owned(), |d| {
            format!("{:.2} / {}", d.p50_ms, spread(&r.spread, 2))
        });
        let post_p99 = if m.webhook {
            format!("{:.2}", m.post.p99_ms)
        } else {
            spread(&r.spread, 2)
        };
        println!(
            "| {label} | {:.0} | {:.2} / {post_p99} | {delivery} | {}/{} |",
            m.posts_per_sec, m.post.p50_ms, m.delivered, m.posted
        );
    }
    for (label, r) in [
        ("16 posters back to back, no webhook", &figures.most_without),
        ("16 posters back to back, one webhook", &figures.most_with),
    ] {
        println!(
            "| {label} | {} | {:.2} / {:.2} | – | {} during the run |",
            spread(&r.spread, 0),
            r.median.post.p50_ms,
            r.median.post.p99_ms,
            r.median.delivered_during
        );
    }
    let ratio = figures.most_with.spread.median / figures.most_without.spread.median.max(1.0);
    println!("Most posts/s with a webhook over without: {ratio:.2}");
    let b = &figures.backlog;
    println!(
        "Backlog of {} events on {} channels, recorded while none could be sent, then sent: {} events/s, all in {:.1} s (median run)",
        b.median.events,
        b.median.channels,
        spread(&b.spread, 0),
        b.median.seconds
    );
    let s = &figures.slow_beside_fast;
    println!(
        "Beside a receiver that answers after 16 s, at {:.0} posts/s: the fast receiver's commit→delivery p99 {} ms, p50 {:.2} ms; {}/{} delivered (the slow one saw {})",
        s.median.posts_per_sec,
        spread(&s.spread, 2),
        s.median.fast.p50_ms,
        s.median.fast_delivered,
        s.median.posted,
        s.median.slow_received
    );
}
