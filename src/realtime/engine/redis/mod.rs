//! The Redis engine: several instances share realtime (publish, presence, direct messages,
//! kicks) through Redis. Stored messages do not pass through Redis: every instance reads them
//! from PostgreSQL (see [`crate::delivery`]) and hands them to its engine.
//!
//! - Presence is decided by Lua scripts ([`scripts`]), which publish each `joined`/`left` in the
//!   channel's pub/sub channel, so every instance sees one order of messages and presence.
//! - Each instance subscribes, on one pub/sub connection, to the channels it has subscribers in
//!   and to its own channel (direct messages, kicks, its heartbeat's echo); see [`tasks`].
//! - Each instance beats every fifth of `--node-ttl`; one whose beat lapses is reaped by the
//!   others: its connections leave every channel with a `left` for each peer gone with it.
//! - Redis unreachable: everything that needs it fails closed ([`Unavailable`]),
//!   open sockets stay open, and when Redis returns the instance subscribes again, registers its
//!   connections again and re-reads every roster it mirrors.

pub mod mirror;
pub mod roster;
pub mod scripts;
pub mod tasks;
pub mod wire;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{AsyncConnectionConfig, FromRedisValue, aio::MultiplexedConnection};

use crate::{
    config::ClusterSettings,
    metrics::Sample,
    realtime::engine::{
        api::{SubscribeFailure, Subscription, Unavailable},
        hub::{
            Departure, Hub,
            fanout::{ConnId, Outbound, Roster},
        },
    },
};
use mirror::Reservation;
use roster::Version;
use scripts::{
    JOIN_SCRIPT, LEAVE_SCRIPT, PUBLISH_SCRIPT, REAP_PEER_SCRIPT, REAP_SCRIPT, REGISTER_SCRIPT,
    ROSTER_SCRIPT, TO_PEER_SCRIPT,
};

/// A queued publish: the pub/sub channel and the payload.
type Publish = (String, Vec<u8>);

/// WebSocket publishes waiting for Redis, per instance; beyond, a publish answers an error.
const PUBLISH_QUEUE: usize = 65_536;

/// How long one Redis round trip may take before Redis counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct RedisStats {
    pub redis_errors: AtomicU64,
    pub pubsub_reconnects: AtomicU64,
    pub resyncs: AtomicU64,
    /// WebSocket publishes lost because Redis failed while they were on their way.
    pub publishes_lost: AtomicU64,
    pub nodes_reaped: AtomicU64,
    pub messages_in: AtomicU64,
}

#[derive(Clone)]
pub struct Redis {
    inner: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    settings: ClusterSettings,
    hub: Hub,
    /// This process, in message envelopes (to skip the sender) and in its pub/sub channel.
    instance: u64,
    /// This process's registration, `<instance>-<generation>`; a new generation once reaped.
    node: RwLock<Arc<str>>,
    generation: AtomicU64,
    commands: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    sink: Mutex<Option<redis::aio::PubSubSink>>,
    /// Channels this instance is subscribed to in Redis; held while (re)subscribing.
    interest: tokio::sync::Mutex<HashSet<Arc<str>>>,
    /// The pub/sub connection is up and subscribed: realtime may use Redis.
    up: AtomicBool,
    /// Something was not written to Redis (or Redis may have lost it): register everything again.
    dirty: AtomicBool,
    /// Leaves that could not be written, by connection key, retried when Redis is back.
    pending_leaves: Mutex<HashSet<(Arc<str>, String)>>,
    /// Connection registrations that could not be removed: (peer, connection key).
    pending_removals: Mutex<HashSet<(Arc<str>, String)>>,
    /// Subscribes hold it shared from reservation to attachment; retrying leaves holds it alone,
    /// so a leave retried for a connection cannot overtake that connection's new join.
    reconciling: tokio::sync::RwLock<()>,
    /// Wakes the pub/sub task to rebuild its connection (its heartbeat echo stopped).
    rebuild: tokio::sync::Notify,
    /// WebSocket publishes on their way to Redis, in order; see [`Redis::publish`].
    publishes: tokio::sync::mpsc::Sender<Publish>,
    publish_queue: Mutex<Option<tokio::sync::mpsc::Receiver<Publish>>>,
    /// When this instance last heard its own heartbeat through pub/sub.
    last_echo: Mutex<tokio::time::Instant>,
    stats: RedisStats,
}

impl Redis {
    /// A cluster handle; nothing is connected until [`Redis::start`].
    pub fn new(settings: ClusterSettings, hub: Hub) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let instance = rand::random::<u64>() >> 1;
        let (publishes, publish_queue) = tokio::sync::mpsc::channel(PUBLISH_QUEUE);
        Ok(Self {
            inner: Arc::new(Shared {
                client,
                settings,
                hub,
                instance,
                node: RwLock::new(format!("{instance:016x}-1").into()),
                generation: AtomicU64::new(1),
                commands: tokio::sync::Mutex::new(None),
                sink: Mutex::new(None),
                interest: tokio::sync::Mutex::new(HashSet::new()),
                up: AtomicBool::new(false),
                dirty: AtomicBool::new(false),
                pending_leaves: Mutex::new(HashSet::new()),
                pending_removals: Mutex::new(HashSet::new()),
                reconciling: tokio::sync::RwLock::new(()),
                rebuild: tokio::sync::Notify::new(),
                last_echo: Mutex::new(tokio::time::Instant::now()),
                publishes,
                publish_queue: Mutex::new(Some(publish_queue)),
                stats: RedisStats::default(),
            }),
        })
    }

    /// This instance's connections, with a mirror of each served channel's roster.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The Redis engine's own metric samples.
    pub fn samples(&self) -> Vec<Sample> {
        let stats = &self.inner.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        vec![
            Sample::gauge(
                "channeld_redis_up",
                "1 when this instance is connected and subscribed to Redis (cluster mode).",
                u64::from(self.is_up()),
            ),
            Sample::counter(
                "channeld_redis_errors",
                "Redis commands and connections that failed.",
                load(&stats.redis_errors),
            ),
            Sample::counter(
                "channeld_redis_pubsub_connects",
                "Times the Redis pub/sub connection was made and subscribed (1 plus reconnects).",
                load(&stats.pubsub_reconnects),
            ),
            Sample::counter(
                "channeld_cluster_roster_reads",
                "Rosters read again from Redis after a gap in presence events or a reconnect.",
                load(&stats.resyncs),
            ),
            Sample::counter(
                "channeld_cluster_instances_reaped",
                "Instances this one removed from the cluster after their heartbeat lapsed.",
                load(&stats.nodes_reaped),
            ),
            Sample::counter(
                "channeld_cluster_publishes_lost",
                "WebSocket publishes lost because Redis failed while they were on their way.",
                load(&stats.publishes_lost),
            ),
            Sample::counter(
                "channeld_cluster_messages_in",
                "Payloads received from Redis pub/sub.",
                load(&stats.messages_in),
            ),
        ]
    }

    /// Redis is reachable and this instance is subscribed.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    pub fn node(&self) -> Arc<str> {
        self.inner
            .node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }

    fn conn_key(&self, conn: ConnId) -> String {
        format!("{}/{conn}", self.node())
    }

    /// The channel's keys, in the order the scripts expect, for `node`.
    fn channel_keys(&self, channel: &str, node: &str) -> [String; 7] {
        let p = self.prefix();
        let base = format!("{p}:ch:{{{channel}}}");
        [
            format!("{base}:conns"),
            format!("{base}:peers"),
            format!("{base}:meta"),
            format!("{base}:subs"),
            format!("{base}:ver"),
            format!("{p}:node:{node}:chans"),
            format!("{p}:epoch"),
        ]
    }

    fn channel_topic(&self, channel: &str) -> String {
        format!("{}:ch:{{{channel}}}:m", self.prefix())
    }

    /// The channel named by a pub/sub channel of ours.
    fn channel_of_topic<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.prefix())?
            .strip_prefix(":ch:{")?
            .strip_suffix("}:m")
    }

    fn instance_topic(&self) -> String {
        format!("{}:inst:{:016x}:m", self.prefix(), self.inner.instance)
    }

    fn peer_key(&self, peer: &str) -> String {
        format!("{}:peer:{{{peer}}}", self.prefix())
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix())
    }

    fn node_peers_key(&self, node: &str) -> String {
        format!("{}:node:{node}:peers", self.prefix())
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix())
    }

    /// The command connection, made on first use and again after a failure.
    async fn connection(&self) -> Result<MultiplexedConnection, Unavailable> {
        let mut guard = self.inner.commands.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        match self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => {
                *guard = Some(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                self.inner
                    .stats
                    .redis_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "connecting to Redis failed");
                Err(Unavailable)
            }
        }
    }

    /// Counts a failed command; a broken connection is dropped so the next use makes a new one.
    async fn failed(&self, error: &redis::RedisError) -> Unavailable {
        self.inner
            .stats
            .redis_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, "a Redis command failed");
        if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
            *self.inner.commands.lock().await = None;
        }
        Unavailable
    }

    /// Runs a script, failing closed when the instance is cut off from Redis.
    async fn run<T: FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut connection = self.connection().await?;
        match invocation.invoke_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => Err(self.failed(&error).await),
        }
    }

    async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Unavailable> {
        let mut connection = self.connection().await?;
        match command.query_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => Err(self.failed(&error).await),
        }
    }

    async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, Unavailable> {
        let mut connection = self.connection().await?;
        match pipe.query_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => Err(self.failed(&error).await),
        }
    }

    fn require_up(&self) -> Result<(), Unavailable> {
        if self.is_up() {
            Ok(())
        } else {
            Err(Unavailable)
        }
    }

    /// The pub/sub connection's command side, while it is up.
    fn sink(&self) -> Option<redis::aio::PubSubSink> {
        self.inner
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Subscribes this instance to `channel` in Redis, if it is not already.
    async fn ensure_subscribed(&self, channel: &str) -> Result<(), Unavailable> {
        let mut interest = self.inner.interest.lock().await;
        self.require_up()?;
        if interest.contains(channel) {
            return Ok(());
        }
        let mut sink = self.sink().ok_or(Unavailable)?;
        match tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(self.channel_topic(channel))).await
        {
            Ok(Ok(())) => {
                interest.insert(Arc::from(channel));
                Ok(())
            }
            Ok(Err(error)) => Err(self.failed(&error).await),
            Err(_) => Err(Unavailable),
        }
    }

    /// Registers a new connection of `peer`, so that direct messages and kicks find it.
    pub async fn connect(&self, conn: ConnId, peer: &str) {
        if !self.is_up() || self.register(conn, peer).await.is_err() {
            // Registered when Redis is back, with everything else held here.
            self.inner.dirty.store(true, Ordering::Release);
        }
    }

    async fn register(&self, conn: ConnId, peer: &str) -> Result<(), Unavailable> {
        let node = self.node();
        let mut invocation = REGISTER_SCRIPT.prepare_invoke();
        invocation
            .key(self.node_key(&node))
            .key(self.peer_key(peer))
            .key(self.node_peers_key(&node))
            .arg(format!("{node}/{conn}"))
            .arg(peer);
        match self.run::<i64>(invocation).await? {
            1 => Ok(()),
            _ => Err(Unavailable),
        }
    }

    /// Subscribes a connection: the local reservation, Redis's pub/sub subscription, then the
    /// join, in that order, so that no event after the join can be missed here. Returns the
    /// roster for the subscriber (fresh, with nothing announced, if it was subscribed already).
    pub async fn subscribe(
        &self,
        subscription: Subscription<'_>,
    ) -> Result<Option<Roster>, SubscribeFailure> {
        let Subscription {
            conn,
            channel,
            include_sender_metadata,
            max_subscriptions,
            peer,
            peer_metadata,
        } = subscription;
        let hub = &self.inner.hub;
        let _reconciling = self.inner.reconciling.read().await;
        let needs_roster =
            match hub.reserve(conn, channel, include_sender_metadata, max_subscriptions)? {
                Reservation::Subscribed(roster) => return Ok(Some(roster)),
                Reservation::Reserved { needs_roster } => needs_roster,
            };
        if self.ensure_subscribed(channel).await.is_err() {
            hub.abandon(channel);
            return Err(SubscribeFailure::Unavailable);
        }
        match self
            .join(conn, channel, peer, peer_metadata, needs_roster)
            .await
        {
            Ok(snapshot) => Ok(hub.attach(conn, channel, include_sender_metadata, snapshot)),
            Err(_) => {
                hub.abandon(channel);
                // The join may have landed although its answer did not: take it back later.
                self.pending_leave(channel, self.conn_key(conn));
                Err(SubscribeFailure::Unavailable)
            }
        }
    }

    async fn join(
        &self,
        conn: ConnId,
        channel: &str,
        peer: &str,
        metadata: Option<&crate::realtime::engine::hub::fanout::Metadata>,
        with_roster: bool,
    ) -> Result<Option<(Version, Roster)>, Unavailable> {
        let node = self.node();
        let keys = self.channel_keys(channel, &node);
        let mut invocation = JOIN_SCRIPT.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .key(self.node_key(&node))
            .arg(format!("{node}/{conn}"))
            .arg(peer)
            .arg(metadata.map_or("", |m| m.get()))
            .arg(&*node)
            .arg(channel)
            .arg(if with_roster { "1" } else { "0" })
            .arg(self.channel_topic(channel));
        let (version, roster): (String, Vec<String>) = self.run(invocation).await?;
        if version == "gone" {
            // Reaped: the heartbeat registers a new generation and everything held here again.
            self.inner.dirty.store(true, Ordering::Release);
            return Err(Unavailable);
        }
        Ok(with_roster.then(|| roster_reply(&version, roster)))
    }

    /// Ends a subscription in Redis; kept for later if Redis cannot be reached.
    pub async fn unsubscribe(&self, conn: ConnId, channel: &str) {
        let key = self.conn_key(conn);
        if !self.is_up() || self.leave(channel, &key).await.is_err() {
            self.pending_leave(channel, key);
        }
    }

    async fn leave(&self, channel: &str, conn_key: &str) -> Result<(), Unavailable> {
        let node = conn_key.split('/').next().unwrap_or_default();
        let keys = self.channel_keys(channel, node);
        let mut invocation = LEAVE_SCRIPT.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .arg(conn_key)
            .arg(node)
            .arg(channel)
            .arg(self.channel_topic(channel));
        self.run::<i64>(invocation).await.map(drop)
    }

    fn pending_leave(&self, channel: &str, conn_key: String) {
        self.inner
            .pending_leaves
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((Arc::from(channel), conn_key));
        self.inner.dirty.store(true, Ordering::Release);
    }

    /// Unregisters a connection of `peer` in Redis; kept for later if Redis cannot be reached.
    async fn unregister(&self, peer: &Arc<str>, conn_key: String, last_of_peer: bool) {
        let node = conn_key.split('/').next().unwrap_or_default().to_owned();
        let mut pipe = redis::pipe();
        pipe.srem(self.peer_key(peer), &conn_key).ignore();
        if last_of_peer {
            pipe.srem(self.node_peers_key(&node), &**peer).ignore();
        }
        if !self.is_up() || self.pipeline::<()>(&pipe).await.is_err() {
            self.inner
                .pending_removals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((peer.clone(), conn_key));
            self.inner.dirty.store(true, Ordering::Release);
        }
    }

    /// A connection went away: leave its channels and unregister it, in the background.
    pub fn depart(&self, conn: ConnId, departure: Departure) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let key = cluster.conn_key(conn);
            for channel in &departure.channels {
                if !cluster.is_up() || cluster.leave(channel, &key).await.is_err() {
                    cluster.pending_leave(channel, key.clone());
                }
            }
            cluster
                .unregister(&departure.peer, key, departure.last_of_peer)
                .await;
        });
    }

    /// Publishes from a WebSocket connection; every instance delivers it, the sender excepted.
    /// Queued rather than waited on: one task sends the queue to Redis in pipelined batches, in
    /// order, so a connection's publishes keep their order and its loop never waits for Redis.
    pub fn publish(
        &self,
        channel: &str,
        sender: ConnId,
        plain: &Outbound,
        with_metadata: Option<&Outbound>,
    ) -> Result<(), Unavailable> {
        self.require_up()?;
        let payload = wire::encode_message(
            self.inner.instance,
            sender,
            &plain.frame,
            with_metadata.map(|f| f.frame.as_str()),
        );
        self.inner
            .publishes
            .try_send((self.channel_topic(channel), payload))
            .map_err(|_| Unavailable)
    }

    /// Publishes from REST and answers how many subscribers the cluster has in the channel.
    pub async fn publish_counted(
        &self,
        channel: &str,
        plain: &Outbound,
        with_metadata: Option<&Outbound>,
    ) -> Result<usize, Unavailable> {
        self.require_up()?;
        let payload = wire::encode_message(
            self.inner.instance,
            0,
            &plain.frame,
            with_metadata.map(|f| f.frame.as_str()),
        );
        let keys = self.channel_keys(channel, "");
        let mut invocation = PUBLISH_SCRIPT.prepare_invoke();
        invocation
            .key(&keys[3])
            .arg(self.channel_topic(channel))
            .arg(payload);
        let delivered: i64 = self.run(invocation).await?;
        Ok(usize::try_from(delivered).unwrap_or(0))
    }

    /// Sends a direct frame to every connection of `peer`; answers how many it has.
    pub async fn send(&self, peer: &str, frame: &Outbound) -> Result<usize, Unavailable> {
        self.to_peer(peer, wire::encode_direct(peer, &frame.frame))
            .await
    }

    /// Closes every connection of `peer` with 4020; answers how many it had.
    pub async fn kick(&self, peer: &str) -> Result<usize, Unavailable> {
        self.to_peer(peer, wire::encode_kick(peer)).await
    }

    async fn to_peer(&self, peer: &str, payload: Vec<u8>) -> Result<usize, Unavailable> {
        self.require_up()?;
        let mut invocation = TO_PEER_SCRIPT.prepare_invoke();
        invocation
            .key(self.peer_key(peer))
            .arg(format!("{}:inst:", self.prefix()))
            .arg(":m")
            .arg(payload);
        let count: i64 = self.run(invocation).await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// The cluster's roster of `channel`.
    pub async fn roster(&self, channel: &str) -> Result<Roster, Unavailable> {
        self.require_up()?;
        Ok(self.read_roster(channel).await?.1)
    }

    async fn read_roster(&self, channel: &str) -> Result<(Version, Roster), Unavailable> {
        let keys = self.channel_keys(channel, "");
        let mut invocation = ROSTER_SCRIPT.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        let (version, flat): (String, Vec<String>) = self.run(invocation).await?;
        Ok(roster_reply(&version, flat))
    }

    /// Removes a dead (or stopping) node from every peer and channel it was in; peers first, so
    /// that once a `left` is seen, sends to that peer already answer `peer_not_found`.
    async fn reap(&self, node: &str) -> Result<usize, Unavailable> {
        let peers: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.node_peers_key(node)))
            .await?;
        for peer in &peers {
            let mut invocation = REAP_PEER_SCRIPT.prepare_invoke();
            invocation.key(self.peer_key(peer)).arg(format!("{node}/"));
            self.run::<i64>(invocation).await?;
        }
        let channels: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(format!("{}:chans", self.node_key(node))))
            .await?;
        let mut gone = 0;
        for channel in &channels {
            let keys = self.channel_keys(channel, node);
            let mut invocation = REAP_SCRIPT.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            invocation.arg(node).arg(self.channel_topic(channel));
            gone += self.run::<i64>(invocation).await?;
        }
        let mut pipe = redis::pipe();
        pipe.del(format!("{}:chans", self.node_key(node)))
            .ignore()
            .del(self.node_peers_key(node))
            .ignore()
            .del(self.node_key(node))
            .ignore()
            .srem(self.nodes_key(), node)
            .ignore();
        self.pipeline::<()>(&pipe).await?;
        Ok(usize::try_from(gone).unwrap_or(0))
    }

    /// Leaves the cluster at shutdown: this node's peers leave at once rather than after the TTL.
    pub async fn stop(&self) {
        let node = self.node();
        match self.reap(&node).await {
            Ok(left) => tracing::info!(left, "left the cluster"),
            Err(error) => tracing::warn!(%error, "leaving the cluster failed; others will reap it"),
        }
    }
}

/// `(version, [peer, metadata, …])` from a script → version and roster.
fn roster_reply(version: &str, flat: Vec<String>) -> (Version, Roster) {
    let version = Version::parse(version).unwrap_or_default();
    let mut roster = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(peer), Some(metadata)) = (items.next(), items.next()) {
        roster.push((Arc::from(peer), wire::metadata_of(&metadata)));
    }
    (version, roster)
}
