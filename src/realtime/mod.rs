//! Realtime: the WebSocket protocol (presence, publish, direct messages), its tokens and keys,
//! and the REST endpoints that drive it from a backend.
//!
//! - `protocol`: client and server frames, error and close codes.
//! - `session`: who a connection is, from a token or a publishable key.
//! - `connection`: the upgrade and the one task per socket; `frames`: one function per frame type;
//!   `replay`: history after `since`, a page at a time from inside the socket's loop.
//! - [`engine`]: subscriptions, presence, publish, direct messages and kicks, in memory or
//!   through Redis, behind one type. Stored messages reach it from [`crate::delivery`], which
//!   reads them from PostgreSQL.
//! - [`state`]: [`Realtime`], the engine and the connect limiter.
//! - `limits`: connects per IP and frames per connection; `names`: channel names and peer ids.
//! - `mint`: `POST /v1/tokens`; `rest`: peers, publish and kick over REST.

pub(crate) mod connection;
pub mod engine;
mod frames;
pub(crate) mod limits;
pub(crate) mod mint;
pub mod names;
pub mod protocol;
mod replay;
pub(crate) mod rest;
pub mod session;
pub mod state;
pub mod stored;

use std::collections::HashSet;

use utoipa_axum::{router::OpenApiRouter, routes};

pub use limits::ConnectLimiter;
pub use rest::literal_channel_routes;
pub use state::Realtime;

use crate::{auth::inactive_among, state::AppState};
use protocol::close;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(connection::upgrade))
        .routes(routes!(mint::mint_token))
        .routes(routes!(rest::peers))
        .routes(routes!(rest::publish))
        .routes(routes!(rest::kick))
}

/// Ends, every `key_check_interval`, the WebSocket connections (4001), streams, long polls and
/// MCP waits whose key was revoked or has expired.
pub async fn watch_keys(state: AppState) {
    let mut tick = tokio::time::interval(state.config.realtime.key_check_interval);
    loop {
        tick.tick().await;
        let engine = &state.realtime.engine;
        let mut keys = engine.key_ids();
        keys.extend(state.streams.key_ids());
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            continue;
        }
        match inactive_among(&state.db, &keys).await {
            Ok(inactive) if !inactive.is_empty() => {
                let inactive: HashSet<String> = inactive.into_iter().collect();
                let closed = engine.close_keys(&inactive, close::INVALID_TOKEN);
                let ended = state.streams.end(&inactive);
                tracing::info!(
                    closed,
                    ended,
                    "ended the connections and streams of revoked or expired keys"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "checking keys of open connections failed"),
        }
    }
}
