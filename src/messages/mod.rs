//! Messages of persistent channels: posting (idempotent, gap-free ordering) and reading history.

mod db;
pub(crate) mod events;
pub(crate) mod handlers;
pub mod model;

use axum::{Router, routing::get};

pub use db::{Page, count_after, id_before_newest, page};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/channels/{id}/messages",
            get(handlers::list).post(handlers::create),
        )
        .route("/v1/channels/{id}/events", get(events::events))
}
