//! What the reader, the doorbell and [`super::Delivery`] share: the cursor of every channel
//! followed through this instance, the hints waiting to be sent, and the counters.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::Notify;

use super::feeds::Feeds;
use crate::messages::model::Message;

/// Where stored messages go once read: the realtime engine's followers (delivery itself knows
/// nothing of WebSockets; `realtime` implements this).
pub trait Followers: Send + Sync {
    /// A stored message of a channel of app `app_id`, newer than what this instance handed over
    /// before, in id order per channel.
    fn stored(&self, app_id: i64, message: &Message);
}

pub(super) struct Shared {
    pub(super) db: PgPool,
    pub(super) followers: Arc<dyn Followers>,
    pub(super) feeds: Feeds,
    pub(super) pages: crate::messages::pages::Pages,
    pub(super) followed: Mutex<HashMap<i64, Cursor>>,
    pub(super) generations: AtomicU64,
    /// Wakes the reader: some followed channel has something to read.
    pub(super) wake: Notify,
    /// Hints not yet sent to other instances: channel → newest message id.
    pub(super) outgoing: Mutex<HashMap<i64, i64>>,
    /// Wakes the task that sends `outgoing`.
    pub(super) send_hints: Notify,
    /// Names this instance in its `hello`/`here` announcements, so it can ignore its own.
    pub(super) node: String,
    /// Another instance listens on the same database: hints are worth sending.
    pub(super) others_listen: AtomicBool,
    pub(super) sweep_interval: Duration,
    pub(super) post_commit_pause: Duration,
    pub(super) stats: DeliveryStats,
}

/// Where one followed channel stands on this instance.
pub(super) struct Cursor {
    /// Tells this cursor from an earlier one of the same channel (unfollowed, then followed
    /// again while a read was in flight), whose read must not settle this one's hints.
    pub(super) generation: u64,
    /// The app that owns the channel.
    pub(super) app_id: i64,
    /// The newest message id handed to followers.
    pub(super) last: i64,
    pub(super) followers: usize,
    /// Bumped by each hint newer than `last` (and by a full page: more is waiting).
    pub(super) hint_seq: u64,
    /// The `hint_seq` that the last complete read began after.
    pub(super) read_seq: u64,
    /// Re-read although no hint came: a sweep, or the listener reconnected.
    pub(super) check: bool,
}

impl Cursor {
    pub(super) fn pending(&self) -> bool {
        self.hint_seq != self.read_seq || self.check
    }
}

/// Counters for operators (`/metrics`).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Reads of followed channels' new messages.
    pub reads: AtomicU64,
    /// Stored messages handed to live followers.
    pub delivered: AtomicU64,
    /// Of those, the ones no hint announced: found by a sweep or after the listener reconnected.
    pub unhinted: AtomicU64,
    /// Hints received from PostgreSQL (other instances' posts, and this one's own).
    pub hints_received: AtomicU64,
    /// Hint notifications sent after commits (several hints share one).
    pub notifications_sent: AtomicU64,
    /// Times the listener connection was lost and re-established.
    pub listener_reconnects: AtomicU64,
}

impl Shared {
    pub(super) fn followed(&self) -> MutexGuard<'_, HashMap<i64, Cursor>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn outgoing(&self) -> MutexGuard<'_, HashMap<i64, i64>> {
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Message `message_id` of `channel_id` is committed: if it is followed here and newer than
    /// what was delivered, the reader looks.
    pub(super) fn hint(&self, channel_id: i64, message_id: i64) {
        let mut followed = self.followed();
        let Some(cursor) = followed.get_mut(&channel_id) else {
            return;
        };
        if message_id > cursor.last {
            cursor.hint_seq += 1;
            drop(followed);
            self.wake.notify_one();
        }
    }

    /// Every followed channel is re-read from its cursor (a sweep, or hints may have been lost).
    pub(super) fn check_all(&self) {
        let mut followed = self.followed();
        if followed.is_empty() {
            return;
        }
        for cursor in followed.values_mut() {
            cursor.check = true;
        }
        drop(followed);
        self.wake.notify_one();
    }
}

pub(super) fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}
