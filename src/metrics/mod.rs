//! Prometheus metrics at `/metrics`, through `prometheus-client`.
//!
//! A registry owned by the application state rather than a process-global recorder, so that
//! several servers in one process (as in the tests) each count their own. Requests are counted
//! as they are answered, each thread into series of its own that a scrape adds up (see
//! [`HttpSeries`]); everything else (the engine, delivery, the pool) is read at scrape
//! time, as [`Sample`]s.

mod registry;
mod sample;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

pub use registry::{BUCKETS, HttpLabels, HttpSeries, Metrics, Waiting};
pub use sample::{Kind, Sample};

use crate::{error::ApiError, state::AppState};

fn method_name(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "OTHER",
    }
}

/// The routes the router serves, by the text they were registered with: the `route` label of
/// a request, looked up once where the request enters (the layers around the router see no
/// `MatchedPath`, which the router sets only for what it calls). The same matcher as axum's, on
/// the same patterns, so a path finds the route the router picks.
#[derive(Debug, Clone)]
pub struct RouteLabels(Arc<matchit::Router<Arc<str>>>);

impl RouteLabels {
    /// `routes`: every path pattern the router registers.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut table = matchit::Router::new();
        for route in routes {
            // The same pattern twice (one route for several methods) is one label.
            let _ = table.insert(route, Arc::from(route));
        }
        Self(Arc::new(table))
    }

    /// The label of a request for `path`: its route, the route a literal-form channel path
    /// answers to, or `unmatched`.
    pub fn of(&self, path: &str) -> RouteLabel {
        match self.0.at(path) {
            Ok(matched) => RouteLabel::Matched(matched.value.clone()),
            Err(_) => {
                RouteLabel::Fixed(crate::realtime::rest::literal_route(path).unwrap_or(UNMATCHED))
            }
        }
    }
}

const UNMATCHED: &str = "unmatched";

/// A request being counted: by matched route, method and status, with its latency. Unmatched
/// paths share one `route="unmatched"` label so that clients cannot grow the series; the
/// literal form of channel names with `/` counts under the route it answers to.
pub struct Tracked {
    route: RouteLabel,
    method: &'static str,
    started: Instant,
}

/// The `route` label: the table's shared text of the route (no copy per request), or a fixed
/// one.
pub enum RouteLabel {
    Matched(Arc<str>),
    Fixed(&'static str),
}

impl RouteLabel {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Matched(route) => route,
            Self::Fixed(route) => route,
        }
    }
}

impl Tracked {
    pub fn start(request: &Request, routes: &RouteLabels) -> Self {
        Self {
            route: routes.of(request.uri().path()),
            method: method_name(request.method()),
            started: Instant::now(),
        }
    }

    /// Counts the request with the status it was answered.
    pub fn answered(self, state: &AppState, response: &Response) {
        let latency = self.started.elapsed();
        let status = response.status().as_u16();
        debug_assert!(
            !matches!(self.route, RouteLabel::Fixed(UNMATCHED)) || status >= 400,
            "{status} answered on a path with no route label: add its route to the RouteLabels"
        );
        if status == 503 {
            state.metrics.db_unavailable.fetch_add(1, Ordering::Relaxed);
        }
        (state.metrics.http).observe(self.route.as_str(), self.method, status, latency);
    }
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text format (Prometheus scrapes it as such)", content_type = "application/openmetrics-text", body = String)))]
pub async fn render(State(state): State<AppState>) -> Response {
    let mut registry = Registry::default();
    let mut scrape = Scrape::of(&state);
    scrape.consumers = consumer_gauges(&state).await;
    scrape.webhook_queue = webhook_queue(&state).await;
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(8192);
    if let Err(error) = text::encode(&mut out, &registry) {
        return ApiError::Internal(format!("encoding metrics failed: {error}").into())
            .into_response();
    }
    let content_type =
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], out).into_response()
}

/// Everything `/metrics` shows, read at one scrape.
#[derive(Debug)]
struct Scrape {
    http: Vec<(HttpLabels, registry::Totals)>,
    samples: Vec<Sample>,
    consumers: Vec<crate::consumers::db::Gauges>,
    webhook_queue: Option<crate::webhooks::db::Queue>,
    /// Webhook attempts by result.
    webhook_attempts: [(&'static str, u64); 4],
}

/// Groups shown in `/metrics` at most, and messages past a group's frontier counted at most.
const CONSUMER_GROUPS_SHOWN: i64 = 1000;
const CONSUMER_PENDING_COUNTED: i64 = 1_000_000;

/// The webhook queue, read from the database at scrape time (absent when it does not answer
/// within 2 s).
async fn webhook_queue(state: &AppState) -> Option<crate::webhooks::db::Queue> {
    let read = crate::webhooks::db::queue(&state.db);
    match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Ok(queue)) => Some(queue),
        Ok(Err(error)) => {
            tracing::warn!(%error, "webhook queue metrics not read");
            None
        }
        Err(_) => None,
    }
}

/// Every consumer group's gauges, read from the database at scrape time (none when it does not
/// answer within 2 s: the other metrics are still served).
async fn consumer_gauges(state: &AppState) -> Vec<crate::consumers::db::Gauges> {
    let read =
        crate::consumers::db::gauges(&state.db, CONSUMER_PENDING_COUNTED, CONSUMER_GROUPS_SHOWN);
    match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Ok(gauges)) => gauges,
        Ok(Err(error)) => {
            tracing::warn!(%error, "consumer group metrics not read");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

impl Scrape {
    fn of(state: &AppState) -> Self {
        Self {
            http: state.metrics.http.totals(),
            samples: samples(state),
            consumers: Vec::new(),
            webhook_queue: None,
            webhook_attempts: {
                let stats = &state.webhooks.stats;
                let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
                [
                    ("delivered", load(&stats.delivered)),
                    ("retried", load(&stats.retried)),
                    ("failed", load(&stats.failed)),
                    ("gone", load(&stats.gone)),
                ]
            },
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut requests = encoder.encode_descriptor(
            "channeld_http_requests",
            "HTTP requests by matched route, method and status.",
            None,
            MetricType::Counter,
        )?;
        for (labels, totals) in &self.http {
            ConstCounter::new(totals.count).encode(requests.encode_family(labels)?)?;
        }
        let mut latency = encoder.encode_descriptor(
            "channeld_http_request_duration_seconds",
            "HTTP request latency.",
            None,
            MetricType::Histogram,
        )?;
        for (labels, totals) in &self.http {
            latency
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(totals.sum, totals.count, &totals.buckets, None)?;
        }
        for sample in &self.samples {
            match sample.kind {
                Kind::Counter => {
                    let metric = encoder.encode_descriptor(
                        sample.name,
                        sample.help,
                        None,
                        MetricType::Counter,
                    )?;
                    ConstCounter::new(sample.value).encode(metric)?;
                }
                Kind::Gauge => {
                    let metric = encoder.encode_descriptor(
                        sample.name,
                        sample.help,
                        None,
                        MetricType::Gauge,
                    )?;
                    ConstGauge::new(sample.value).encode(metric)?;
                }
            }
        }
        type Value = fn(&crate::consumers::db::Gauges) -> i64;
        let families: [(&str, &str, Value); 3] = [
            (
                "channeld_consumer_pending",
                "Messages waiting to be claimed, by consumer group (never delivered, nacked, or whose lease expired).",
                |g| g.pending,
            ),
            (
                "channeld_consumer_in_flight",
                "Messages leased to a member now, by consumer group.",
                |g| g.in_flight,
            ),
            (
                "channeld_consumer_dead",
                "Dead letters, by consumer group.",
                |g| g.dead,
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for group in &self.consumers {
                let labels = [
                    ("app", group.app.clone()),
                    ("channel_id", group.channel_id.to_string()),
                    ("consumer", group.name.clone()),
                ];
                ConstGauge::new(value(group)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut attempts = encoder.encode_descriptor(
            "channeld_webhook_attempts",
            "Webhook delivery attempts by this instance, by result: delivered (2xx), retried (failed, another attempt is scheduled), failed (failed, the schedule ran out), gone (410, the webhook was disabled).",
            None,
            MetricType::Counter,
        )?;
        for (result, value) in self.webhook_attempts {
            ConstCounter::new(value).encode(attempts.encode_family(&[("result", result)])?)?;
        }
        if let Some(queue) = &self.webhook_queue {
            let depth = encoder.encode_descriptor(
                "channeld_webhook_queue_depth",
                "Webhook deliveries pending (retries waiting included) and events not yet dispatched, across all instances.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(queue.depth).encode(depth)?;
            let oldest = encoder.encode_descriptor(
                "channeld_webhook_oldest_pending_age_seconds",
                "Age of the oldest pending webhook delivery or undispatched event (0 when none).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(queue.oldest_age_seconds).encode(oldest)?;
        }
        Ok(())
    }
}

/// The values read at scrape time: this module's counters, the pool, delivery and the engine.
fn samples(state: &AppState) -> Vec<Sample> {
    let metrics = &state.metrics;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let pool = &state.db;
    let delivery = state.delivery.stats();
    let samples = [
        Sample::counter(
            "channeld_websocket_frames_in",
            "Frames received from WebSocket clients.",
            load(&metrics.frames_in),
        ),
        Sample::counter(
            "channeld_rate_limited_requests",
            "Requests refused with 429 by per-key limits.",
            load(&metrics.rate_limited),
        ),
        Sample::gauge(
            "channeld_db_pool_connections",
            "Open database connections in the pool.",
            u64::from(pool.size()),
        ),
        Sample::gauge(
            "channeld_db_pool_idle",
            "Idle database connections in the pool.",
            pool.num_idle() as u64,
        ),
        Sample::gauge(
            "channeld_db_pool_max",
            "Largest pool size allowed.",
            u64::from(pool.options().get_max_connections()),
        ),
        Sample::gauge(
            "channeld_db_pool_in_use",
            "Database connections checked out right now.",
            u64::from(pool.size()).saturating_sub(pool.num_idle() as u64),
        ),
        Sample::counter(
            "channeld_db_unavailable",
            "Requests answered 503: database unreachable or no pooled connection within the acquire timeout.",
            load(&metrics.db_unavailable),
        ),
        Sample::counter(
            "channeld_http_connections_timed_out",
            "HTTP connections closed because request headers did not arrive in time (idle keep-alive connections included).",
            load(&metrics.server.timed_out),
        ),
        Sample::gauge(
            "channeld_http_requests_in_flight",
            "HTTP requests being answered, streaming responses included.",
            load(&metrics.server.in_flight),
        ),
        Sample::gauge(
            "channeld_message_waiters",
            "Long polls, MCP wait_for_messages calls and consumer-group claims waiting for a message (none holds a database connection).",
            load(&metrics.waiters),
        ),
        Sample::counter(
            "channeld_http_accept_errors",
            "Failed accepts (e.g. out of file descriptors); the server pauses briefly and goes on.",
            load(&metrics.server.accept_errors),
        ),
        Sample::gauge(
            "channeld_delivery_followed_channels",
            "Persistent channels followed through this instance (WebSocket, SSE, long poll).",
            state.delivery.followed_channels() as u64,
        ),
        Sample::counter(
            "channeld_message_batches",
            "Statements that stored several posted messages together (group commit).",
            load(&state.posts.batches),
        ),
        Sample::counter(
            "channeld_messages_batched",
            "Posted messages stored together with others, by those statements.",
            load(&state.posts.batched),
        ),
        Sample::counter(
            "channeld_message_batches_failed",
            "Statements storing posts together that PostgreSQL refused; each of their posts was then stored alone.",
            load(&state.posts.failed),
        ),
        Sample::counter(
            "channeld_posts_waited_out",
            "Posted messages that waited their whole wait (100 ms) for an insert statement to finish and were then stored alone.",
            load(&state.posts.waited_out),
        ),
        Sample::gauge(
            "channeld_posts_waiting",
            "Posted messages waiting for one of this instance's insert statements to finish, to be stored together.",
            state.posts.waiting() as u64,
        ),
        Sample::counter(
            "channeld_page_cache_hits",
            "Latest pages of messages answered from memory after a one-row check of the channel's newest id.",
            load(&state.delivery.pages().hits),
        ),
        Sample::counter(
            "channeld_page_cache_misses",
            "Latest pages of messages read from the database (not held, or the channel moved on).",
            load(&state.delivery.pages().misses),
        ),
        Sample::counter(
            "channeld_delivery_reads",
            "Reads of followed channels' new stored messages.",
            load(&delivery.reads),
        ),
        Sample::counter(
            "channeld_delivery_messages",
            "Stored messages handed to this instance's live followers.",
            load(&delivery.delivered),
        ),
        Sample::counter(
            "channeld_delivery_unhinted_messages",
            "Stored messages no hint announced, found by the sweep or after the listener reconnected.",
            load(&delivery.unhinted),
        ),
        Sample::counter(
            "channeld_delivery_hints_received",
            "Hints received through PostgreSQL LISTEN (every instance's posts, this one's included).",
            load(&delivery.hints_received),
        ),
        Sample::counter(
            "channeld_delivery_notifications_sent",
            "NOTIFY payloads sent after commits (hints coalesce into them).",
            load(&delivery.notifications_sent),
        ),
        Sample::gauge(
            "channeld_delivery_other_instances",
            "1 once another instance was heard on this database (hints are then sent after commits).",
            u64::from(state.delivery.other_instances()),
        ),
        Sample::counter(
            "channeld_consumer_redeliveries",
            "Consumer-group messages this instance handed out again (a lease expired or was nacked).",
            load(&metrics.consumer_redeliveries),
        ),
        Sample::counter(
            "channeld_webhook_presence_dropped",
            "Presence changes not recorded for webhooks because their queue was full.",
            load(&state.realtime.engine.hub().presence_out.dropped),
        ),
        Sample::counter(
            "channeld_delivery_listener_reconnects",
            "Times the LISTEN connection was lost and made anew.",
            load(&delivery.listener_reconnects),
        ),
    ];
    let mut all = samples.to_vec();
    all.extend(state.realtime.engine.samples());
    all
}
