//! The realtime side: fan-out from one publisher to many subscribers (against channeld and, for
//! comparison, a Pusher-protocol server under the same workload), the memory of idle
//! subscribed connections, and presence churn.

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
use tokio::{io::AsyncReadExt, sync::watch};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

use crate::stats::{CpuShare, CpuWindow, Figures, epoch_micros, rss_kib};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

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
    fn channel(&self, name: &str) -> String {
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
        let (mut socket, _) = connect_async(url).await.expect("connect");
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
    async fn subscriber(&self, credential: &Credential, channel: &str) -> Socket {
        let (mut socket, socket_id) = self.connect(credential).await;
        self.subscribe(&mut socket, socket_id.as_deref(), channel)
            .await;
        socket
    }

    /// One published frame carrying `data` (a JSON string).
    fn publish_frame(&self, channel: &str, data: &str) -> String {
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
async fn open_many<F, Fut>(count: usize, open: F) -> Vec<Socket>
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

/// What a fan-out run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanOut {
    pub server: &'static str,
    pub subscribers: usize,
    pub publish_rate: u64,
    pub published: u64,
    pub deliveries: Figures,
    /// Messages that subscribers still connected at the end never received.
    pub lost: u64,
    /// Subscribers the server disconnected during the run.
    pub disconnected: usize,
    pub cpu: CpuShare,
}

/// One publisher sending `rate` ~100-byte messages per second for `seconds` to `subscribers`.
pub async fn fan_out(
    server: &Server,
    name: &'static str,
    subscribers: usize,
    rate: u64,
    seconds: u64,
) -> FanOut {
    let channel = server.channel(&format!("fanout-{subscribers}"));
    let credential = server.credential("subscriber", &["subscribe"]).await;
    let sockets = open_many(subscribers, || server.subscriber(&credential, &channel)).await;

    // One counter per subscriber: a single shared one would bounce between cores a million
    // times a second and make the load generator its own bottleneck.
    let counters: Vec<Arc<AtomicU64>> = (0..subscribers).map(|_| Arc::default()).collect();
    let disconnected = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = sockets
        .into_iter()
        .zip(&counters)
        .map(|(socket, counter)| {
            tokio::spawn(receive(
                socket,
                counter.clone(),
                disconnected.clone(),
                stopped.clone(),
            ))
        })
        .collect();

    let publisher_credential = server
        .credential("publisher", &["publish", "subscribe"])
        .await;
    let publisher = server.subscriber(&publisher_credential, &channel).await;
    let (mut sink, mut replies) = publisher.split();
    // Whatever the server says to the publisher is read and dropped.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = replies.next().await {} });

    let cpu = CpuWindow::start(server.pid());
    let started = Instant::now();
    let pad = "x".repeat(72);
    let mut published = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        // Catch up to the schedule, so the rate holds whatever the timer's granularity.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while published < due {
            let data = format!("ts:{}:{pad}", epoch_micros());
            sink.feed(Message::text(server.publish_frame(&channel, &data)))
                .await
                .expect("publish");
            published += 1;
        }
        sink.flush().await.expect("publish");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let deliveries in flight arrive: until every live subscriber has them all, or 5 s.
    let settle = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settle {
        let live = (subscribers - disconnected.load(Ordering::Relaxed)) as u64;
        let received: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if received >= published * live {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu.stop();
    let _ = stop.send(true);
    let mut latencies = Vec::new();
    let mut lost = 0;
    for task in tasks {
        let (count, mut local, closed) = task.await.expect("subscriber task");
        if !closed {
            lost += published.saturating_sub(count);
        }
        latencies.append(&mut local);
    }
    drain.abort();
    let delivered = latencies.len() as u64;
    FanOut {
        server: name,
        subscribers,
        publish_rate: rate,
        published,
        deliveries: Figures::new(delivered, elapsed, &mut latencies),
        lost,
        disconnected: disconnected.load(Ordering::Relaxed),
        cpu,
    }
}

/// Reads one subscriber's frames until told to stop: how many carried a timestamp, their
/// publish-to-receive latencies in microseconds, and whether the server closed the socket.
///
/// After the handshake the frames are read straight off the TCP stream: server frames are
/// unmasked, so a frame is a 2-10 byte header and its payload, scanned in place with no
/// allocation per frame. That keeps the load generator's CPU well below the server's. Pings are
/// not answered; a run is shorter than the server's idle timeout.
async fn receive(
    socket: Socket,
    received: Arc<AtomicU64>,
    disconnected: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> (u64, Vec<u32>, bool) {
    let MaybeTlsStream::Plain(mut tcp) = socket.into_inner() else {
        unreachable!("the bench speaks plain ws://");
    };
    let mut latencies = Vec::new();
    let mut count = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let gone = |count, latencies| {
        disconnected.fetch_add(1, Ordering::Relaxed);
        (count, latencies, true)
    };
    loop {
        tokio::select! {
            read = tcp.read(&mut buffer[filled..]) => match read {
                Ok(0) | Err(_) => return gone(count, latencies),
                Ok(n) => filled += n,
            },
            _ = stop.wait_for(|stop| *stop) => return (count, latencies, false),
        }
        let mut at = 0;
        while let Some((opcode, payload)) = frame(&buffer[at..filled]) {
            at += payload.end;
            match opcode {
                0x8 => return gone(count, latencies),
                0x1 | 0x0 => {
                    if let Some(sent) = stamp(&buffer[at - payload.len()..at]) {
                        latencies.push(epoch_micros().saturating_sub(sent) as u32);
                        count += 1;
                        received.store(count, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
        buffer.copy_within(at..filled, 0);
        filled -= at;
        if filled == buffer.len() {
            buffer.resize(buffer.len() * 2, 0);
        }
    }
}

/// The opcode and payload range (from the start of `bytes`) of the first whole frame in `bytes`.
fn frame(bytes: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (length, header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    (bytes.len() >= header + length).then_some((first & 0x0f, header..header + length))
}

/// The microseconds after `ts:` in a frame, found without parsing the JSON.
fn stamp(frame: &[u8]) -> Option<u64> {
    let at = frame.windows(3).position(|w| w == b"ts:")? + 3;
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit());
    Some(digits.fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(server.pid());
    drop(sockets);
    Footprint {
        connections,
        rss_before_kib: before,
        rss_after_kib: after,
        per_connection_kib: after.saturating_sub(before) as f64 / connections.max(1) as f64,
    }
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
    let mut sockets = Vec::with_capacity(peers);
    for chunk in (0..peers).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
        sockets.extend(
            join_all(chunk.iter().map(|n| async move {
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
                    let kind = if turn % 2 == 0 {
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
