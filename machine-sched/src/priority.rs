//! Who runs at which priority, on which CPUs: confining a fresh function process to its
//! class's CPUs, raising it to its class's scheduling (a paying class's `SCHED_FIFO` priority
//! on the real-time CPUs; the cheapest class's `SCHED_BATCH` on every function CPU), lowering
//! an idle instance, and the scheduling of launch work ([`on_launch_thread`]).
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
    /// joins the confining cgroups held back at launch, sets its threads' affinity to `job`'s
    /// class's CPUs, and returns them to nice 0 from the launch's strong nice value
    /// ([`rt::LAUNCH_NICE`], which the process keeps until `exec` so that its way there is not
    /// time-shared with the cheapest class's functions).
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
            if let Err(e) = rt::set_thread_nice(tid, 0) {
                debug!(pid, error = %e, "could not return the function to nice 0");
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

/// How a launch's thread, and the new process until it is confined, are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaunchScheduling {
    /// `SCHED_FIFO` at the priority of the call the launch is for (real-time mode): the
    /// launch preempts at once what its call would preempt (the cheapest class's functions,
    /// lower paying classes) and waits behind what its call would wait behind.
    RealTime(i32),
    /// A normal task at [`rt::LAUNCH_NICE`] (the other modes, where functions are normal tasks
    /// too).
    Normal,
}

impl Priority {
    /// How a launch for `job` is scheduled (see [`on_launch_thread`]).
    pub(crate) fn launch_scheduling(&self, job: &Job) -> LaunchScheduling {
        if self.mode == SchedMode::RealTime {
            LaunchScheduling::RealTime(rt::function_priority(job.class, job.classes))
        } else {
            LaunchScheduling::Normal
        }
    }
}

/// Runs `work` (a launch: directories, cgroups, the new process) on a blocking thread at
/// `scheduling` on `cpus` and waits for it; the thread gets its own scheduling back afterwards
/// ([`rt::ThreadScheduling`]). The new process inherits the launch thread's scheduling (it is
/// made without reset-on-fork) and keeps it until the machine scheduler confines and raises
/// it after `exec`.
///
/// Not at the dispatcher's own priority: file-system and cgroup work (directories, cgroup
/// files) and process creation wait on kernel threads and locks with no priority
/// inheritance, and done at priority 50 while functions saturated the other CPUs they were
/// measured here to take 17 ms at the median instead of 50 µs. Not as a normal task either
/// (the launches before): a normal task waits behind every running real-time function of its
/// CPU, and the kernel's fair scheduler let a running cheapest-class function finish its slice
/// before a waking launch (`RUN_TO_PARITY`), so under `preempt-2x` a new process waited 2–6 ms
/// for its first turn and process creation to `exec` took 3.1 ms at the median instead of
/// 0.5 ms idle. At its call's priority the launch runs as soon as its call could, and
/// the real-time budget (or the CPU kept free of real-time functions) still leaves the kernel
/// threads it waits on their share.
pub(crate) async fn on_launch_thread<T: Send + 'static>(
    cpus: Vec<usize>,
    scheduling: LaunchScheduling,
    work: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(move || {
        off_function_cpus(&cpus, || {
            let real_time = match scheduling {
                LaunchScheduling::RealTime(priority) => rt::set_fifo(0, priority).is_ok(),
                LaunchScheduling::Normal => false,
            };
            if !real_time {
                // A launch is on a call's path: ahead of the host's ordinary work.
                rt::set_nice(rt::LAUNCH_NICE);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::LaunchSpec;

    /// A process's nice value, real-time priority and policy, from `/proc/PID/stat` (fields
    /// 19, 40 and 41, counted after the command name, which may contain spaces).
    fn scheduling_of(pid: i32) -> (i64, i64, i64) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<i64> = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .skip(1)
            .map(|f| f.trim().parse().unwrap_or(-1))
            .collect();
        (fields[15], fields[36], fields[37])
    }

    /// Launches `sleep` on a launch thread at `scheduling`; returns its scheduling before it is
    /// confined, and reaps it.
    async fn launched_at(scheduling: LaunchScheduling) -> (i64, i64, i64) {
        let spec = LaunchSpec {
            command: vec!["sleep".into(), "5".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..LaunchSpec::default()
        };
        let pid = on_launch_thread(Vec::new(), scheduling, move || {
            Ok(spec.start().expect("sleep starts").pid)
        })
        .await
        .unwrap();
        let seen = scheduling_of(pid.as_raw());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        seen
    }

    #[tokio::test]
    async fn a_launch_runs_at_its_calls_priority_until_it_is_confined() {
        if rt::probe() == SchedMode::RealTime {
            let (_, priority, policy) = launched_at(LaunchScheduling::RealTime(12)).await;
            assert_eq!((priority, policy), (12, i64::from(libc::SCHED_FIFO)));
        } else {
            eprintln!("skipped the real-time launch: this process may not use SCHED_FIFO");
        }
        let may_lower_nice = std::thread::spawn(|| {
            rt::set_nice(rt::LAUNCH_NICE);
            // SAFETY: a plain query about the calling thread.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) == rt::LAUNCH_NICE }
        })
        .join()
        .unwrap();
        if may_lower_nice {
            let (nice, _, policy) = launched_at(LaunchScheduling::Normal).await;
            assert_eq!(
                (nice, policy),
                (i64::from(rt::LAUNCH_NICE), i64::from(libc::SCHED_OTHER))
            );
        } else {
            eprintln!("skipped the normal launch: this process may not lower its nice value");
        }
    }
}
