//! `/console`: a small web page, built into the binary, for watching channels. Paste a key with
//! `channels:read` (kept in the tab's session storage only); list channels with the list's
//! filters, search and sort; open one to read its history (paging back), see new messages arrive
//! over Server-Sent Events, and who is connected to its live stream when the key has `presence`.
//!
//! The page is three static files, with no dependency and no build step. It calls the public API
//! with the key in an `Authorization` header, like any client; the strict Content-Security-Policy
//! allows nothing but this origin.

use axum::{
    Router,
    http::{HeaderName, HeaderValue, header},
    response::IntoResponse,
    routing::get,
};

use crate::state::AppState;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse + Clone {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

/// The console's files: path, content type, body.
const FILES: [(&str, &str, &str); 3] = [
    ("/console", "text/html; charset=utf-8", PAGE),
    ("/console/app.js", "text/javascript; charset=utf-8", SCRIPT),
    ("/console/style.css", "text/css; charset=utf-8", STYLE),
];

/// Every route [`router`] serves.
pub const PATHS: [&str; 3] = [FILES[0].0, FILES[1].0, FILES[2].0];

pub fn router() -> Router<AppState> {
    FILES
        .into_iter()
        .fold(Router::new(), |router, (path, content_type, body)| {
            router.route(path, get(move || async move { asset(content_type, body) }))
        })
}
