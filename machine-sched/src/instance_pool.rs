//! Idle persistent instances, by tenant, function and version, waiting for their next call or for
//! their keep-alive to run out.
//!
//! An instance's lifecycle state is where it is, not a field: a function with no instance is
//! *cold*; an instance started for a call is *warming* until it answers, and one serving a call
//! is *hot* — both are held by the task running that call (`persistent_run`), never by the
//! pool; an instance in the pool is *warm* (idle). A dead or expired instance is taken out by
//! [`InstancePool::take_expired`] and retired.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::cgroup::InstanceCgroup;
use crate::persistent::PersistentProcess;

/// The key under which idle instances wait: the invoking tenant and a function at one
/// version (a function shared between tenants gets an instance per tenant).
pub(crate) type PoolKey = (String, String, u64);

/// A persistent instance and its housing.
pub(crate) struct Instance {
    /// Its name (also its cgroup's and working directory's).
    pub(crate) name: String,
    /// Its process.
    pub(crate) process: PersistentProcess,
    /// Its cgroup, when cgroups are available.
    pub(crate) cgroup: Option<InstanceCgroup>,
    /// Its private working directory.
    pub(crate) work_dir: PathBuf,
    /// When it last went idle.
    pub(crate) idle_since: Instant,
    /// How long it may stay idle.
    pub(crate) keep_alive: Duration,
}

/// The idle (warm) instances of this machine.
#[derive(Default)]
pub(crate) struct InstancePool {
    /// Idle instances per function and version, the most recently idled last.
    idle: Mutex<HashMap<PoolKey, Vec<Instance>>>,
}

impl InstancePool {
    /// The map; a poisoned lock still holds valid instances.
    fn idle(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Instance>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the most recently idled instance of `key`, if there is one.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<Instance> {
        self.idle().get_mut(key).and_then(Vec::pop)
    }

    /// Puts an instance that just answered back, idle from now for `keep_alive`.
    pub(crate) fn put(&self, key: PoolKey, mut instance: Instance, keep_alive: Duration) {
        instance.idle_since = Instant::now();
        instance.keep_alive = keep_alive;
        self.idle().entry(key).or_default().push(instance);
    }

    /// Takes out every instance that is dead or idle past its keep-alive.
    pub(crate) fn take_expired(&self) -> Vec<Instance> {
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
    }

    /// Takes out every instance (at shutdown).
    pub(crate) fn take_all(&self) -> Vec<Instance> {
        self.idle().drain().flat_map(|(_, v)| v).collect()
    }

    /// Functions with at least one idle instance, sorted, each once.
    pub(crate) fn warm_functions(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .idle()
            .iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|((_, name, _), _)| name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Pids of the idle instances.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.idle()
            .values()
            .flatten()
            .map(|i| i.process.pid())
            .collect()
    }
}
