//! Per-key rate limits: a token bucket per API key (defaults 50 requests/s, burst 100; a key may
//! carry its own). Every authenticated response reports the bucket in `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`; a request over the limit is 429 `rate_limited`
//! with `Retry-After`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    response::Response,
};
use tokio::time::Instant;

/// One key's limit: `rate` requests per second sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u32,
    pub burst: u32,
}

/// What one request's check found, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until the next request would be allowed (when refused).
    pub retry_after_secs: u64,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// Takes one token from `key`'s bucket.
    pub fn check(&self, key: &str, limit: Limit) -> Decision {
        let now = Instant::now();
        let rate = f64::from(limit.rate.max(1));
        let burst = f64::from(limit.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // A bucket that exists is found by `&str`, with no copy of its key.
        if let Some(bucket) = buckets.get_mut(key) {
            bucket.tokens =
                (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate).min(burst);
            bucket.last = now;
            return bucket.take(limit);
        }
        let bucket = Bucket {
            tokens: burst,
            last: now,
        };
        buckets.entry(key.to_owned()).or_insert(bucket).take(limit)
    }
}

impl Bucket {
    /// One token, when there is one, and what the response reports of the bucket.
    fn take(&mut self, limit: Limit) -> Decision {
        let rate = f64::from(limit.rate.max(1));
        let burst = f64::from(limit.burst.max(1));
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        let tokens = self.tokens;
        Decision {
            allowed,
            limit: limit.burst.max(1),
            remaining: tokens.floor() as u32,
            reset_secs: ((burst - tokens) / rate).ceil() as u64,
            retry_after_secs: if allowed {
                0
            } else {
                ((1.0 - tokens) / rate).ceil().max(1.0) as u64
            },
        }
    }
}

/// Where the `Principal` extractor leaves its decision for [`headers`] to report.
#[derive(Debug, Clone, Default)]
pub struct DecisionSlot(Arc<Mutex<Option<Decision>>>);

impl DecisionSlot {
    pub fn set(&self, decision: Decision) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(decision);
    }

    fn take(&self) -> Option<Decision> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl DecisionSlot {
    /// A slot in the request's extensions, for authentication to put its decision in.
    pub fn attach(request: &mut Request) -> Self {
        let slot = Self::default();
        request.extensions_mut().insert(slot.clone());
        slot
    }

    /// Reports on the response what was decided, if anything was.
    pub fn report(&self, response: &mut Response) {
        if let Some(decision) = self.take() {
            let headers = response.headers_mut();
            headers.insert(LIMIT, HeaderValue::from(decision.limit));
            headers.insert(REMAINING, HeaderValue::from(decision.remaining));
            headers.insert(RESET, HeaderValue::from(decision.reset_secs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limiter = RateLimiter::default();
        let limit = Limit { rate: 2, burst: 3 };
        let first = limiter.check("k", limit);
        assert_eq!(
            (
                first.allowed,
                first.limit,
                first.remaining,
                first.reset_secs
            ),
            (true, 3, 2, 1)
        );
        limiter.check("k", limit);
        assert_eq!(limiter.check("k", limit).remaining, 0);
        let refused = limiter.check("k", limit);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1);
        assert!(limiter.check("other", limit).allowed, "buckets are per key");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            limiter.check("k", limit).allowed,
            "2/s refills one token in 500 ms"
        );
        assert!(!limiter.check("k", limit).allowed);
    }
}
