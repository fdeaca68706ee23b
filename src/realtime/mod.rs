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
use tokio::sync::watch;

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
}

impl Realtime {
    pub fn new(config: &RealtimeConfig) -> Self {
        Self {
            hub: Hub::default(),
            connects: Arc::new(ConnectLimiter::new(
                config.connects_per_ip,
                config.connect_window,
            )),
            shutdown: Arc::new(watch::channel(false).0),
        }
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
