//! The password-failure budget: each client address may fail a few logins freely, then waits
//! longer after each further failure, and at the end of its budget is refused for a while.
//! SMTP AUTH and POP3 share one budget, so reconnecting or switching protocol gains nothing,
//! and one student's script never locks out the rest of the class.
//!
//! Interface:
//! - `Ledger`: the pure core. `check(ip, now)` says whether an address may try now;
//!   `failed(ip, now)` counts a failure and says how long to wait before answering, or that
//!   the address is now shut out; `succeeded(ip)` forgives it. Time is passed in, so tests
//!   need no clock.
//! - `Budget`: a `Ledger` behind a lock, with the real clock, shared by every session.
//!
//! Standards: RFC 4954 §4, RFC 1939 §13

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may make without any wait (typos happen).
const FREE_FAILURES: u32 = 3;
/// Default failures an address may make before it is shut out (`--auth-budget`).
const DEFAULT_FAILURES: u32 = 10;
/// How long an address that spent its budget is refused.
const LOCKOUT: Duration = Duration::from_secs(5 * 60);
/// A failure older than this is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The wait after a failure doubles each time, up to this many times the first wait.
const MAX_WAIT_FACTOR: u32 = 8;
/// Keep at most this many addresses; the oldest are forgotten first.
const MAX_ADDRESSES: usize = 10_000;

/// The rules of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures before the address is shut out.
    pub failures: u32,
    /// The first wait after the free failures; each further failure doubles it.
    pub first_wait: Duration,
    pub lockout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            failures: DEFAULT_FAILURES,
            first_wait: Duration::from_secs(1),
            lockout: LOCKOUT,
        }
    }
}

/// What an address may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on, after waiting this long (zero while failures are free).
    Wait(Duration),
    /// Refused for this much longer.
    ShutOut(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
}

// ANCHOR: ledger
/// Failures per address, and the rules that turn them into waits and refusals.
#[derive(Debug)]
struct Ledger {
    policy: Policy,
    records: HashMap<IpAddr, Record>,
}

impl Ledger {
    pub fn new(policy: Policy) -> Ledger {
        Ledger {
            policy,
            records: HashMap::new(),
        }
    }

    /// May `ip` try a password now?
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        self.forget_old(ip, now);
        match self.records.get(&ip) {
            Some(record) if record.failures >= self.policy.failures => {
                let until = record.last_failure + self.policy.lockout;
                Verdict::ShutOut(until.saturating_duration_since(now))
            }
            _ => Verdict::Wait(Duration::ZERO),
        }
    }

    /// Count a failed login from `ip`: the wait before answering, or the lockout it reached.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        self.forget_old(ip, now);
        self.make_room(ip);
        let record = self.records.entry(ip).or_insert(Record {
            failures: 0,
            last_failure: now,
        });
        record.failures += 1;
        record.last_failure = now;
        if record.failures >= self.policy.failures {
            return Verdict::ShutOut(self.policy.lockout);
        }
        let beyond_free = record.failures.saturating_sub(FREE_FAILURES);
        if beyond_free == 0 {
            return Verdict::Wait(Duration::ZERO);
        }
        let factor = 1u32 << (beyond_free - 1).min(MAX_WAIT_FACTOR.trailing_zeros());
        Verdict::Wait(self.policy.first_wait * factor)
    }

    /// A right password: the address starts again with a full budget.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.records.remove(&ip);
    }

    /// Failures (and lockouts) end `FORGET_AFTER` (or the lockout, if longer) after the last one.
    fn forget_old(&mut self, ip: IpAddr, now: Instant) {
        let keep = FORGET_AFTER.max(self.policy.lockout);
        if let Some(record) = self.records.get(&ip) {
            if now.saturating_duration_since(record.last_failure) >= keep {
                self.records.remove(&ip);
            }
        }
    }

    /// Memory is bounded: at the limit, the address whose last failure is oldest goes.
    fn make_room(&mut self, ip: IpAddr) {
        if self.records.len() < MAX_ADDRESSES || self.records.contains_key(&ip) {
            return;
        }
        let oldest = self
            .records
            .iter()
            .min_by_key(|(_, record)| record.last_failure)
            .map(|(ip, _)| *ip);
        if let Some(oldest) = oldest {
            self.records.remove(&oldest);
        }
    }
}
// ANCHOR_END: ledger

/// The server's one budget, shared by every SMTP and POP3 session.
#[derive(Debug)]
pub struct Budget(Mutex<Ledger>);

impl Budget {
    pub fn new(policy: Policy) -> Budget {
        Budget(Mutex::new(Ledger::new(policy)))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        // A panic elsewhere cannot leave a ledger half-updated in a way that matters here.
        let mut ledger = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut ledger)
    }

    pub fn check(&self, ip: IpAddr) -> Verdict {
        self.with(|ledger| ledger.check(ip, Instant::now()))
    }

    pub fn failed(&self, ip: IpAddr) -> Verdict {
        self.with(|ledger| ledger.failed(ip, Instant::now()))
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.with(|ledger| ledger.succeeded(ip));
    }
}

/// "Too many failed logins from 127.0.0.2; try again in 5 minutes": for 421 and `-ERR`.
pub fn shut_out_text(ip: IpAddr, left: Duration) -> String {
    let minutes = left.as_secs().div_ceil(60).max(1);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    format!("Too many failed logins from {ip}; try again in {minutes} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            failures: 7,
            first_wait: Duration::from_secs(1),
            lockout: Duration::from_secs(300),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn free_failures_then_growing_waits_then_shut_out() {
        let mut ledger = Ledger::new(policy());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let waits: Vec<Verdict> = (0..7).map(|_| ledger.failed(a, now)).collect();
        let seconds = |s| Verdict::Wait(Duration::from_secs(s));
        assert_eq!(
            waits,
            [
                Verdict::Wait(Duration::ZERO),
                Verdict::Wait(Duration::ZERO),
                Verdict::Wait(Duration::ZERO),
                seconds(1),
                seconds(2),
                seconds(4),
                Verdict::ShutOut(Duration::from_secs(300)),
            ]
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            ledger.check(a, later),
            Verdict::ShutOut(Duration::from_secs(240))
        );
    }

    #[test]
    fn the_wait_stops_growing() {
        let mut ledger = Ledger::new(Policy {
            failures: 100,
            ..policy()
        });
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let last = (0..20).map(|_| ledger.failed(a, now)).last();
        assert_eq!(last, Some(Verdict::Wait(Duration::from_secs(8))));
    }

    #[test]
    fn another_address_is_unaffected() {
        let mut ledger = Ledger::new(policy());
        let now = Instant::now();
        for _ in 0..7 {
            ledger.failed(ip("192.0.2.1"), now);
        }
        assert!(matches!(
            ledger.check(ip("192.0.2.1"), now),
            Verdict::ShutOut(_)
        ));
        assert_eq!(
            ledger.check(ip("192.0.2.2"), now),
            Verdict::Wait(Duration::ZERO)
        );
        assert_eq!(ledger.check(ip("::1"), now), Verdict::Wait(Duration::ZERO));
    }

    #[test]
    fn a_lockout_ends_and_a_success_forgives() {
        let mut ledger = Ledger::new(policy());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..7 {
            ledger.failed(a, now);
        }
        let much_later = now + FORGET_AFTER;
        assert_eq!(ledger.check(a, much_later), Verdict::Wait(Duration::ZERO));
        for _ in 0..5 {
            ledger.failed(a, much_later);
        }
        ledger.succeeded(a);
        assert_eq!(ledger.failed(a, much_later), Verdict::Wait(Duration::ZERO));
    }

    #[test]
    fn memory_is_bounded() {
        let mut ledger = Ledger::new(policy());
        let now = Instant::now();
        for n in 0..(MAX_ADDRESSES as u32 + 50) {
            ledger.failed(IpAddr::from(n.to_be_bytes()), now);
        }
        assert_eq!(ledger.records.len(), MAX_ADDRESSES);
    }

    #[test]
    fn shut_out_text_counts_minutes() {
        let a = ip("127.0.0.2");
        assert!(shut_out_text(a, Duration::from_secs(61)).ends_with("in 2 minutes"));
        assert!(shut_out_text(a, Duration::ZERO).ends_with("in 1 minute"));
    }
}
