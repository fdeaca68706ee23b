//! Persistent channels: create, read, list, update and archive.
//!
//! - `service`: what REST and MCP both do; `handlers`: the HTTP routes over it; `db`: the SQL.

pub(crate) mod cursor;
pub(crate) mod db;
pub(crate) mod handlers;
pub mod model;
pub mod service;

use utoipa_axum::{router::OpenApiRouter, routes};

pub use db::{ChannelState, channel_state};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::list, handlers::create))
        .routes(routes!(handlers::get, handlers::update))
        .routes(routes!(handlers::mark_read))
}
