//! Invocation traces in the log: every failed invocation and every one slower than a
//! threshold is logged with its stage timings, plus a rate-limited sample of the rest, so an
//! operator can see where time went without logging every invocation of a busy shard.
//!
//! Each line is logged inside the invocation's span (`client::invoke`), so it carries the
//! invocation id, class, tenant and function; the fields here are the stages, in µs:
//! `queued_us` (waiting for a machine on the shard), `start_us` (on the machine until the
//! function started: process creation or machine queueing), `run_us` (start to finish),
//! `preempted_us` (runnable but held back by dearer work), and `total_us` (request in to
//! answer out, on the shard's clock). Payloads and outputs are never logged.
//!
//! Failed and slow lines are capped at [`MAX_LINES_PER_SECOND`]: under overload every call
//! is slow, and a line per call made a saturated shard spend its CPU formatting logs (and fill
//! its disk) just when it could least afford it. What the cap holds back is counted and the
//! count logged once the second is over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::info;

use crate::state::Answer;

/// Default threshold above which a successful invocation is logged as slow.
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_secs(1);
/// Default spacing of sampled invocations: at most one a second, whatever the load.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Most failed or slow invocations logged in one second; the rest are counted.
pub const MAX_LINES_PER_SECOND: u32 = 100;

/// The current second's line budget.
struct Window {
    /// When the second began.
    began: Instant,
    /// Lines logged in it.
    logged: u32,
    /// Lines held back in it.
    held_back: u64,
}

/// Decides which answered invocations to log, and logs them.
pub(crate) struct InvocationLog {
    /// Successful invocations at least this slow are logged.
    slow: Duration,
    /// At most one other invocation is logged per this interval; `None` logs none.
    sample_every: Option<Duration>,
    /// Zero of `next_sample_us`.
    started: Instant,
    /// µs since `started` before which no sample is taken.
    next_sample_us: AtomicU64,
    /// Failed and slow lines this second (taken only for those, never on the common path).
    window: Mutex<Window>,
}

impl InvocationLog {
    /// A log with these limits.
    pub(crate) fn new(slow: Duration, sample_every: Option<Duration>) -> Self {
        Self {
            slow,
            sample_every,
            started: Instant::now(),
            next_sample_us: AtomicU64::new(0),
            window: Mutex::new(Window {
                began: Instant::now(),
                logged: 0,
                held_back: 0,
            }),
        }
    }

    /// Takes a line from this second's budget; when a new second begins, first logs how many
    /// lines the last one held back.
    fn line_allowed(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(window.began) >= Duration::from_secs(1) {
            if window.held_back > 0 {
                info!(
                    held_back = window.held_back,
                    limit = MAX_LINES_PER_SECOND,
                    "failed or slow invocations not logged: over the log's limit per second"
                );
            }
            *window = Window {
                began: now,
                logged: 0,
                held_back: 0,
            };
        }
        if window.logged < MAX_LINES_PER_SECOND {
            window.logged += 1;
            true
        } else {
            window.held_back += 1;
            false
        }
    }

    /// Takes a sample slot if one is due: lock-free, so concurrent answers never both win it.
    fn sample_due(&self) -> bool {
        let Some(every) = self.sample_every else {
            return false;
        };
        let now = self.started.elapsed().as_micros() as u64;
        let next = self.next_sample_us.load(Ordering::Relaxed);
        now >= next
            && self
                .next_sample_us
                .compare_exchange(
                    next,
                    now + every.as_micros() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Logs `answer` if it failed, took at least the slow threshold, or is sampled.
    /// `elapsed` is the time from the request arriving to its answer.
    pub(crate) fn answered(&self, answer: &Answer, elapsed: Duration) {
        let total_us = elapsed.as_micros() as u64;
        match answer {
            Err(_) if !self.line_allowed() => {}
            Err(error) => info!(
                error = %error,
                kind = error.kind(),
                total_us,
                "invocation failed"
            ),
            Ok(outcome) => {
                let why = if elapsed >= self.slow {
                    if !self.line_allowed() {
                        return;
                    }
                    "slow invocation"
                } else if self.sample_due() {
                    "sampled invocation"
                } else {
                    return;
                };
                let t = outcome.timings();
                info!(
                    machine = %outcome.machine,
                    cold_start = outcome.run.cold_start,
                    queued_us = t.queued_us(),
                    start_us = outcome.run.start_us,
                    run_us = t.run_us(),
                    preempted_us = outcome.run.preempted_us,
                    total_us,
                    "{why}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_spaced_and_off_when_disabled() {
        let log = InvocationLog::new(DEFAULT_SLOW_THRESHOLD, Some(Duration::from_secs(3600)));
        assert!(log.sample_due());
        assert!(!log.sample_due(), "a second sample within the interval");
        let off = InvocationLog::new(DEFAULT_SLOW_THRESHOLD, None);
        assert!(!off.sample_due());
    }

    #[test]
    fn failed_and_slow_lines_are_capped_per_second() {
        let log = InvocationLog::new(DEFAULT_SLOW_THRESHOLD, None);
        let allowed = (0..MAX_LINES_PER_SECOND + 50)
            .filter(|_| log.line_allowed())
            .count();
        assert_eq!(allowed, MAX_LINES_PER_SECOND as usize);
        let held_back = log.window.lock().unwrap().held_back;
        assert_eq!(held_back, 50);
    }
}
