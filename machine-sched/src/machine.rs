//! The machine scheduler: runs each placed invocation on this machine in price-class order,
//! in a process of its own or on a warm instance, and accounts for what it used.
//!
//! In [`SchedMode::RealTime`] the kernel enforces the order: every function process is
//! confined to the function CPUs and, once it has exec'd, raised to the `SCHED_FIFO` priority
//! of the invocation's class; a warm instance is raised for each call and lowered again when it
//! goes idle. In [`SchedMode::UserSpace`] the [`Gate`] enforces the same order with signals.
//!
//! Instances move through cold → warming → hot (serving) → warm (idle) and are reaped after
//! their keep-alive; each lives in its own cgroup (CPU time, peak memory, freezing, killing
//! everything it started) and private working directory, as the unprivileged function user
//! when the dispatcher is root.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tariff_types::function::Runtime;
use tariff_types::wire::unix_micros;
use tariff_types::{ClassId, FunctionSpec};
use tracing::{debug, info, warn};

use crate::cgroup::{CgroupRoot, CgroupVersion, InstanceCgroup};
use crate::gate::Gate;
use crate::launch::LaunchSpec;
use crate::persistent::{CallError, PersistentHandle, PersistentProcess};
use crate::process::{ProcessHandle, RunError, RunRequest};
use crate::rt::{self, SchedMode};

/// How often idle instances are checked against their keep-alive.
pub const REAP_INTERVAL: Duration = Duration::from_millis(100);
/// How long a persistent instance gets to exit after its stdin closes.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Most empty instance cgroups kept for reuse.
const MAX_POOLED_CGROUPS: usize = 64;
/// How long shutdown waits for killed jobs to be reaped before removing cgroups.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// How this machine runs functions.
#[derive(Debug)]
pub struct MachineOptions {
    /// Functions running at once (user-space mode) and CPUs they are confined to.
    pub cores: usize,
    /// How class order is enforced.
    pub mode: SchedMode,
    /// CPUs function processes are confined to.
    pub cpus: Vec<usize>,
    /// Per-instance cgroups, when available.
    pub cgroups: Option<CgroupRoot>,
    /// `(uid, gid)` functions run as, when the dispatcher is root.
    pub user: Option<(u32, u32)>,
    /// Parent of the instances' private working directories.
    pub work_root: PathBuf,
}

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
    /// stdin / request bytes.
    pub payload: Vec<u8>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Largest output accepted.
    pub max_output: usize,
}

/// What a successful job produced and cost.
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    /// The function's output.
    pub output: Vec<u8>,
    /// Whether a process was started for it.
    pub cold_start: bool,
    /// µs from arrival on the machine to the function starting.
    pub start_us: u64,
    /// µs held back by dearer work.
    pub preempted_us: u64,
    /// CPU time, µs.
    pub cpu_time_us: u64,
    /// Peak memory, bytes.
    pub peak_memory_bytes: u64,
    /// When the function started, µs since the epoch.
    pub started_at_us: u64,
    /// When it finished, µs since the epoch.
    pub finished_at_us: u64,
}

/// Why a job produced no report.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The process could not be started.
    #[error("could not start the function: {0}")]
    Start(String),
    /// The function failed or its instance crashed.
    #[error("function failed ({status}): {stderr_tail}")]
    Failed {
        /// Exit status or the function's own error.
        status: String,
        /// End of its stderr.
        stderr_tail: String,
    },
    /// It ran out of time.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// Its output was too large.
    #[error("output larger than {0} bytes")]
    OutputTooLarge(usize),
    /// It was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Lifecycle state of an instance (see the module docs). A function with no instance is
/// *cold*: its next invocation starts one, which is *warming* until its first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Started for the invocation it is serving; its runtime is initialising.
    Warming,
    /// Idle, ready to serve.
    Warm,
    /// Serving an invocation.
    Hot,
    /// Idle and frozen (memory pressure; driven by the memory issue, not yet live).
    Frozen,
}

/// A persistent instance.
struct Instance {
    name: String,
    process: PersistentProcess,
    cgroup: Option<InstanceCgroup>,
    work_dir: PathBuf,
    state: InstanceState,
    idle_since: Instant,
    keep_alive: Duration,
}

/// A job's place in its class's arrival order (see [`MachineScheduler::admit`]).
#[derive(Debug)]
pub struct Ticket {
    class: usize,
    number: u64,
}

/// One class's ticket dispenser and the ticket now served.
struct ClassTurns {
    next: AtomicU64,
    serving: tokio::sync::watch::Sender<u64>,
}

impl Default for ClassTurns {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            serving: tokio::sync::watch::channel(0).0,
        }
    }
}

/// The right to launch now; dropping it serves the next ticket of the class.
struct Turn<'a> {
    turns: &'a ClassTurns,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.serving.send_modify(|now| *now += 1);
    }
}

/// Directory name of the v1 cpuset hierarchy's mount.
const CPUSET_MOUNT: &str = "cpuset";

/// A new instance's launch spec, cgroup, working directory, and the cgroups it joins only
/// after it has been raised.
struct Prepared {
    spec: LaunchSpec,
    cgroup: Option<InstanceCgroup>,
    work_dir: PathBuf,
    confining: Vec<PathBuf>,
}

/// The key under which idle instances wait: a function at one version.
type PoolKey = (String, u64);

enum Cancel {
    Exec(ProcessHandle),
    Persistent(PersistentHandle),
}

/// The machine scheduler of one dispatcher.
pub struct MachineScheduler {
    options: MachineOptions,
    /// Empty instance cgroups kept for reuse: creating and removing cgroups takes the kernel's
    /// global cgroup lock and waits for RCU, which under load cost tens of milliseconds per
    /// cold start here (p90 81 ms measured), against microseconds to reuse one.
    cgroup_pool: Arc<Mutex<Vec<InstanceCgroup>>>,
    /// Arrival order per class. Under SCHED_FIFO the kernel runs a class in the order its
    /// processes become real-time, and in user-space mode the run queue in the order jobs
    /// arrive; but jobs run in tasks of their own, which the async runtime may start in any
    /// order (it even favours the newest). So each job takes a ticket where placements are
    /// received in order, and launches (or enters the gate) when its ticket is served.
    turns: Vec<ClassTurns>,
    /// CPUs outside the function CPUs, where new processes exec before they are raised.
    spawn_cpus: Vec<usize>,
    gate: Option<Gate>,
    idle: Mutex<HashMap<PoolKey, Vec<Instance>>>,
    running: Mutex<HashMap<u64, (i32, Cancel)>>,
    next_instance: AtomicU64,
}

impl MachineScheduler {
    /// A scheduler with these options.
    pub fn new(options: MachineOptions) -> Arc<Self> {
        let gate = match &options.mode {
            SchedMode::RealTime | SchedMode::ProcessorSharing => None,
            SchedMode::UserSpace { .. } => {
                Some(Gate::new(options.cores, tariff_types::class::MAX_CLASSES))
            }
        };
        let spawn_cpus: Vec<usize> = rt::allowed_cpus()
            .into_iter()
            .filter(|cpu| !options.cpus.contains(cpu))
            .collect();
        Arc::new(Self {
            gate,
            cgroup_pool: Arc::default(),
            turns: (0..tariff_types::class::MAX_CLASSES)
                .map(|_| ClassTurns::default())
                .collect(),
            spawn_cpus,
            options,
            idle: Mutex::default(),
            running: Mutex::default(),
            next_instance: AtomicU64::new(1),
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> &SchedMode {
        &self.options.mode
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Instance>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (i32, Cancel)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Functions with at least one idle warm instance, for the shards' placement.
    pub fn warm_functions(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .idle()
            .iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|((name, _), _)| name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Resident memory of every function process on the machine, running or idle.
    pub fn used_memory(&self) -> u64 {
        let mut pids: Vec<i32> = self.running().values().map(|(pid, _)| *pid).collect();
        pids.extend(self.idle().values().flatten().map(|i| i.process.pid()));
        crate::memory::used_bytes(&pids)
    }

    /// Stops the job `id` if it is running here.
    pub fn cancel(&self, id: u64) {
        match self.running().get(&id) {
            Some((_, Cancel::Exec(handle))) => handle.kill(),
            Some((_, Cancel::Persistent(handle))) => handle.kill(),
            None => {}
        }
    }

    /// Takes a job of `class` its place in the class's arrival order. Call it where jobs
    /// arrive in order (the dispatcher's lane reader), before handing the job to a task of its
    /// own, and pass the ticket to [`MachineScheduler::run_admitted`].
    pub fn admit(&self, class: ClassId) -> Ticket {
        let turns = &self.turns[class.index()];
        Ticket {
            class: class.index(),
            number: turns.next.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Waits until `ticket` is served; the returned turn passes to the next ticket when
    /// dropped.
    async fn turn(&self, ticket: Ticket) -> Turn<'_> {
        let turns = &self.turns[ticket.class];
        let mut serving = turns.serving.subscribe();
        let _ = serving.wait_for(|&now| now == ticket.number).await;
        Turn { turns }
    }

    /// Runs one job to the end, in arrival order from now.
    pub async fn run(self: &Arc<Self>, job: Job) -> Result<JobReport, JobError> {
        let ticket = self.admit(job.class);
        self.run_admitted(job, ticket).await
    }

    /// Runs one job, admitted earlier with [`MachineScheduler::admit`], to the end.
    pub async fn run_admitted(
        self: &Arc<Self>,
        job: Job,
        ticket: Ticket,
    ) -> Result<JobReport, JobError> {
        let arrived = Instant::now();
        let mut turn = Some(self.turn(ticket).await);
        if let Some(gate) = &self.gate {
            // In user-space mode the run queue keeps the order from here on.
            let started = gate.arrive(job.id, job.class.0);
            turn = None;
            let _ = started.await;
        }
        let result = match job.function.runtime {
            Runtime::Exec => self.run_exec(&job, arrived, turn).await,
            Runtime::Persistent { keep_alive_ms } => {
                self.run_persistent(&job, arrived, Duration::from_millis(keep_alive_ms), turn)
                    .await
            }
        };
        let held = self
            .gate
            .as_ref()
            .map_or(Duration::ZERO, |g| g.leave(job.id));
        self.running().remove(&job.id);
        result.map(|mut report| {
            report.preempted_us += held.as_micros() as u64;
            report
        })
    }

    fn new_instance_name(&self) -> String {
        format!("i{}", self.next_instance.fetch_add(1, Ordering::Relaxed))
    }

    /// The cgroup and working directory of a new instance, and its launch spec.
    ///
    /// The child joins its cgroups before `exec`, except those that confine it to the function
    /// CPUs (v1 `cpuset`; the whole group in v2, where one directory holds every controller):
    /// a child confined there before it is raised would be a normal task on CPUs busy with
    /// real-time functions, and could wait for the RT throttle to start at all. Those are
    /// joined by [`MachineScheduler::confine`] right after the raise.
    fn prepare(&self, name: &str, function: &FunctionSpec) -> Result<Prepared, JobError> {
        let pooled = self
            .cgroup_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let cgroup = match (&self.options.cgroups, pooled) {
            (_, Some(cg)) => Some(cg),
            (Some(root), None) => match root.create(name) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    warn!(instance = name, error = %e, "no cgroup for this instance");
                    None
                }
            },
            (None, None) => None,
        };
        let work_dir =
            crate::isolation::private_work_dir(&self.options.work_root, name, self.options.user)
                .map_err(|e| JobError::Start(e.to_string()))?;
        let (confining, joined_early): (Vec<PathBuf>, Vec<PathBuf>) = cgroup
            .as_ref()
            .map(InstanceCgroup::procs_files)
            .unwrap_or_default()
            .into_iter()
            .partition(|file| {
                self.options
                    .cgroups
                    .as_ref()
                    .is_some_and(|root| root.version() == CgroupVersion::V2)
                    || file.components().any(|c| c.as_os_str() == CPUSET_MOUNT)
            });
        let spec = LaunchSpec {
            command: function.command.clone(),
            env: function.env.clone(),
            work_dir: Some(work_dir.clone()),
            user: self.options.user,
            cgroup_procs: joined_early,
            spawn_cpus: self.spawn_cpus.clone(),
        };
        Ok(Prepared {
            spec,
            cgroup,
            work_dir,
            confining,
        })
    }

    /// Confines a fresh process (already exec'd, about to be raised) to the function CPUs:
    /// joins the confining cgroups held back at launch, and sets its threads' affinity.
    fn confine(&self, pid: i32, confining: &[PathBuf]) {
        for file in confining {
            if let Err(e) = std::fs::write(file, pid.to_string()) {
                debug!(pid, file = %file.display(), error = %e, "could not join a confining cgroup");
            }
        }
        for tid in rt::threads_of(pid) {
            if let Err(e) = rt::set_affinity(tid, &self.options.cpus) {
                debug!(pid, error = %e, "could not set affinity");
            }
        }
    }

    /// Raises every thread of an instance to the class's priority (real-time mode).
    fn raise(&self, pid: i32, cgroup: Option<&InstanceCgroup>, job: &Job) {
        if self.options.mode != SchedMode::RealTime {
            return;
        }
        let priority = rt::function_priority(job.class, job.classes);
        let threads = cgroup
            .and_then(|cg| cg.threads().ok())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| rt::threads_of(pid));
        if let Err(e) = rt::set_fifo_all(&threads, priority) {
            warn!(pid, priority, error = %e, "could not raise the function to SCHED_FIFO");
        }
    }

    /// Returns an idle instance's threads to normal scheduling.
    fn lower(&self, pid: i32, cgroup: Option<&InstanceCgroup>) {
        if self.options.mode != SchedMode::RealTime {
            return;
        }
        let threads = cgroup
            .and_then(|cg| cg.threads().ok())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| rt::threads_of(pid));
        for tid in threads {
            let _ = rt::set_normal(tid);
        }
    }

    async fn run_exec(
        self: &Arc<Self>,
        job: &Job,
        arrived: Instant,
        turn: Option<Turn<'_>>,
    ) -> Result<JobReport, JobError> {
        let name = self.new_instance_name();
        let machine = self.clone();
        let launch_job = job.clone();
        // Directories, cgroups and fork happen off the real-time path (see `off_real_time`).
        let launched = off_real_time(self.spawn_cpus.clone(), move || {
            let Prepared {
                spec,
                cgroup,
                work_dir,
                confining,
            } = machine.prepare(&name, &launch_job.function)?;
            let cpu_before = cgroup
                .as_ref()
                .and_then(|cg| cg.cpu_usage_us().ok())
                .unwrap_or(0);
            let request = RunRequest {
                launch: spec,
                stdin: launch_job.payload,
                timeout: launch_job.timeout,
                max_output: launch_job.max_output,
            };
            let spawned = crate::process::spawn(request);
            Ok((spawned, cgroup, work_dir, confining, cpu_before))
        })
        .await?;
        let (spawned, cgroup, work_dir, confining, cpu_before) = launched;
        let result = match spawned {
            Err(e) => Err(to_job_error(e)),
            Ok(process) => {
                let pid = process.pid();
                // Confine, then raise, back to back: the process becomes real-time already on
                // the function CPUs, queued behind its class in the order of raising (never
                // running real-time on a spawn CPU in between, where it could be migrated
                // later and land out of turn).
                self.confine(pid, &confining);
                self.raise(pid, cgroup.as_ref(), job);
                drop(turn);
                if let Some(gate) = &self.gate {
                    gate.attach(job.id, pid);
                }
                let start_us = arrived.elapsed().as_micros() as u64;
                self.running()
                    .insert(job.id, (pid, Cancel::Exec(process.handle())));
                let outcome = process.wait().await;
                if let Some(gate) = &self.gate {
                    gate.detach(job.id);
                }
                outcome.map_err(to_job_error).map(|out| JobReport {
                    cpu_time_us: cgroup
                        .as_ref()
                        .and_then(|cg| cg.cpu_usage_us().ok())
                        .map(|us| us.saturating_sub(cpu_before))
                        .filter(|&us| us > 0)
                        .unwrap_or(out.cpu_time_us),
                    peak_memory_bytes: cgroup
                        .as_ref()
                        .and_then(|cg| cg.memory_peak().ok())
                        .filter(|&b| b > 0)
                        .unwrap_or(out.peak_memory_bytes),
                    output: out.stdout,
                    cold_start: true,
                    start_us,
                    preempted_us: out.runqueue_wait_us,
                    started_at_us: out.started_at_us,
                    finished_at_us: out.finished_at_us,
                })
            }
        };
        self.retire(cgroup, work_dir);
        result
    }

    async fn run_persistent(
        self: &Arc<Self>,
        job: &Job,
        arrived: Instant,
        keep_alive: Duration,
        turn: Option<Turn<'_>>,
    ) -> Result<JobReport, JobError> {
        let key = (job.function.name.clone(), job.function.version);
        let warm = self.idle().get_mut(&key).and_then(Vec::pop);
        let (mut instance, cold_start) = match warm {
            Some(mut instance) => {
                if instance.state == InstanceState::Frozen {
                    if let Some(cg) = &instance.cgroup {
                        let _ = cg.thaw();
                    }
                }
                instance.state = InstanceState::Hot;
                (instance, false)
            }
            None => {
                let machine = self.clone();
                let first = job.clone();
                let started = off_real_time(self.spawn_cpus.clone(), move || {
                    machine.start_instance(&first, keep_alive)
                })
                .await?;
                (started, true)
            }
        };
        let pid = instance.process.pid();
        self.raise(pid, instance.cgroup.as_ref(), job);
        drop(turn);
        if let Some(gate) = &self.gate {
            gate.attach(job.id, pid);
        }
        if let Some(cg) = &instance.cgroup {
            let _ = cg.reset_memory_peak();
        }
        let cpu_before = instance
            .cgroup
            .as_ref()
            .and_then(|cg| cg.cpu_usage_us().ok());
        let wait_before = runqueue_wait_of(pid);
        let start_us = arrived.elapsed().as_micros() as u64;
        let started_at_us = unix_micros();
        self.running()
            .insert(job.id, (pid, Cancel::Persistent(instance.process.handle())));
        let answer = instance
            .process
            .call(&job.payload, job.timeout, job.max_output)
            .await;
        let finished_at_us = unix_micros();
        if let Some(gate) = &self.gate {
            gate.detach(job.id);
        }
        let cpu_time_us = match (
            cpu_before,
            instance
                .cgroup
                .as_ref()
                .and_then(|cg| cg.cpu_usage_us().ok()),
        ) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        let peak_memory_bytes = instance
            .cgroup
            .as_ref()
            .and_then(|cg| cg.memory_peak().ok())
            .unwrap_or_else(|| crate::memory::resident_bytes(pid));
        let preempted_us = runqueue_wait_of(pid).saturating_sub(wait_before);
        let result = match answer {
            Ok(output) => Ok(JobReport {
                output,
                cold_start,
                start_us,
                preempted_us,
                cpu_time_us,
                peak_memory_bytes,
                started_at_us,
                finished_at_us,
            }),
            Err(CallError::FunctionError(message)) => Err(JobError::Failed {
                status: "function reported an error".into(),
                stderr_tail: message,
            }),
            Err(CallError::Crashed {
                status,
                stderr_tail,
            }) => Err(JobError::Failed {
                status: format!("instance crashed: {status}"),
                stderr_tail,
            }),
            Err(CallError::TimedOut { after }) => Err(JobError::TimedOut(after)),
            Err(CallError::OutputTooLarge { limit }) => Err(JobError::OutputTooLarge(limit)),
            Err(CallError::Protocol(reason)) => Err(JobError::Failed {
                status: format!("protocol violation: {reason}"),
                stderr_tail: instance.process.stderr_tail(),
            }),
            Err(CallError::Killed) => Err(JobError::Cancelled),
        };
        if instance.process.is_dead() {
            debug!(instance = %instance.name, "instance gone; a fresh one starts next time");
            let machine = self.clone();
            tokio::spawn(async move {
                instance.process.kill().await;
                machine.retire(instance.cgroup, instance.work_dir);
            });
        } else {
            self.lower(pid, instance.cgroup.as_ref());
            instance.state = InstanceState::Warm;
            instance.idle_since = Instant::now();
            instance.keep_alive = keep_alive;
            self.idle().entry(key).or_default().push(instance);
        }
        result
    }

    fn start_instance(&self, job: &Job, keep_alive: Duration) -> Result<Instance, JobError> {
        let function = &job.function;
        let name = self.new_instance_name();
        let Prepared {
            spec,
            cgroup,
            work_dir,
            confining,
        } = self.prepare(&name, function)?;
        let process = match PersistentProcess::spawn(&spec) {
            Ok(process) => process,
            Err(e) => {
                self.retire(cgroup, work_dir);
                return Err(JobError::Start(e.to_string()));
            }
        };
        // Raised for the call that started it, so its start-up is not starved on the function
        // CPUs; lowered again when it goes idle.
        self.confine(process.pid(), &confining);
        self.raise(process.pid(), cgroup.as_ref(), job);
        info!(instance = %name, function = %function.name, pid = process.pid(), "instance started");
        Ok(Instance {
            name,
            process,
            cgroup,
            work_dir,
            state: InstanceState::Warming,
            idle_since: Instant::now(),
            keep_alive,
        })
    }

    /// Reaps idle instances past their keep-alive, and dead ones. Returns how many.
    pub async fn reap_idle(&self) -> usize {
        let expired: Vec<Instance> = {
            let mut idle = self.idle();
            let mut expired = Vec::new();
            for instances in idle.values_mut() {
                let (gone, kept): (Vec<_>, Vec<_>) = instances
                    .drain(..)
                    .partition(|i| i.process.is_dead() || i.idle_since.elapsed() >= i.keep_alive);
                *instances = kept;
                expired.extend(gone);
            }
            idle.retain(|_, v| !v.is_empty());
            expired
        };
        let count = expired.len();
        for instance in expired {
            debug!(instance = %instance.name, "reaping idle instance");
            instance.process.shutdown(SHUTDOWN_GRACE).await;
            self.retire(instance.cgroup, instance.work_dir);
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

    /// Retires an instance off the answer's path: kills what is left in its cgroup and returns
    /// the emptied cgroup to the pool (or removes it), and removes its working directory.
    fn retire(&self, cgroup: Option<InstanceCgroup>, work_dir: PathBuf) {
        let pool = self.cgroup_pool.clone();
        let cpus = self.spawn_cpus.clone();
        tokio::task::spawn_blocking(move || {
            leave_function_cpus(&cpus);
            let _ = crate::isolation::remove_work_dir(&work_dir);
            let Some(cg) = cgroup else { return };
            let _ = cg.kill_all();
            let empty = cg.processes().is_ok_and(|p| p.is_empty());
            let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
            if empty && pool.len() < MAX_POOLED_CGROUPS && cg.reset_memory_peak().is_ok() {
                pool.push(cg);
            } else {
                drop(pool);
                remove_cgroup(cg);
            }
        });
    }

    /// Kills every running job and idle instance and removes their cgroups, directories and
    /// the dispatcher's cgroup subtree, so nothing outlives the dispatcher.
    pub async fn shutdown(&self) {
        for (_, cancel) in self.running().values() {
            match cancel {
                Cancel::Exec(h) => h.kill(),
                Cancel::Persistent(h) => h.kill(),
            }
        }
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while !self.running().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let idle: Vec<Instance> = self.idle().drain().flat_map(|(_, v)| v).collect();
        for instance in idle {
            instance.process.kill().await;
            retire_now(instance.cgroup, &instance.work_dir);
        }
        let pooled: Vec<InstanceCgroup> =
            std::mem::take(&mut *self.cgroup_pool.lock().unwrap_or_else(|p| p.into_inner()));
        for cg in pooled {
            let _ = cg.remove();
        }
        if let Some(root) = &self.options.cgroups {
            if let Err(e) = root.clean_stale() {
                debug!(error = %e, "cleaning instance cgroups at shutdown");
            }
            for dir in root.base_dirs() {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

fn retire_now(cgroup: Option<InstanceCgroup>, work_dir: &std::path::Path) {
    if let Some(cg) = cgroup {
        remove_cgroup(cg);
    }
    let _ = crate::isolation::remove_work_dir(work_dir);
}

/// Kills what is left in an instance cgroup and removes it.
fn remove_cgroup(cg: InstanceCgroup) {
    let _ = cg.kill_all();
    if let Err(e) = cg.remove() {
        debug!(error = %e, "removing an instance cgroup");
    }
}

/// Runs `work` on a blocking thread at normal (CFS) priority and waits for it.
///
/// The dispatcher's async threads run at real-time priority, but file-system and cgroup work
/// (directories, cgroup files) and `fork` wait on kernel threads and locks with no priority
/// inheritance. Done at real-time priority while functions saturate the other CPUs, they were
/// measured here to take 17 ms at the median instead of 50 µs; done at normal priority, on the
/// CPU kept free of functions, they take their usual time.
async fn off_real_time<T: Send + 'static>(
    cpus: Vec<usize>,
    work: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(move || {
        leave_function_cpus(&cpus);
        work()
    })
    .await
    .map_err(|e| JobError::Start(format!("launch task failed: {e}")))?
}

/// Puts the calling (blocking-pool) thread at normal priority on `cpus`, the CPUs kept free of
/// functions: a normal-priority thread on a function CPU waits behind real-time functions for
/// as long as the kernel lets them run (tens of milliseconds measured here).
fn leave_function_cpus(cpus: &[usize]) {
    let _ = rt::set_normal(0);
    if !cpus.is_empty() {
        let _ = rt::set_affinity(0, cpus);
    }
}

/// Runqueue wait of every thread of `pid`, µs.
fn runqueue_wait_of(pid: i32) -> u64 {
    rt::threads_of(pid)
        .into_iter()
        .filter_map(|tid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
            text.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum::<u64>()
        / 1_000
}

fn to_job_error(error: RunError) -> JobError {
    match error {
        RunError::Spawn { .. } => JobError::Start(error.to_string()),
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
