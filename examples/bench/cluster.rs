//! Cluster mode: channeld instances sharing realtime through Redis, started here for these runs
//! only (so every other figure is of one in-memory instance).
//!
//! - fan-out with one instance in Redis mode, and with the subscribers dealt over two instances
//!   (the publisher on the first), at the loads of the in-memory fan-out rows, each repeated;
//! - presence churn with the peers dealt over two instances;
//! - presence convergence: 100 peers joining at once, split over two instances, watched by an
//!   observer on each; a run converges when each observer saw every peer join exactly once, both
//!   instances list the same 102 peers, and after everyone left each observer saw 100 `left`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt, future::join_all};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    fanout::{Repeated, fan_out_over},
    realtime::{Churn, Server, Socket, churn_over},
};

/// A `channeld serve` in cluster mode, killed when dropped.
pub struct Instance {
    child: std::process::Child,
    pub server: Server,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    /// Starts `binary serve` on `listen` with this process's environment (`DATABASE_URL`,
    /// `CHANNELD_MASTER_KEY`), Redis at `redis_url` under `prefix`, limits raised as for the
    /// in-memory instance; waits until it is subscribed to Redis.
    pub async fn start(
        binary: &std::path::Path,
        listen: &str,
        redis_url: &str,
        prefix: &str,
        key: &str,
    ) -> Result<Self, String> {
        let log = std::fs::File::create(format!(
            ".data/bench-cluster-{}.log",
            listen.replace(':', "-")
        ))
        .map_err(|e| e.to_string())?;
        let child = std::process::Command::new(binary)
            .args(["serve", "--no-migrate", "--listen", listen])
            .args(["--ws-connects-per-ip", "1000000"])
            .args(["--ws-frame-rate", "100000", "--ws-frame-burst", "100000"])
            .args(["--redis-url", redis_url, "--redis-prefix", prefix])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let pid = child.id();
        let instance = Self {
            child,
            server: Server::Channeld {
                base: format!("http://{listen}"),
                key: key.to_owned(),
                pid,
            },
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let up = match reqwest::get(format!("http://{listen}/metrics")).await {
                Ok(response) => response
                    .text()
                    .await
                    .is_ok_and(|t| t.lines().any(|l| l == "channeld_redis_up 1")),
                Err(_) => false,
            };
            if up {
                return Ok(instance);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the cluster instance on {listen} never reached Redis"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Convergence {
    pub peers: usize,
    pub runs: usize,
    pub converged: usize,
    /// What each run that did not converge got wrong.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterFigures {
    pub fanout: Vec<Repeated>,
    pub churn_two_instances: Churn,
    pub churn_one_instance: Churn,
    pub convergence: Convergence,
}

pub struct Plan<'a> {
    pub binary: &'a std::path::Path,
    pub listens: [&'a str; 2],
    pub redis_url: &'a str,
    pub key: &'a str,
    pub loads: &'a [(usize, u64)],
    pub seconds: u64,
    pub repeats: usize,
    pub churn_peers: usize,
    /// Two sockudo instances sharing the same Redis through its Redis adapter, when given.
    pub pusher: Option<[Server; 2]>,
}

pub async fn run(plan: &Plan<'_>) -> Result<ClusterFigures, String> {
    let prefix = format!("bench{}", std::process::id());
    let a = Instance::start(
        plan.binary,
        plan.listens[0],
        plan.redis_url,
        &prefix,
        plan.key,
    )
    .await?;
    let b = Instance::start(
        plan.binary,
        plan.listens[1],
        plan.redis_url,
        &prefix,
        plan.key,
    )
    .await?;
    let mut fanout = Vec::new();
    let mut servers = vec![("channeld", [&a.server, &b.server])];
    if let Some([first, second]) = &plan.pusher {
        servers.push(("sockudo", [first, second]));
    }
    for &(subscribers, rate) in plan.loads {
        for (name, [first, second]) in &servers {
            for (placement, spread) in [
                ("1 instance, Redis", vec![*first]),
                ("2 instances, Redis", vec![*first, *second]),
            ] {
                let mut runs = Vec::new();
                for run in 0..plan.repeats {
                    eprintln!(
                        "bench: cluster fan-out to {subscribers} subscribers at {rate}/s, {name}, {placement} (run {})",
                        run + 1
                    );
                    runs.push(
                        fan_out_over(first, &spread, name, subscribers, rate, plan.seconds).await,
                    );
                }
                fanout.push(Repeated::of(placement, runs));
            }
        }
    }
    eprintln!(
        "bench: cluster presence churn, {} peers on 1 instance",
        plan.churn_peers
    );
    let churn_one_instance = churn_over(&[&a.server], plan.churn_peers, 5).await;
    eprintln!(
        "bench: cluster presence churn, {} peers over 2 instances",
        plan.churn_peers
    );
    let churn_two_instances = churn_over(&[&a.server, &b.server], plan.churn_peers, 5).await;
    eprintln!("bench: cluster presence convergence, 100 peers over 2 instances");
    let convergence = converge(&a.server, &b.server, 100, 5).await;
    Ok(ClusterFigures {
        fanout,
        churn_two_instances,
        churn_one_instance,
        convergence,
    })
}

/// Frames with presence, counted per peer.
#[derive(Default)]
struct Seen {
    joined: BTreeMap<String, usize>,
    left: BTreeMap<String, usize>,
}

impl Seen {
    fn count(&mut self, frame: &Value) {
        for (field, tally) in [("joined", &mut self.joined), ("left", &mut self.left)] {
            for entry in frame[field].as_array().into_iter().flatten() {
                if let Some(peer) = entry["peerId"].as_str() {
                    *tally.entry(peer.to_owned()).or_default() += 1;
                }
            }
        }
    }

    /// Reads until `done` or 10 s.
    async fn until(&mut self, socket: &mut Socket, done: impl Fn(&Seen) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            match tokio::time::timeout_at(deadline, socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    if let Ok(frame) = serde_json::from_str::<Value>(&text)
                        && frame["type"] == "presence"
                    {
                        self.count(&frame);
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return false,
            }
        }
        true
    }
}

async fn presence_socket(server: &Server, peer: &str) -> Socket {
    let credential = server.credential(peer, &["subscribe", "presence"]).await;
    server.connect_with(&credential).await
}

async fn subscribe(socket: &mut Socket, channel: &str) {
    let frame = json!({"type": "subscribe", "channel": channel, "requestId": "s"});
    socket
        .send(Message::text(frame.to_string()))
        .await
        .expect("subscribe");
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message
            && (text.contains("\"ack\"") || text.contains("\"error\""))
        {
            return;
        }
    }
}

async fn listed(server: &Server, channel: &str) -> BTreeSet<String> {
    let Server::Channeld { base, key, .. } = server else {
        return BTreeSet::new();
    };
    let body: Value = reqwest::Client::new()
        .get(format!("{base}/v1/channels/{channel}/peers"))
        .bearer_auth(key)
        .send()
        .await
        .expect("peers")
        .json()
        .await
        .expect("peers JSON");
    body["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["peerId"].as_str().map(str::to_owned))
        .collect()
}

async fn converge(a: &Server, b: &Server, peers: usize, runs: usize) -> Convergence {
    let mut figures = Convergence {
        peers,
        runs,
        converged: 0,
        failures: Vec::new(),
    };
    for run in 0..runs {
        let channel = format!("converge-{}-{run}", std::process::id());
        let mut observers = [
            presence_socket(a, "observer-a").await,
            presence_socket(b, "observer-b").await,
        ];
        for observer in &mut observers {
            subscribe(observer, &channel).await;
        }
        let mut sockets = join_all((0..peers).map(|n| {
            let server = if n % 2 == 0 { a } else { b };
            async move { presence_socket(server, &format!("joiner-{n}")).await }
        }))
        .await;
        join_all(sockets.iter_mut().map(|s| subscribe(s, &channel))).await;
        let everyone = |s: &Seen| (0..peers).all(|n| s.joined.contains_key(&format!("joiner-{n}")));
        let mut seen = [Seen::default(), Seen::default()];
        let mut problems = Vec::new();
        for (observer, seen) in observers.iter_mut().zip(&mut seen) {
            if !seen.until(observer, everyone).await {
                problems.push(format!(
                    "an observer saw {} of {peers} joins",
                    seen.joined.len()
                ));
            }
        }
        let (on_a, on_b) = (listed(a, &channel).await, listed(b, &channel).await);
        if on_a != on_b || on_a.len() != peers + 2 {
            problems.push(format!(
                "the instances listed {} and {} peers",
                on_a.len(),
                on_b.len()
            ));
        }
        for socket in &mut sockets {
            let _ = socket.close(None).await;
        }
        drop(sockets);
        let all_left = |s: &Seen| (0..peers).all(|n| s.left.contains_key(&format!("joiner-{n}")));
        for (observer, seen) in observers.iter_mut().zip(&mut seen) {
            if !seen.until(observer, all_left).await {
                problems.push(format!(
                    "an observer saw {} of {peers} leaves",
                    seen.left.len()
                ));
            }
            let repeated = seen
                .joined
                .values()
                .chain(seen.left.values())
                .filter(|n| **n > 1)
                .count();
            if repeated > 0 {
                problems.push(format!(
                    "{repeated} joins or leaves announced more than once"
                ));
            }
        }
        if problems.is_empty() {
            figures.converged += 1;
        } else {
            figures
                .failures
                .push(format!("run {}: {}", run + 1, problems.join("; ")));
        }
    }
    figures
}
