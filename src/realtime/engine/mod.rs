//! The realtime engine: subscriptions, presence, publish, direct messages and kicks, behind one
//! type. Everything outside this module calls [`Engine`] and never asks which engine it runs on.
//!
//! - [`Engine::Memory`]: one instance. The [`hub`] decides presence by counting this instance's
//!   connections.
//! - [`Engine::Redis`]: several instances share realtime through Redis ([`redis`]): the Lua
//!   scripts decide presence, each instance mirrors the rosters of the channels it serves, and a
//!   heartbeat lets the others reap an instance that died.
//!
//! Both deliver to local sockets through the same hub, and both answer every action of SPEC §5
//! and §6b alike:
//! - `send` and kick answer how many connections the peer has, cluster-wide; 0 is
//!   `peer_not_found` (send) or `closed: 0` (kick).
//! - REST publish answers how many subscribers the channel has, cluster-wide.
//! - REST `peers` answers the engine's authority: the hub's roster in memory, Redis's roster with
//!   Redis (read at the call, so a join on another instance that Redis has decided is seen even
//!   before this instance's mirror hears of it).
//! - Stored messages ([`Engine::publish_stored`]) go to local followers at once, in both engines:
//!   they come from PostgreSQL, in id order per channel, and never wait on Redis (a mirror being
//!   read again holds back only what came through Redis). Their order relative to presence
//!   events is therefore the order they reach this instance, as between any two sources.
//!
//! Where the Redis engine must do more, and why: it registers connections so that `send` and
//! kicks on another instance find them; it queues socket publishes for one task that pipelines
//! them to Redis in order; it keeps what it could not write while Redis was away and writes it
//! again when Redis is back; and it beats a heartbeat and reaps instances whose heartbeat lapsed,
//! as a dead instance cannot say that its peers left.

mod api;
pub mod hub;
pub mod redis;

use std::collections::HashSet;

use crate::{
    apps::scoped, config::Config, messages::model::Message, metrics::Sample,
    realtime::stored::stored_frame,
};
pub use api::{SubscribeFailure, Subscription, Unavailable};
use hub::{
    Hub,
    fanout::{ConnId, Member, Outbound, Roster, TaskGuard},
};
use redis::{Redis, tasks::RedisTasks};

/// The realtime engine this instance runs; cheap to clone.
#[derive(Clone)]
pub enum Engine {
    Memory(Hub),
    Redis(Redis),
}

impl crate::delivery::Followers for Engine {
    fn stored(&self, app_id: i64, message: &Message) {
        self.publish_stored(app_id, message);
    }
}

/// A registered connection; dropping it disconnects the connection.
pub struct Registration {
    engine: Engine,
    conn: ConnId,
}

impl Registration {
    pub fn conn(&self) -> ConnId {
        self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.engine.disconnect(self.conn);
    }
}

/// The engine's background work; dropping it stops it.
pub struct EngineTasks {
    _redis: Option<RedisTasks>,
}

impl Engine {
    /// The engine the configuration asks for: Redis when a Redis URL is set, else memory.
    pub fn new(config: &Config) -> Self {
        match &config.cluster {
            Some(settings) => Self::Redis(
                Redis::new(settings.clone(), Hub::default())
                    .expect("the Redis URL was checked when the configuration was read"),
            ),
            None => Self::Memory(Hub::default()),
        }
    }

    /// This instance's connections and their subscriptions (counters and gauges).
    pub fn hub(&self) -> &Hub {
        match self {
            Self::Memory(hub) => hub,
            Self::Redis(redis) => redis.hub(),
        }
    }

    /// The engine can serve: always in memory; with Redis, while this instance is connected
    /// and subscribed to Redis.
    pub fn is_ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(redis) => redis.is_up(),
        }
    }

    /// Registers a new connection (with Redis, cluster-wide, so that `send` and kicks on
    /// another instance find it). It stays registered until the answer is dropped, and is
    /// unregistered even if this future is dropped halfway.
    pub async fn connect(&self, member: Member) -> Registration {
        let peer = member.address.clone();
        let registration = Registration {
            engine: self.clone(),
            conn: self.hub().register(member),
        };
        if let Self::Redis(redis) = self {
            // Boxed: inline, this Redis round trip's future would grow every connection's task.
            Box::pin(redis.connect(registration.conn, &peer)).await;
        }
        registration
    }

    /// Removes a connection everywhere; its peer leaves the channels it was last in.
    fn disconnect(&self, conn: ConnId) {
        let departure = self.hub().unregister(conn);
        if let (Self::Redis(redis), Some(departure)) = (self, departure) {
            redis.depart(conn, departure);
        }
    }

    /// Subscribes a connection. Returns the roster of the other peers in the channel (`None`
    /// for a connection that is gone); subscribing again changes only the options.
    pub async fn subscribe(
        &self,
        subscription: Subscription<'_>,
    ) -> Result<Option<Roster>, SubscribeFailure> {
        match self {
            Self::Memory(hub) => Ok(hub.subscribe(
                subscription.conn,
                subscription.channel,
                subscription.include_sender_metadata,
                subscription.max_subscriptions,
            )?),
            // Boxed, here and below: a Redis round trip's future is large, and inline it would
            // grow every connection's task, whichever engine runs.
            Self::Redis(redis) => Box::pin(redis.subscribe(subscription)).await,
        }
    }

    /// Ends a connection's subscription (cluster-wide with Redis; kept for later if Redis
    /// cannot be reached).
    pub async fn unsubscribe(&self, conn: ConnId, channel: &str) {
        if self.hub().unsubscribe(conn, channel)
            && let Self::Redis(redis) = self
        {
            Box::pin(redis.unsubscribe(conn, channel)).await;
        }
    }

    /// Publishes from a WebSocket connection to every other subscriber of `channel`. Not
    /// waited on: with Redis it is queued, in order, for the task that writes to Redis.
    pub fn publish(
        &self,
        channel: &str,
        sender: ConnId,
        plain: &Outbound,
        with_metadata: Option<&Outbound>,
    ) -> Result<(), Unavailable> {
        match self {
            Self::Memory(hub) => {
                hub.publish(channel, Some(sender), plain, with_metadata);
                Ok(())
            }
            Self::Redis(redis) => redis.publish(channel, sender, plain, with_metadata),
        }
    }

    /// Publishes from REST; answers how many subscribers the channel has.
    pub async fn publish_counted(
        &self,
        channel: &str,
        plain: &Outbound,
        with_metadata: Option<&Outbound>,
    ) -> Result<usize, Unavailable> {
        match self {
            Self::Memory(hub) => Ok(hub.publish(channel, None, plain, with_metadata)),
            Self::Redis(redis) => {
                Box::pin(redis.publish_counted(channel, plain, with_metadata)).await
            }
        }
    }

    /// Delivers a stored message of a channel of app `app_id`, read from PostgreSQL, to this
    /// instance's followers of its channel (every instance reads the stored messages itself).
    pub fn publish_stored(&self, app_id: i64, message: &Message) {
        let id = message.channel_id.to_string();
        let channel = scoped(app_id, &id);
        let frame = stored_frame(message);
        match self {
            Self::Memory(hub) => {
                hub.publish(&channel, None, &frame, None);
            }
            // Never held back with a mirror being re-read: stored delivery must not wait on
            // Redis, nor lose what PostgreSQL committed to a full hold-back queue.
            Self::Redis(redis) => {
                redis.hub().publish(&channel, None, &frame, None);
            }
        }
    }

    /// Sends a frame to every connection of `peer`; answers how many it has.
    pub async fn send(&self, peer: &str, frame: &Outbound) -> Result<usize, Unavailable> {
        match self {
            Self::Memory(hub) => Ok(hub.send_to_peer(peer, frame)),
            Self::Redis(redis) => Box::pin(redis.send(peer, frame)).await,
        }
    }

    /// Closes every connection of `peer` with 4020; answers how many it had.
    pub async fn kick(&self, peer: &str) -> Result<usize, Unavailable> {
        match self {
            Self::Memory(hub) => Ok(hub.close_peer(peer, crate::realtime::protocol::close::KICKED)),
            Self::Redis(redis) => Box::pin(redis.kick(peer)).await,
        }
    }

    /// Who is present in `channel`.
    pub async fn roster(&self, channel: &str) -> Result<Roster, Unavailable> {
        match self {
            Self::Memory(hub) => Ok(hub.peers(channel)),
            Self::Redis(redis) => Box::pin(redis.roster(channel)).await,
        }
    }

    /// The distinct keys behind this instance's open connections.
    pub fn key_ids(&self) -> Vec<String> {
        self.hub().key_ids()
    }

    /// Closes this instance's connections made with one of `keys`. Returns how many.
    pub fn close_keys(&self, keys: &HashSet<String>, code: u16) -> usize {
        self.hub().close_keys(keys, code)
    }

    /// Counts a connection task until the returned guard is dropped.
    pub fn task(&self) -> TaskGuard {
        self.hub().task()
    }

    /// Connection tasks still running, including those finishing their closing handshake.
    pub fn task_count(&self) -> usize {
        self.hub().task_count()
    }

    /// Starts the engine's background work (with Redis: pub/sub, heartbeat, reaper).
    pub fn start(&self) -> EngineTasks {
        EngineTasks {
            _redis: match self {
                Self::Memory(_) => None,
                Self::Redis(redis) => Some(redis.start()),
            },
        }
    }

    /// Leaves at shutdown, once `tasks` are stopped: with Redis, this instance's peers leave
    /// every channel now rather than when its heartbeat lapses.
    pub async fn stop(&self, tasks: EngineTasks) {
        drop(tasks);
        if let Self::Redis(redis) = self {
            redis.stop().await;
        }
    }

    /// The engine's metric samples.
    pub fn samples(&self) -> Vec<Sample> {
        let hub = self.hub();
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut samples = vec![
            Sample::gauge(
                "channeld_websocket_connections",
                "Open WebSocket connections.",
                hub.connection_count() as u64,
            ),
            Sample::gauge(
                "channeld_websocket_subscriptions",
                "Channel subscriptions across connections.",
                hub.subscription_count() as u64,
            ),
            Sample::counter(
                "channeld_websocket_frames_out",
                "Frames queued to WebSocket clients.",
                load(&hub.stats.frames_out),
            ),
            Sample::gauge(
                "channeld_websocket_queued_bytes",
                "Bytes queued to WebSocket connections, not yet written.",
                hub.queued_bytes(),
            ),
            Sample::counter(
                "channeld_websocket_slow_consumer_disconnects",
                "Connections dropped for not keeping up.",
                load(&hub.stats.slow_consumer_disconnects),
            ),
        ];
        if let Self::Redis(redis) = self {
            samples.extend(redis.samples());
        }
        samples
    }
}
