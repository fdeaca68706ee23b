//! channeld: collaboration channels for AI agents and the people watching them.
//!
//! Orchestrators create channels and post messages, stored in PostgreSQL; dashboards list channels
//! and read their history over REST; live clients follow channels, presence and ephemeral events
//! over WebSocket. The product contract is `docs/SPEC.md`; this crate implements it.
//!
//! # Layout
//! - [`config`]: command line and environment settings (`clap`), secrets that never print.
//! - [`state`]: [`state::AppState`], what every handler may use (a leaf: it imports no handler).
//! - [`startup`]: [`startup::Application`], built once by `channeld serve` and the tests alike;
//!   the router (assembled here, and only here) and its middleware stack; graceful serving and
//!   the one owner of every background task.
//! - [`shutdown`]: the one server-wide stop signal.
//! - [`error`]: the one [`error::ApiError`] and its JSON envelope.
//! - [`etag`]: conditional GET (`ETag`, `If-None-Match` → 304).
//! - [`json`]: JSON response bodies (each ends with a newline).
//! - [`extract`]: shared extractors — validated JSON bodies, query parameters, channel ids.
//! - [`apps`]: apps, the isolated tenants of one server, and the scoping of realtime names.
//! - [`auth`]: API keys (generation, hashing, storage), scopes, the [`auth::Principal`] extractor.
//! - [`channels`]: persistent channels (`/v1/channels`, `/v1/channels/{id}`); its `service` is
//!   what REST and MCP both call.
//! - [`messages`]: channel history (`/v1/channels/{id}/messages`, `…/events`); its `service` is
//!   what REST, the event stream and MCP call.
//! - [`realtime`]: the WebSocket protocol (`GET /v1`), tokens, realtime REST, and the
//!   [`realtime::engine`] (in memory, or Redis for several instances) behind one type.
//! - [`mcp`]: the MCP endpoint (`/v1/mcp`), its tools calling the features' services.
//! - [`delivery`]: stored messages to live followers, driven by what PostgreSQL committed
//!   (cursors per followed channel, the `LISTEN/NOTIFY` doorbell, the reader).
//! - [`ratelimit`]: per-key token buckets and the `RateLimit-*` headers.
//! - [`metrics`]: `/metrics` through `prometheus-client`.
//! - [`openapi`]: the OpenAPI 3.1 document (`/v1/openapi.json`) and `/docs`.
//! - [`console`]: `/console`, the built-in web page for watching channels.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`server`]: the accept loop, HTTP connection timeouts, shutdown no client can hold up.
//! - [`repoll`]: a connection that wakes itself while polled is polled again, not rescheduled.
//! - [`gated`]: a connection's stop signal and header timeout are polled only when they wake it.
//! - [`limits`]: what every request meets before its handler (URI, headers, body, deadline).
//! - [`db`]: connection pool and embedded migrations.
//! - [`cli`]: the `channeld apps …` and `channeld keys …` commands.
//! - [`follow`]: `channeld follow`, a WebSocket client that prints frames.
//! - [`telemetry`]: logging set-up.
//! - [`timestamp`]: the one RFC 3339 form every timestamp takes on the wire.

pub mod apps;
pub mod auth;
pub mod channels;
pub mod cli;
pub mod config;
pub mod console;
pub mod consumers;
pub mod db;
pub mod delivery;
pub mod edge;
pub mod error;
pub mod etag;
pub mod extract;
pub mod follow;
pub mod gated;
pub mod health;
pub mod json;
pub mod limits;
pub mod mcp;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod realtime;
pub mod repoll;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod timestamp;
pub mod webhooks;
