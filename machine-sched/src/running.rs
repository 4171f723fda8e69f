//! The jobs running on this machine now, each with its pid and the handle that kills it: what
//! cancellation, shutdown and the memory reading need to know about running work.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

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

/// Running jobs by id.
#[derive(Default)]
pub(crate) struct Running {
    /// Job id → (pid, how to stop it).
    jobs: Mutex<HashMap<u64, (i32, Cancel)>>,
}

impl Running {
    /// The map; a poisoned lock still holds valid entries.
    fn jobs(&self) -> MutexGuard<'_, HashMap<u64, (i32, Cancel)>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that job `id` now runs in `pid`.
    pub(crate) fn insert(&self, id: u64, pid: i32, cancel: Cancel) {
        self.jobs().insert(id, (pid, cancel));
    }

    /// Forgets job `id` (it ended).
    pub(crate) fn remove(&self, id: u64) {
        self.jobs().remove(&id);
    }

    /// Kills job `id` if it is running.
    pub(crate) fn cancel(&self, id: u64) {
        if let Some((_, cancel)) = self.jobs().get(&id) {
            cancel.kill();
        }
    }

    /// Kills every running job.
    pub(crate) fn cancel_all(&self) {
        for (_, cancel) in self.jobs().values() {
            cancel.kill();
        }
    }

    /// Whether no job is running.
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs().is_empty()
    }

    /// Pids of the running jobs.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.jobs().values().map(|(pid, _)| *pid).collect()
    }
}
