//! [`Metrics`]: the counters requests and connections update as they go. A leaf: it imports no
//! handler, so the application state can hold it.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::encoding::EncodeLabelSet;

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

#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by route, method and status, with their latencies.
    pub http: HttpSeries,
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

/// The HTTP series, counted where requests are answered without a lock or a shared write: each
/// thread counts into series of its own, which only it writes, so that no cache line moves
/// between cores per request and no label set is hashed. A scrape adds up every thread's.
#[derive(Debug)]
pub struct HttpSeries {
    /// Tells this registry's series from another's in a thread's list (tests run many servers
    /// in one process).
    id: u64,
    /// Every thread's series, as registered the first time it counted one.
    all: Mutex<Vec<(HttpLabels, Arc<Counts>)>>,
}

impl Default for HttpSeries {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            all: Mutex::default(),
        }
    }
}

/// One thread's counts of one series: requests per latency bucket (the last one past every
/// bound) and their total latency. Written by that thread only; read by scrapes.
#[derive(Debug, Default)]
struct Counts {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    nanos: AtomicU64,
}

impl Counts {
    fn record(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        // One writer: a load and a store, not a locked read-modify-write.
        let add = |counter: &AtomicU64, n: u64| {
            counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        };
        add(&self.buckets[bucket], 1);
        add(
            &self.nanos,
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
        );
    }
}

/// A series as a thread finds it again.
struct Local {
    registry: u64,
    method: &'static str,
    status: u16,
    route: String,
    counts: Arc<Counts>,
}

thread_local! {
    static LOCAL: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// One series' totals at a scrape: requests, per-bucket counts and summed latency in seconds.
#[derive(Debug)]
pub struct Totals {
    pub count: u64,
    pub sum: f64,
    /// Upper bound and count of each bucket (not cumulative), `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
}

impl HttpSeries {
    /// Counts one answered request and its latency.
    pub fn observe(&self, route: &str, method: &'static str, status: u16, latency: Duration) {
        LOCAL.with_borrow_mut(|local| {
            let found = local.iter().find(|series| {
                series.registry == self.id
                    && series.status == status
                    && series.method == method
                    && series.route == route
            });
            if let Some(series) = found {
                series.counts.record(latency);
                return;
            }
            // Series of registries since dropped are held by this list alone: let them go.
            local.retain(|series| Arc::strong_count(&series.counts) > 1);
            let counts = Arc::new(Counts::default());
            counts.record(latency);
            let labels = HttpLabels {
                route: route.to_owned(),
                method,
                status,
            };
            self.all
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((labels, counts.clone()));
            local.push(Local {
                registry: self.id,
                method,
                status,
                route: route.to_owned(),
                counts,
            });
        });
    }

    /// Every series' totals over all threads.
    pub fn totals(&self) -> Vec<(HttpLabels, Totals)> {
        let mut summed: HashMap<HttpLabels, (u64, [u64; BUCKETS.len() + 1])> = HashMap::new();
        for (labels, counts) in self
            .all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let (nanos, buckets) = summed.entry(labels.clone()).or_default();
            *nanos += counts.nanos.load(Ordering::Relaxed);
            for (total, bucket) in buckets.iter_mut().zip(&counts.buckets) {
                *total += bucket.load(Ordering::Relaxed);
            }
        }
        let mut totals: Vec<_> = summed
            .into_iter()
            .map(|(labels, (nanos, buckets))| {
                let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
                let totals = Totals {
                    count: buckets.iter().sum(),
                    sum: nanos as f64 / 1e9,
                    buckets: bounds.zip(buckets).collect(),
                };
                (labels, totals)
            })
            .collect();
        totals.sort_by(|(a, _), (b, _)| {
            (&a.route, a.method, a.status).cmp(&(&b.route, b.method, b.status))
        });
        totals
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_threads_series_add_up_at_a_scrape_and_registries_stay_apart() {
        let series = HttpSeries::default();
        let other = HttpSeries::default();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    series.observe("/v1/a", "GET", 200, Duration::from_micros(300));
                    series.observe("/v1/a", "GET", 200, Duration::from_millis(2));
                    series.observe("/v1/a", "POST", 201, Duration::from_secs(9));
                    other.observe("/v1/a", "GET", 200, Duration::from_micros(300));
                });
            }
        });
        let totals = series.totals();
        let found: Vec<_> = totals
            .iter()
            .map(|(labels, totals)| (labels.method, labels.status, totals.count))
            .collect();
        assert_eq!(found, [("GET", 200, 4), ("POST", 201, 2)]);
        let get = &totals[0].1;
        assert!((get.sum - 2.0 * 0.0023).abs() < 1e-9, "{}", get.sum);
        // Non-cumulative: two at or under 0.5 ms, two in the 2.5 ms bucket, none past 5 s.
        assert_eq!(get.buckets[0], (0.0005, 2));
        assert_eq!(get.buckets[2], (0.0025, 2));
        let post = &totals[1].1;
        assert_eq!(post.buckets.last(), Some(&(f64::INFINITY, 2)));
        assert_eq!(
            other.totals()[0].1.count,
            2,
            "another registry counts its own"
        );
    }
}
