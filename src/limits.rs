//! Limits every request meets before its handler: the URI's length (414) and the headers' size
//! (431), answered in the error envelope; the body's arrival within `--http-body-timeout` (408)
//! and its size (413); and a deadline on the whole of the request's work, `--db-timeout` plus a
//! long poll's `wait`, past which it answers 503 `unavailable` so that a frozen database cannot
//! hold requests without limit. Streams (SSE, WebSocket) are not bounded by the deadline: their
//! handlers answer at once and stream afterwards.

use std::time::Duration;

use axum::{
    body::Body,
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{error::ApiError, state::AppState};

pub async fn limits(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let config = &state.config;
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_bytes > config.http.max_uri_bytes {
        return rejected(
            StatusCode::URI_TOO_LONG,
            format!(
                "the URI is {uri_bytes} bytes; at most {} are accepted",
                config.http.max_uri_bytes
            ),
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > config.http.max_header_bytes {
        return rejected(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the headers are {header_bytes} bytes; at most {} are accepted",
                config.http.max_header_bytes
            ),
        );
    }

    // The body is read here, under its own timeout, so that a client trickling it is told so
    // rather than holding the handler (and the deadline below measures the work, not the upload).
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(
        config.http.body_timeout,
        axum::body::to_bytes(body, config.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return ApiError::PayloadTooLarge("request body is too large".into()).into_response();
        }
        Err(_) => {
            return rejected(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    config.http.body_timeout.as_secs_f64()
                ),
            );
        }
    };
    let request = Request::from_parts(parts, Body::from(body));

    let budget = config.db_timeout + long_poll_wait(request.uri().query());
    match tokio::time::timeout(budget, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                budget_ms = budget.as_millis() as u64,
                "request deadline passed"
            );
            ApiError::Unavailable(sqlx::Error::PoolTimedOut).into_response()
        }
    }
}

fn rejected(status: StatusCode, message: String) -> Response {
    ApiError::RequestRejected { status, message }.into_response()
}

/// The `wait` a long poll asks for (0-30 s; anything else is refused by the handler itself).
fn long_poll_wait(query: Option<&str>) -> Duration {
    let wait = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="))
        .and_then(|secs| secs.parse::<u64>().ok())
        .filter(|secs| *secs <= 30)
        .unwrap_or(0);
    Duration::from_secs(wait)
}
