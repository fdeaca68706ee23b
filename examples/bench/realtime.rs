//! The realtime side: the servers under test and how to connect to them, the memory of idle
//! subscribed connections, and presence churn. Fan-out is in `fanout`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt, future::join_all};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config, tungstenite::Message,
};

use crate::stats::{CpuShare, CpuWindow, rss_kib};

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connections opened at once while setting up a run.
const CONNECT_BATCH: usize = 250;

/// A server under test and how to speak to it.
pub enum Server {
    /// channeld: tokens from `POST /v1/tokens`, the protocol of SPEC §5.
    Channeld { base: String, key: String, pid: u32 },
    /// A Pusher-protocol server: private channels signed with the app secret, client events.
    Pusher {
        ws: String,
        app_key: String,
        secret: String,
        pid: u32,
    },
}

/// A credential for connecting: a channeld token, or nothing for Pusher.
#[derive(Clone)]
pub struct Credential(Option<String>);

impl Server {
    pub fn pid(&self) -> u32 {
        match self {
            Server::Channeld { pid, .. } | Server::Pusher { pid, .. } => *pid,
        }
    }

    /// A credential for `peer` with `permissions` (channeld only; Pusher needs none to connect).
    pub async fn credential(&self, peer: &str, permissions: &[&str]) -> Credential {
        let Server::Channeld { base, key, .. } = self else {
            return Credential(None);
        };
        let body = json!({"peerId": peer, "permissions": permissions, "expiresInSec": 3600});
        let response: Value = reqwest::Client::new()
            .post(format!("{base}/v1/tokens"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("mint a token")
            .json()
            .await
            .expect("token JSON");
        Credential(Some(response["token"].as_str().expect("token").to_owned()))
    }

    /// The name a workload's channel has on this server (Pusher client events need `private-`).
    pub fn channel(&self, name: &str) -> String {
        match self {
            Server::Channeld { .. } => name.to_owned(),
            Server::Pusher { .. } => format!("private-{name}"),
        }
    }

    /// Connects and waits for the server's greeting; returns the socket and, for Pusher, the
    /// socket id that private-channel signatures cover.
    async fn connect(&self, credential: &Credential) -> (Socket, Option<String>) {
        let url = match (self, &credential.0) {
            (Server::Channeld { base, .. }, Some(token)) => {
                format!("{}/v1?token={token}", base.replacen("http", "ws", 1))
            }
            (Server::Pusher { ws, app_key, .. }, _) => {
                format!("{ws}/app/{app_key}?protocol=7&client=channeld-bench&version=1.0")
            }
            (Server::Channeld { .. }, None) => unreachable!("channeld connections carry a token"),
        };
        // Nagle off, as a real-time client would: the publisher writes small frames every
        // millisecond, which would otherwise wait for the server's delayed ACKs.
        let (mut socket, _) = connect_async_with_config(url, None, true)
            .await
            .expect("connect");
        let greeting = next_json(&mut socket).await;
        let socket_id = match self {
            Server::Channeld { .. } => None,
            Server::Pusher { .. } => {
                let data: Value = serde_json::from_str(greeting["data"].as_str().unwrap_or("{}"))
                    .unwrap_or_default();
                Some(data["socket_id"].as_str().expect("socket_id").to_owned())
            }
        };
        (socket, socket_id)
    }

    /// Connects (channeld) and waits for the welcome.
    pub async fn connect_with(&self, credential: &Credential) -> Socket {
        self.connect(credential).await.0
    }

    /// Subscribes and waits for the confirmation.
    async fn subscribe(&self, socket: &mut Socket, socket_id: Option<&str>, channel: &str) {
        let frame = match self {
            Server::Channeld { .. } => {
                json!({"type": "subscribe", "channel": channel, "requestId": "s"})
            }
            Server::Pusher {
                app_key, secret, ..
            } => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
                mac.update(format!("{}:{channel}", socket_id.unwrap_or_default()).as_bytes());
                let auth = format!("{app_key}:{}", hex::encode(mac.finalize().into_bytes()));
                json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}})
            }
        };
        socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("subscribe");
        loop {
            let reply = next_json(socket).await;
            match (&reply["type"], &reply["event"]) {
                (Value::String(t), _) if t == "ack" => return,
                (_, Value::String(e)) if e == "pusher_internal:subscription_succeeded" => return,
                (Value::String(t), _) if t == "error" => panic!("subscribe refused: {reply}"),
                (_, Value::String(e)) if e == "pusher:error" => {
                    panic!("subscribe refused: {reply}")
                }
                _ => {}
            }
        }
    }

    /// A connection subscribed to `channel`.
    pub async fn subscriber(&self, credential: &Credential, channel: &str) -> Socket {
        let (mut socket, socket_id) = self.connect(credential).await;
        self.subscribe(&mut socket, socket_id.as_deref(), channel)
            .await;
        socket
    }

    /// One published frame carrying `data` (a JSON string).
    pub fn publish_frame(&self, channel: &str, data: &str) -> String {
        match self {
            Server::Channeld { .. } => {
                json!({"type": "publish", "channel": channel, "data": data}).to_string()
            }
            Server::Pusher { .. } => {
                json!({"event": "client-bench", "channel": channel, "data": data}).to_string()
            }
        }
    }
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        match socket.next().await.expect("open").expect("frame") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Opens `count` connections with `open`, a batch at a time.
pub async fn open_many<F, Fut>(count: usize, open: F) -> Vec<Socket>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Socket>,
{
    let mut sockets = Vec::with_capacity(count);
    while sockets.len() < count {
        let batch = CONNECT_BATCH.min(count - sockets.len());
        sockets.extend(join_all((0..batch).map(|_| open())).await);
    }
    sockets
}

/// What the idle-connection run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub per_connection_kib: f64,
}

/// Memory of `connections` idle connections, each subscribed to one channel.
pub async fn footprint(server: &Server, connections: usize) -> Footprint {
    let credential = server.credential("idle", &["subscribe"]).await;
    let channel = server.channel("idle-room");
    let before = rss_kib(server.pid());
    let sockets = open_many(connections, || server.subscriber(&credential, &channel)).await;
    let after = settled_rss_kib(server.pid()).await;
    drop(sockets);
    Footprint {
        connections,
        rss_before_kib: before,
        rss_after_kib: after,
        per_connection_kib: after.saturating_sub(before) as f64 / connections.max(1) as f64,
    }
}

/// RSS once it stops changing: the server may still be finishing the last subscriptions when
/// the last ack arrives. Read every 100 ms until two readings agree, for at most 5 s.
async fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// What the presence-churn run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    pub peers: usize,
    pub joins_leaves_per_sec: f64,
    pub disconnected: usize,
    pub cpu: CpuShare,
}

/// `peers` peers, each with presence, subscribing to and leaving one channel back to back.
pub async fn churn(server: &Server, peers: usize, seconds: u64) -> Churn {
    churn_over(&[server], peers, seconds).await
}

/// [`churn`] with the peers dealt in turn over `spread` (instances of one cluster); CPU is that
/// of the first.
pub async fn churn_over(spread: &[&Server], peers: usize, seconds: u64) -> Churn {
    let server = spread[0];
    let mut sockets = Vec::with_capacity(peers);
    for chunk in (0..peers).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
        sockets.extend(
            join_all(chunk.iter().map(|n| async move {
                let server = spread[n % spread.len()];
                let credential = server
                    .credential(&format!("churn-{n}"), &["subscribe", "presence"])
                    .await;
                server.connect(&credential).await.0
            }))
            .await,
        );
    }
    let operations = Arc::new(AtomicU64::new(0));
    let disconnected = Arc::new(AtomicUsize::new(0));
    let cpu = CpuWindow::start(server.pid());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (operations, disconnected) = (operations.clone(), disconnected.clone());
            tokio::spawn(async move {
                let mut turn = 0u64;
                while Instant::now() < deadline {
                    let kind = if turn.is_multiple_of(2) {
                        "subscribe"
                    } else {
                        "unsubscribe"
                    };
                    let frame =
                        json!({"type": kind, "channel": "lobby", "requestId": turn.to_string()});
                    if socket.send(Message::text(frame.to_string())).await.is_err() {
                        disconnected.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // Presence frames of the other peers arrive before and after the ack.
                    loop {
                        match socket.next().await {
                            Some(Ok(Message::Text(text))) if text.contains("\"ack\"") => break,
                            Some(Ok(_)) => {}
                            _ => {
                                disconnected.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                    operations.fetch_add(1, Ordering::Relaxed);
                    turn += 1;
                }
            })
        })
        .collect();
    join_all(tasks).await;
    let elapsed = started.elapsed().as_secs_f64();
    Churn {
        peers,
        joins_leaves_per_sec: operations.load(Ordering::Relaxed) as f64 / elapsed,
        disconnected: disconnected.load(Ordering::Relaxed),
        cpu: cpu.stop(),
    }
}
