//! A load generator for channeld's realtime side: idle-connection footprint, fan-out and presence
//! churn, against a running server. `make bench` drives it; it prints one line per figure.
//!
//! ```sh
//! cargo run --release --example bench -- <base-url> <key with publish,subscribe,presence> <server pid>
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

struct Target {
    http: reqwest::Client,
    base: String,
    ws_base: String,
    key: String,
    server_pid: u32,
}

impl Target {
    async fn token(&self, peer: &str, permissions: &[&str]) -> String {
        let body = json!({"peerId": peer, "permissions": permissions, "expiresInSec": 3600});
        let response: Value = self
            .http
            .post(format!("{}/v1/tokens", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("mint token")
            .json()
            .await
            .expect("token JSON");
        response["token"].as_str().expect("token").to_owned()
    }

    async fn connect(&self, token: &str) -> Socket {
        let (mut socket, _) = connect_async(format!("{}/v1?token={token}", self.ws_base))
            .await
            .expect("connect");
        next_text(&mut socket).await; // welcome
        socket
    }

    fn server_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server_pid))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

async fn next_text(socket: &mut Socket) -> Value {
    loop {
        match socket.next().await.expect("open").expect("frame") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

async fn subscribe(socket: &mut Socket, channel: &str) {
    let frame = json!({"type": "subscribe", "channel": channel, "requestId": "s"});
    socket
        .send(Message::text(frame.to_string()))
        .await
        .expect("send");
    loop {
        if next_text(socket).await["type"] == "ack" {
            return;
        }
    }
}

/// Memory of idle subscribed connections, per connection.
async fn footprint(target: &Target, connections: usize) {
    let token = target.token("idle", &["subscribe"]).await;
    let before = target.server_rss_kib();
    let mut sockets = Vec::with_capacity(connections);
    for chunk in 0..connections.div_ceil(500) {
        let batch = (0..500.min(connections - chunk * 500)).map(|_| async {
            let mut socket = target.connect(&token).await;
            subscribe(&mut socket, "idle-room").await;
            socket
        });
        sockets.extend(futures::future::join_all(batch).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = target.server_rss_kib();
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    println!(
        "footprint: {connections} idle subscribed connections, RSS {before} -> {after} KiB, {per:.2} KiB per connection"
    );
    drop(sockets);
}

/// One publisher, `subscribers` subscribers, `rate` publishes per second for `seconds`.
async fn fan_out(target: &Target, subscribers: usize, rate: u64, seconds: u64) {
    let channel = format!("fanout-{subscribers}");
    let token = target.token("sub", &["subscribe"]).await;
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut socket = target.connect(&token).await;
        subscribe(&mut socket, &channel).await;
        let (received, latencies) = (received.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                    if let Some(sent) = frame["data"]["t"].as_u64() {
                        let now = micros();
                        local.push(now.saturating_sub(sent) as u32);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    if frame["data"]["end"] == true {
                        break;
                    }
                }
            }
            latencies.lock().unwrap().extend(local);
        }));
    }
    let publisher_token = target.token("pub", &["publish"]).await;
    let mut publisher = target.connect(&publisher_token).await;
    let pad = "x".repeat(60);
    let started = Instant::now();
    let mut sent = 0u64;
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let frame =
            json!({"type": "publish", "channel": channel, "data": {"t": micros(), "p": pad}});
        publisher
            .send(Message::text(frame.to_string()))
            .await
            .expect("publish");
        sent += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end = json!({"type": "publish", "channel": channel, "data": {"end": true}});
    publisher
        .send(Message::text(end.to_string()))
        .await
        .expect("publish");
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let delivered = received.load(Ordering::Relaxed);
    let mut all = latencies.lock().unwrap().clone();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "fan-out: {subscribers} subscribers, {sent} publishes in {elapsed:.1} s: {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, lost {}",
        delivered as f64 / elapsed,
        f64::from(pct(0.50)) / 1000.0,
        f64::from(pct(0.99)) / 1000.0,
        (sent * subscribers as u64).saturating_sub(delivered)
    );
}

/// Peers joining and leaving one channel as fast as they can.
async fn churn(target: &Target, peers: usize, seconds: u64) {
    let operations = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in 0..peers {
        let token = target
            .token(&format!("churn-{n}"), &["subscribe", "presence"])
            .await;
        let mut socket = target.connect(&token).await;
        let operations = operations.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut turn = 0u64;
            while Instant::now() < deadline {
                let kind = if turn % 2 == 0 {
                    "subscribe"
                } else {
                    "unsubscribe"
                };
                let frame =
                    json!({"type": kind, "channel": "lobby", "requestId": turn.to_string()});
                if socket.send(Message::text(frame.to_string())).await.is_err() {
                    return;
                }
                // Read until our ack; presence frames of others arrive in between.
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"ack\"") => break,
                        Some(Ok(_)) => {}
                        _ => return,
                    }
                }
                operations.fetch_add(1, Ordering::Relaxed);
                turn += 1;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let total = operations.load(Ordering::Relaxed);
    println!(
        "presence churn: {peers} peers, {:.0} joins+leaves/s",
        total as f64 / seconds as f64
    );
}

fn micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, key, pid, ..] = args.as_slice() else {
        eprintln!("usage: bench <base-url> <key> <server-pid> [footprint-connections]");
        std::process::exit(2);
    };
    let target = Target {
        http: reqwest::Client::new(),
        ws_base: base.replacen("http", "ws", 1),
        base: base.clone(),
        key: key.clone(),
        server_pid: pid.parse().expect("pid"),
    };
    let idle: usize = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    footprint(&target, idle).await;
    for subscribers in [100, 1000] {
        fan_out(&target, subscribers, 200, 5).await;
    }
    churn(&target, 200, 5).await;
}
