//! What every part of the server shares of webhooks: the worker's wake-up, the apps that have
//! webhooks, and the attempt counters. A leaf: [`crate::state`] holds it.

use std::{
    collections::HashSet,
    sync::{RwLock, atomic::AtomicU64},
};

use tokio::sync::Notify;

/// What every part of the server shares of webhooks.
#[derive(Debug, Default)]
pub struct Webhooks {
    /// Wakes this instance's worker: an event was recorded here.
    pub(super) wake: Notify,
    /// Apps with an enabled webhook (refreshed by the worker every poll interval): a post of any
    /// other app wakes nothing.
    apps: RwLock<HashSet<i64>>,
    pub stats: Stats,
}

/// Attempts made by this instance, by result.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried.
    pub retried: AtomicU64,
    /// Failed attempts after which the event is `failed`.
    pub failed: AtomicU64,
    /// 410 Gone answers, which disable their webhook.
    pub gone: AtomicU64,
}

impl Webhooks {
    /// An event of `app_id` may have been recorded: the worker looks now rather than at its next
    /// poll.
    pub fn poke(&self, app_id: i64) {
        if self.apps.read().expect("not poisoned").contains(&app_id) {
            self.wake.notify_one();
        }
    }

    /// An event was recorded, or a webhook changed: the worker looks now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether this instance knows that `app_id` has an enabled webhook (it records the app's
    /// presence changes and wakes its worker for the app's posts).
    pub fn knows_app(&self, app_id: i64) -> bool {
        self.apps.read().expect("not poisoned").contains(&app_id)
    }

    pub(super) fn any_apps(&self) -> bool {
        !self.apps.read().expect("not poisoned").is_empty()
    }

    pub(super) fn set_apps(&self, apps: HashSet<i64>) {
        *self.apps.write().expect("not poisoned") = apps;
    }

    pub(super) fn add_app(&self, app_id: i64) {
        self.apps.write().expect("not poisoned").insert(app_id);
    }
}
