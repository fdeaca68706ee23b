//! Stored messages to live followers, the path users depend on most: one writer POSTs to one
//! persistent channel followed by WebSocket subscribers and Server-Sent Events streams, connected
//! to the instance it posts to or to another instance on the same database.
//!
//! Latency runs from just before the POST is sent to the frame's arrival: it includes the insert,
//! the doorbell, the reader's query and the fan-out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    fanout::{spawn_receivers, stamp},
    realtime::{Server, open_many},
    stats::{CpuShare, CpuWindow, Figures, epoch_micros},
};

/// One instance: where to reach it and which process it is.
#[derive(Clone)]
pub struct Instance {
    pub base: String,
    pub pid: u32,
}

/// A second channeld on the same database, started for the runs with followers on another
/// instance and stopped when dropped.
pub struct SecondInstance {
    child: std::process::Child,
    base: String,
}

impl SecondInstance {
    /// Starts `binary serve` on `listen` with this process's environment (`DATABASE_URL`,
    /// `CHANNELD_MASTER_KEY`), its limits raised as the first instance's are, and waits until it
    /// answers and the first instance has heard it.
    pub async fn start(
        binary: &std::path::Path,
        listen: &str,
        first_base: &str,
    ) -> Result<Self, String> {
        let log = std::fs::File::create(".data/bench-channeld-2.log").map_err(|e| e.to_string())?;
        let child = std::process::Command::new(binary)
            .args(["serve", "--no-migrate", "--listen", listen])
            .args(["--ws-connects-per-ip", "1000000"])
            .args(["--ws-frame-rate", "100000", "--ws-frame-burst", "100000"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let second = Self {
            child,
            base: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("the second instance never answered on {listen}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The first instance notifies after its commits only once it has heard this one.
        let metrics = format!("{first_base}/metrics");
        loop {
            let text = reqwest::get(&metrics)
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            if text
                .lines()
                .any(|l| l == "channeld_delivery_other_instances 1")
            {
                break;
            }
            if Instant::now() > deadline {
                return Err("the first instance never heard the second".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(second)
    }

    pub fn instance(&self) -> Instance {
        Instance {
            base: self.base.clone(),
            pid: self.child.id(),
        }
    }
}

impl Drop for SecondInstance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one stored-delivery run measured.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRun {
    /// `same instance` or `other instance`: where the followers are, relative to the writer.
    pub followers_on: &'static str,
    pub ws_subscribers: usize,
    pub sse_streams: usize,
    /// Posts per second offered; `None`: as fast as one sequential writer goes.
    pub offered_rate: Option<u64>,
    pub posted: u64,
    /// Posts per second achieved, and the POST's own latency.
    pub posts: Figures,
    /// WebSocket frames per second, and POST-to-frame latency.
    pub ws: Figures,
    /// SSE events per second, and POST-to-event latency.
    pub sse: Figures,
    /// Messages that followers still connected at the end never received.
    pub lost: u64,
    /// Followers the server disconnected during the run.
    pub disconnected: usize,
    /// CPU of the instance posted to.
    pub writer_cpu: CpuShare,
    /// CPU of the instance followed through (the same as `writer_cpu` on one instance).
    pub follower_cpu: CpuShare,
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    writer: &Instance,
    followers: &Instance,
    followers_on: &'static str,
    key: &str,
    ws_subscribers: usize,
    sse_streams: usize,
    offered_rate: Option<u64>,
    seconds: u64,
) -> StoredRun {
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/v1/channels", writer.base))
        .bearer_auth(key)
        .json(&json!({"name": format!("stored {followers_on} {} {}", std::process::id(), epoch_micros())}))
        .send()
        .await
        .expect("create channel")
        .json()
        .await
        .expect("channel JSON");
    let channel = created["channel"]["id"].as_i64().expect("channel id");

    let server = Server::Channeld {
        base: followers.base.clone(),
        key: key.to_owned(),
        pid: followers.pid,
    };
    let credential = server.credential("follower", &["subscribe"]).await;
    let name = channel.to_string();
    let sockets = open_many(ws_subscribers, || server.subscriber(&credential, &name)).await;
    let (stop, stopped) = watch::channel(false);
    let disconnected = Arc::new(AtomicUsize::new(0));
    let (ws_counters, ws_tasks) = spawn_receivers(sockets, &disconnected, &stopped);
    let sse_counters: Vec<Arc<AtomicU64>> = (0..sse_streams).map(|_| Arc::default()).collect();
    let mut sse_tasks = Vec::new();
    for counter in &sse_counters {
        let response = http
            .get(format!("{}/v1/channels/{channel}/events", followers.base))
            .bearer_auth(key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("open an event stream");
        assert!(response.status().is_success(), "event stream refused");
        sse_tasks.push(tokio::spawn(follow_events(
            response,
            counter.clone(),
            disconnected.clone(),
            stopped.clone(),
        )));
    }

    let writer_window = CpuWindow::start(writer.pid);
    let follower_window = CpuWindow::start(followers.pid);
    let pad = "x".repeat(72);
    let url = format!("{}/v1/channels/{channel}/messages", writer.base);
    let mut post_latencies = Vec::new();
    let started = Instant::now();
    let mut posted = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while started.elapsed() < Duration::from_secs(seconds) {
        if let Some(rate) = offered_rate {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if posted >= due {
                continue;
            }
        }
        let sent = Instant::now();
        let response = http
            .post(&url)
            .bearer_auth(key)
            .json(&json!({"content": format!("ts:{}:{pad}", epoch_micros())}))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 201, "post refused");
        post_latencies.push(sent.elapsed().as_micros() as u32);
        posted += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let settle = Instant::now() + Duration::from_secs(5);
    let everyone: Vec<&Arc<AtomicU64>> = ws_counters.iter().chain(&sse_counters).collect();
    while Instant::now() < settle {
        let live = (everyone.len() - disconnected.load(Ordering::Relaxed)) as u64;
        let received: u64 = everyone.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if received >= posted * live {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writer_cpu = writer_window.stop();
    let follower_cpu = follower_window.stop();
    let _ = stop.send(true);

    let mut lost = 0;
    let mut ws_latencies = Vec::new();
    for task in ws_tasks {
        let (count, mut latencies, closed, _) = task.await.expect("subscriber task");
        if !closed {
            lost += posted.saturating_sub(count);
        }
        ws_latencies.append(&mut latencies);
    }
    let mut sse_latencies = Vec::new();
    for task in sse_tasks {
        let (count, mut latencies, closed) = task.await.expect("event stream task");
        if !closed {
            lost += posted.saturating_sub(count);
        }
        sse_latencies.append(&mut latencies);
    }
    StoredRun {
        followers_on,
        ws_subscribers,
        sse_streams,
        offered_rate,
        posted,
        posts: Figures::new(posted, elapsed, &mut post_latencies),
        ws: Figures::new(ws_latencies.len() as u64, elapsed, &mut ws_latencies),
        sse: Figures::new(sse_latencies.len() as u64, elapsed, &mut sse_latencies),
        lost,
        disconnected: disconnected.load(Ordering::Relaxed),
        writer_cpu,
        follower_cpu,
    }
}

/// Reads one event stream until told to stop: how many events carried a timestamp, their
/// latencies in microseconds, and whether the server ended the stream.
async fn follow_events(
    mut response: reqwest::Response,
    received: Arc<AtomicU64>,
    disconnected: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> (u64, Vec<u32>, bool) {
    let mut latencies = Vec::new();
    let mut count = 0u64;
    let mut buffer = Vec::new();
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            _ = stop.wait_for(|stop| *stop) => return (count, latencies, false),
        };
        let Ok(Some(chunk)) = chunk else {
            disconnected.fetch_add(1, Ordering::Relaxed);
            return (count, latencies, true);
        };
        buffer.extend_from_slice(&chunk);
        let mut at = 0;
        while let Some(end) = buffer[at..].windows(2).position(|w| w == b"\n\n") {
            let event = &buffer[at..at + end];
            if let Some(sent) = stamp(event) {
                latencies.push(epoch_micros().saturating_sub(sent) as u32);
                count += 1;
                received.store(count, Ordering::Relaxed);
            }
            at += end + 2;
        }
        buffer.drain(..at);
    }
}
