//! Who runs at which priority, on which CPUs: confining a fresh function process to its
//! class's CPUs, raising it to its class's scheduling (a paying class's `SCHED_FIFO` priority
//! on the real-time CPUs; the cheapest class's `SCHED_BATCH` on every function CPU), lowering
//! an idle instance, and moving launch work off real-time priority ([`off_real_time`]).
//!
//! In [`SchedMode::RealTime`] this is how the kernel enforces class order; in the other modes
//! raising and lowering do nothing (the [`crate::gate::Gate`] orders user-space mode), but
//! confinement to the function CPUs still applies.

use std::path::PathBuf;

use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{debug, warn};

use crate::cgroup::InstanceCgroup;
use crate::job::{Job, JobError, StartError};
use crate::rt::{self, FunctionCpus, SchedMode};

/// The machine's priority settings: the mode in force and the CPUs functions run on.
#[derive(Debug)]
pub(crate) struct Priority {
    /// How class order is enforced.
    mode: SchedMode,
    /// CPUs function processes are confined to: all of them for the cheapest class, the
    /// real-time ones for the others (in real-time mode).
    cpus: FunctionCpus,
    /// One permit per function CPU, taken by each cheapest-class run in real-time mode (see
    /// [`Priority::hold_cpu`]).
    cheapest_cpus: Semaphore,
}

/// A cheapest-class run's hold on one function CPU; released when dropped.
pub(crate) type CpuHold<'a> = Option<SemaphorePermit<'a>>;

impl Priority {
    /// Settings for `mode`, with functions on `cpus`.
    pub(crate) fn new(mode: SchedMode, cpus: FunctionCpus) -> Self {
        let permits = cpus.functions.len().max(1);
        Self {
            mode,
            cpus,
            cheapest_cpus: Semaphore::new(permits),
        }
    }

    /// Waits until `job` may run, if it is of the cheapest class in real-time mode: at most
    /// one such run per function CPU, served in the order of asking.
    ///
    /// `SCHED_BATCH` has no first-come-first-served order of its own: the kernel would
    /// time-share every cheapest-class run a machine admits (its `--slots` may exceed its
    /// CPUs), and all would finish late together. Taking a CPU in turn (the caller holds its
    /// class's turn while it waits, and the semaphore is fair) keeps the class's arrival
    /// order, as `SCHED_FIFO` does for the others. Other jobs and modes pass at once.
    pub(crate) async fn hold_cpu(&self, job: &Job) -> CpuHold<'_> {
        if self.mode != SchedMode::RealTime || rt::runs_real_time(job.class, job.classes) {
            return None;
        }
        // The semaphore is never closed.
        self.cheapest_cpus.acquire().await.ok()
    }

    /// Whether `job` runs under `SCHED_FIFO`: a paying class in real-time mode.
    fn real_time(&self, job: &Job) -> bool {
        self.mode == SchedMode::RealTime && rt::runs_real_time(job.class, job.classes)
    }

    /// The CPUs `job`'s process may run on.
    fn cpus_for(&self, job: &Job) -> &[usize] {
        if self.real_time(job) {
            &self.cpus.real_time
        } else {
            &self.cpus.functions
        }
    }

    /// The mode in force.
    pub(crate) fn mode(&self) -> &SchedMode {
        &self.mode
    }

    /// Confines a fresh process (already exec'd, about to be raised) to the function CPUs:
    /// joins the confining cgroups held back at launch, and sets its threads' affinity to
    /// `job`'s class's CPUs.
    pub(crate) fn confine(&self, pid: i32, confining: &[PathBuf], job: &Job) {
        for file in confining {
            if let Err(e) = std::fs::write(file, pid.to_string()) {
                debug!(pid, file = %file.display(), error = %e, "could not join a confining cgroup");
            }
        }
        let cpus = self.cpus_for(job);
        for tid in rt::threads_of(pid) {
            if let Err(e) = rt::set_affinity(tid, cpus) {
                debug!(pid, error = %e, "could not set affinity");
            }
        }
    }

    /// Moves every thread of an instance onto its class's CPUs and scheduling (real-time
    /// mode): a paying class to its `SCHED_FIFO` priority on the real-time CPUs, the cheapest
    /// class to `SCHED_BATCH` on every function CPU. The affinity is set first, so a thread
    /// becomes real-time already where it will run. A warm instance may serve any class, so
    /// this is done for every call.
    pub(crate) fn raise(&self, pid: i32, cgroup: Option<&InstanceCgroup>, job: &Job) {
        if self.mode != SchedMode::RealTime {
            return;
        }
        let tids = threads(pid, cgroup);
        let cpus = self.cpus_for(job);
        let real_time = self.real_time(job);
        let priority = rt::function_priority(job.class, job.classes);
        let set = rt::set_all(&tids, |tid| {
            rt::set_affinity(tid, cpus)?;
            if real_time {
                rt::set_fifo(tid, priority)
            } else {
                rt::set_batch(tid)
            }
        });
        if let Err(e) = set {
            warn!(pid, priority, real_time, error = %e, "could not set the function's scheduling");
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

/// Runs `work` on a blocking thread at normal (CFS) priority and waits for it; the thread gets
/// its own scheduling back afterwards ([`rt::ThreadScheduling`]).
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
        off_function_cpus(&cpus, || {
            // A launch is on a call's path: ahead of the host's ordinary work (see LAUNCH_NICE).
            rt::set_nice(rt::LAUNCH_NICE);
            work()
        })
    })
    .await
    .map_err(StartError::from)?
}

/// Runs `work` on the calling (blocking-pool) thread at normal priority on `cpus` (see
/// [`leave_function_cpus`]), then gives the thread its scheduling back, so that the pool's
/// next user finds the thread as the runtime made it.
pub(crate) fn off_function_cpus<T>(cpus: &[usize], work: impl FnOnce() -> T) -> T {
    let own = rt::ThreadScheduling::current();
    leave_function_cpus(cpus);
    let result = work();
    own.apply();
    result
}

/// Puts the calling (blocking-pool) thread at normal priority on `cpus`, the CPUs kept free of
/// functions: a normal-priority thread on a function CPU waits behind real-time functions for
/// as long as the kernel lets them run (tens of milliseconds measured here).
pub(crate) fn leave_function_cpus(cpus: &[usize]) {
    let _ = rt::set_normal(0);
    rt::set_nice(0);
    if !cpus.is_empty() {
        let _ = rt::set_affinity(0, cpus);
    }
}
