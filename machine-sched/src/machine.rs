//! The machine scheduler: runs each placed invocation on this machine in price-class order,
//! in a process of its own or on a warm instance, and accounts for what it used.
//!
//! In [`SchedMode::RealTime`] the kernel enforces the order: every function process is
//! confined to the function CPUs and, once it has exec'd, raised to the `SCHED_FIFO` priority
//! of the invocation's class; a warm instance is raised for each call and lowered again when it
//! goes idle. In [`SchedMode::UserSpace`] the [`Gate`] enforces the same order with signals.
//!
//! Instances move through cold → warming → hot (serving) → warm (idle) and are reaped after
//! their keep-alive; each lives in its own cgroup (CPU time, peak memory, killing everything it
//! started) and private working directory, as the unprivileged function user when the
//! dispatcher is root.
//!
//! This module is the facade; each concern has a module of its own, and [`MachineScheduler`]
//! owns one of each (the ones a run uses in `parts`, which the run modules take instead of
//! the facade, so no module imports the facade back):
//!
//! - `turns`: per-class tickets that keep arrival order until launch;
//! - `priority`: confining, raising and lowering, and launch work off real time;
//! - `provision`: names, cgroups and working directories, and retiring them;
//! - `instance_pool`: the idle warm instances;
//! - `running`: the running jobs, for cancellation;
//! - `exec_run` and `persistent_run`: one job of each runtime, start to end;
//! - [`crate::job`]: the job, its errors, and their way to the wire.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tariff_types::function::Runtime;
use tariff_types::wire::RunReport;
use tariff_types::ClassId;
use tracing::debug;

use crate::cgroup::rt_budget::RtBudget;
use crate::cgroup::CgroupRoot;
use crate::exec_run::run_exec;
use crate::gate::Gate;
use crate::instance_pool::InstancePool;
use crate::memory_guard::{GuardReading, GuardStart, MemoryGuard, MemoryGuardError, MemoryOptions};
use crate::parts::Parts;
use crate::persistent_run::run_persistent;
use crate::priority::Priority;
use crate::provision::Provisioner;
use crate::rt::{self, FunctionCpus, SchedMode};
use crate::running::Running;
use crate::turns::Turns;

pub use crate::job::{Job, JobError, StartClaim, StartError};
pub use crate::turns::Ticket;

/// How often idle instances are checked against their keep-alive.
pub const REAP_INTERVAL: Duration = Duration::from_millis(100);
/// How long a persistent instance gets to exit after its stdin closes.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How long shutdown waits for killed jobs to be reaped before removing cgroups.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// How often shutdown looks whether the killed jobs are gone.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// How this machine runs functions.
#[derive(Debug)]
pub struct MachineOptions {
    /// Functions running at once (user-space mode).
    pub cores: usize,
    /// How class order is enforced.
    pub mode: SchedMode,
    /// CPUs function processes are confined to: every function CPU, and the real-time
    /// classes' subset ([`rt::function_cpus`]).
    pub cpus: FunctionCpus,
    /// Per-instance cgroups, when available.
    pub cgroups: Option<CgroupRoot>,
    /// The real-time budget group every function joins, when the paying classes may use every
    /// function CPU under a kernel-enforced budget ([`crate::cgroup::rt_budget`]).
    pub rt_budget: Option<RtBudget>,
    /// `(uid, gid)` functions run as, when the dispatcher is root.
    pub user: Option<(u32, u32)>,
    /// Parent of the instances' private working directories.
    pub work_root: PathBuf,
}

/// The machine scheduler of one dispatcher: the facade over its [`Parts`].
pub struct MachineScheduler {
    /// Arrival order per class (see the `turns` module); only the facade takes turns.
    turns: Turns,
    /// Everything a job's run uses, shared with the runs in flight.
    parts: Arc<Parts>,
    /// The memory guard and the flag that stops its thread at shutdown, once started
    /// ([`MachineScheduler::start_memory_guard`]).
    guard: OnceLock<(Arc<MemoryGuard>, Arc<AtomicBool>)>,
}

impl MachineScheduler {
    /// A scheduler with these options.
    pub fn new(options: MachineOptions) -> Arc<Self> {
        let MachineOptions {
            cores,
            mode,
            cpus,
            cgroups,
            rt_budget,
            user,
            work_root,
        } = options;
        let gate = match &mode {
            SchedMode::RealTime | SchedMode::ProcessorSharing => None,
            SchedMode::UserSpace { .. } => Some(Gate::new(cores, tariff_types::class::MAX_CLASSES)),
        };
        // Launches run where no real-time function does: the cheapest class may share those
        // CPUs, but at the launch threads' strong nice value (rt::LAUNCH_NICE) a launch is
        // barely delayed by it. Under a real-time budget there is no such CPU (the list is
        // empty: launches run anywhere), and the budget guarantees normal tasks their share
        // of every CPU instead.
        let spawn_cpus: Vec<usize> = rt::allowed_cpus()
            .into_iter()
            .filter(|cpu| !cpus.real_time.contains(cpu))
            .collect();
        Arc::new(Self {
            turns: Turns::new(tariff_types::class::MAX_CLASSES),
            parts: Arc::new(Parts {
                gate,
                priority: Priority::new(mode, cpus),
                provision: {
                    let provision =
                        Provisioner::new(cgroups, rt_budget, user, work_root, spawn_cpus);
                    provision.prewarm(crate::provision::PREWARMED_CGROUPS);
                    Arc::new(provision)
                },
                pool: InstancePool::default(),
                running: Running::default(),
            }),
            guard: OnceLock::new(),
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> &SchedMode {
        self.parts.priority.mode()
    }

    /// Functions with at least one idle warm instance, for the shards' placement.
    pub fn warm_functions(&self) -> Vec<String> {
        self.parts.pool.warm_functions()
    }

    /// Function processes on the machine as (idle warm instances, running), for metrics.
    pub fn instance_counts(&self) -> (usize, usize) {
        (
            self.parts.pool.pids().len(),
            self.parts.running.pids().len(),
        )
    }

    /// Resident memory of every function process on the machine, running or idle.
    pub fn used_memory(&self) -> u64 {
        let mut pids = self.parts.running.pids();
        pids.extend(self.parts.pool.pids());
        crate::memory::used_bytes(&pids)
    }

    /// Enforces `options.limit_bytes` as what the functions may use together and starts the
    /// memory guard (see `memory_guard`), which swaps out the cheapest classes' stopped work
    /// under pressure and kills only when swap runs out. Once: a second call is an error.
    pub fn start_memory_guard(
        &self,
        options: MemoryOptions,
    ) -> Result<GuardStart, MemoryGuardError> {
        if self.guard.get().is_some() {
            return Err(MemoryGuardError::AlreadyStarted);
        }
        let (guard, start) = MemoryGuard::start(Arc::clone(&self.parts), options)?;
        let stop = Arc::new(AtomicBool::new(false));
        Arc::clone(&guard).spawn(Arc::clone(&stop))?;
        let _ = self.guard.set((guard, stop));
        Ok(start)
    }

    /// Free memory for functions as the memory guard last read it (the limit less what the
    /// functions' cgroups hold, bounded by the machine's available memory); `None` without a
    /// guard.
    pub fn guarded_free_memory(&self) -> Option<u64> {
        self.guard.get().map(|(g, _)| g.free_bytes())
    }

    /// The memory guard's last reading (what the functions hold, what is free, swap), if
    /// the guard runs.
    pub fn memory_reading(&self) -> Option<GuardReading> {
        self.guard.get().map(|(g, _)| g.reading())
    }

    /// Stops the job `id` if it is running here; it ends with [`JobError::Cancelled`].
    pub fn cancel(&self, id: u64) {
        self.parts.running.cancel(id);
    }

    /// Takes a job of `class` its place in the class's arrival order. Call it where jobs
    /// arrive in order (the dispatcher's lane reader), before handing the job to a task of its
    /// own, and pass the ticket to [`MachineScheduler::run_admitted`].
    pub fn admit(&self, class: ClassId) -> Ticket {
        self.turns.admit(class)
    }

    /// Runs one job to the end, in arrival order from now.
    pub async fn run(self: &Arc<Self>, job: Job) -> Result<RunReport, JobError> {
        let ticket = self.admit(job.class);
        self.run_admitted(job, ticket).await
    }

    /// Runs one job, admitted earlier with [`MachineScheduler::admit`], to the end, and
    /// returns its report.
    pub async fn run_admitted(
        self: &Arc<Self>,
        job: Job,
        ticket: Ticket,
    ) -> Result<RunReport, JobError> {
        let arrived = Instant::now();
        let mut turn = Some(self.turns.turn(ticket).await);
        // Taken while the turn is held, so the cheapest class keeps its arrival order.
        let _cpu = self.parts.priority.hold_cpu(&job).await;
        if let Some(gate) = &self.parts.gate {
            // In user-space mode the run queue keeps the order from here on.
            let started = gate.arrive(job.id, job.class.0);
            turn = None;
            let _ = started.await;
        }
        let given_up = job.claim.as_ref().is_some_and(|claim| !claim.start());
        let result = match job.function.runtime {
            // Given up while it waited: its turn passes to the next job unused.
            _ if given_up => Err(JobError::Cancelled),
            Runtime::Exec => run_exec(&self.parts, &job, arrived, turn).await,
            Runtime::Persistent { keep_alive_ms } => {
                let keep_alive = Duration::from_millis(keep_alive_ms);
                run_persistent(&self.parts, &job, arrived, keep_alive, turn).await
            }
        };
        let held = self
            .parts
            .gate
            .as_ref()
            .map_or(Duration::ZERO, |g| g.leave(job.id));
        let memory = self.parts.running.remove(job.id);
        match result {
            // The guard's kill reaches the run as a cancellation; say why it happened.
            Err(JobError::Cancelled) if memory.killed => Err(JobError::KilledUnderMemoryPressure),
            Err(e) => Err(e),
            Ok(mut report) => {
                let held_us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
                report.preempted_us = report.preempted_us.saturating_add(held_us);
                report.memory = memory.pressure;
                Ok(report)
            }
        }
    }

    /// Reaps idle instances past their keep-alive, and dead ones. Returns how many.
    pub async fn reap_idle(&self) -> usize {
        let expired = self.parts.pool.take_expired();
        let count = expired.len();
        for instance in expired {
            debug!(instance = %instance.name, "reaping idle instance");
            instance.process.shutdown(SHUTDOWN_GRACE).await;
            self.parts
                .provision
                .retire(instance.cgroup, instance.work_dir);
        }
        count
    }

    /// Runs [`MachineScheduler::reap_idle`] every [`REAP_INTERVAL`], forever.
    pub async fn reap_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        loop {
            tick.tick().await;
            self.reap_idle().await;
        }
    }

    /// Kills every running job and idle instance and removes their cgroups, directories and
    /// the dispatcher's cgroup subtree, so nothing outlives the dispatcher.
    pub async fn shutdown(&self) {
        if let Some((_, stop)) = self.guard.get() {
            stop.store(true, Ordering::Relaxed);
        }
        self.parts.running.cancel_all();
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while !self.parts.running.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
        for instance in self.parts.pool.take_all() {
            instance.process.kill().await;
            self.parts
                .provision
                .retire_now(instance.cgroup, &instance.work_dir);
        }
        self.parts.provision.remove_all_cgroups();
    }
}
