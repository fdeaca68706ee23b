//! MCP (`POST /v1/mcp`) figures:
//!
//! 1. `read_messages` (20 messages) through MCP beside `GET /v1/channels/{id}/messages?limit=20`,
//!    the same page through REST, with the same HTTP client, at 1 and 8 closed-loop clients;
//! 2. `wait_for_messages` wake-up: WAITERS tool calls wait on one channel; once the server counts
//!    them all waiting (`channeld_message_waiters`), the pooled connections in use are sampled,
//!    then one message is posted through REST. Each waiter's latency runs from the moment the
//!    post is sent (so it includes the insert's own commit) to the arrival of its answer's
//!    headers (its body is read and checked afterwards, outside the figure).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::{Figures, Repeats};

pub struct Plan<'a> {
    pub base: &'a str,
    pub key: &'a str,
    pub seconds: u64,
    pub repeats: usize,
    pub waiters: usize,
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct McpFigures {
    pub reads: Vec<ReadRow>,
    pub wake: Repeats<WakeRound>,
}

/// One kind of read at one concurrency, over repeated runs (chosen by p99).
#[derive(Debug, Clone, Serialize)]
pub struct ReadRow {
    pub what: &'static str,
    pub clients: usize,
    pub runs: Repeats<Figures>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct WakeRound {
    pub waiters: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Pooled database connections in use while every waiter waited (largest of the samples).
    pub pool_in_use_while_waiting: u64,
}

/// channeld's HTTP API as one client with one key.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Mcp,
    Rest,
}

pub async fn run(plan: &Plan<'_>) -> Result<McpFigures, String> {
    let api = Api {
        http: reqwest::Client::new(),
        base: plan.base.to_owned(),
        key: plan.key.to_owned(),
    };
    let channel = seed(&api).await?;

    let mut reads = Vec::new();
    for clients in [1, 8] {
        for (what, read) in [
            ("MCP read_messages", Read::Mcp),
            ("REST GET messages", Read::Rest),
        ] {
            let mut runs = Vec::new();
            for repeat in 1..=plan.repeats {
                eprintln!("bench: {what} at {clients} clients (run {repeat})");
                runs.push(read_load(&api, plan.seconds, channel, read, clients).await?);
            }
            reads.push(ReadRow {
                what,
                clients,
                runs: Repeats::of("p99_ms", runs, |f| f.p99_ms),
            });
        }
    }

    let mut rounds = Vec::new();
    for round in 1..=plan.rounds {
        eprintln!(
            "bench: {} MCP waiters woken by one post (round {round})",
            plan.waiters
        );
        rounds.push(wake(&api, plan.waiters, channel).await?);
    }
    Ok(McpFigures {
        reads,
        wake: Repeats::of("p99_ms", rounds, |r| r.p99_ms),
    })
}

pub fn print(figures: &McpFigures) {
    println!();
    println!("MCP (POST /v1/mcp) beside REST; median of repeated runs [min-max of the p99]");
    println!(
        "{:<22} {:>7} {:>10} {:>9} {:>9}  p99 range",
        "read (20 messages)", "clients", "per sec", "p50 ms", "p99 ms"
    );
    for row in &figures.reads {
        let median = &row.runs.median;
        println!(
            "{:<22} {:>7} {:>10.0} {:>9.2} {:>9.2}  [{:.2}-{:.2}]",
            row.what,
            row.clients,
            median.per_sec,
            median.p50_ms,
            median.p99_ms,
            row.runs.spread.min,
            row.runs.spread.max
        );
    }
    let wake = &figures.wake;
    println!(
        "wait_for_messages: {} waiters, one post: wake-up p50 {:.1} ms, p99 {:.1} ms [{:.1}-{:.1}], max {:.1} ms; pooled connections in use while waiting: {} (largest over {} rounds)",
        wake.median.waiters,
        wake.median.p50_ms,
        wake.median.p99_ms,
        wake.spread.min,
        wake.spread.max,
        wake.median.max_ms,
        wake.runs
            .iter()
            .map(|r| r.pool_in_use_while_waiting)
            .max()
            .unwrap_or(0),
        wake.runs.len()
    );
}

/// A channel with 100 messages.
async fn seed(api: &Api) -> Result<i64, String> {
    let name = format!("mcp bench {}", std::process::id());
    let created = api.post("/v1/channels", json!({ "name": name })).await?;
    let channel = created["channel"]["id"]
        .as_i64()
        .ok_or_else(|| format!("channel not created: {created}"))?;
    for n in 0..100 {
        let content = format!("seed message {n}: {}", crate::rest::CONTENT);
        let path = format!("/v1/channels/{channel}/messages");
        api.post(&path, json!({ "content": content })).await?;
    }
    Ok(channel)
}

impl Api {
    /// A REST POST that must succeed.
    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status} {body}"));
        }
        Ok(body)
    }

    /// One JSON-RPC `tools/call`, as a client speaking revision 2025-11-25 sends it: the tool's
    /// structured result, or why there is none.
    async fn tool(&self, tool: &str, arguments: Value) -> Result<Value, String> {
        Ok(self.tool_timed(tool, arguments).await?.1)
    }

    /// [`Api::tool`], with the moment its answer began to arrive (before the body is read).
    async fn tool_timed(&self, tool: &str, arguments: Value) -> Result<(Instant, Value), String> {
        let response = self
            .http
            .post(format!("{}/v1/mcp", self.base))
            .bearer_auth(&self.key)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-11-25")
            .json(&json!({
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let answered = Instant::now();
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        let result = &body["result"];
        if !status.is_success() || result["isError"] != json!(false) {
            return Err(format!("tools/call {tool} answered {status}: {body}"));
        }
        Ok((answered, result["structuredContent"].clone()))
    }

    async fn metrics(&self) -> Result<String, String> {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())
    }
}

async fn read_load(
    api: &Api,
    seconds: u64,
    channel: i64,
    read: Read,
    clients: usize,
) -> Result<Figures, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        // A client, and so a keep-alive connection, per task.
        let api = Api {
            http: reqwest::Client::new(),
            ..api.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let page = match read {
                    Read::Mcp => {
                        api.tool("read_messages", json!({"channel_id": channel, "limit": 20}))
                            .await?
                    }
                    Read::Rest => api
                        .http
                        .get(format!(
                            "{}/v1/channels/{channel}/messages?limit=20",
                            api.base
                        ))
                        .bearer_auth(&api.key)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?,
                };
                let count = page["messages"].as_array().map_or(0, Vec::len);
                if count != 20 {
                    return Err(format!("a read returned {count} messages, not 20"));
                }
                latencies.push(sent.elapsed().as_micros() as u32);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Figures::new(all.len() as u64, elapsed, &mut all))
}

async fn wake(api: &Api, waiters: usize, channel: i64) -> Result<WakeRound, String> {
    let latest = api
        .tool("read_messages", json!({"channel_id": channel, "limit": 1}))
        .await?;
    let after = latest["next_after"].as_i64().ok_or("no next_after")?;

    let mut waiting = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        let api = api.clone();
        waiting.push(tokio::spawn(async move {
            let arguments = json!({"channel_id": channel, "after": after, "wait_seconds": 25});
            let (arrived, result) = api.tool_timed("wait_for_messages", arguments).await?;
            Ok::<_, String>((arrived, result["messages"][0]["id"].as_i64()))
        }));
    }

    // Every waiter waiting, as the server counts them; then the pool, sampled while they wait.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = api.metrics().await?;
        let counted = metric(&metrics, "channeld_message_waiters");
        if counted >= waiters as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {counted} of {waiters} waiters were waiting after 20 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut pool_in_use = 0;
    for _ in 0..5 {
        let metrics = api.metrics().await?;
        pool_in_use = pool_in_use.max(metric(&metrics, "channeld_db_pool_in_use"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sent = Instant::now();
    let path = format!("/v1/channels/{channel}/messages");
    let posted = api.post(&path, json!({"content": "wake up"})).await?;
    let id = posted["message"]["id"].as_i64().ok_or("no message id")?;
    let mut latencies = Vec::with_capacity(waiters);
    for task in waiting {
        let (arrived, first) = task.await.map_err(|e| e.to_string())??;
        if first != Some(id) {
            return Err(format!("a waiter got {first:?}, not message {id}"));
        }
        latencies.push(arrived.saturating_duration_since(sent).as_micros() as u32);
    }
    let figures = Figures::new(latencies.len() as u64, 1.0, &mut latencies);
    Ok(WakeRound {
        waiters,
        p50_ms: figures.p50_ms,
        p99_ms: figures.p99_ms,
        max_ms: f64::from(latencies.last().copied().unwrap_or(0)) / 1000.0,
        pool_in_use_while_waiting: pool_in_use,
    })
}

/// A metric without labels from the Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}
