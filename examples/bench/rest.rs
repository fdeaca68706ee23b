//! The REST ceiling: pgbench running exactly the SQL channeld runs for a request, then channeld
//! itself over HTTP at the same concurrency against the same database.
//!
//! The SQL comes from `.sqlx/`, the compile-time record of every query in the code, so the
//! pgbench scripts cannot drift from what channeld sends. Parameters become pgbench variables;
//! the ones a bench request leaves empty (`pod_key`, `Idempotency-Key`) become `NULL`.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use rand::Rng;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::stats::Figures;

/// What a bench request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `POST /v1/channels/{id}/messages`.
    Post,
    /// `GET /v1/channels/{id}/messages?before=<the largest id>`: the latest 50, read from the
    /// database by every system (channeld holds only pages asked for without a cursor).
    Get,
    /// `GET /v1/channels/{id}/messages`: the latest 50, which channeld answers from memory after
    /// checking the channel's newest id; pgbench runs that check, the floor reads the page.
    GetHeld,
    /// As [`Op::GetHeld`] with the page's `ETag` in `If-None-Match`: channeld answers 304 (the
    /// floor, which has no ETag, sends the page).
    GetNotModified,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Post, Op::Get, Op::GetHeld, Op::GetNotModified];

    /// Its name in `--rest-ops`.
    pub fn flag(self) -> &'static str {
        match self {
            Op::Post => "post",
            Op::Get => "get",
            Op::GetHeld => "held",
            Op::GetNotModified => "304",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Post => "POST messages",
            Op::Get => "GET messages",
            Op::GetHeld => "GET latest, held",
            Op::GetNotModified => "GET latest, 304",
        }
    }

    /// The answers a server may give: channeld's first, the floor's second.
    fn expected(self) -> [u16; 2] {
        match self {
            Op::Post => [201, 201],
            Op::Get | Op::GetHeld => [200, 200],
            Op::GetNotModified => [304, 200],
        }
    }
}

/// The message every bench post stores: about 100 bytes.
pub const CONTENT: &str = "Deploy of build 4711 finished on canary; error rate flat at 0.02%, p99 latency 41 ms. Proceeding.";

/// Where the load goes: a key, and a range of channel ids that each hold at least 50 messages.
pub struct Target {
    pub addr: String,
    pub key: String,
    pub channels: (i64, i64),
}

// ---------------------------------------------------------------------------------------------
// pgbench

/// The pgbench script for `op`: the statements channeld runs for one such request, in order.
/// The key lookup is not among them: a running channeld reads a busy key once a second (see
/// `auth::cache`), so per request it costs the database nothing.
pub fn pgbench_script(sqlx_dir: &Path, op: Op) -> Result<String, String> {
    let mut script = String::from("\\set cid random(:lo, :hi)\n");
    match op {
        Op::Post => {
            // A post without an idempotency key, as the load generator sends them, stored alone
            // (the statement that stores several together is channeld's, under load).
            let insert = find_query(sqlx_dir, |q| {
                q.contains("INSERT INTO messages")
                    && !q.contains("idempotency_key")
                    && !q.contains("WITH ORDINALITY")
            })?;
            // channel id, content, sender_type, pod_key, mentions, metadata, reply_to, thread
            script += &format!(
                "{};\n",
                bind(
                    &insert,
                    &[
                        ":cid", ":content", "'api'", "NULL", "'{}'", "NULL", "NULL", "NULL"
                    ]
                )
            );
        }
        Op::Get => {
            let before = find_query(sqlx_dir, |q| {
                q.contains("FROM messages WHERE channel_id >= $1 AND (channel_id, id) < ($1, $2)")
                    && q.contains("ORDER BY channel_id DESC, id DESC LIMIT $3")
            })?;
            // channel id, before, limit: the handler reads one more than the page to learn
            // `has_more`.
            let max = i64::MAX.to_string();
            script += &format!("{};\n", bind(&before, &[":cid", &max, "51"]));
        }
        Op::GetHeld | Op::GetNotModified => {
            let head = find_query(sqlx_dir, |q| {
                q.contains("SELECT last_message_id FROM channels WHERE id = $1")
            })?;
            script += &format!("{};\n", bind(&head, &[":cid"]));
        }
    }
    Ok(script)
}

/// The one query in `.sqlx/` that `pick` selects.
fn find_query(sqlx_dir: &Path, pick: impl Fn(&str) -> bool) -> Result<String, String> {
    let entries =
        std::fs::read_dir(sqlx_dir).map_err(|e| format!("{}: {e}", sqlx_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if let Some(query) = json["query"].as_str().filter(|q| pick(q)) {
            found.push(query.trim().to_owned());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(format!("expected one matching query in .sqlx/, found {n}")),
    }
}

/// Replaces `$1…$n` with pgbench variables or literals, highest first so `$1` never eats `$10`.
fn bind(sql: &str, values: &[&str]) -> String {
    let mut sql = sql.to_owned();
    for (n, value) in values.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", n + 1), value);
    }
    sql
}

/// Runs one SQL command with psql: seeding, and `VACUUM ANALYZE` and `CHECKPOINT` before each
/// measured run so that pgbench, the floor and channeld, which prepare their statements at
/// different times, plan them from
/// the same statistics.
pub fn psql(database_url: &str, sql: &str) -> Result<(), String> {
    let status = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql, database_url])
        .status()
        .map_err(|e| format!("psql: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("psql failed: {sql}"))
}

/// Runs pgbench with prepared statements. No per-transaction log (writing one costs the 2 shared
/// cores enough to flatter every ratio): throughput and the average latency come from pgbench's
/// own summary, so `p50_ms` holds that average and `p99_ms` is NaN (`null` in the JSON).
pub fn pgbench(
    database_url: &str,
    script: &str,
    target: &Target,
    clients: usize,
    seconds: u64,
) -> Result<Figures, String> {
    let dir = std::env::temp_dir().join(format!("channeld-pgbench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let script_path = dir.join("script.sql");
    std::fs::write(&script_path, script).map_err(|e| e.to_string())?;
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared"])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&script_path)
        .args([
            "-D",
            &format!("lo={}", target.channels.0),
            "-D",
            &format!("hi={}", target.channels.1),
        ])
        .args(["-D", &format!("content={CONTENT}")])
        .arg(database_url)
        .output()
        .map_err(|e| format!("pgbench: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let summary = String::from_utf8_lossy(&output.stdout);
    let number_after = |label: &str| {
        summary.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(label)?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    let tps =
        number_after("tps = ").ok_or_else(|| format!("no tps in pgbench's summary: {summary}"))?;
    let average = number_after("latency average = ").unwrap_or(f64::NAN);
    Ok(Figures {
        per_sec: tps,
        p50_ms: average,
        p99_ms: f64::NAN,
    })
}

// ---------------------------------------------------------------------------------------------
// channeld over HTTP

/// `clients` keep-alive connections sending `op` back to back for `seconds`.
pub async fn load(
    target: &Target,
    op: Op,
    clients: usize,
    seconds: u64,
) -> Result<Figures, String> {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(Http::connect(&target.addr).await?);
    }
    // Each channel's latest page tag, as a client that read it before holds it.
    let mut tags = std::collections::HashMap::new();
    if op == Op::GetNotModified {
        let http = &mut connections[0];
        for channel in target.channels.0..=target.channels.1 {
            http.exchange(&request(Op::GetHeld, &target.key, channel, None))
                .await?;
            if let Some(tag) = http.header("etag") {
                tags.insert(channel, tag);
            }
        }
    }
    let tags = std::sync::Arc::new(tags);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut http| {
            let (key, channels, tags) = (target.key.clone(), target.channels, tags.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                // A server that sent no tags (the floor) answers with the page.
                let expected = op.expected()[usize::from(tags.is_empty())];
                while Instant::now() < deadline {
                    let channel = rand::thread_rng().gen_range(channels.0..=channels.1);
                    let tag = tags.get(&channel).map(String::as_str);
                    let request = request(op, &key, channel, tag);
                    let sent = Instant::now();
                    let status = http.exchange(&request).await?;
                    if status != expected {
                        return Err(format!("{} answered {status}", op.name()));
                    }
                    latencies.push(sent.elapsed().as_micros() as u32);
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Figures::new(all.len() as u64, elapsed, &mut all))
}

/// A credential flood and a real key at once: `concurrency` connections send `total` requests
/// with well-formed keys that name no stored key, while one connection reads with the real key
/// back to back until the flood is over.
#[derive(Debug, serde::Serialize)]
pub struct Flood {
    /// The real key's requests during the flood.
    pub real: Figures,
    /// The real key's answers other than 200 (a 503 among them would be a failure).
    pub real_refused: u64,
    /// The flood's answers: 401 (looked up, unknown) and 429 (refused before any lookup, the
    /// source being over `--auth-failures-per-minute`).
    pub flood_401: u64,
    pub flood_429: u64,
    pub flood_other: u64,
    pub flood_seconds: f64,
}

pub async fn flood(target: &Target, total: usize, concurrency: usize) -> Result<Flood, String> {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut flooders = Vec::new();
    for _ in 0..concurrency {
        let mut http = Http::connect(&target.addr).await?;
        let sent = sent.clone();
        flooders.push(tokio::spawn(async move {
            let mut statuses = [0u64; 3];
            loop {
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    break;
                }
                // The shape of a real key (`sk_live_` + 16 + `_` + 32), naming none.
                let key = format!("sk_live_{n:016}_{:032}", n.wrapping_mul(2_654_435_761));
                let request = format!(
                    "GET /v1/channels HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n"
                );
                match http.exchange(request.as_bytes()).await? {
                    401 => statuses[0] += 1,
                    429 => statuses[1] += 1,
                    _ => statuses[2] += 1,
                }
            }
            Ok::<_, String>(statuses)
        }));
    }
    let mut http = Http::connect(&target.addr).await?;
    let mut latencies = Vec::new();
    let mut real_refused = 0;
    let mut channel = target.channels.0;
    while sent.load(std::sync::atomic::Ordering::Relaxed) < total {
        let at = Instant::now();
        if http
            .exchange(&request(Op::Get, &target.key, channel, None))
            .await?
            != 200
        {
            real_refused += 1;
        }
        latencies.push(at.elapsed().as_micros() as u32);
        channel = if channel >= target.channels.1 {
            target.channels.0
        } else {
            channel + 1
        };
    }
    let mut counts = [0u64; 3];
    for flooder in flooders {
        let statuses = flooder.await.map_err(|e| e.to_string())??;
        for (count, add) in counts.iter_mut().zip(statuses) {
            *count += add;
        }
    }
    let flood_seconds = started.elapsed().as_secs_f64();
    Ok(Flood {
        real: Figures::new(latencies.len() as u64, flood_seconds, &mut latencies),
        real_refused,
        flood_401: counts[0],
        flood_429: counts[1],
        flood_other: counts[2],
        flood_seconds,
    })
}

fn request(op: Op, key: &str, channel: i64, tag: Option<&str>) -> Vec<u8> {
    match op {
        Op::Post => {
            let body = format!("{{\"content\":\"{CONTENT}\"}}");
            format!(
                "POST /v1/channels/{channel}/messages HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Op::Get => format!(
            "GET /v1/channels/{channel}/messages?before={} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n",
            i64::MAX
        )
        .into_bytes(),
        Op::GetHeld | Op::GetNotModified => {
            let condition = tag
                .map(|tag| format!("If-None-Match: {tag}\r\n"))
                .unwrap_or_default();
            format!(
                "GET /v1/channels/{channel}/messages HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n{condition}\r\n"
            )
            .into_bytes()
        }
    }
}

/// A minimal HTTP/1.1 keep-alive client: one request at a time, bodies sized by Content-Length.
/// It costs the machine far less CPU per request than a general-purpose client, so the figures
/// measure the server.
struct Http {
    stream: TcpStream,
    buffer: Vec<u8>,
    head_end: usize,
}

impl Http {
    async fn connect(addr: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(16 * 1024),
            head_end: 0,
        })
    }

    /// Sends one request and reads its whole response; returns the status code.
    async fn exchange(&mut self, request: &[u8]) -> Result<u16, String> {
        self.stream
            .write_all(request)
            .await
            .map_err(|e| e.to_string())?;
        self.buffer.clear();
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).map_err(|e| e.to_string())?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let length: usize = match status {
            // No body, whatever the headers say.
            204 | 304 => 0,
            _ => head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or("response without Content-Length")?,
        };
        self.head_end = head_end;
        while self.buffer.len() < head_end + length {
            self.read_more().await?;
        }
        Ok(status)
    }

    /// A header of the last response.
    fn header(&self, wanted: &str) -> Option<String> {
        let head = std::str::from_utf8(&self.buffer[..self.head_end]).ok()?;
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted)
                .then(|| value.trim().to_owned())
        })
    }

    async fn read_more(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("server closed the connection".into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlx_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".sqlx")
    }

    #[test]
    fn pgbench_scripts_are_built_from_the_queries_channeld_runs() {
        let post = pgbench_script(&sqlx_dir(), Op::Post).expect("post script");
        assert!(!post.contains("api_keys"), "{post}");
        assert!(
            post.contains("nextval('messages_id_seq')") && post.contains("message_count + 1"),
            "{post}"
        );
        assert!(
            post.contains(
                "SELECT last_message_id, id, :content, 'api', NULL, now(), '{}', NULL, NULL, NULL \
                 FROM channel"
            ),
            "{post}"
        );
        let get = pgbench_script(&sqlx_dir(), Op::Get).expect("get script");
        assert!(
            get.contains(
                "WHERE channel_id >= :cid AND (channel_id, id) < (:cid, 9223372036854775807)"
            ),
            "{get}"
        );
        assert!(
            get.contains("ORDER BY channel_id DESC, id DESC LIMIT 51;"),
            "{get}"
        );
        let head = pgbench_script(&sqlx_dir(), Op::GetHeld).expect("head script");
        assert!(
            head.contains("SELECT last_message_id FROM channels WHERE id = :cid;"),
            "{head}"
        );
        for script in [&post, &get, &head] {
            assert!(!script.contains('$'), "every parameter is bound: {script}");
        }
    }

    #[test]
    fn binding_replaces_higher_numbers_first() {
        let values: Vec<String> = (1..=10).map(|n| format!("v{n}")).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(bind("$1 $10 $2", &values), "v1 v10 v2");
    }
}
