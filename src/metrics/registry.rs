//! [`Metrics`]: the counters requests and connections update as they go. A leaf: it imports no
//! handler, so the application state can hold it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

use crate::server::ServerStats;

/// Upper bounds of the request latency histogram, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The labels of every HTTP series: the matched route (never the raw path), method and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

pub type Latencies = Family<HttpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Debug)]
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_latency: Latencies,
    pub rate_limited: AtomicU64,
    pub frames_in: AtomicU64,
    /// Requests answered 503: the database could not be reached, or no pooled connection
    /// came free within the acquire timeout.
    pub db_unavailable: AtomicU64,
    /// Long polls and MCP `wait_for_messages` calls waiting for a message now.
    pub waiters: AtomicU64,
    /// HTTP connections: timeouts and accept failures.
    pub server: Arc<ServerStats>,
    /// Consumer-group messages handed out again (attempt 2 or later) by this instance.
    pub consumer_redeliveries: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            rate_limited: AtomicU64::default(),
            frames_in: AtomicU64::default(),
            db_unavailable: AtomicU64::default(),
            waiters: AtomicU64::default(),
            server: Arc::default(),
            consumer_redeliveries: AtomicU64::default(),
        }
    }
}

impl Metrics {
    /// Counts one answered request and its latency.
    pub fn observe(&self, labels: HttpLabels, seconds: f64) {
        self.http_requests.get_or_create(&labels).inc();
        self.http_latency.get_or_create(&labels).observe(seconds);
    }
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
