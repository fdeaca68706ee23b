//! Cluster-mode helpers: instances sharing one Redis under a fresh key prefix, presence
//! bookkeeping, and frames read past the ones a step does not care about.
//!
//! Redis is the one at `CHANNELD_TEST_REDIS_URL` (`make test` sets it: the Redis on
//! 127.0.0.1:6379 when one answers, otherwise a private one), else redis://127.0.0.1:6379.

use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

use channeld::{
    auth::Scope,
    config::{ClusterSettings, Config},
};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::{Instant, timeout};

use super::{TestApp, Ws};

pub const REALTIME: [Scope; 5] = [
    Scope::Publish,
    Scope::Subscribe,
    Scope::Presence,
    Scope::Send,
    Scope::Admin,
];

pub const MASTER_KEY: &str = "6368616e6e656c642074657374206d6173746572206b65792030303030303030";

pub fn redis_url() -> String {
    std::env::var("CHANNELD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn fresh_prefix() -> String {
    format!("cdtest{:016x}", rand::random::<u64>())
}

pub fn cluster_config(prefix: &str, redis_url: &str, node_ttl: Duration) -> Config {
    let mut config = super::base_config();
    config.master_key = MASTER_KEY.parse().expect("master key");
    config.realtime.key_check_interval = Duration::from_millis(200);
    config.realtime.connects_per_ip = 100_000;
    config.cluster = Some(ClusterSettings {
        redis_url: redis_url.to_owned(),
        prefix: prefix.to_owned(),
        node_ttl,
    });
    config
}

/// Waits until the instance reports `channeld_redis_up` as `up`.
pub async fn redis_up(app: &TestApp, up: bool) {
    let want = format!("channeld_redis_up {}", u8::from(up));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if app.metrics_text().await.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "{want} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn instances(db: &PgPool, prefix: &str, count: usize, ttl: Duration) -> Vec<TestApp> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("channeld=warn")
        .with_test_writer()
        .try_init();
    let mut apps = Vec::new();
    for _ in 0..count {
        let app =
            TestApp::spawn_instance(db.clone(), cluster_config(prefix, &redis_url(), ttl)).await;
        redis_up(&app, true).await;
        apps.push(app);
    }
    apps
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis answers")
}

/// Keys under `prefix` that belong to `channel`.
pub async fn channel_keys(prefix: &str, channel: &str) -> Vec<String> {
    let mut redis = redis().await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}:ch:{{{channel}}}:*"))
        .query_async(&mut redis)
        .await
        .expect("KEYS")
}

/// Peer ids in a presence frame's `joined` or `left`.
pub fn peers_in(frame: &Value, field: &str) -> Vec<String> {
    frame[field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry["peerId"].as_str().expect("peerId").to_owned())
        .collect()
}

/// Reads presence frames for `channel` until `done` says so; counts how often each peer joined
/// and left. Frames of other types are kept in `others`.
#[derive(Default, Debug)]
pub struct Seen {
    pub joined: BTreeMap<String, usize>,
    pub left: BTreeMap<String, usize>,
    pub others: Vec<Value>,
}

impl Seen {
    pub async fn until(&mut self, ws: &mut Ws, within: Duration, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            let frame = timeout(deadline - Instant::now(), ws.recv())
                .await
                .unwrap_or_else(|_| panic!("not done within {within:?}: {self:?}"));
            if frame["type"] == "presence" {
                for peer in peers_in(&frame, "joined") {
                    *self.joined.entry(peer).or_default() += 1;
                }
                for peer in peers_in(&frame, "left") {
                    *self.left.entry(peer).or_default() += 1;
                }
            } else {
                self.others.push(frame);
            }
        }
    }
}

pub async fn peers_listed(app: &TestApp, key: &str, channel: &str) -> BTreeSet<String> {
    let (status, body) = app.get(&format!("/v1/channels/{channel}/peers"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["peerId"].as_str().expect("peerId").to_owned())
        .collect()
}

/// Subscribes and reads the roster that follows the ack; returns the peers in it.
pub async fn join(ws: &mut Ws, channel: &str) -> Vec<String> {
    ws.subscribe(channel).await;
    let roster = ws.recv().await;
    assert_eq!(
        roster["type"], "presence",
        "the roster follows the ack: {roster}"
    );
    assert!(peers_in(&roster, "left").is_empty());
    peers_in(&roster, "joined")
}

/// Sends a frame with a `requestId` and returns its answer, skipping other frames.
pub async fn answer(ws: &mut Ws, frame: Value) -> Value {
    let id = frame["requestId"].clone();
    ws.send(frame).await;
    loop {
        let reply = ws.recv().await;
        if reply["requestId"] == id {
            return reply;
        }
    }
}

/// The next frame of `kind`, skipping presence frames.
pub async fn next_of_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = ws.recv().await;
        if frame["type"] == kind {
            return frame;
        }
        assert_eq!(frame["type"], "presence", "expected {kind}, got {frame}");
    }
}
