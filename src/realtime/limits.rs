//! Limits of the realtime surface: connects per source IP, connections per app, and inbound
//! frames per connection.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// At most `max` WebSocket connects per source per fixed `window`. A source is an IPv4 address,
/// or an IPv6 client's /64: one host is usually given a whole /64, and counting its addresses
/// apart would let it connect without limit.
#[derive(Debug)]
pub struct ConnectLimiter {
    max: u32,
    window: Duration,
    hits: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl ConnectLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one connect from `ip`. `Err(seconds)` says when to retry once over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let ip = source(ip);
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(PoisonError::into_inner);
        if hits.len() > 10_000 {
            hits.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let (start, count) = hits.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *count = 0;
        }
        if *count >= self.max {
            let remaining = self.window.saturating_sub(now.duration_since(*start));
            return Err(remaining.as_secs().max(1));
        }
        *count += 1;
        Ok(())
    }
}

/// What a limit per source counts: an IPv4 address (or an IPv4-mapped IPv6 one) as it is, an
/// IPv6 address by its /64.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Token bucket over one connection's inbound frames: `rate` per second sustained, `burst` at once.
#[derive(Debug)]
pub struct FrameBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl FrameBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one frame's token; `false` when the connection is over its rate.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// WebSocket connections per app on this instance, for the apps' `max_connections` quotas.
#[derive(Default)]
pub struct AppConnections {
    open: Mutex<HashMap<i64, usize>>,
}

/// One admitted connection of an app; counted until dropped.
pub struct AppSlot {
    connections: Arc<AppConnections>,
    app_id: i64,
}

impl AppConnections {
    /// A slot for one more connection of `app_id`, unless it already has `max`.
    pub fn admit(self: &Arc<Self>, app_id: i64, max: Option<usize>) -> Option<AppSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(app_id).or_insert(0);
        if max.is_some_and(|max| *count >= max) {
            return None;
        }
        *count += 1;
        Some(AppSlot {
            connections: self.clone(),
            app_id,
        })
    }

    /// Open connections of `app_id` here.
    pub fn open(&self, app_id: i64) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&app_id)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.app_id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.app_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connects_are_limited_per_ip_and_window() {
        let limiter = ConnectLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.check(a), Err(60));
        assert_eq!(
            limiter.check(b),
            Ok(()),
            "other addresses are counted apart"
        );
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(limiter.check(a), Err(15));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(limiter.check(a), Ok(()), "a new window starts");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_client_is_counted_by_its_64() {
        let limiter = ConnectLimiter::new(2, Duration::from_secs(60));
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(limiter.check(ip("2001:db8:1:2::1")), Ok(()));
        assert_eq!(limiter.check(ip("2001:db8:1:2:ffff::9")), Ok(()));
        assert_eq!(
            limiter.check(ip("2001:db8:1:2:abcd:ef01:2345:6789")),
            Err(60),
            "another address of the same /64 is the same source"
        );
        assert_eq!(
            limiter.check(ip("2001:db8:1:3::1")),
            Ok(()),
            "the next /64 is another"
        );
        assert_eq!(limiter.check(ip("::ffff:192.0.2.7")), Ok(()));
        assert_eq!(limiter.check(ip("192.0.2.7")), Ok(()));
        assert_eq!(
            limiter.check(ip("192.0.2.7")),
            Err(60),
            "an IPv4-mapped address counts as its IPv4 address"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_allow_a_burst_then_the_sustained_rate() {
        let mut bucket = FrameBucket::new(100, 200);
        assert!((0..200).all(|_| bucket.take()), "the burst passes");
        assert!(!bucket.take(), "the 201st frame at once is over");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!((0..10).all(|_| bucket.take()), "100/s refills 10 in 100 ms");
        assert!(!bucket.take());
    }
}
