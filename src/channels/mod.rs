//! Persistent channels: create, read, list, update and archive.

mod db;
pub(crate) mod handlers;
pub mod model;

use axum::{Router, routing::get};

pub use db::{ChannelState, channel_state};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/channels", get(handlers::list).post(handlers::create))
        .route(
            "/v1/channels/{id}",
            get(handlers::get).put(handlers::update),
        )
}
