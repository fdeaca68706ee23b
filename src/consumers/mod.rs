//! Consumer groups (SPEC §8): a channel's messages split among the members of a group, each
//! leased to one member at a time, acknowledged, redelivered when a lease expires, and set aside
//! as dead letters after `max_deliveries`. All state lives in PostgreSQL, so no server holds a
//! lease: one that dies leaves leases that simply expire.
//!
//! - `service`: what REST and MCP both do; `handlers`: the HTTP routes over it; `db`: the SQL.

pub(crate) mod db;
pub(crate) mod handlers;
pub mod model;
pub mod service;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::list, handlers::create))
        .routes(routes!(handlers::get, handlers::delete))
        .routes(routes!(handlers::claim))
        .routes(routes!(handlers::ack))
        .routes(routes!(handlers::nack))
        .routes(routes!(handlers::extend))
        .routes(routes!(handlers::dead))
        .routes(routes!(handlers::retry))
}
