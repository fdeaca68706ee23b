//! Webhooks (SPEC §9): events sent to receivers that hold no connection, signed as Standard
//! Webhooks, at least once.
//!
//! An event is recorded in the transaction of what caused it (`message.created` and
//! `consumer.dead` by triggers in the statements that store them, channel events beside the
//! channel's change, presence as the engine decides it), so a crash after a commit loses none.
//! [`worker`] turns events into one delivery per matching webhook and sends them; all its state
//! is in PostgreSQL, so any instance can carry on where another died.
//!
//! - `handlers`: the `/v1/webhooks` routes; `db`: the SQL; `send`: the HTTP client, the address
//!   guard and the signature; `worker`: dispatch, leases, attempts and the retry schedule.

pub(crate) mod db;
pub(crate) mod handlers;
pub mod model;
pub mod send;
pub mod wake;
pub mod worker;

pub use wake::Webhooks;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::list, handlers::create))
        .routes(routes!(handlers::get, handlers::update, handlers::delete))
        .routes(routes!(handlers::rotate_secret))
        .routes(routes!(handlers::deliveries))
        .routes(routes!(handlers::retry))
}

/// A message was stored in `channel_id` (its trigger recorded `message.created` if a webhook of
/// the channel's app wants it): wakes the worker when the app has webhooks. Costs nothing while
/// no app has one.
pub async fn posted(state: &AppState, channel_id: i64) {
    if !state.webhooks.any_apps() {
        return;
    }
    if let Ok(Some(app)) = state.apps.owner(&state.db, channel_id).await {
        state.webhooks.poke(app);
    }
}

/// Records an event of `app_id` in the caller's transaction (when one of the app's webhooks
/// wants it) and returns whether it did; the caller wakes the worker after its commit.
pub async fn record(
    db: &mut sqlx::PgConnection,
    app_id: i64,
    event_type: &str,
    channel: &str,
    data: &impl serde::Serialize,
) -> Result<bool, sqlx::Error> {
    let data = serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    db::record(db, app_id, event_type, channel, &data, None).await
}
