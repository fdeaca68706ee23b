//! Messages of persistent channels: posting (idempotent, gap-free ordering) and reading history.
//!
//! - `service`: what REST, the event stream and MCP all do; `handlers` and `events`: the HTTP
//!   routes over it; `db`: the SQL.

pub mod batch;
mod db;
pub(crate) mod events;
pub(crate) mod handlers;
pub mod model;
pub mod pages;
pub mod service;

use utoipa_axum::{router::OpenApiRouter, routes};

pub use db::{
    Addressing, Filter, Page, count_after, id_before_newest, insert, page, page_filtered,
};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::list, handlers::create))
        .routes(routes!(events::events))
}
