//! Failed UI sign-ins per client address: past `max` failures within
//! [`WINDOW`], `POST /ui/login` from that address answers `429 Too Many
//! Requests` with `Retry-After` until the oldest failure leaves the window,
//! without looking at the key (guessing keys, or load on the database, is
//! bounded per address). Memory is bounded: at most [`MAX_ADDRESSES`]
//! addresses are remembered.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures are counted over this sliding window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// `--max-failed-logins`'s default (per address, per [`WINDOW`]).
pub const DEFAULT_MAX_FAILURES: usize = 10;
/// Addresses remembered at most; past it, the stalest are forgotten.
const MAX_ADDRESSES: usize = 100_000;

pub(crate) struct LoginLimit {
    max: usize,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimit {
    /// `max` failures per address per [`WINDOW`] (at least 1).
    pub(crate) fn new(max: usize) -> LoginLimit {
        LoginLimit {
            max: max.max(1),
            failures: Mutex::default(),
        }
    }

    /// `Err(retry_after)` when `addr` may not try now.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let mut map = self.lock();
        let Some(times) = map.get_mut(&addr) else {
            return Ok(());
        };
        let now = Instant::now();
        while times.front().is_some_and(|t| now - *t >= WINDOW) {
            times.pop_front();
        }
        if times.len() < self.max {
            return Ok(());
        }
        let oldest = *times.front().expect("at the limit, so not empty");
        Err((oldest + WINDOW)
            .saturating_duration_since(now)
            .max(Duration::from_secs(1)))
    }

    /// `addr` presented a key that is not valid.
    pub(crate) fn failed(&self, addr: IpAddr) {
        let mut map = self.lock();
        let now = Instant::now();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, t| t.back().is_some_and(|last| now - *last < WINDOW));
            if map.len() >= MAX_ADDRESSES {
                // Still full within the window: forget one at random rather
                // than grow (a flood from that many addresses is not
                // something a per-address limit can stop anyway).
                if let Some(k) = map.keys().next().copied() {
                    map.remove(&k);
                }
            }
        }
        let times = map.entry(addr).or_default();
        times.push_back(now);
        while times.len() > self.max {
            times.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_max_failures_and_others_are_not() {
        let l = LoginLimit::new(3);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
            l.failed(a);
        }
        let retry = l.check(a).unwrap_err();
        assert!(
            retry <= WINDOW && retry >= Duration::from_secs(1),
            "{retry:?}"
        );
        assert!(l.check(b).is_ok());
    }
}
