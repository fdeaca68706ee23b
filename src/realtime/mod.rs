//! Realtime: the WebSocket protocol (presence, publish, direct messages), its tokens and keys,
//! and the REST endpoints that drive it from a backend.

mod connection;
pub mod hub;
mod limits;
pub mod names;
pub mod protocol;
mod rest;
pub mod session;

use std::{collections::HashSet, sync::Arc};

use axum::{
    Router,
    routing::{delete, get, post},
};
use serde_json::value::to_raw_value;
use tokio::sync::{Mutex, MutexGuard, watch};

pub use hub::Hub;
pub use limits::ConnectLimiter;
pub use rest::literal_channel_routes;

use crate::{
    auth::inactive_among, config::RealtimeConfig, messages::model::Message, startup::AppState,
};
use protocol::{ServerFrame, close};

/// Realtime state shared by every request and connection.
#[derive(Clone)]
pub struct Realtime {
    pub hub: Hub,
    pub connects: Arc<ConnectLimiter>,
    /// Set to `true` once the server is shutting down: connections send `going_away` and close.
    pub shutdown: Arc<watch::Sender<bool>>,
    post_order: Arc<[Mutex<()>]>,
}

/// Stripes of the per-channel lock that keeps live delivery in commit order.
const POST_ORDER_STRIPES: usize = 256;

impl Realtime {
    pub fn new(config: &RealtimeConfig) -> Self {
        Self {
            hub: Hub::default(),
            connects: Arc::new(ConnectLimiter::new(
                config.connects_per_ip,
                config.connect_window,
            )),
            shutdown: Arc::new(watch::channel(false).0),
            post_order: (0..POST_ORDER_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Held from storing a message until it is handed to the hub, so that subscribers of a
    /// persistent channel receive its messages in id order. Posts to one channel are serialized
    /// by the channel's row lock in PostgreSQL anyway; this extends that order to delivery.
    pub async fn post_order(&self, channel_id: i64) -> MutexGuard<'_, ()> {
        let stripe = channel_id.unsigned_abs() as usize % self.post_order.len();
        self.post_order[stripe].lock().await
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1", get(connection::upgrade))
        .route("/v1/tokens", post(rest::mint_token))
        .route("/v1/channels/{id}/peers", get(rest::peers))
        .route("/v1/channels/{id}/publish", post(rest::publish))
        .route("/v1/peers/{peer_id}", delete(rest::kick))
}

/// Delivers a message stored through REST to the subscribers of its live channel `"<id>"`:
/// `from` is the `pod_key` (or `"api"`), `data` the stored message exactly as REST returns it.
pub fn publish_stored(hub: &Hub, message: &Message) {
    let Ok(data) = to_raw_value(message) else {
        return;
    };
    let channel = message.channel_id.to_string();
    let from = message.pod_key.as_deref().unwrap_or("api");
    let frame = ServerFrame::Message {
        channel: &channel,
        from,
        data: &data,
        from_metadata: None,
    }
    .encode();
    hub.publish(&channel, None, &frame, None);
}

/// Closes, every `key_check_interval`, the connections whose key was revoked or has expired.
pub async fn watch_keys(state: AppState) {
    let mut tick = tokio::time::interval(state.config.realtime.key_check_interval);
    loop {
        tick.tick().await;
        let keys = state.realtime.hub.key_ids();
        if keys.is_empty() {
            continue;
        }
        match inactive_among(&state.db, &keys).await {
            Ok(inactive) if !inactive.is_empty() => {
                let inactive: HashSet<String> = inactive.into_iter().collect();
                let closed = state
                    .realtime
                    .hub
                    .close_keys(&inactive, close::INVALID_TOKEN);
                tracing::info!(closed, "closed connections of revoked or expired keys");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "checking keys of open connections failed"),
        }
    }
}
