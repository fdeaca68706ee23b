//! Liveness and readiness probes.

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

use crate::{error::ApiError, startup::AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// 200 while the process runs, whatever the database does.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 only when the database answers; otherwise 503 `unavailable`.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx::query!("SELECT 1 AS one")
        .fetch_one(&state.db)
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(Json(json!({"status": "ready"})))
}
