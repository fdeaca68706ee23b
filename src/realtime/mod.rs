//! Realtime: the WebSocket protocol (presence, publish, direct messages), its tokens and keys,
//! and the REST endpoints that drive it from a backend.
//!
//! - `protocol`: client and server frames, error and close codes.
//! - `session`: who a connection is, from a token or a publishable key.
//! - `connection`: the upgrade and the one task per socket; `frames`: one function per frame type;
//!   `replay`: history after `since`, a page at a time from inside the socket's loop.
//! - `hub`: subscriptions, presence and fan-out. Stored messages reach the hub from
//!   [`crate::delivery`], which reads them from PostgreSQL.
//! - `limits`: connects per IP and frames per connection; `names`: channel names and peer ids.
//! - `mint`: `POST /v1/tokens`; `rest`: peers, publish and kick over REST.

pub(crate) mod connection;
mod frames;
pub mod hub;
mod limits;
pub(crate) mod mint;
pub mod names;
pub mod protocol;
mod replay;
pub(crate) mod rest;
pub mod session;

use std::{collections::HashSet, sync::Arc};

use tokio::sync::watch;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use hub::Hub;
pub use limits::ConnectLimiter;
pub use rest::literal_channel_routes;

use crate::{auth::inactive_among, cluster::Cluster, config::Config, state::AppState};
use protocol::close;

/// Realtime state shared by every request and connection.
#[derive(Clone)]
pub struct Realtime {
    pub hub: Hub,
    /// Cluster mode: publish, presence, direct messages and kicks go through Redis.
    pub cluster: Option<Cluster>,
    pub connects: Arc<ConnectLimiter>,
    /// Set to `true` once the server is shutting down: connections send `going_away` and close.
    pub shutdown: Arc<watch::Sender<bool>>,
}

impl Realtime {
    pub fn new(config: &Config) -> Self {
        let (hub, cluster) = match &config.cluster {
            Some(settings) => {
                let hub = Hub::clustered();
                let cluster = Cluster::new(settings.clone(), hub.clone())
                    .expect("the Redis URL was checked when the configuration was read");
                (hub, Some(cluster))
            }
            None => (Hub::default(), None),
        };
        let limits = &config.realtime;
        Self {
            hub,
            cluster,
            connects: Arc::new(ConnectLimiter::new(
                limits.connects_per_ip,
                limits.connect_window,
            )),
            shutdown: Arc::new(watch::channel(false).0),
        }
    }

    /// Removes a connection; in cluster mode its channels and registration are left in Redis.
    pub fn unregister(&self, conn: hub::ConnId) {
        if let Some(departure) = self.hub.unregister(conn)
            && let Some(cluster) = &self.cluster
        {
            cluster.depart(conn, departure);
        }
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(connection::upgrade))
        .routes(routes!(mint::mint_token))
        .routes(routes!(rest::peers))
        .routes(routes!(rest::publish))
        .routes(routes!(rest::kick))
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
