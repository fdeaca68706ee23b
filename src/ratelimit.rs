//! Per-key rate limits: a token bucket per API key (defaults 50 requests/s, burst 100; a key may
//! carry its own). Every authenticated response reports the bucket in `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`; a request over the limit is 429 `rate_limited`
//! with `Retry-After`.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use axum::{
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

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Reports `decision` on the response.
pub fn report(decision: Decision, response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(LIMIT, number(decision.limit.into()));
    headers.insert(REMAINING, number(decision.remaining.into()));
    headers.insert(RESET, number(decision.reset_secs));
}

/// The decimal text of 0 to 999, one after another.
static SMALL_NUMBERS: [u8; 2890] = small_numbers();

const fn small_numbers() -> [u8; 2890] {
    let mut text = [0u8; 2890];
    let (mut n, mut at) = (0, 0);
    while n < 1000 {
        if n >= 100 {
            text[at] = b'0' + (n / 100) as u8;
            at += 1;
        }
        if n >= 10 {
            text[at] = b'0' + (n / 10 % 10) as u8;
            at += 1;
        }
        text[at] = b'0' + (n % 10) as u8;
        at += 1;
        n += 1;
    }
    text
}

/// `n` as a header value: below 1,000 (the default limits' figures) a slice of
/// [`SMALL_NUMBERS`], with no allocation.
fn number(n: u64) -> HeaderValue {
    let (start, len) = match n {
        0..=9 => (n, 1),
        10..=99 => (10 + 2 * (n - 10), 2),
        100..=999 => (190 + 3 * (n - 100), 3),
        _ => return HeaderValue::from(n),
    };
    let start = start as usize;
    match std::str::from_utf8(&SMALL_NUMBERS[start..start + len]) {
        Ok(text) => HeaderValue::from_static(text),
        Err(_) => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn numbers_read_as_their_decimal_text() {
        for n in (0..1100).chain([9_999, 1_000_000, u64::MAX]) {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

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
