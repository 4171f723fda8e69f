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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
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

/// How many finished top-class runs' peaks the guard remembers.
const TOP_PEAKS_KEPT: usize = 32;

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
    /// Top-class jobs on the machine (arrived, not yet ended): while there are any, the guard
    /// keeps room for them ([`Pressure::reserve_bytes`]).
    top_active: AtomicU64,
    /// What top-class runs grow to, learned from the readings.
    top_peaks: Mutex<TopPeaks>,
    /// Set, and notified, to read and decide now rather than at the next tick: a top-class
    /// job arrived, and its room is best made before it allocates.
    wake: (Mutex<bool>, Condvar),
}

/// How much memory one top-class run holds at its peak: the largest of the last
/// [`TOP_PEAKS_KEPT`] finished runs' peaks and of those running now, as the guard read them.
#[derive(Default)]
struct TopPeaks {
    /// Largest reading of each top-class job running now, by job id.
    running: HashMap<u64, u64>,
    /// Peaks of the last finished runs, oldest first.
    finished: VecDeque<u64>,
}

impl TopPeaks {
    /// Notes this tick's readings of the top-class jobs (`id`, resident bytes) and forgets
    /// the ones gone, keeping their peaks.
    fn observe(&mut self, now: &[(u64, u64)]) {
        let gone: Vec<u64> = self
            .running
            .keys()
            .filter(|id| !now.iter().any(|(n, _)| n == *id))
            .copied()
            .collect();
        for id in gone {
            if let Some(peak) = self.running.remove(&id) {
                if self.finished.len() == TOP_PEAKS_KEPT {
                    self.finished.pop_front();
                }
                self.finished.push_back(peak);
            }
        }
        for &(id, bytes) in now {
            let peak = self.running.entry(id).or_default();
            *peak = (*peak).max(bytes);
        }
    }

    /// What one top-class run is expected to hold at its peak (0 before any was seen).
    fn expected(&self) -> u64 {
        self.finished
            .iter()
            .chain(self.running.values())
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// A top-class job on the machine, from its arrival to its end (see
/// [`MemoryGuard::top_class_arrives`]).
pub struct TopClassPresence {
    guard: Arc<MemoryGuard>,
}

impl Drop for TopClassPresence {
    fn drop(&mut self) {
        self.guard.top_active.fetch_sub(1, Ordering::Relaxed);
    }
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
            top_active: AtomicU64::new(0),
            top_peaks: Mutex::default(),
            wake: (Mutex::new(false), Condvar::new()),
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

    /// A top-class job arrived on the machine: until the returned token is dropped (when it
    /// ends), the guard keeps room for what top-class runs grow to, made from cheaper classes;
    /// and it reads and decides now rather than at its next tick, so that the room is made
    /// while the job is still starting (a process start takes milliseconds; a tick is 20).
    pub fn top_class_arrives(self: &Arc<Self>) -> TopClassPresence {
        self.top_active.fetch_add(1, Ordering::Relaxed);
        let (woken, ready) = &self.wake;
        *woken.lock().unwrap_or_else(PoisonError::into_inner) = true;
        ready.notify_one();
        TopClassPresence {
            guard: Arc::clone(self),
        }
    }

    /// Waits one tick, or less if woken.
    fn wait_tick(&self) {
        let (woken, ready) = &self.wake;
        let mut woken = woken.lock().unwrap_or_else(PoisonError::into_inner);
        if !*woken {
            woken = ready
                .wait_timeout(woken, self.options.tick)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *woken = false;
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
                    self.wait_tick();
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
        self.swap_free.store(machine.swap_free_bytes, Ordering::Relaxed);
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
        let reserve = self.reserve(&instances);
        let pressure = Pressure {
            reserve_bytes: reserve,
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

    /// Room to keep for the top-class jobs on the machine: what each is expected to grow to,
    /// less what the running ones already hold (and what the kill watermark keeps anyway).
    fn reserve(&self, instances: &[Instance]) -> u64 {
        let top: Vec<(u64, u64)> = instances
            .iter()
            .filter(|i| i.class == 0)
            .map(|i| (i.id, i.resident_bytes))
            .collect();
        let mut peaks = self.top_peaks.lock().unwrap_or_else(PoisonError::into_inner);
        peaks.observe(&top);
        let active = self.top_active.load(Ordering::Relaxed);
        if active == 0 {
            return 0;
        }
        let held: u64 = top.iter().map(|(_, bytes)| bytes).sum();
        let room = (active * peaks.expected()).saturating_sub(held);
        if room == 0 {
            0
        } else {
            room + self.options.share(self.options.kill_watermark)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_peaks_keep_the_largest_of_recent_runs() {
        let mut peaks = TopPeaks::default();
        assert_eq!(peaks.expected(), 0);
        peaks.observe(&[(1, 10), (2, 30)]);
        peaks.observe(&[(1, 20)]);
        assert_eq!(peaks.expected(), 30, "job 2 ended at 30");
        peaks.observe(&[]);
        for id in 3..3 + TOP_PEAKS_KEPT as u64 {
            peaks.observe(&[(id, 5)]);
        }
        peaks.observe(&[]);
        assert_eq!(peaks.expected(), 5, "older peaks are forgotten");
    }
}
