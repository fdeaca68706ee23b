//! Prometheus metrics in text format at `/metrics`.
//!
//! A small registry owned by the application state rather than a process-global recorder, so
//! that several servers in one process (as in the tests) each count their own.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::state::AppState;

/// Upper bounds of the request latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<(String, &'static str, u16), Histogram>>,
    pub rate_limited: AtomicU64,
    pub frames_in: AtomicU64,
    /// Requests answered 503: the database could not be reached, or no pooled connection
    /// came free within the acquire timeout.
    pub db_unavailable: AtomicU64,
    /// Long polls and MCP `wait_for_messages` calls waiting for a message now.
    pub waiters: AtomicU64,
    /// HTTP connections: timeouts and accept failures.
    pub server: crate::server::ServerStats,
}

/// Counts one waiter in [`Metrics::waiters`] while it lives.
pub struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    pub fn new(metrics: &'a Metrics) -> Self {
        metrics.waiters.fetch_add(1, Ordering::Relaxed);
        Self(&metrics.waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    fn observe(&self, route: String, method: &'static str, status: u16, seconds: f64) {
        let mut http = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        let series = http.entry((route, method, status)).or_default();
        series.count += 1;
        series.sum += seconds;
        for (bucket, bound) in series.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }
}

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

/// Middleware: counts every request by matched route, method and status, with its latency.
/// Unmatched paths share one `route="unmatched"` label so that clients cannot grow the series;
/// the literal form of channel names with `/` counts under the route it answers to.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(matched) => matched.as_str().to_owned(),
        None => crate::realtime::rest::literal_route(request.uri().path())
            .unwrap_or("unmatched")
            .to_owned(),
    };
    let method = method_name(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    if status == 503 {
        state.metrics.db_unavailable.fetch_add(1, Ordering::Relaxed);
    }
    state.metrics.observe(route, method, status, seconds);
    response
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn render(State(state): State<AppState>) -> Response {
    let mut out = String::with_capacity(4096);
    let metrics = &state.metrics;
    {
        let http = metrics.http.lock().unwrap_or_else(PoisonError::into_inner);
        out.push_str("# HELP channeld_http_requests_total HTTP requests by matched route, method and status.\n");
        out.push_str("# TYPE channeld_http_requests_total counter\n");
        for ((route, method, status), series) in http.iter() {
            let _ = writeln!(
                out,
                "channeld_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                series.count
            );
        }
        out.push_str("# HELP channeld_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE channeld_http_request_duration_seconds histogram\n");
        for ((route, method, status), series) in http.iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            for (count, bound) in series.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "channeld_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "channeld_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                series.count
            );
            let _ = writeln!(
                out,
                "channeld_http_request_duration_seconds_sum{{{labels}}} {}",
                series.sum
            );
            let _ = writeln!(
                out,
                "channeld_http_request_duration_seconds_count{{{labels}}} {}",
                series.count
            );
        }
    }
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let pool = &state.db;
    let delivery = state.delivery.stats();
    let samples: [(&str, &str, &str, u64); 19] = [
        (
            "channeld_websocket_frames_in_total",
            "counter",
            "Frames received from WebSocket clients.",
            load(&metrics.frames_in),
        ),
        (
            "channeld_rate_limited_requests_total",
            "counter",
            "Requests refused with 429 by per-key limits.",
            load(&metrics.rate_limited),
        ),
        (
            "channeld_db_pool_connections",
            "gauge",
            "Open database connections in the pool.",
            u64::from(pool.size()),
        ),
        (
            "channeld_db_pool_idle",
            "gauge",
            "Idle database connections in the pool.",
            pool.num_idle() as u64,
        ),
        (
            "channeld_db_pool_max",
            "gauge",
            "Largest pool size allowed.",
            u64::from(pool.options().get_max_connections()),
        ),
        (
            "channeld_db_pool_in_use",
            "gauge",
            "Database connections checked out right now.",
            u64::from(pool.size()).saturating_sub(pool.num_idle() as u64),
        ),
        (
            "channeld_db_unavailable_total",
            "counter",
            "Requests answered 503: database unreachable or no pooled connection within the acquire timeout.",
            load(&metrics.db_unavailable),
        ),
        (
            "channeld_http_connections_timed_out_total",
            "counter",
            "HTTP connections closed because request headers did not arrive in time (idle keep-alive connections included).",
            load(&metrics.server.timed_out),
        ),
        (
            "channeld_http_requests_in_flight",
            "gauge",
            "HTTP requests being answered, streaming responses included.",
            load(&metrics.server.in_flight),
        ),
        (
            "channeld_message_waiters",
            "gauge",
            "Long polls and MCP wait_for_messages calls waiting for a message (none holds a database connection).",
            load(&metrics.waiters),
        ),
        (
            "channeld_http_accept_errors_total",
            "counter",
            "Failed accepts (e.g. out of file descriptors); the server pauses briefly and goes on.",
            load(&metrics.server.accept_errors),
        ),
        (
            "channeld_delivery_followed_channels",
            "gauge",
            "Persistent channels followed through this instance (WebSocket, SSE, long poll).",
            state.delivery.followed_channels() as u64,
        ),
        (
            "channeld_delivery_reads_total",
            "counter",
            "Reads of followed channels' new stored messages.",
            load(&delivery.reads),
        ),
        (
            "channeld_delivery_messages_total",
            "counter",
            "Stored messages handed to this instance's live followers.",
            load(&delivery.delivered),
        ),
        (
            "channeld_delivery_unhinted_messages_total",
            "counter",
            "Stored messages no hint announced, found by the sweep or after the listener reconnected.",
            load(&delivery.unhinted),
        ),
        (
            "channeld_delivery_hints_received_total",
            "counter",
            "Hints received through PostgreSQL LISTEN (every instance's posts, this one's included).",
            load(&delivery.hints_received),
        ),
        (
            "channeld_delivery_notifications_sent_total",
            "counter",
            "NOTIFY payloads sent after commits (hints coalesce into them).",
            load(&delivery.notifications_sent),
        ),
        (
            "channeld_delivery_other_instances",
            "gauge",
            "1 once another instance was heard on this database (hints are then sent after commits).",
            u64::from(state.delivery.other_instances()),
        ),
        (
            "channeld_delivery_listener_reconnects_total",
            "counter",
            "Times the LISTEN connection was lost and made anew.",
            load(&delivery.listener_reconnects),
        ),
    ];
    write_samples(&mut out, &samples);
    write_samples(&mut out, &state.realtime.engine.samples());
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], out).into_response()
}

/// Writes `(name, type, help, value)` samples in the text format.
fn write_samples(out: &mut String, samples: &[(&str, &str, &str, u64)]) {
    for (name, kind, help, value) in samples {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}
