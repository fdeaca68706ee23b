//! Failed authentications per source: past `--auth-failures-per-minute` from one source (an IPv4
//! address, or an IPv6 /64), every further credential from it that does not name a key in use is
//! refused with 429 before it is looked up, until the minute that began with its first failure is
//! over. Guessing keys, or flooding the key lookups with random ones, then costs the server
//! nothing.
//!
//! Only guesses count: a key already in use here (known to the key cache) is never limited, so a
//! client with a good key keeps working beside a neighbour that guesses; a request with no
//! credential at all is a 401 but no guess. An attempt is counted before its lookup, so that
//! concurrent guesses cannot all slip past the check, and given back once it authenticates (or
//! fails for another reason than its credential, such as a database outage).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::realtime::limits::source;

const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at most. When that many are inside their minute, a source not tracked yet is
/// refused as if over its limit (only guesses meet this table) until a sweep frees room.
const CAPACITY: usize = 100_000;
/// The table is swept for sources whose minute is over at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct AuthFailures {
    max: u32,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    counts: HashMap<IpAddr, (Instant, u32)>,
    swept_at: Instant,
    full: bool,
}

impl AuthFailures {
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            max: max_per_minute,
            table: Mutex::new(Table {
                counts: HashMap::new(),
                swept_at: Instant::now(),
                full: false,
            }),
        }
    }

    /// Counts an attempt from `ip` before its credential is looked up; `Err(seconds)` when the
    /// source has used up its failures (nothing is counted then): when it may try again.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut table = self.lock();
        table.sweep(now);
        let source = source(ip);
        if table.full && !table.counts.contains_key(&source) {
            return Err(WINDOW.as_secs());
        }
        let (start, count) = table.counts.entry(source).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= self.max {
            return Err(WINDOW
                .saturating_sub(now.duration_since(*start))
                .as_secs()
                .max(1));
        }
        *count += 1;
        Ok(())
    }

    /// Gives back an attempt that turned out not to be a failed authentication.
    pub fn forgive(&self, ip: IpAddr) {
        if let Some((_, count)) = self.lock().counts.get_mut(&source(ip)) {
            *count = count.saturating_sub(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Table {
    /// Forgets sources whose minute is over, at most every [`SWEEP_EVERY`] and only when full.
    fn sweep(&mut self, now: Instant) {
        if self.counts.len() < CAPACITY {
            self.full = false;
            return;
        }
        if now.duration_since(self.swept_at) >= SWEEP_EVERY {
            self.swept_at = now;
            self.counts
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        self.full = self.counts.len() >= CAPACITY;
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
            assert_eq!(failures.attempt(ip), Ok(()));
        }
        assert_eq!(failures.attempt(ip), Err(60));
        assert_eq!(failures.attempt(neighbour), Err(60), "the same /64");
        assert_eq!(failures.attempt("192.0.2.1".parse().unwrap()), Ok(()));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(failures.attempt(ip), Ok(()), "a new minute");
        failures.forgive(ip);
        for _ in 0..3 {
            assert_eq!(
                failures.attempt(ip),
                Ok(()),
                "a forgiven attempt is given back"
            );
        }
        assert_eq!(failures.attempt(ip), Err(60));
    }
}
