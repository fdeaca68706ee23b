//! Messages of persistent channels: posting (idempotent, gap-free ordering) and reading history.

mod db;
pub(crate) mod events;
pub(crate) mod handlers;
pub mod model;

use utoipa_axum::{router::OpenApiRouter, routes};

pub use db::{Filter, Page, count_after, id_before_newest, page, page_filtered};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::list, handlers::create))
        .routes(routes!(events::events))
}
