//! Messages of persistent channels: posting (idempotent, gap-free ordering) and reading history.

mod db;
mod handlers;
pub mod model;

use axum::{Router, routing::get};

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/channels/{id}/messages",
        get(handlers::list).post(handlers::create),
    )
}
