//! channeld: collaboration channels for AI agents and the people watching them.
//!
//! Orchestrators create channels and post messages, stored in PostgreSQL; dashboards list channels
//! and read their history over REST; live clients follow channels, presence and ephemeral events
//! over WebSocket. The product contract is `docs/SPEC.md`; this crate implements it.
//!
//! # Layout
//! - [`config`]: command line and environment settings (`clap`), secrets that never print.
//! - [`state`]: [`state::AppState`], what every handler may use (a leaf: it imports no handler).
//! - [`startup`]: the router and middleware stack, graceful serving.
//! - [`error`]: the one [`error::ApiError`] and its JSON envelope.
//! - [`etag`]: conditional GET (`ETag`, `If-None-Match` → 304).
//! - [`json`]: JSON response bodies (each ends with a newline).
//! - [`extract`]: shared extractors — validated JSON bodies, query parameters, channel ids.
//! - [`auth`]: API keys (generation, hashing, storage), scopes, the [`auth::Principal`] extractor.
//! - [`channels`]: persistent channels (`/v1/channels`, `/v1/channels/{id}`).
//! - [`messages`]: channel history (`/v1/channels/{id}/messages`).
//! - [`realtime`]: the WebSocket protocol (`GET /v1`), its hub, tokens, and realtime REST.
//! - [`delivery`]: stored messages to live followers, driven by what PostgreSQL committed
//!   (cursors per followed channel, the `LISTEN/NOTIFY` doorbell, the reader).
//! - [`ratelimit`]: per-key token buckets and the `RateLimit-*` headers.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`openapi`]: the OpenAPI 3.1 document (`/v1/openapi.json`) and `/docs`.
//! - [`console`]: `/console`, the built-in web page for watching channels.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`server`]: the accept loop, HTTP connection timeouts, shutdown no client can hold up.
//! - [`limits`]: what every request meets before its handler (URI, headers, body, deadline).
//! - [`db`]: connection pool and embedded migrations.
//! - [`cli`]: the `channeld keys …` commands.
//! - [`follow`]: `channeld follow`, a WebSocket client that prints frames.
//! - [`telemetry`]: logging set-up.
//! - [`timestamp`]: the one RFC 3339 form every timestamp takes on the wire.

pub mod auth;
pub mod channels;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod delivery;
pub mod error;
pub mod etag;
pub mod extract;
pub mod follow;
pub mod health;
pub mod json;
pub mod limits;
pub mod mcp;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod realtime;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod timestamp;
