//! Abuse limits that are pure bookkeeping: the per-user send token bucket and the per-address
//! registration throttle (which counts attempts, not only successes). Both work on a caller-supplied clock, so tests need no sleeps.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket (whatever the burst size it is later used with).
    pub fn full(now: Instant) -> Self {
        TokenBucket { tokens: f64::INFINITY, updated: now }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst.max(1) as f64);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.max(1) as f64))
        }
    }
}

/// Counts registration attempts per source address over a sliding window.
#[derive(Debug, Default)]
pub struct RegistrationThrottle {
    recent: HashMap<IpAddr, VecDeque<Instant>>,
}

impl RegistrationThrottle {
    /// Whether `addr` may register now; if not, how long until it may.
    pub fn check(&mut self, addr: IpAddr, limit: u32, window: Duration, now: Instant) -> Result<(), Duration> {
        let times = self.recent.entry(addr).or_default();
        while times.front().is_some_and(|&t| now.saturating_duration_since(t) >= window) {
            times.pop_front();
        }
        if times.len() < limit as usize {
            return Ok(());
        }
        let oldest = *times.front().expect("limit is at least one here");
        Err((oldest + window).saturating_duration_since(now))
    }

    /// Records a registration attempt from `addr`.
    pub fn record(&mut self, addr: IpAddr, now: Instant) {
        self.recent.entry(addr).or_default().push_back(now);
    }

    /// Forgets addresses with no attempt inside the window, so the map stays small.
    pub fn prune(&mut self, window: Duration, now: Instant) {
        self.recent.retain(|_, times| times.back().is_some_and(|&t| now.saturating_duration_since(t) < window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::full(start);
        for _ in 0..3 {
            assert!(b.take(10, 3, start).is_ok());
        }
        let wait = b.take(10, 3, start).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(b.take(10, 3, start + Duration::from_millis(100)).is_ok());
        assert!(b.take(10, 3, start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn throttle_counts_per_address_over_the_window() {
        let start = Instant::now();
        let window = Duration::from_secs(600);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut t = RegistrationThrottle::default();
        for _ in 0..5 {
            assert!(t.check(a, 5, window, start).is_ok());
            t.record(a, start);
        }
        assert_eq!(t.check(a, 5, window, start + Duration::from_secs(1)), Err(Duration::from_secs(599)));
        assert!(t.check(b, 5, window, start).is_ok());
        assert!(t.check(a, 5, window, start + window).is_ok());
        t.prune(window, start + window);
        assert!(t.recent.is_empty());
    }
}
