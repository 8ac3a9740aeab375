//! What the store measures about itself for `im-server ctl stats`: how long COMMITs take and
//! how many items were stored lately, all of them (messages and events) and the messages
//! alone. Fixed memory, a few nanoseconds per commit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// COMMIT durations kept for the quantiles.
const COMMITS_KEPT: usize = 1024;
/// The span the storing rate is measured over.
const RATE_SPAN: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct StoreStats {
    /// The latest COMMIT durations, in microseconds.
    commits: VecDeque<u32>,
    /// Items stored since the start.
    pub items_stored: u64,
    /// Messages (what users sent, not events nor receipts) stored since the start.
    pub messages_stored: u64,
    /// (when, items_stored, messages_stored) at most once a second over the last RATE_SPAN.
    samples: VecDeque<(Instant, u64, u64)>,
}

impl StoreStats {
    /// Records a COMMIT that took `took` and stored `items`, `messages` of them messages.
    pub fn commit(&mut self, took: Duration, items: u64, messages: u64, now: Instant) {
        if self.commits.len() == COMMITS_KEPT {
            self.commits.pop_front();
        }
        self.commits.push_back(took.as_micros().min(u32::MAX as u128) as u32);
        self.items_stored += items;
        self.messages_stored += messages;
        self.sample(now);
    }

    fn sample(&mut self, now: Instant) {
        let totals = (now, self.items_stored, self.messages_stored);
        // The window's first sample is never overwritten: what it holds is where the rate
        // counts from, so commits after it in its first second must count.
        if self.samples.len() < 2
            || self.samples.back().is_some_and(|&(at, ..)| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.samples.push_back(totals);
        } else if let Some(last) = self.samples.back_mut() {
            (last.1, last.2) = (totals.1, totals.2);
        }
        while self.samples.len() > 2 && self.samples.front().is_some_and(|&(at, ..)| now.duration_since(at) > RATE_SPAN)
        {
            self.samples.pop_front();
        }
    }

    /// The COMMIT duration at quantile `q` (0..=1) of the latest ones; `None` before any.
    pub fn commit_quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted: Vec<u32> = self.commits.iter().copied().collect();
        sorted.sort_unstable();
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
        sorted.get(index).map(|&us| Duration::from_micros(u64::from(us)))
    }

    /// Items stored per second over about the last ten seconds (0 when idle that long).
    pub fn items_per_second(&self, now: Instant) -> f64 {
        self.per_second(now, self.items_stored, |&(_, items, _)| items)
    }

    /// Messages stored per second over about the last ten seconds (0 when idle that long).
    pub fn messages_per_second(&self, now: Instant) -> f64 {
        self.per_second(now, self.messages_stored, |&(_, _, messages)| messages)
    }

    /// How fast `total` grew since the window's first sample, whose value `at_sample` reads.
    fn per_second(&self, now: Instant, total: u64, at_sample: fn(&(Instant, u64, u64)) -> u64) -> f64 {
        let Some(first) = self.samples.front() else { return 0.0 };
        let first_at = first.0;
        if now.duration_since(first_at) > RATE_SPAN + Duration::from_secs(1) && self.samples.len() <= 1 {
            return 0.0;
        }
        let span = now.duration_since(first_at).as_secs_f64().max(1.0);
        (total - at_sample(first)) as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rate_follow_the_commits() {
        let mut stats = StoreStats::default();
        let start = Instant::now();
        assert_eq!(stats.commit_quantile(0.5), None);
        for i in 1..=100u64 {
            stats.commit(Duration::from_micros(i), 10, 0, start + Duration::from_millis(50 * i));
        }
        assert_eq!(stats.commit_quantile(0.5), Some(Duration::from_micros(50)));
        assert_eq!(stats.commit_quantile(0.99), Some(Duration::from_micros(99)));
        assert_eq!(stats.items_stored, 1000);
        // 1000 items over 5 s.
        let rate = stats.items_per_second(start + Duration::from_secs(5));
        assert!((150.0..=250.0).contains(&rate), "{rate}");
    }

    #[test]
    fn messages_are_counted_apart_from_the_other_items() {
        let mut stats = StoreStats::default();
        let start = Instant::now();
        for second in 0..=5 {
            stats.commit(Duration::from_micros(1), 10, 4, start + Duration::from_secs(second));
        }
        assert_eq!((stats.items_stored, stats.messages_stored), (60, 24));
        // The first second's commit is the window's start: 20 messages and 50 items in 5 s.
        let now = start + Duration::from_secs(5);
        assert_eq!((stats.messages_per_second(now), stats.items_per_second(now)), (4.0, 10.0));
    }

    #[test]
    fn commits_in_the_first_second_count() {
        let mut stats = StoreStats::default();
        let start = Instant::now();
        for tenth in 0..5 {
            stats.commit(Duration::from_micros(1), 1, 1, start + Duration::from_millis(100 * tenth));
        }
        // Four after the first, over at least a second.
        assert_eq!(stats.messages_per_second(start + Duration::from_millis(500)), 4.0);
    }

    /// Commits of `(second, items)` from one start; the rate seen at `now_s`.
    fn rate_after(commits: &[(u64, u64)], now_s: u64) -> f64 {
        let start = Instant::now();
        let mut stats = StoreStats::default();
        for &(second, items) in commits {
            stats.commit(Duration::from_micros(1), items, 0, start + Duration::from_secs(second));
        }
        stats.items_per_second(start + Duration::from_secs(now_s))
    }

    #[test]
    fn the_rate_window_holds_ten_seconds_and_at_least_two_samples() {
        // A sample exactly ten seconds old is still the window's start: 60 items in 10 s.
        assert_eq!(rate_after(&[(0, 100), (5, 50), (10, 10)], 10), 6.0);
        // Older samples leave it: from the sample at 5 s, 10 items in 10 s.
        assert_eq!(rate_after(&[(0, 100), (5, 50), (10, 0), (15, 10)], 15), 1.0);
        // After a long pause the window keeps its last two samples: 99 items in 99 s.
        assert_eq!(rate_after(&[(0, 50), (1, 50), (100, 99)], 100), 1.0);
        // Idle for longer than the window after a single sample: nothing stored lately.
        assert_eq!(rate_after(&[(0, 50)], 12), 0.0);
    }
}
