//! Stored-message delivery: what live followers see is what PostgreSQL committed.
//!
//! A post only rings a doorbell. Each instance keeps a cursor per persistent channel that somebody
//! follows through it (WebSocket subscribers of `"<id>"`, Server-Sent Events streams, long polls),
//! reads `id > cursor` in id order, and hands the rows to the hub and to [`Feeds`]. Nothing
//! downstream trusts a doorbell's content: a hint only says "look at channel N again".
//!
//! - In-process: [`Delivery::ring`], called once the insert has committed, wakes this instance's
//!   reader at once.
//! - Between instances: `pg_notify('channeld_messages', '<channel>:<id>,…')`, sent after the
//!   commit as a statement of its own (NOTIFY inside the insert's transaction takes a global lock
//!   held through the commit), coalesced while one is in flight. An instance that has heard no
//!   other one (see `doorbell`) sends none: alone, it spends nothing on notifications.
//! - Lost hints cost latency, never messages: when the listener reconnects, every followed
//!   channel is re-read from its cursor, and a periodic sweep re-reads them all, for a poster that
//!   died between its commit and its hint.
//!
//! Order: within one channel ids become visible in increasing order (see `messages/db.rs`), so a
//! cursor that only moves forward never skips a message that commits later with a smaller id.
//!
//! A follower calls [`Delivery::follow`] *before* it reads history: from then on every message
//! newer than the channel's cursor is handed to the hub and the feeds, and everything up to the
//! cursor is already committed, so the follower's own read finds it. Followers drop what they
//! already have by id.

mod db;
mod doorbell;
pub mod feeds;
mod reader;
mod shared;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::{sync::Notify, task::JoinHandle};

pub use doorbell::{CHANNEL as NOTIFY_CHANNEL, LISTENER_APPLICATION_NAME};
pub use feeds::Feeds;
use shared::{Cursor, Shared};
pub use shared::{DeliveryStats, Followers};

use crate::{apps::DEFAULT_APP, config::Config, messages::pages::Pages};

/// Stored-message delivery for this instance. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    shared: Arc<Shared>,
}

/// One follower of a persistent channel on this instance; dropping it stops following.
#[must_use = "the channel is followed only while this is held"]
pub struct Follow {
    shared: Arc<Shared>,
    channel_id: i64,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("channel_id", &self.channel_id)
            .finish()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let mut followed = self.shared.followed();
        if let Some(cursor) = followed.get_mut(&self.channel_id) {
            cursor.followers -= 1;
            if cursor.followers == 0 {
                followed.remove(&self.channel_id);
            }
        }
    }
}

/// Background tasks of delivery; dropping this stops them.
pub struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Delivery {
    pub fn new(db: PgPool, followers: Arc<dyn Followers>, config: &Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                db,
                followers,
                feeds: Feeds::default(),
                pages: Pages::default(),
                followed: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
                wake: Notify::new(),
                outgoing: Mutex::new(HashMap::new()),
                send_hints: Notify::new(),
                node: uuid::Uuid::new_v4().simple().to_string(),
                others_listen: AtomicBool::new(false),
                sweep_interval: config.realtime.delivery_sweep_interval,
                post_commit_pause: config.faults.post_commit_pause,
                stats: DeliveryStats::default(),
            }),
        }
    }

    /// Starts the reader, the listener for other instances' hints, and the hint sender.
    pub fn start(&self) -> Tasks {
        Tasks(vec![
            tokio::spawn(reader::run(self.shared.clone())),
            tokio::spawn(doorbell::listen(self.shared.clone())),
            tokio::spawn(doorbell::send(self.shared.clone())),
        ])
    }

    /// Stored messages for followers that are not WebSocket peers (SSE, long poll).
    pub fn feeds(&self) -> &Feeds {
        &self.shared.feeds
    }

    /// The latest page of recently read channels, which the reader keeps current for followed
    /// channels (see [`crate::messages::pages`]).
    pub fn pages(&self) -> &Pages {
        &self.shared.pages
    }

    /// Follows `channel_id` until the returned guard is dropped. Call it before reading the
    /// channel's history: every message newer than what that read can see is then delivered.
    pub async fn follow(&self, channel_id: i64) -> Result<Follow, sqlx::Error> {
        let follow = || Follow {
            shared: self.shared.clone(),
            channel_id,
        };
        if let Some(cursor) = self.shared.followed().get_mut(&channel_id) {
            cursor.followers += 1;
            return Ok(follow());
        }
        // First follower here: start after what is committed now. Everything newer is read and
        // delivered; everything up to it is visible to the follower's own history read.
        // A channel that does not exist has nothing to deliver.
        let (app_id, last) = db::start_of(&self.shared.db, channel_id)
            .await?
            .unwrap_or((DEFAULT_APP, 0));
        let mut followed = self.shared.followed();
        let cursor = followed.entry(channel_id).or_insert_with(|| Cursor {
            generation: self.shared.generations.fetch_add(1, Ordering::Relaxed),
            app_id,
            last,
            followers: 0,
            hint_seq: 0,
            read_seq: 0,
            // Hints of messages committed while `latest_id` ran found no cursor: look once.
            check: true,
        });
        cursor.followers += 1;
        let created = cursor.followers == 1;
        drop(followed);
        if created {
            self.shared.wake.notify_one();
        }
        Ok(follow())
    }

    /// Rings the doorbell for a message whose insert has committed: this instance's reader looks
    /// at once, and other instances are notified through PostgreSQL.
    pub fn ring(&self, channel_id: i64, message_id: i64) {
        self.shared.hint(channel_id, message_id);
        if !self.shared.others_listen.load(Ordering::Relaxed) {
            return;
        }
        self.shared
            .outgoing()
            .entry(channel_id)
            .and_modify(|newest| *newest = (*newest).max(message_id))
            .or_insert(message_id);
        self.shared.send_hints.notify_one();
    }

    /// A pause between a post's commit and its doorbell, for tests that make the
    /// client-disconnects-after-commit race certain. Zero outside tests.
    pub fn post_commit_pause(&self) -> Duration {
        self.shared.post_commit_pause
    }

    /// Whether this instance has heard another one listening on the same database, and so
    /// notifies after its commits.
    pub fn other_instances(&self) -> bool {
        self.shared.others_listen.load(Ordering::Relaxed)
    }

    /// Channels followed through this instance right now.
    pub fn followed_channels(&self) -> usize {
        self.shared.followed().len()
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.shared.stats
    }
}
