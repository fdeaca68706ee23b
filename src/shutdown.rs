//! The one server-wide stop signal: set once when shutdown begins; WebSocket connections send
//! `going_away`, long polls and event streams end, and requests still arriving are refused.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Shutdown {
    /// Begins shutting down; everything subscribed sees it at once.
    pub fn begin(&self) {
        self.0.send_replace(true);
    }

    /// Resolves (`changed`) when shutdown begins; `borrow()` tells whether it has.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}
