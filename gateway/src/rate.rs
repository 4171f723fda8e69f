//! Rate limits per route and caller: a route may cap how many requests one caller sends it
//! per second, answered `429 Too Many Requests` with `Retry-After` beyond that
//! (`docs/gateway.md`).
//!
//! Why in the gateway and not the shard: a budget (the shard's 429) limits what a tenant
//! *spends*, over a month; a rate limit protects a route from one caller's burst, now, before
//! the request costs the cluster anything (its body is not even read). The caller is the
//! bearer token on a route that needs one (hashed, so no token is held as a key) and the
//! client's address on a public route, where every caller presents the owner's token.
//!
//! The algorithm is GCRA (a token bucket without a timer) from the `governor` crate, which
//! keeps one small state per caller in a concurrent map: checking a request is lock-free and
//! allocation-free for a caller already seen. The map is pruned of callers whose state is
//! back to "fresh" every [`PRUNE_EVERY`] checks, so a public route reached from many
//! addresses does not keep them all.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

/// Checks between two prunings of callers that have been quiet long enough to be forgotten.
pub const PRUNE_EVERY: u64 = 4096;

/// A route's limit as written: `rate = { per_second = 20, burst = 40 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Sustained requests per second per caller.
    pub per_second: u32,
    /// Requests a caller may send at once after a quiet spell; `per_second` when not given.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Whom a limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The caller's bearer token, hashed (`tariff_cluster::tenancy::hash_token`).
    Token(String),
    /// The client's address (public routes).
    Address(IpAddr),
}

/// Why a request is refused: how long until the caller may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The wait until the next request would be let through.
    pub retry_after: Duration,
}

/// One route's limiter: its quota and every caller's state.
pub struct RateLimit {
    spec: RateSpec,
    limiter: DefaultKeyedRateLimiter<Caller>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("spec", &self.spec)
            .field("callers", &self.limiter.len())
            .finish()
    }
}

impl RateLimit {
    /// A limiter for `spec`; zero rates and bursts are refused with the reason.
    pub fn new(spec: RateSpec) -> Result<Self, String> {
        let per_second = NonZeroU32::new(spec.per_second)
            .ok_or_else(|| "rate: per_second must be at least 1".to_owned())?;
        let burst = match spec.burst {
            None => per_second,
            Some(burst) => {
                NonZeroU32::new(burst).ok_or_else(|| "rate: burst must be at least 1".to_owned())?
            }
        };
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Ok(Self {
            spec,
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// The limit as written, for messages.
    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// Counts one request of `caller`: `Ok` if it is within the limit, else how long the
    /// caller should wait.
    pub fn check(&self, caller: &Caller) -> Result<(), Limited> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(caller).map_err(|not_until| Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// How many callers the limiter holds state for.
    pub fn callers(&self) -> usize {
        self.limiter.len()
    }

    /// Forgets callers whose state is as if they had never called (what [`RateLimit::check`]
    /// does every [`PRUNE_EVERY`] checks).
    pub fn prune(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: Option<u32>) -> RateLimit {
        RateLimit::new(RateSpec { per_second, burst }).unwrap()
    }

    #[test]
    fn a_burst_passes_then_the_caller_waits_about_one_interval() {
        let limit = limit(2, Some(3));
        let caller = Caller::Token("abc".into());
        for _ in 0..3 {
            assert_eq!(limit.check(&caller), Ok(()));
        }
        let refused = limit.check(&caller).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(500),
            "{refused:?}"
        );
    }

    #[test]
    fn callers_are_counted_apart() {
        let limit = limit(1, None);
        let one = Caller::Address("10.0.0.1".parse().unwrap());
        let two = Caller::Address("10.0.0.2".parse().unwrap());
        assert_eq!(limit.check(&one), Ok(()));
        assert!(limit.check(&one).is_err());
        assert_eq!(limit.check(&two), Ok(()));
        assert_eq!(limit.callers(), 2);
    }

    #[test]
    fn quiet_callers_are_forgotten() {
        let limit = limit(1000, Some(1));
        let caller = Caller::Token("quiet".into());
        assert_eq!(limit.check(&caller), Ok(()));
        std::thread::sleep(Duration::from_millis(5));
        limit.prune();
        assert_eq!(limit.callers(), 0);
    }

    #[test]
    fn zero_is_refused() {
        assert!(RateLimit::new(RateSpec {
            per_second: 0,
            burst: None
        })
        .is_err());
        assert!(RateLimit::new(RateSpec {
            per_second: 1,
            burst: Some(0)
        })
        .is_err());
    }
}
