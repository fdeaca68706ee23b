//! Failed authentications per source: past `--auth-failures-per-minute` from one source (an IPv4
//! address, or an IPv6 /64), every further credential from it is refused with 429 before it is
//! looked up, until the minute that began with its first failure is over. Guessing keys, or
//! flooding the key lookups with random ones, then costs the server nothing.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::realtime::limits::source;

const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at most; past it, those whose window is over are forgotten.
const CAPACITY: usize = 100_000;

#[derive(Debug)]
pub struct AuthFailures {
    max: u32,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthFailures {
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            max: max_per_minute,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds)` when `ip` has used up its failures: when it may try again.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get(&source(ip)) {
            Some((start, count)) if *count >= self.max && now.duration_since(*start) < WINDOW => {
                Err(WINDOW
                    .saturating_sub(now.duration_since(*start))
                    .as_secs()
                    .max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= CAPACITY {
            counts.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let (start, count) = counts.entry(source(ip)).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_source_is_refused_past_its_failures_until_its_minute_is_over() {
        let failures = AuthFailures::new(3);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(failures.check(ip), Ok(()));
            failures.failed(ip);
        }
        assert_eq!(failures.check(ip), Err(60));
        assert_eq!(failures.check(neighbour), Err(60), "the same /64");
        assert_eq!(failures.check("192.0.2.1".parse().unwrap()), Ok(()));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(failures.check(ip), Ok(()), "a new minute");
    }
}
