//! What the machine scheduler is asked to run ([`Job`]) and why a job can end without a
//! report ([`JobError`]), with the conversions along the error's way out: from the process
//! runner's and the instance's errors in, to the wire's [`InvokeError`] out.
//!
//! The errors stay typed until they reach the wire: the one place a cause becomes text is
//! `From<JobError> for InvokeError`, because the wire carries an OS error's message, not the
//! error. A cancellation stays a cancellation all the way ([`InvokeError::Cancelled`]): the
//! function did not fail, it was stopped.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tariff_types::wire::InvokeError;
use tariff_types::{ClassId, FunctionSpec};

use crate::isolation::IsolationError;
use crate::persistent::{CallError, PersistentError};
use crate::process::RunError;
use crate::stderr_tail::stderr_suffix;

/// One invocation to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique id (the invocation id), used for cancellation.
    pub id: u64,
    /// Its class.
    pub class: ClassId,
    /// How many classes the cluster has (for the priority mapping).
    pub classes: usize,
    /// What to run.
    pub function: FunctionSpec,
    /// The tenant invoking it. Warm instances are kept per tenant as well as per function,
    /// so a function shared between tenants never serves two of them from one process.
    pub tenant: String,
    /// The invocation's context (`TARIFF_INVOCATION`, ...), so the function can call others
    /// as part of its chain: added to a one-shot process's environment, written to a
    /// persistent instance's context file for the call (`context_file`).
    pub env: Vec<(String, String)>,
    /// stdin / request bytes.
    pub payload: Vec<u8>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Largest output accepted.
    pub max_output: usize,
    /// Shared with whoever may give up on the job before it starts (the dispatcher, when its
    /// start limit passes or its shard is lost); `None` when nobody will.
    pub claim: Option<Arc<StartClaim>>,
}

/// Settles, once, whether a job starts or is given up before it starts.
///
/// A job waiting for its turn cannot simply be dropped: its ticket keeps its class's arrival
/// order, so the wait must run its course. Someone who no longer wants the job (its start
/// limit passed, or the shard that placed it is gone) calls [`StartClaim::give_up`]; the
/// machine scheduler calls [`StartClaim::start`] when the job's turn comes. Whichever comes
/// first wins, so a job is never both reported given up and run.
#[derive(Debug, Default)]
pub struct StartClaim(AtomicU8);

impl StartClaim {
    const WAITING: u8 = 0;
    const STARTED: u8 = 1;
    const GIVEN_UP: u8 = 2;

    /// The job's turn came: true if it may run, false if it was given up.
    pub fn start(&self) -> bool {
        self.settle(Self::STARTED)
    }

    /// Gives the job up: true if it will not run, false if it started already.
    pub fn give_up(&self) -> bool {
        self.settle(Self::GIVEN_UP)
    }

    /// Moves from waiting to `to`, or reports whether it is there already.
    fn settle(&self, to: u8) -> bool {
        match self
            .0
            .compare_exchange(Self::WAITING, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == to,
        }
    }
}

/// Why a function could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The instance's private working directory could not be made.
    #[error(transparent)]
    WorkDir(#[from] IsolationError),
    /// The one-shot process could not be spawned.
    #[error(transparent)]
    Process(RunError),
    /// The persistent instance could not be spawned.
    #[error(transparent)]
    Instance(#[from] PersistentError),
    /// The launch task (on the blocking pool, at its call's priority) panicked or was
    /// cancelled.
    #[error("launch task failed: {0}")]
    LaunchTask(#[from] tokio::task::JoinError),
}

/// Why a job produced no report.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The function could not be started.
    #[error("could not start the function: {0}")]
    Start(#[from] StartError),
    /// The function failed or its instance crashed.
    #[error("function failed ({status}){}", stderr_suffix(.stderr_tail))]
    Failed {
        /// Exit status, how the instance ended, or the function's own error.
        status: String,
        /// End of its stderr (the function's message, for an error answer).
        stderr_tail: String,
    },
    /// It ran out of time.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// Its output was too large.
    #[error("output larger than {0} bytes")]
    OutputTooLarge(usize),
    /// It was cancelled: killed on request, not failed.
    #[error("cancelled")]
    Cancelled,
    /// The memory guard killed it: memory and swap ran out, and it was the cheapest class's
    /// latest arrival holding memory (`memory_guard`).
    #[error("killed under memory pressure")]
    KilledUnderMemoryPressure,
}

impl From<RunError> for JobError {
    fn from(error: RunError) -> Self {
        match error {
            RunError::Spawn { .. } => JobError::Start(StartError::Process(error)),
            RunError::Failed {
                status,
                stderr_tail,
                ..
            } => JobError::Failed {
                status,
                stderr_tail,
            },
            RunError::TimedOut { after } => JobError::TimedOut(after),
            RunError::OutputTooLarge { limit } => JobError::OutputTooLarge(limit),
            RunError::Killed => JobError::Cancelled,
        }
    }
}

impl From<CallError> for JobError {
    /// An instance's error as a job's. A protocol violation has no stderr tail here: the
    /// caller that still holds the instance adds it (see `persistent_run`).
    fn from(error: CallError) -> Self {
        match error {
            CallError::FunctionError(message) => JobError::Failed {
                status: "function reported an error".into(),
                stderr_tail: message,
            },
            CallError::Crashed {
                status,
                stderr_tail,
            } => JobError::Failed {
                status: format!("instance crashed: {status}"),
                stderr_tail,
            },
            CallError::TimedOut { after } => JobError::TimedOut(after),
            CallError::OutputTooLarge { limit } => JobError::OutputTooLarge(limit),
            CallError::Protocol(reason) => JobError::Failed {
                status: format!("protocol violation: {reason}"),
                stderr_tail: String::new(),
            },
            CallError::Killed => JobError::Cancelled,
        }
    }
}

impl From<JobError> for InvokeError {
    fn from(error: JobError) -> Self {
        match error {
            // The wire carries the cause's message: an `io::Error` does not travel.
            JobError::Start(cause) => InvokeError::StartFailed(cause.to_string()),
            JobError::Failed {
                status,
                stderr_tail,
            } => InvokeError::FunctionFailed {
                status,
                stderr_tail,
            },
            JobError::TimedOut(after) => {
                InvokeError::TimedOut(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
            }
            JobError::OutputTooLarge(limit) => InvokeError::FunctionFailed {
                status: format!("output larger than {limit} bytes"),
                stderr_tail: String::new(),
            },
            JobError::Cancelled => InvokeError::Cancelled,
            JobError::KilledUnderMemoryPressure => InvokeError::KilledUnderMemoryPressure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_claim_settles_once() {
        let claim = StartClaim::default();
        assert!(claim.give_up());
        assert!(claim.give_up(), "asking again gives the same answer");
        assert!(!claim.start(), "a job given up never starts");
        let claim = StartClaim::default();
        assert!(claim.start());
        assert!(!claim.give_up(), "a started job cannot be given up");
    }

    #[test]
    fn cancellation_is_not_a_failure_anywhere() {
        assert!(matches!(
            JobError::from(RunError::Killed),
            JobError::Cancelled
        ));
        assert!(matches!(
            JobError::from(CallError::Killed),
            JobError::Cancelled
        ));
        assert_eq!(
            InvokeError::from(JobError::Cancelled),
            InvokeError::Cancelled
        );
    }

    #[test]
    fn failures_keep_status_and_tail() {
        let error = JobError::from(CallError::Crashed {
            status: "exit status 3".into(),
            stderr_tail: "boom\n".into(),
        });
        assert_eq!(
            InvokeError::from(error),
            InvokeError::FunctionFailed {
                status: "instance crashed: exit status 3".into(),
                stderr_tail: "boom\n".into(),
            }
        );
        assert_eq!(
            InvokeError::from(JobError::TimedOut(Duration::from_millis(1500))),
            InvokeError::TimedOut(1500)
        );
    }

    #[test]
    fn start_failures_carry_their_cause() {
        let cause = IsolationError::InvalidName { name: "a/b".into() };
        let error = JobError::from(StartError::WorkDir(cause));
        assert_eq!(
            InvokeError::from(error),
            InvokeError::StartFailed(
                r#"invalid instance name "a/b" for a working directory"#.into()
            )
        );
    }
}
