//! The crash budget: a function that crashes more than `limit` times within `window` is
//! suspended until the window has passed without it crashing, or until it is redeployed.
//!
//! A crash-looping function costs more than its own failures: every attempt takes a machine's
//! slot, a process launch and a completion, at the expense of whoever queues behind it (the
//! reference's "Failure Modes & Recovery" calls this a crash budget). Suspending it answers
//! its callers at once with a clear error, and its failures stop reaching any machine.
//!
//! The budget is kept per function *version*: a redeploy is a new version and starts with a
//! fresh budget, which is how a fixed function comes back at once. It is soft state of one
//! shard (each shard counts the crashes it sees); losing it on a restart only forgives.
//!
//! Memory is bounded: only functions that crashed within the window are tracked, each with at
//! most `limit + 1` time stamps, and [`CrashBudget::forget_before`] drops the rest.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::FunctionKey;

/// A function version: the crash budget's key.
pub type Version = (FunctionKey, u64);

/// Why a function may not run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspension {
    /// Crashes counted within the window when it was suspended.
    pub crashes: u32,
    /// How long until it may run again (unless redeployed).
    pub remaining: Duration,
}

/// One tracked function version.
#[derive(Debug, Default)]
struct Track {
    /// When it crashed, oldest first, within the window; at most `limit + 1` entries.
    crashes: VecDeque<Duration>,
    /// Suspended until then.
    until: Option<Duration>,
}

/// Crash counts and suspensions of the functions that crashed lately.
#[derive(Debug)]
pub struct CrashBudget {
    /// Crashes allowed within `window`; 0 turns the budget off.
    limit: u32,
    /// The window crashes are counted over, and how long a suspension lasts.
    window: Duration,
    tracked: HashMap<Version, Track>,
}

impl CrashBudget {
    /// A budget of `limit` crashes per `window` (0: never suspend).
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            tracked: HashMap::new(),
        }
    }

    /// The window crashes are counted over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether `version` may run at `now`; a suspension that has run out is lifted here.
    pub fn check(&mut self, version: Version, now: Duration) -> Result<(), Suspension> {
        let Some(track) = self.tracked.get_mut(&version) else {
            return Ok(());
        };
        match track.until {
            Some(until) if now < until => Err(Suspension {
                crashes: track.crashes.len() as u32,
                remaining: until - now,
            }),
            Some(_) => {
                // Served its time: it starts again with a clean record.
                self.tracked.remove(&version);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a crash of `version` at `now`; returns the suspension if this crash used up
    /// the budget.
    pub fn crashed(&mut self, version: Version, now: Duration) -> Option<Suspension> {
        if self.limit == 0 {
            return None;
        }
        let window = self.window;
        let limit = self.limit as usize;
        let track = self.tracked.entry(version).or_default();
        if track.until.is_some_and(|until| now < until) {
            // Crashes of invocations already running when it was suspended change nothing.
            return None;
        }
        track.until = None;
        while track
            .crashes
            .front()
            .is_some_and(|&at| now.saturating_sub(at) >= window)
        {
            track.crashes.pop_front();
        }
        track.crashes.push_back(now);
        if track.crashes.len() > limit {
            track.until = Some(now + window);
            return Some(Suspension {
                crashes: track.crashes.len() as u32,
                remaining: window,
            });
        }
        None
    }

    /// Drops what no longer matters at `now`: records whose last crash and suspension are
    /// older than the window. Call it every so often to keep memory bounded.
    pub fn forget_before(&mut self, now: Duration) {
        let window = self.window;
        self.tracked.retain(|_, track| {
            let last = track.crashes.back().copied().unwrap_or_default();
            let suspended = track.until.is_some_and(|until| now < until);
            suspended || now.saturating_sub(last) < window
        });
    }

    /// Function versions tracked now (crashed within the window, or suspended).
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn more_crashes_than_the_limit_within_the_window_suspend() {
        let f = (FunctionKey(1), 1);
        let mut budget = CrashBudget::new(3, MINUTE);
        for t in 0..3 {
            assert_eq!(budget.crashed(f, s(t)), None);
            assert!(budget.check(f, s(t)).is_ok());
        }
        let suspension = budget.crashed(f, s(3)).expect("fourth crash in a minute");
        assert_eq!(suspension.crashes, 4);
        let refused = budget.check(f, s(10)).unwrap_err();
        assert_eq!(refused.remaining, s(53));
        assert!(
            budget.check(f, s(63)).is_ok(),
            "lifted once the window passed"
        );
        assert_eq!(budget.tracked(), 0, "and forgotten");
    }

    #[test]
    fn crashes_spread_over_more_than_the_window_never_suspend() {
        let f = (FunctionKey(1), 1);
        let mut budget = CrashBudget::new(2, MINUTE);
        for t in (0..600).step_by(31) {
            assert_eq!(budget.crashed(f, s(t)), None, "at {t} s");
        }
    }

    #[test]
    fn a_redeploy_is_a_new_version_with_a_fresh_budget() {
        let old = (FunctionKey(1), 1);
        let new = (FunctionKey(1), 2);
        let mut budget = CrashBudget::new(1, MINUTE);
        budget.crashed(old, s(0));
        assert!(budget.crashed(old, s(1)).is_some());
        assert!(budget.check(old, s(2)).is_err());
        assert!(budget.check(new, s(2)).is_ok());
    }

    #[test]
    fn a_zero_limit_turns_the_budget_off() {
        let f = (FunctionKey(1), 1);
        let mut budget = CrashBudget::new(0, MINUTE);
        for t in 0..100 {
            assert_eq!(budget.crashed(f, Duration::from_millis(t)), None);
        }
        assert_eq!(budget.tracked(), 0);
    }

    proptest! {
        /// Whatever the crashes, memory stays bounded: after `forget_before`, only versions
        /// that crashed within the window or are suspended remain, each with at most
        /// `limit + 1` time stamps.
        #[test]
        fn memory_stays_bounded(
            crashes in proptest::collection::vec((0u64..50, 0u64..10_000), 0..400),
            limit in 1u32..5,
        ) {
            let window = Duration::from_millis(1_000);
            let mut budget = CrashBudget::new(limit, window);
            let mut now = Duration::ZERO;
            for (function, step_ms) in crashes {
                now += Duration::from_millis(step_ms % 200);
                budget.crashed((FunctionKey(function), 0), now);
                for track in budget.tracked.values() {
                    prop_assert!(track.crashes.len() <= limit as usize + 1);
                }
            }
            budget.forget_before(now + window * 2);
            prop_assert_eq!(budget.tracked(), 0);
        }
    }
}
