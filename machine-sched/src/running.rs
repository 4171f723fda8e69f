//! The jobs running on this machine now, each with its pid, the handle that kills it and what
//! memory pressure has done to it: what cancellation, shutdown and the memory guard
//! (`memory_guard`) need to know about running work.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tariff_types::wire::MemoryPressure;
use tariff_types::ClassId;

use crate::cgroup::InstanceCgroup;
use crate::persistent::PersistentHandle;
use crate::process::ProcessHandle;

/// How to stop a running job.
pub(crate) enum Cancel {
    /// A one-shot process.
    Exec(ProcessHandle),
    /// A call on a persistent instance (killing the instance ends the call).
    Persistent(PersistentHandle),
}

impl Cancel {
    /// Kills the process (group) the job runs in.
    fn kill(&self) {
        match self {
            Cancel::Exec(handle) => handle.kill(),
            Cancel::Persistent(handle) => handle.kill(),
        }
    }
}

/// What memory pressure did to one running job, kept until it ends.
#[derive(Default)]
struct MemoryState {
    /// The job's group while the memory guard holds it frozen: a frozen task does not die of
    /// `SIGKILL` until thawed, so every kill thaws it too.
    frozen: Option<InstanceCgroup>,
    /// When it was frozen, while it is.
    frozen_at: Option<Instant>,
    /// Time held frozen so far (earlier holds).
    held: Duration,
    /// Bytes paged out of it in earlier holds.
    swapped_out: u64,
    /// Bytes of it in swap when it was frozen, while it is: what swap holds beyond this was
    /// paged out of it. (Swap writes finish after `MADV_PAGEOUT` returns, so the figure is
    /// followed tick by tick rather than read once.)
    swap_at_freeze: Option<u64>,
    /// Bytes paged out of it in this hold.
    swapped_out_this_hold: u64,
    /// Bytes of it in swap when it was last thawed; what has left swap since came back in.
    swap_at_thaw: Option<u64>,
    /// Bytes brought back in from swap after earlier thaws.
    swapped_in: u64,
    /// Bytes brought back in from swap since the last thaw.
    swapped_in_since_thaw: u64,
    /// The guard killed it to free memory.
    killed: bool,
    /// Its timeout has passed: the guard must not freeze it again, or the kill that ends it
    /// would wait for the next thaw.
    expired: bool,
}

impl MemoryState {
    /// Ends the current hold for a thaw: adds its time and its bytes swapped out and in to
    /// the totals, and starts following swap-ins from `swap_now` (its bytes in swap now;
    /// `None` when the process is about to die with its swap). Returns the frozen group for
    /// the caller to thaw, if it was frozen.
    fn end_hold(&mut self, swap_now: Option<u64>) -> Option<InstanceCgroup> {
        if let Some(at) = self.frozen_at.take() {
            self.held += at.elapsed();
        }
        self.swap_at_thaw = swap_now;
        self.swap_at_freeze = None;
        self.swapped_out += std::mem::take(&mut self.swapped_out_this_hold);
        self.swapped_in += std::mem::take(&mut self.swapped_in_since_thaw);
        self.frozen.take()
    }
}

/// One running job.
struct Entry {
    pid: i32,
    cancel: Cancel,
    class: ClassId,
    /// Order of arrival on the machine (of starting to run): lower is earlier.
    arrival: u64,
    /// Name of its instance cgroup, when it has one.
    cgroup: Option<String>,
    memory: MemoryState,
}

/// A running job as the memory guard sees it.
#[derive(Debug, Clone)]
pub(crate) struct RunningJob {
    /// The job id.
    pub(crate) id: u64,
    /// Its class.
    pub(crate) class: ClassId,
    /// Arrival order (lower is earlier).
    pub(crate) arrival: u64,
    /// Its instance cgroup's name.
    pub(crate) cgroup: Option<String>,
    /// Whether the guard holds it frozen.
    pub(crate) frozen: bool,
    /// The guard has killed it; it has not ended yet.
    pub(crate) killed: bool,
}

/// How a job ended as far as memory pressure is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemoryOutcome {
    /// Swapped bytes and time held, for the run's report.
    pub(crate) pressure: MemoryPressure,
    /// The guard killed it to free memory.
    pub(crate) killed: bool,
}

/// Running jobs by id.
#[derive(Default)]
pub(crate) struct Running {
    /// Job id → its entry.
    jobs: Mutex<HashMap<u64, Entry>>,
    /// The next arrival number.
    next_arrival: AtomicU64,
}

impl Running {
    /// The map; a poisoned lock still holds valid entries.
    fn jobs(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that job `id` of `class` now runs in `pid`, in the instance cgroup `cgroup`.
    pub(crate) fn insert(
        &self,
        id: u64,
        pid: i32,
        cancel: Cancel,
        class: ClassId,
        cgroup: Option<String>,
    ) {
        let arrival = self.next_arrival.fetch_add(1, Ordering::Relaxed);
        self.jobs().insert(
            id,
            Entry {
                pid,
                cancel,
                class,
                arrival,
                cgroup,
                memory: MemoryState::default(),
            },
        );
    }

    /// Forgets job `id` (it ended), thawing it if the guard still held it, and says what
    /// memory pressure did to it.
    pub(crate) fn remove(&self, id: u64) -> MemoryOutcome {
        let Some(entry) = self.jobs().remove(&id) else {
            return MemoryOutcome::default();
        };
        let mut memory = entry.memory;
        if let Some(group) = memory.frozen.take() {
            let _ = group.thaw();
        }
        if let Some(at) = memory.frozen_at.take() {
            memory.held += at.elapsed();
        }
        MemoryOutcome {
            pressure: MemoryPressure {
                swapped_out_bytes: memory.swapped_out + memory.swapped_out_this_hold,
                swapped_in_bytes: memory.swapped_in + memory.swapped_in_since_thaw,
                held_us: u64::try_from(memory.held.as_micros()).unwrap_or(u64::MAX),
            },
            killed: memory.killed,
        }
    }

    /// Kills `entry`'s process, thawing it so that the kill lands.
    fn kill_entry(entry: &Entry) {
        entry.cancel.kill();
        if let Some(group) = &entry.memory.frozen {
            let _ = group.thaw();
        }
    }

    /// Kills job `id` if it is running.
    pub(crate) fn cancel(&self, id: u64) {
        if let Some(entry) = self.jobs().get(&id) {
            Self::kill_entry(entry);
        }
    }

    /// Kills job `id` to free memory; it ends with the memory-pressure error. `false` if it
    /// had already ended.
    pub(crate) fn kill_for_memory(&self, id: u64) -> bool {
        let mut jobs = self.jobs();
        let Some(entry) = jobs.get_mut(&id) else {
            return false;
        };
        entry.memory.killed = true;
        Self::kill_entry(entry);
        true
    }

    /// Kills every running job.
    pub(crate) fn cancel_all(&self) {
        for entry in self.jobs().values() {
            Self::kill_entry(entry);
        }
    }

    /// Whether no job is running.
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs().is_empty()
    }

    /// Pids of the running jobs.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.jobs().values().map(|entry| entry.pid).collect()
    }

    /// Every running job, for the memory guard.
    pub(crate) fn snapshot(&self) -> Vec<RunningJob> {
        self.jobs()
            .iter()
            .map(|(&id, entry)| RunningJob {
                id,
                class: entry.class,
                arrival: entry.arrival,
                cgroup: entry.cgroup.clone(),
                frozen: entry.memory.frozen.is_some(),
                killed: entry.memory.killed,
            })
            .collect()
    }

    /// Records that job `id`, with `swapped` bytes in swap, is now frozen in `group`. Gives
    /// the group back if the job has ended, or its timeout passed, meanwhile, so the caller
    /// can thaw it.
    pub(crate) fn frozen(
        &self,
        id: u64,
        group: InstanceCgroup,
        swapped: u64,
    ) -> Result<(), InstanceCgroup> {
        let mut jobs = self.jobs();
        let Some(entry) = jobs.get_mut(&id).filter(|e| !e.memory.expired) else {
            return Err(group);
        };
        entry.memory.frozen = Some(group);
        entry.memory.frozen_at = Some(Instant::now());
        entry.memory.swap_at_freeze = Some(swapped);
        Ok(())
    }

    /// Takes job `id`'s frozen group for thawing, and notes the time held and its bytes in
    /// swap now (`swapped`).
    pub(crate) fn thawing(&self, id: u64, swapped: u64) -> Option<InstanceCgroup> {
        let mut jobs = self.jobs();
        jobs.get_mut(&id)?.memory.end_hold(Some(swapped))
    }

    /// Job `id`'s timeout has passed: if the guard holds it frozen, thaw it now, so that the
    /// `SIGKILL` its timeout sends (which a frozen task takes only once thawed, cgroup v1)
    /// lands and the call is answered at its timeout rather than at the guard's next thaw;
    /// and never freeze it again. The time held ends here; nothing is counted as swapped
    /// back in, since the process dies with its swap. `true` if it was frozen.
    pub(crate) fn expire(&self, id: u64) -> bool {
        let mut jobs = self.jobs();
        let Some(entry) = jobs.get_mut(&id) else {
            return false;
        };
        entry.memory.expired = true;
        if entry.memory.frozen.is_none() {
            return false;
        }
        let Some(group) = entry.memory.end_hold(None) else {
            return false;
        };
        let _ = group.thaw();
        true
    }

    /// Notes that job `id` has `swapped` bytes in swap now: while frozen, what is beyond the
    /// figure at the freeze went out; once thawed, what is below the figure at the thaw came
    /// back in.
    pub(crate) fn swap_now(&self, id: u64, swapped: u64) {
        if let Some(entry) = self.jobs().get_mut(&id) {
            if let Some(at_freeze) = entry.memory.swap_at_freeze {
                entry.memory.swapped_out_this_hold = entry
                    .memory
                    .swapped_out_this_hold
                    .max(swapped.saturating_sub(at_freeze));
            } else if let Some(at_thaw) = entry.memory.swap_at_thaw {
                entry.memory.swapped_in_since_thaw = entry
                    .memory
                    .swapped_in_since_thaw
                    .max(at_thaw.saturating_sub(swapped));
            }
        }
    }
}

/// Runs `run`, job `id`'s wait for its end, and at `deadline` (its timeout, which the run
/// enforces itself by killing the process) thaws the job if the memory guard holds it frozen
/// ([`Running::expire`]): otherwise the kill would land, and the call be answered, only at the
/// guard's next thaw, which a long hold by a dearer class can put off indefinitely.
pub(crate) async fn thawed_at_deadline<F: Future>(
    running: &Running,
    id: u64,
    deadline: tokio::time::Instant,
    run: F,
) -> F::Output {
    tokio::pin!(run);
    tokio::select! {
        // The run's own timer fires at the same instant: polled first, it sends the kill
        // before the thaw, so the process does not run on past its timeout.
        biased;
        done = &mut run => done,
        () = tokio::time::sleep_until(deadline) => {
            if running.expire(id) {
                tracing::info!(job = id, "memory: timeout passed while frozen for memory: thawed so that the kill lands");
            }
            run.await
        }
    }
}
