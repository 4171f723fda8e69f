//! What a function, or one invocation of it, asks for when things go wrong: how long each
//! stage of its life may take, and how often it may be tried again on another machine.
//!
//! An invocation passes four boundaries, each owned by one process, and each may have a limit
//! of its own (issue "Failures and overload"): a caller's single overall timeout cannot tell a
//! function that hangs from a queue that is long, and the person reading the error needs to
//! know which it was. The stages and who enforces them:
//!
//! | stage       | from → to                                              | enforced by |
//! |-------------|--------------------------------------------------------|-------------|
//! | `queue`     | accepted by the shard → taken from its queue for good   | shard       |
//! | `placement` | taken from the queue → sent to a machine (one attempt) | shard       |
//! | `start`     | received by the machine → launched                     | dispatcher  |
//! | `run`       | launched → answered                                     | dispatcher  |
//!
//! A placement attempt whose polls find no machine with room puts the invocation back in its
//! queue, and the queue limit counts on from when it was accepted; so `queue` bounds the wait
//! for room, `placement` one attempt at finding it. The caller's overall timeout still bounds
//! the whole.
//!
//! Launching waits for the invocation's turn in its class and, for the cheapest class, for a
//! CPU of its own (docs/machine-scheduler.md); a paying class is launched at once and waits
//! behind dearer ones in the kernel, as a runnable real-time process, so that wait counts as
//! `run`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One boundary of an invocation's life (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Waiting in the shard's queue behind dearer or earlier work.
    Queue,
    /// Being placed: polling machines until one has room.
    Placement,
    /// On the machine, waiting for its turn (and a CPU, for the cheapest class) and being
    /// launched.
    Start,
    /// Launched: running, or runnable behind dearer classes.
    Run,
}

impl Stage {
    /// Every stage, in the order an invocation passes them.
    pub const ALL: [Stage; 4] = [Stage::Queue, Stage::Placement, Stage::Start, Stage::Run];

    /// The stage's name, as in flags (`--queue-timeout`), errors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Placement => "placement",
            Stage::Start => "start",
            Stage::Run => "run",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A limit per stage, in milliseconds; 0 means the stage has no limit of its own.
///
/// A function's spec carries its limits (set at deploy); an invocation may carry its own,
/// which win stage by stage ([`StageLimits::over`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLimits {
    /// Longest wait in the shard's queue.
    pub queue_ms: u64,
    /// Longest time spent finding a machine.
    pub placement_ms: u64,
    /// Longest wait on the machine before being launched.
    pub start_ms: u64,
    /// Longest run, from launch.
    pub run_ms: u64,
}

impl StageLimits {
    /// The limit of `stage`, if it has one.
    pub fn get(&self, stage: Stage) -> Option<Duration> {
        let ms = match stage {
            Stage::Queue => self.queue_ms,
            Stage::Placement => self.placement_ms,
            Stage::Start => self.start_ms,
            Stage::Run => self.run_ms,
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// These limits where set, `base`'s elsewhere: an invocation's own over its function's.
    pub fn over(self, base: StageLimits) -> StageLimits {
        let pick = |own: u64, other: u64| if own > 0 { own } else { other };
        StageLimits {
            queue_ms: pick(self.queue_ms, base.queue_ms),
            placement_ms: pick(self.placement_ms, base.placement_ms),
            start_ms: pick(self.start_ms, base.start_ms),
            run_ms: pick(self.run_ms, base.run_ms),
        }
    }

    /// True when no stage has a limit.
    pub fn is_empty(&self) -> bool {
        Stage::ALL.iter().all(|&stage| self.get(stage).is_none())
    }
}

/// Longest idempotency key accepted: it is stored and compared, not interpreted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invocations_limits_win_stage_by_stage() {
        let function = StageLimits {
            queue_ms: 100,
            placement_ms: 0,
            start_ms: 300,
            run_ms: 400,
        };
        let invocation = StageLimits {
            run_ms: 50,
            placement_ms: 20,
            ..StageLimits::default()
        };
        let both = invocation.over(function);
        assert_eq!(both.get(Stage::Queue), Some(Duration::from_millis(100)));
        assert_eq!(both.get(Stage::Placement), Some(Duration::from_millis(20)));
        assert_eq!(both.get(Stage::Start), Some(Duration::from_millis(300)));
        assert_eq!(both.get(Stage::Run), Some(Duration::from_millis(50)));
        assert!(!both.is_empty());
        assert!(StageLimits::default().is_empty());
    }
}
