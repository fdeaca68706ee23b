//! Realtime: the WebSocket protocol (presence, publish, direct messages), its tokens and keys,
//! and the REST endpoints that drive it from a backend.
//!
//! - `protocol`: client and server frames, error and close codes.
//! - `session`: who a connection is, from a token or a publishable key.
//! - `connection`: the upgrade and the one task per socket; `frames`: one function per frame type.
//! - `hub`: subscriptions, presence and fan-out; `feeds`: stored messages for SSE and long polls.
//! - `limits`: connects per IP and frames per connection; `names`: channel names and peer ids.
//! - `mint`: `POST /v1/tokens`; `rest`: peers, publish and kick over REST.

pub(crate) mod connection;
pub mod feeds;
mod frames;
pub mod hub;
mod limits;
pub(crate) mod mint;
pub mod names;
pub mod protocol;
pub(crate) mod rest;
pub mod session;

use std::{collections::HashSet, sync::Arc};

use axum::{
    Router,
    routing::{delete, get, post},
};
use serde_json::value::to_raw_value;
use tokio::sync::{Mutex, MutexGuard, watch};

pub use feeds::Feeds;
pub use hub::Hub;
use hub::{Outbound, StoredRef};
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
    /// Stored messages for followers that are not WebSocket peers (SSE, long poll).
    pub feeds: Feeds,
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
            feeds: Feeds::default(),
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
        .route("/v1/tokens", post(mint::mint_token))
        .route("/v1/channels/{id}/peers", get(rest::peers))
        .route("/v1/channels/{id}/publish", post(rest::publish))
        .route("/v1/peers/{peer_id}", delete(rest::kick))
}

/// The `message` frame of a stored message on its live channel `"<id>"`: `from` is the
/// `pod_key` (or `"api"`), `data` the message exactly as REST returns it.
pub fn stored_frame(message: &Message) -> Outbound {
    let data = to_raw_value(message).expect("stored messages serialize");
    let channel = message.channel_id.to_string();
    let from = message.pod_key.as_deref().unwrap_or("api");
    let frame = ServerFrame::Message {
        channel: &channel,
        from,
        data: &data,
        from_metadata: None,
    }
    .encode();
    Outbound {
        frame,
        stored: Some(Arc::new(StoredRef {
            channel_id: message.channel_id,
            message_id: message.id,
        })),
    }
}

/// Delivers a just-stored message to everyone following its channel: WebSocket subscribers of
/// `"<id>"`, SSE streams and long-poll waiters.
pub fn publish_stored(realtime: &Realtime, message: &Message) {
    let frame = stored_frame(message);
    realtime
        .hub
        .publish(&message.channel_id.to_string(), None, &frame, None);
    realtime.feeds.publish(message);
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
