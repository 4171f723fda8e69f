//! The shard's crash budgets: the pure [`CrashBudget`] behind its own lock, fed with every
//! invocation's answer and asked before each is queued.
//!
//! Its lock is a leaf: held for one short operation, never with the state's lock (the
//! request handler calls it before submitting and after the answer), and it takes no other.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tariff_policy::crash_budget::{CrashBudget, Version};
use tariff_policy::FunctionKey;
use tariff_types::{FunctionSpec, InvokeError};
use tracing::warn;

/// How often the budget drops records that no longer matter, at most.
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// Crash counts of the functions that failed lately, and their suspensions.
pub(crate) struct Crashes {
    /// The budget and when it last forgot old records.
    budget: Mutex<(CrashBudget, Duration)>,
    /// Zero of the budget's clock.
    started: Instant,
}

impl Crashes {
    /// `limit` failures per `window` (0: never suspend).
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            budget: Mutex::new((CrashBudget::new(limit, window), Duration::ZERO)),
            started: Instant::now(),
        }
    }

    fn budget(&self) -> MutexGuard<'_, (CrashBudget, Duration)> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error a suspended function's callers get, or nothing if it may run.
    pub(crate) fn check(&self, function: &FunctionSpec) -> Result<(), InvokeError> {
        let now = self.started.elapsed();
        let mut guard = self.budget();
        let (budget, forgot) = &mut *guard;
        if now.saturating_sub(*forgot) >= FORGET_EVERY {
            budget.forget_before(now);
            *forgot = now;
        }
        budget
            .check(version(function), now)
            .map_err(|suspension| InvokeError::Suspended {
                function: function.name.clone(),
                crashes: suspension.crashes,
                window_s: budget.window().as_secs(),
                retry_after_ms: suspension.remaining.as_millis() as u64,
            })
    }

    /// Counts the answer against the function's budget if the function crashed: it failed,
    /// or could not start. Timeouts, cancellations and lost machines are not its fault.
    pub(crate) fn answered(
        &self,
        function: &FunctionSpec,
        answer: &Result<impl Sized, InvokeError>,
    ) {
        if !matches!(
            answer,
            Err(InvokeError::FunctionFailed { .. } | InvokeError::StartFailed(_))
        ) {
            return;
        }
        let now = self.started.elapsed();
        let suspended = self.budget().0.crashed(version(function), now);
        if let Some(suspension) = suspended {
            warn!(
                function = %function.name,
                version = function.version,
                crashes = suspension.crashes,
                for_s = suspension.remaining.as_secs(),
                "function crashed too often; suspended until redeployed or its budget resets"
            );
        }
    }
}

/// The budget's key for a function: its name and version, so a redeploy starts afresh.
fn version(function: &FunctionSpec) -> Version {
    (FunctionKey::of(&function.name), function.version)
}
