//! The memory guard: keeps the functions of one machine inside the memory they may use
//! (`--memory`) by swapping out the cheapest classes' stopped work, and kills only when swap
//! runs out, cheapest class and latest arrival first (issue 15; paper §3.2 and §4.3).
//!
//! The decision is the policy crate's pure [`tariff_policy::swap::decide`], the same choosers
//! the simulator runs; this module is its thin I/O: every [`MemoryOptions::tick`] it reads
//! what the functions' cgroups hold (anonymous, file, swapped) and what swap the machine has,
//! asks for a decision, and acts:
//!
//! * **suspend**: freeze the instance's cgroup (it keeps its place: a frozen process is simply
//!   not scheduled) and page its memory out with `process_madvise(MADV_PAGEOUT)` in batches of
//!   [`PAGE_OUT_BATCH_BYTES`] (`page_out`; docs/memory.md says why this mechanism);
//! * **resume**: once it fits above the low watermark and is next in run order, start reading
//!   its memory back (`MADV_WILLNEED`, measured 2.5× faster than faulting page by page) and
//!   thaw it;
//! * **kill**: `SIGKILL` through the job's own handle, so its call is answered with
//!   [`crate::job::JobError::KilledUnderMemoryPressure`].
//!
//! The kernel must not get there first: the functions' subtree is limited to `--memory` with
//! the OOM killer off (v1 `memory.oom_control`), so at the limit allocations wait for the guard
//! instead of dying, and the dispatcher, outside the subtree, is never a candidate. The top
//! class's groups are kept out of the kernel's own reclaim at the limit (swappiness 0), so only
//! the guard, which chooses by class, ever swaps them.
//!
//! The guard's work runs on a thread of its own at normal priority on the CPUs kept free of
//! real-time functions, never on the top class's path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tariff_policy::swap::{decide, Instance, Pressure};
use tracing::{debug, info, warn};

use crate::cgroup::{CgroupError, MemoryLimit};
use crate::page_out::{page_out, prefetch, MachineMemory, PAGE_OUT_BATCH_BYTES};
use crate::parts::Parts;
use crate::priority::leave_function_cpus;
use crate::running::RunningJob;

/// Default share of `--memory` below which free memory starts swapping out.
pub const DEFAULT_LOW_WATERMARK: f64 = 0.15;
/// Default share of `--memory` that swapping out frees up to.
pub const DEFAULT_HIGH_WATERMARK: f64 = 0.30;
/// Default share of `--memory` below which, with swap exhausted, the guard kills.
pub const DEFAULT_KILL_WATERMARK: f64 = 0.05;
/// Default interval between two readings: a function allocating at the measured ~1.6 GB/s
/// page-out rate takes about 30 ms to cross a 5 % band of 1 GiB.
pub const DEFAULT_TICK: Duration = Duration::from_millis(20);

/// Name of the guard's thread.
const GUARD_THREAD: &str = "memory-guard";

/// What the guard enforces, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct MemoryOptions {
    /// Memory every function on the machine may use together, in bytes.
    pub limit_bytes: u64,
    /// Share of the limit below which free memory triggers swapping out.
    pub low_watermark: f64,
    /// Share of the limit swapping out frees up to.
    pub high_watermark: f64,
    /// Share of the limit below which, with swap exhausted, the guard kills.
    pub kill_watermark: f64,
    /// Interval between two readings.
    pub tick: Duration,
}

impl MemoryOptions {
    /// The default watermarks for a machine whose functions may use `limit_bytes`.
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            limit_bytes,
            low_watermark: DEFAULT_LOW_WATERMARK,
            high_watermark: DEFAULT_HIGH_WATERMARK,
            kill_watermark: DEFAULT_KILL_WATERMARK,
            tick: DEFAULT_TICK,
        }
    }

    fn share(&self, share: f64) -> u64 {
        (share * self.limit_bytes as f64) as u64
    }
}

/// Why the guard could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemoryGuardError {
    /// The machine runs without instance cgroups: there is nothing to read or freeze.
    #[error("no instance cgroups: memory cannot be enforced or swapped by class")]
    NoCgroups,
    /// The limit could not be set.
    #[error("setting the functions' memory limit: {0}")]
    Limit(#[from] CgroupError),
    /// The guard runs already.
    #[error("the memory guard runs already")]
    AlreadyStarted,
    /// The guard's thread could not be started.
    #[error("starting the memory guard's thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// How the guard started, for the dispatcher's log and status.
#[derive(Debug, Clone, Copy)]
pub struct GuardStart {
    /// The limit in force.
    pub limit: MemoryLimit,
    /// The machine's memory and swap at start.
    pub machine: MachineMemory,
}

/// What the guard last read, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardReading {
    /// What the functions hold in memory.
    pub used_bytes: u64,
    /// What they may still take (`--memory` less what they hold, bounded by the machine).
    pub free_bytes: u64,
    /// The machine's swap space.
    pub swap_total_bytes: u64,
    /// What is left of it.
    pub swap_free_bytes: u64,
}

/// The guard of one machine.
pub struct MemoryGuard {
    parts: Arc<Parts>,
    options: MemoryOptions,
    /// Free memory for functions as last read, in bytes.
    free: AtomicU64,
    /// What the functions held in memory as last read, in bytes.
    used: AtomicU64,
    /// The machine's swap space and what was left of it as last read, in bytes.
    swap_total: AtomicU64,
    swap_free: AtomicU64,
    /// Instance groups last set protected (`true`) or not, so each is written once per change.
    protected: Mutex<HashMap<String, bool>>,
}

impl MemoryGuard {
    /// Enforces the limit and logs whether the machine has swap.
    pub(crate) fn start(
        parts: Arc<Parts>,
        options: MemoryOptions,
    ) -> Result<(Arc<MemoryGuard>, GuardStart), MemoryGuardError> {
        let root = parts
            .provision
            .cgroups()
            .ok_or(MemoryGuardError::NoCgroups)?;
        let limit = root.limit_memory(options.limit_bytes)?;
        let machine = MachineMemory::read().unwrap_or_default();
        if machine.swap_total_bytes == 0 {
            warn!(
                limit_bytes = limit.limit_bytes,
                "memory: no swap on this machine: under memory pressure functions are killed, \
                 cheapest class and latest arrival first, never swapped"
            );
        } else {
            info!(
                limit_bytes = limit.limit_bytes,
                swap_total_bytes = machine.swap_total_bytes,
                swap_free_bytes = machine.swap_free_bytes,
                "memory: swap present: under memory pressure the cheapest classes' stopped \
                 functions are swapped out; kills only once swap is exhausted"
            );
        }
        if !limit.oom_killer_disabled {
            warn!("memory: the kernel's OOM killer cannot be turned off here (cgroup v2): the guard must act before the limit");
        }
        let guard = Arc::new(MemoryGuard {
            parts,
            options,
            free: AtomicU64::new(options.limit_bytes),
            used: AtomicU64::new(0),
            swap_total: AtomicU64::new(machine.swap_total_bytes),
            swap_free: AtomicU64::new(machine.swap_free_bytes),
            protected: Mutex::default(),
        });
        Ok((guard, GuardStart { limit, machine }))
    }

    /// Free memory for functions as last read.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// The last reading, for the dispatcher's status report.
    pub fn reading(&self) -> GuardReading {
        GuardReading {
            used_bytes: self.used.load(Ordering::Relaxed),
            free_bytes: self.free.load(Ordering::Relaxed),
            swap_total_bytes: self.swap_total.load(Ordering::Relaxed),
            swap_free_bytes: self.swap_free.load(Ordering::Relaxed),
        }
    }

    /// Reads, decides and acts every tick until `stop` is set, on a thread of its own at
    /// normal priority off the function CPUs: not on the runtime's threads, which run at
    /// real-time priority, and not on its blocking pool, which the launches share.
    pub fn spawn(self: Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(GUARD_THREAD.into())
            .spawn(move || {
                leave_function_cpus(self.parts.provision.spawn_cpus());
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(self.options.tick);
                    self.tick_once();
                }
            })
            .map(drop)
    }

    /// One reading, decision and action.
    pub fn tick_once(&self) {
        let Some(root) = self.parts.provision.cgroups() else {
            return;
        };
        let Ok(total) = root.memory_stat() else {
            return;
        };
        let machine = MachineMemory::read().unwrap_or_default();
        let free = self
            .options
            .limit_bytes
            .saturating_sub(total.resident())
            .min(machine.available_bytes);
        self.free.store(free, Ordering::Relaxed);
        self.used.store(total.resident(), Ordering::Relaxed);
        self.swap_total
            .store(machine.swap_total_bytes, Ordering::Relaxed);
        self.swap_free
            .store(machine.swap_free_bytes, Ordering::Relaxed);
        let jobs = self.parts.running.snapshot();
        let mut instances = Vec::with_capacity(jobs.len());
        let mut kill_pending = false;
        for job in &jobs {
            kill_pending |= job.killed;
            let Some(name) = &job.cgroup else { continue };
            let Ok(group) = root.open(name) else { continue };
            let Ok(stat) = group.memory_stat() else {
                continue;
            };
            self.protect(name, job, &group);
            self.parts.running.swap_now(job.id, stat.swapped);
            instances.push(Instance {
                id: job.id,
                class: job.class.0,
                arrival: job.arrival,
                resident_bytes: stat.resident(),
                swapped_bytes: stat.swapped,
                running: !job.frozen,
            });
        }
        let pressure = Pressure {
            free_bytes: free,
            low_watermark: self.options.share(self.options.low_watermark),
            high_watermark: self.options.share(self.options.high_watermark),
            kill_watermark: self.options.share(self.options.kill_watermark),
            swap_free_bytes: machine.swap_free_bytes,
        };
        let mut actions = decide(&instances, &pressure);
        if kill_pending {
            // A killed function takes a moment to exit and free its memory: one kill at a
            // time, or one allocation spike would kill several.
            actions.kill.clear();
        }
        let class_of = |id: u64| jobs.iter().find(|j| j.id == id).map(|j| j.class.0);
        for &id in &actions.kill {
            let held = instances
                .iter()
                .find(|i| i.id == id)
                .map(|i| i.resident_bytes + i.swapped_bytes);
            if self.parts.running.kill_for_memory(id) {
                warn!(job = id, class = ?class_of(id), held_bytes = ?held, free, swap_free = machine.swap_free_bytes, "memory exhausted: killed the cheapest class's latest arrival");
            }
        }
        for &id in &actions.suspend {
            self.suspend(root, &jobs, id, free);
        }
        for &id in &actions.swap_out {
            if let Some(job) = jobs.iter().find(|j| j.id == id) {
                if let Some(group) = job.cgroup.as_ref().and_then(|n| root.open(n).ok()) {
                    self.page_out_group(id, &group);
                }
            }
        }
        for &id in &actions.resume {
            let Some(job) = jobs.iter().find(|j| j.id == id) else {
                continue;
            };
            let swapped = job
                .cgroup
                .as_ref()
                .and_then(|n| root.open(n).ok())
                .and_then(|g| g.memory_stat().ok())
                .map_or(0, |s| s.swapped);
            if let Some(group) = self.parts.running.thawing(id, swapped) {
                for pid in group.processes().unwrap_or_default() {
                    if let Err(e) = prefetch(pid) {
                        debug!(job = id, pid, error = %e, "memory: prefetch failed");
                    }
                }
                match group.thaw() {
                    Ok(()) => debug!(
                        job = id,
                        class = job.class.0,
                        swapped,
                        free,
                        "memory: resumed"
                    ),
                    Err(e) => warn!(job = id, error = %e, "memory: could not thaw"),
                }
            }
        }
    }

    /// Keeps the top class's group out of the kernel's own reclaim, and lets every other
    /// class's in (a pooled group may have served the top class before).
    fn protect(&self, name: &str, job: &RunningJob, group: &crate::cgroup::InstanceCgroup) {
        let protect = job.class.0 == 0;
        let mut protected = self
            .protected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if protected.get(name) != Some(&protect) {
            if let Err(e) = group.protect_from_swap(protect) {
                debug!(group = name, error = %e, "could not set the group's swap protection");
            }
            protected.insert(name.to_owned(), protect);
        }
    }

    /// Freezes job `id` and pages its memory out.
    fn suspend(&self, root: &crate::cgroup::CgroupRoot, jobs: &[RunningJob], id: u64, free: u64) {
        let Some(job) = jobs.iter().find(|j| j.id == id) else {
            return;
        };
        let Some(group) = job.cgroup.as_ref().and_then(|n| root.open(n).ok()) else {
            return;
        };
        if let Err(e) = group.freeze() {
            warn!(job = id, error = %e, "memory: could not freeze");
            let _ = group.thaw();
            return;
        }
        let paging = job.cgroup.as_ref().and_then(|n| root.open(n).ok());
        let swapped = group.memory_stat().map_or(0, |s| s.swapped);
        if let Err(group) = self.parts.running.frozen(id, group, swapped) {
            // It ended between the reading and the freeze.
            let _ = group.thaw();
            return;
        }
        debug!(job = id, class = job.class.0, free, "memory: suspended");
        if let Some(group) = paging {
            self.page_out_group(id, &group);
        }
    }

    /// Pages out every process of `group` (job `id`'s), then has the kernel reclaim the group,
    /// which frees the pages just written (they stay in RAM as swap cache otherwise). The
    /// swap figure may still grow after this returns; the next ticks credit it to the job
    /// (`swap_now`).
    fn page_out_group(&self, id: u64, group: &crate::cgroup::InstanceCgroup) {
        let mut advised = 0;
        for pid in group.processes().unwrap_or_default() {
            match page_out(pid, PAGE_OUT_BATCH_BYTES, || true) {
                Ok(bytes) => advised += bytes,
                Err(e) => debug!(job = id, pid, error = %e, "memory: page-out failed"),
            }
        }
        // The written pages stay in RAM as swap cache until reclaimed: free them now.
        if let Err(e) = group.reclaim() {
            debug!(job = id, error = %e, "memory: reclaim after page-out failed");
        }
        debug!(job = id, advised, "memory: paged out");
    }
}
