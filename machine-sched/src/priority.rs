//! Who runs at which priority, on which CPUs: confining a fresh function process to the
//! function CPUs, raising it to its class's `SCHED_FIFO` priority, lowering an idle instance,
//! and moving launch work off real-time priority ([`off_real_time`]).
//!
//! In [`SchedMode::RealTime`] this is how the kernel enforces class order; in the other modes
//! raising and lowering do nothing (the [`crate::gate::Gate`] orders user-space mode), but
//! confinement still applies.

use std::path::PathBuf;

use tracing::{debug, warn};

use crate::cgroup::InstanceCgroup;
use crate::job::{Job, JobError, StartError};
use crate::rt::{self, SchedMode};

/// The machine's priority settings: the mode in force and the CPUs functions run on.
#[derive(Debug)]
pub(crate) struct Priority {
    /// How class order is enforced.
    mode: SchedMode,
    /// CPUs function processes are confined to.
    function_cpus: Vec<usize>,
}

impl Priority {
    /// Settings for `mode`, with functions on `function_cpus`.
    pub(crate) fn new(mode: SchedMode, function_cpus: Vec<usize>) -> Self {
        Self {
            mode,
            function_cpus,
        }
    }

    /// The mode in force.
    pub(crate) fn mode(&self) -> &SchedMode {
        &self.mode
    }

    /// Confines a fresh process (already exec'd, about to be raised) to the function CPUs:
    /// joins the confining cgroups held back at launch, and sets its threads' affinity.
    pub(crate) fn confine(&self, pid: i32, confining: &[PathBuf]) {
        for file in confining {
            if let Err(e) = std::fs::write(file, pid.to_string()) {
                debug!(pid, file = %file.display(), error = %e, "could not join a confining cgroup");
            }
        }
        for tid in rt::threads_of(pid) {
            if let Err(e) = rt::set_affinity(tid, &self.function_cpus) {
                debug!(pid, error = %e, "could not set affinity");
            }
        }
    }

    /// Raises every thread of an instance to the class's priority (real-time mode).
    pub(crate) fn raise(&self, pid: i32, cgroup: Option<&InstanceCgroup>, job: &Job) {
        if self.mode != SchedMode::RealTime {
            return;
        }
        let priority = rt::function_priority(job.class, job.classes);
        if let Err(e) = rt::set_fifo_all(&threads(pid, cgroup), priority) {
            warn!(pid, priority, error = %e, "could not raise the function to SCHED_FIFO");
        }
    }

    /// Returns an idle instance's threads to normal scheduling.
    pub(crate) fn lower(&self, pid: i32, cgroup: Option<&InstanceCgroup>) {
        if self.mode != SchedMode::RealTime {
            return;
        }
        for tid in threads(pid, cgroup) {
            let _ = rt::set_normal(tid);
        }
    }
}

/// Every thread of an instance: its cgroup's (which also sees threads of its children), or
/// else the process's own.
fn threads(pid: i32, cgroup: Option<&InstanceCgroup>) -> Vec<i32> {
    cgroup
        .and_then(|cg| cg.threads().ok())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| rt::threads_of(pid))
}

/// Runs `work` on a blocking thread at normal (CFS) priority and waits for it.
///
/// The dispatcher's async threads run at real-time priority, but file-system and cgroup work
/// (directories, cgroup files) and `fork` wait on kernel threads and locks with no priority
/// inheritance. Done at real-time priority while functions saturate the other CPUs, they were
/// measured here to take 17 ms at the median instead of 50 µs; done at normal priority, on the
/// CPU kept free of functions, they take their usual time.
pub(crate) async fn off_real_time<T: Send + 'static>(
    cpus: Vec<usize>,
    work: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(move || {
        leave_function_cpus(&cpus);
        work()
    })
    .await
    .map_err(StartError::from)?
}

/// Puts the calling (blocking-pool) thread at normal priority on `cpus`, the CPUs kept free of
/// functions: a normal-priority thread on a function CPU waits behind real-time functions for
/// as long as the kernel lets them run (tens of milliseconds measured here).
pub(crate) fn leave_function_cpus(cpus: &[usize]) {
    let _ = rt::set_normal(0);
    if !cpus.is_empty() {
        let _ = rt::set_affinity(0, cpus);
    }
}
