//! The cluster's background work: the pub/sub connection, the heartbeat with the reaper, and
//! registering everything again after Redis was out of reach.

use std::{
    collections::HashSet,
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Duration,
};

use futures_util::{StreamExt, future::join_all};
use tokio::{task::JoinHandle, time::Instant};

use super::{
    REDIS_TIMEOUT, Redis, Unavailable,
    wire::{self, ChannelPayload, NodePayload},
};
use crate::realtime::protocol::close;

/// Channels subscribed in Redis but no longer served here are unsubscribed after this long, so
/// that a channel whose last subscriber comes and goes does not churn subscriptions.
const IDLE_UNSUBSCRIBE: Duration = Duration::from_secs(30);
/// Subscriptions sent to Redis per command when subscribing again.
const RESUBSCRIBE_BATCH: usize = 1000;
/// WebSocket publishes sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 256;
/// Registrations sent to Redis at once when registering everything again.
const RECONCILE_BATCH: usize = 256;

fn take<T: Eq + std::hash::Hash>(set: &std::sync::Mutex<HashSet<T>>) -> Vec<T> {
    std::mem::take(&mut *set.lock().unwrap_or_else(PoisonError::into_inner))
        .into_iter()
        .collect()
}

fn give_back<T: Eq + std::hash::Hash + Clone>(set: &std::sync::Mutex<HashSet<T>>, items: &[T]) {
    set.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(items.iter().cloned());
}

/// The running background tasks; dropping it stops them.
pub struct RedisTasks(Vec<JoinHandle<()>>);

impl Drop for RedisTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Redis {
    pub fn start(&self) -> RedisTasks {
        RedisTasks(vec![
            tokio::spawn(self.clone().pubsub_loop()),
            tokio::spawn(self.clone().beat_loop()),
            tokio::spawn(self.clone().maintain_loop()),
            tokio::spawn(self.clone().idle_sweep()),
            tokio::spawn(self.clone().publish_loop()),
        ])
    }

    fn beat_interval(&self) -> Duration {
        (self.inner.settings.node_ttl / 5).max(Duration::from_millis(50))
    }

    /// Keeps one pub/sub connection, subscribed to this instance's channel and to every channel
    /// it serves; delivers what arrives. On loss, connects again and re-reads every roster.
    async fn pubsub_loop(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.pubsub_session().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(_) => backoff = (backoff * 2).min(Duration::from_secs(2)),
            }
            self.inner.up.store(false, Ordering::Release);
            *self
                .inner
                .sink
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            tokio::time::sleep(backoff).await;
        }
    }

    async fn pubsub_session(&self) -> Result<(), Unavailable> {
        let pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.inner.client.get_async_pubsub())
            .await
            .map_err(|_| Unavailable)?;
        let pubsub = match pubsub {
            Ok(pubsub) => pubsub,
            Err(error) => return Err(self.failed(&error).await),
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            // Held until subscribed again, so no subscribe slips in between.
            let interest = self.inner.interest.lock().await;
            // Every mirror holds its events from here until it is read again below.
            let mirrored = self.inner.hub.invalidate_mirrors();
            let mut topics = vec![self.instance_topic()];
            topics.extend(interest.iter().map(|c| self.channel_topic(c)));
            for batch in topics.chunks(RESUBSCRIBE_BATCH) {
                match tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(self.failed(&error).await),
                    Err(_) => return Err(Unavailable),
                }
            }
            *self
                .inner
                .sink
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(sink);
            *self
                .inner
                .last_echo
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            self.inner.up.store(true, Ordering::Release);
            tracing::info!(channels = interest.len(), "subscribed to Redis");
            drop(interest);
            // Redis may have lost what this instance registered, or the others may have reaped
            // it: register again, then read every mirrored roster again.
            let cluster = self.clone();
            tokio::spawn(async move {
                if cluster.reconcile().await.is_err() {
                    cluster.inner.dirty.store(true, Ordering::Release);
                }
                for channel in mirrored {
                    cluster.resync(channel).await;
                }
            });
        }
        self.inner
            .stats
            .pubsub_reconnects
            .fetch_add(1, Ordering::Relaxed);
        let own = self.instance_topic();
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    self.inner.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    let topic = message.get_channel_name();
                    if topic == own {
                        self.on_instance_payload(message.get_payload_bytes());
                    } else if let Some(channel) = self.channel_of_topic(topic) {
                        self.on_channel_payload(channel, message.get_payload_bytes());
                    }
                }
                () = self.inner.rebuild.notified() => {
                    tracing::warn!("Redis pub/sub stopped echoing this instance's heartbeat; reconnecting");
                    break;
                }
            }
        }
        tracing::warn!("Redis pub/sub connection lost");
        Ok(())
    }

    fn on_channel_payload(&self, channel: &str, payload: &[u8]) {
        let hub = &self.inner.hub;
        match wire::parse_channel_payload(payload) {
            Some(ChannelPayload::Message {
                origin,
                sender,
                plain,
                with_metadata,
            }) => {
                let sender = (origin == self.inner.instance && sender != 0).then_some(sender);
                hub.deliver_message(channel, sender, plain.into(), with_metadata.map(Into::into));
            }
            Some(ChannelPayload::Presence(event)) => {
                if hub.apply_presence(channel, event) {
                    let cluster = self.clone();
                    let channel: Arc<str> = Arc::from(channel);
                    tokio::spawn(async move { cluster.resync(channel).await });
                }
            }
            None => tracing::warn!(channel, "unreadable payload in a channel's Redis topic"),
        }
    }

    fn on_instance_payload(&self, payload: &[u8]) {
        let hub = &self.inner.hub;
        match wire::parse_node_payload(payload) {
            Some(NodePayload::Direct { peer, frame }) => {
                hub.send_to_peer(&peer, &frame.into());
            }
            Some(NodePayload::Kick { peer }) => {
                hub.close_peer(&peer, close::KICKED);
            }
            Some(NodePayload::Echo) => {
                *self
                    .inner
                    .last_echo
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            }
            None => tracing::warn!("unreadable payload in this instance's Redis topic"),
        }
    }

    /// Reads a mirrored roster again until it is current (or the channel is no longer served).
    pub(super) async fn resync(&self, channel: Arc<str>) {
        let mut backoff = Duration::from_millis(50);
        while self.inner.hub.serves(&channel) {
            self.inner.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            match self.read_roster(&channel).await {
                Ok((version, roster)) => {
                    if !self.inner.hub.resync(&channel, version, roster) {
                        return;
                    }
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Registers, under the current node id, every connection and subscription held here, after
    /// taking back the leaves and registrations that could not be written. Every step may be
    /// repeated safely; what ended while this ran is taken back at the end.
    async fn reconcile(&self) -> Result<(), Unavailable> {
        self.inner.dirty.store(false, Ordering::Release);
        let result = self.reconcile_steps().await;
        if result.is_err() {
            self.inner.dirty.store(true, Ordering::Release);
        }
        result
    }

    async fn reconcile_steps(&self) -> Result<(), Unavailable> {
        let hub = &self.inner.hub;
        {
            // No subscribe is between its reservation and its attachment meanwhile.
            let _alone = self.inner.reconciling.write().await;
            let leaves: Vec<_> = take(&self.inner.pending_leaves);
            for (index, (channel, key)) in leaves.iter().enumerate() {
                let current = self
                    .local_conn(key)
                    .is_some_and(|conn| hub.is_subscribed(conn, channel));
                if current {
                    continue;
                }
                if let Err(error) = self.leave(channel, key).await {
                    give_back(&self.inner.pending_leaves, &leaves[index..]);
                    return Err(error);
                }
            }
            let removals: Vec<_> = take(&self.inner.pending_removals);
            for (index, (peer, key)) in removals.iter().enumerate() {
                if self
                    .local_conn(key)
                    .is_some_and(|conn| hub.has_connection(conn))
                {
                    continue;
                }
                let mut pipe = redis::pipe();
                pipe.srem(self.peer_key(peer), key).ignore();
                if let Err(error) = self.pipeline::<()>(&pipe).await {
                    give_back(&self.inner.pending_removals, &removals[index..]);
                    return Err(error);
                }
            }
        }
        let state = hub.local_state();
        for chunk in state.connections.chunks(RECONCILE_BATCH) {
            let registered =
                join_all(chunk.iter().map(|(conn, peer)| self.register(*conn, peer))).await;
            registered.into_iter().collect::<Result<Vec<()>, _>>()?;
        }
        let channels: HashSet<&Arc<str>> = state.subscriptions.iter().map(|s| &s.0).collect();
        for channel in channels {
            self.ensure_subscribed(channel).await?;
        }
        for chunk in state.subscriptions.chunks(RECONCILE_BATCH) {
            let joined = join_all(chunk.iter().map(|(channel, conn, peer, metadata)| {
                self.join(*conn, channel, peer, metadata.as_ref(), false)
            }))
            .await;
            joined.into_iter().collect::<Result<Vec<_>, _>>()?;
        }
        // Whatever ended while the snapshot above was being written is taken back.
        for (channel, conn, _, _) in &state.subscriptions {
            if !hub.is_subscribed(*conn, channel) {
                self.unsubscribe(*conn, channel).await;
            }
        }
        for (conn, peer) in &state.connections {
            if !hub.has_connection(*conn) {
                self.unregister(peer, self.conn_key(*conn), false).await;
            }
        }
        Ok(())
    }

    /// The connection a key names, if it is of this node's current generation.
    fn local_conn(&self, key: &str) -> Option<crate::realtime::engine::hub::fanout::ConnId> {
        let (node, conn) = key.rsplit_once('/')?;
        (*node == *self.node()).then(|| conn.parse().ok()).flatten()
    }

    /// Beats every fifth of the TTL and rebuilds the pub/sub connection when it stops echoing.
    /// Nothing else runs on this task, so a long reconcile or reap cannot delay a beat.
    async fn beat_loop(self) {
        let mut tick = tokio::time::interval(self.beat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut registered = false;
        loop {
            tick.tick().await;
            match self.beat(registered).await {
                Ok(true) => registered = true,
                Ok(false) => {
                    // Reaped (or Redis lost our keys): come back under a new generation, so
                    // that no reaper still at work on the old one can remove the new keys.
                    let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    let node: Arc<str> =
                        format!("{:016x}-{generation}", self.inner.instance).into();
                    tracing::warn!(%node, "this instance was reaped or Redis lost its keys; registering again");
                    *self
                        .inner
                        .node
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = node;
                    registered = self.beat(false).await.unwrap_or(false);
                    self.inner.dirty.store(true, Ordering::Release);
                }
                // Redis did not answer: no echo is coming either, and a pub/sub connection that
                // still looks open is rebuilt (and `up` cleared) by the echo check.
                Err(_) => {}
            }
            self.check_echo();
        }
    }

    /// Registers everything again when something was not written, and reaps dead nodes.
    async fn maintain_loop(self) {
        let mut tick = tokio::time::interval(self.beat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_up() && self.inner.dirty.load(Ordering::Acquire) {
                let _ = self.reconcile().await;
            }
            if let Err(error) = self.reap_dead().await {
                tracing::debug!(%error, "reaping dead instances failed");
            }
        }
    }

    /// `Ok(false)` when this node's beat key is gone although it was registered.
    async fn beat(&self, registered: bool) -> Result<bool, Unavailable> {
        let node = self.node();
        let ttl = u64::try_from(self.inner.settings.node_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = super::scripts::BEAT_SCRIPT.prepare_invoke();
        invocation
            .key(self.node_key(&node))
            .key(self.nodes_key())
            .arg(ttl)
            .arg(if registered { "1" } else { "0" })
            .arg(&*node)
            .arg(self.instance_topic());
        Ok(self.run::<i64>(invocation).await? == 1)
    }

    async fn reap_dead(&self) -> Result<(), Unavailable> {
        let nodes: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.nodes_key()))
            .await?;
        let own = self.node();
        let others: Vec<&String> = nodes.iter().filter(|n| **n != *own).collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.exists(self.node_key(node));
        }
        let alive: Vec<bool> = self.pipeline(&pipe).await?;
        for (node, alive) in others.into_iter().zip(alive) {
            if alive {
                continue;
            }
            let lock: Option<String> = self
                .query(
                    redis::cmd("SET")
                        .arg(format!("{}:reap:{node}", self.prefix()))
                        .arg(&*own)
                        .arg("NX")
                        .arg("PX")
                        .arg(10_000),
                )
                .await?;
            if lock.is_none() {
                continue;
            }
            let left = self.reap(node).await?;
            let _ = self
                .query::<i64>(redis::cmd("DEL").arg(format!("{}:reap:{node}", self.prefix())))
                .await;
            self.inner
                .stats
                .nodes_reaped
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%node, left, "reaped an instance whose heartbeat lapsed");
        }
        Ok(())
    }

    /// The pub/sub connection carries this instance's heartbeat echo; without one for three
    /// TTLs' fifths, the connection is stale and is rebuilt.
    fn check_echo(&self) {
        if !self.is_up() {
            return;
        }
        let last = *self
            .inner
            .last_echo
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.elapsed() > 3 * self.beat_interval() + REDIS_TIMEOUT {
            *self
                .inner
                .last_echo
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            self.inner.rebuild.notify_waiters();
        }
    }

    /// Sends WebSocket publishes to Redis as they come, up to 256 in one pipeline. If Redis
    /// fails, that batch is lost (counted): ephemeral messages are delivered at most once.
    async fn publish_loop(self) {
        let Some(mut queue) = self
            .inner
            .publish_queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let mut pipe = redis::pipe();
            for (topic, payload) in &batch {
                pipe.publish(topic, payload).ignore();
            }
            if self.pipeline::<()>(&pipe).await.is_err() {
                self.inner
                    .stats
                    .publishes_lost
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            batch.clear();
        }
    }

    /// Unsubscribes from channels no longer served here once they have been idle a while.
    async fn idle_sweep(self) {
        let mut tick = tokio::time::interval(IDLE_UNSUBSCRIBE / 2);
        let mut idle: HashSet<Arc<str>> = HashSet::new();
        loop {
            tick.tick().await;
            let mut interest = self.inner.interest.lock().await;
            let unused: Vec<Arc<str>> = interest
                .iter()
                .filter(|c| !self.inner.hub.serves(c))
                .cloned()
                .collect();
            let (expired, fresh): (Vec<_>, Vec<_>) =
                unused.into_iter().partition(|c| idle.contains(c));
            idle = fresh.into_iter().collect();
            if expired.is_empty() {
                continue;
            }
            let Some(mut sink) = self.sink() else {
                continue;
            };
            let topics: Vec<String> = expired.iter().map(|c| self.channel_topic(c)).collect();
            // Forgotten either way: if the unsubscribe did land although its answer did not,
            // the next subscriber must subscribe again rather than trust a stale entry.
            let _ = tokio::time::timeout(REDIS_TIMEOUT, sink.unsubscribe(&topics)).await;
            for channel in &expired {
                interest.remove(channel);
            }
        }
    }
}
