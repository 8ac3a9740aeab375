//! Failed logins counted across connections, as Prosody's mod_limit_auth and fail2ban count
//! them: per account from one source, and per source for all accounts (PROTOCOL.md §8).
//!
//! The account count is keyed by (account, source), not by account alone: counted per account,
//! anyone could lock a user out by failing on purpose. This way an attacker's failures slow
//! only the attacker's source, and the user logs in from anywhere else as usual. The source
//! count catches one source trying many accounts. A source is an IPv4 address, or an IPv6 /64:
//! one host usually holds a whole /64, and counting its addresses one by one would count nothing.
//!
//! Past a limit, every further failure doubles the wait before the next attempt, from
//! [`FIRST_WAIT`] up to [`LONGEST_WAIT`]: a guesser gets one guess a minute per key, and a user
//! who mistyped waits a minute at worst. A key forgets its failures after a window with none.
//!
//! Pure bookkeeping on a caller-supplied clock. The sweep prunes forgotten keys, and each table
//! holds at most [`MAX_TRACKED`] keys, so memory stays bounded whatever the failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The wait after the failure that reaches a limit; each further failure doubles it.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait, however many failures.
pub const LONGEST_WAIT: Duration = Duration::from_secs(60);
/// Keys per table. Past it new keys are not tracked (the server logs it): failing open keeps
/// every user able to log in while the memory stays bounded.
pub const MAX_TRACKED: usize = 100_000;

/// The limits, from `--login-failures-per-account`, `--login-failures-per-address` and
/// `--login-failure-window`; a limit of 0 means none.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_account: u32,
    pub per_source: u32,
    pub window: Duration,
}

/// Where failures come from: an IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(address: IpAddr) -> Source {
        match address {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.blocked_until.filter(|&until| until > now).map(|until| until - now)
    }

    fn record(&mut self, limit: u32, window: Duration, now: Instant) {
        if now.saturating_duration_since(self.last) >= window {
            self.count = 0;
        }
        self.count += 1;
        self.last = now;
        if limit > 0 && self.count >= limit {
            let doublings = (self.count - limit).min(16);
            self.blocked_until = Some(now + (FIRST_WAIT * (1 << doublings)).min(LONGEST_WAIT));
        }
    }

    fn forgotten(&self, window: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= window && self.wait(now).is_none()
    }
}

/// Failed logins per (account, source) and per source.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    accounts: HashMap<(String, Source), Failures>,
    sources: HashMap<Source, Failures>,
    /// Whether the tables being full was logged (once until they have room again).
    said_full: bool,
}

impl LoginThrottle {
    /// Whether `address` may try to log in as `account` (lowercased) now; if not, how long
    /// until it may.
    pub fn check(&self, account: &str, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let source = Source::of(address);
        let by_account = self.accounts.get(&(account.to_string(), source)).and_then(|f| f.wait(now));
        let by_source = self.sources.get(&source).and_then(|f| f.wait(now));
        match by_account.max(by_source) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Records a failed login as `account` from `address`.
    pub fn failed(&mut self, account: &str, address: IpAddr, limits: &LoginLimits, now: Instant) {
        let source = Source::of(address);
        let fresh = Failures { count: 0, last: now, blocked_until: None };
        let mut counted = true;
        match tracked(&mut self.accounts, (account.to_string(), source), fresh) {
            Some(failures) => failures.record(limits.per_account, limits.window, now),
            None => counted = false,
        }
        match tracked(&mut self.sources, source, fresh) {
            Some(failures) => failures.record(limits.per_source, limits.window, now),
            None => counted = false,
        }
        if !counted && !self.said_full {
            log::warn!("failed logins: {MAX_TRACKED} keys tracked already; new ones are not counted");
            self.said_full = true;
        }
    }

    /// Records a successful login: the account's failures from that source are forgotten
    /// (the source's are not: it may be trying other accounts).
    pub fn succeeded(&mut self, account: &str, address: IpAddr) {
        self.accounts.remove(&(account.to_string(), Source::of(address)));
    }

    /// Forgets the keys without a failure inside the window and with no wait left.
    pub fn prune(&mut self, window: Duration, now: Instant) {
        self.accounts.retain(|_, f| !f.forgotten(window, now));
        self.sources.retain(|_, f| !f.forgotten(window, now));
        self.said_full &= self.accounts.len().max(self.sources.len()) >= MAX_TRACKED;
    }
}

/// The entry for `key`, created unless the table is full.
fn tracked<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, Failures>,
    key: K,
    fresh: Failures,
) -> Option<&mut Failures> {
    if table.len() >= MAX_TRACKED && !table.contains_key(&key) {
        return None;
    }
    Some(table.entry(key).or_insert(fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LoginLimits = LoginLimits { per_account: 3, per_source: 5, window: Duration::from_secs(300) };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn waits_start_at_the_limit_and_double_up_to_a_minute() {
        let start = Instant::now();
        let mut t = LoginThrottle::default();
        let attacker = ip("10.0.0.1");
        let mut now = start;
        for _ in 0..2 {
            t.failed("alice", attacker, &LIMITS, now);
            assert_eq!(t.check("alice", attacker, now), Ok(()));
        }
        let mut waits = Vec::new();
        for _ in 0..8 {
            t.failed("alice", attacker, &LIMITS, now);
            let wait = t.check("alice", attacker, now).unwrap_err();
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(t.check("alice", attacker, now), Ok(()));
    }

    #[test]
    fn an_attacker_does_not_lock_the_user_out_from_elsewhere() {
        let now = Instant::now();
        let mut t = LoginThrottle::default();
        for _ in 0..3 {
            t.failed("alice", ip("10.0.0.1"), &LIMITS, now);
        }
        assert!(t.check("alice", ip("10.0.0.1"), now).is_err());
        assert_eq!(t.check("alice", ip("10.0.0.2"), now), Ok(()));
        assert_eq!(t.check("bob", ip("10.0.0.1"), now), Ok(()));
    }

    #[test]
    fn one_source_trying_many_accounts_is_slowed() {
        let now = Instant::now();
        let mut t = LoginThrottle::default();
        for n in 0..5 {
            t.failed(&format!("user{n}"), ip("2001:db8::1"), &LIMITS, now);
        }
        // Another address of the same /64 is the same source.
        assert!(t.check("someone", ip("2001:db8::ffff"), now).is_err());
        assert_eq!(t.check("someone", ip("2001:db8:0:1::1"), now), Ok(()));
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_window_or_a_success() {
        let start = Instant::now();
        let mut t = LoginThrottle::default();
        let a = ip("10.0.0.1");
        for _ in 0..2 {
            t.failed("alice", a, &LIMITS, start);
        }
        // Two more failures after the window: the count starts again, so no wait yet.
        let later = start + LIMITS.window;
        t.failed("alice", a, &LIMITS, later);
        t.failed("alice", a, &LIMITS, later);
        assert_eq!(t.check("alice", a, later), Ok(()));
        t.succeeded("alice", a);
        t.failed("alice", a, &LIMITS, later);
        t.failed("alice", a, &LIMITS, later);
        assert_eq!(t.check("alice", a, later), Ok(()));
        t.prune(LIMITS.window, later + LIMITS.window);
        assert!(t.accounts.is_empty() && t.sources.is_empty());
    }

    #[test]
    fn a_limit_of_zero_never_blocks() {
        let now = Instant::now();
        let limits = LoginLimits { per_account: 0, per_source: 0, ..LIMITS };
        let mut t = LoginThrottle::default();
        for _ in 0..100 {
            t.failed("alice", ip("10.0.0.1"), &limits, now);
        }
        assert_eq!(t.check("alice", ip("10.0.0.1"), now), Ok(()));
    }
}
