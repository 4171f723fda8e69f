//! Housing for instances: each new instance gets a name, a cgroup (new, or an emptied one from
//! the pool) and a private working directory, and a launch spec that uses them; a retired
//! instance's leftovers are killed, its cgroup emptied for reuse and its directory removed.
//!
//! Housing work touches the file system and the cgroup tree, so callers run it on a launch
//! thread, below the dispatcher's own priority ([`crate::priority::on_launch_thread`]);
//! retiring runs at normal priority on its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tariff_types::FunctionSpec;
use tracing::{debug, warn};

use crate::cgroup::rt_budget::RtBudget;
use crate::cgroup::{CgroupRoot, CgroupVersion, InstanceCgroup};
use crate::job::{JobError, StartError};
use crate::launch::LaunchSpec;
use crate::priority::off_function_cpus;

/// Most empty instance cgroups kept for reuse.
const MAX_POOLED_CGROUPS: usize = 64;

/// Empty instance cgroups made when the machine starts, so the first cold starts reuse one
/// instead of creating it: creating one (a directory in every hierarchy) made the first exec
/// call on an idle live cluster take 14.7 ms against ~1.7 ms for the next ones.
pub(crate) const PREWARMED_CGROUPS: usize = 4;

/// Name prefix of the cgroups made at start (instances are `i<n>`).
const PREWARMED_PREFIX: &str = "p";

/// Directory name of the v1 cpuset hierarchy's mount.
const CPUSET_MOUNT: &str = "cpuset";

/// A new instance's launch spec, cgroup, working directory, and the cgroups it joins only
/// after it has been raised.
pub(crate) struct Prepared {
    /// How to start its process.
    pub(crate) spec: LaunchSpec,
    /// Its cgroup, when cgroups are available.
    pub(crate) cgroup: Option<InstanceCgroup>,
    /// Its private working directory.
    pub(crate) work_dir: PathBuf,
    /// The `cgroup.procs` files that confine it to the function CPUs, joined after the raise
    /// ([`crate::priority::Priority::confine`]).
    pub(crate) confining: Vec<PathBuf>,
}

/// Names, cgroups and working directories of instances, and the pool of emptied cgroups.
pub(crate) struct Provisioner {
    /// Per-instance cgroups, when available.
    cgroups: Option<CgroupRoot>,
    /// The real-time budget group every new process joins before `exec`, when there is one.
    rt_budget: Option<RtBudget>,
    /// `(uid, gid)` functions run as, when the dispatcher is root.
    user: Option<(u32, u32)>,
    /// Parent of the instances' private working directories.
    work_root: PathBuf,
    /// CPUs outside the function CPUs, where new processes exec before they are raised and
    /// housing work runs.
    spawn_cpus: Vec<usize>,
    /// Empty instance cgroups kept for reuse: creating and removing cgroups takes the kernel's
    /// global cgroup lock and waits for RCU, which under load cost tens of milliseconds per
    /// cold start here (p90 81 ms measured), against microseconds to reuse one.
    cgroup_pool: Arc<Mutex<Vec<InstanceCgroup>>>,
    /// Number of the next instance name.
    next_instance: AtomicU64,
}

impl Provisioner {
    /// Housing under `work_root` (and `cgroups`, and `rt_budget`'s group), for functions run
    /// as `user`, launched on `spawn_cpus`.
    pub(crate) fn new(
        cgroups: Option<CgroupRoot>,
        rt_budget: Option<RtBudget>,
        user: Option<(u32, u32)>,
        work_root: PathBuf,
        spawn_cpus: Vec<usize>,
    ) -> Self {
        Self {
            cgroups,
            rt_budget,
            user,
            work_root,
            spawn_cpus,
            cgroup_pool: Arc::default(),
            next_instance: AtomicU64::new(1),
        }
    }

    /// Creates `count` empty instance cgroups for the pool (best effort: a failure only means
    /// a later cold start creates its own).
    pub(crate) fn prewarm(&self, count: usize) {
        let Some(root) = &self.cgroups else { return };
        let mut made = Vec::with_capacity(count);
        for i in 0..count {
            match root.create(&format!("{PREWARMED_PREFIX}{i}")) {
                Ok(cg) => made.push(cg),
                Err(e) => {
                    debug!(error = %e, "could not pre-create an instance cgroup");
                    break;
                }
            }
        }
        self.pool().extend(made);
    }

    /// The instance cgroups' root, when the machine has cgroups.
    pub(crate) fn cgroups(&self) -> Option<&CgroupRoot> {
        self.cgroups.as_ref()
    }

    /// The CPUs kept free of functions, where launch and housing work runs.
    pub(crate) fn spawn_cpus(&self) -> &[usize] {
        &self.spawn_cpus
    }

    /// A name no other instance of this machine has had.
    pub(crate) fn new_instance_name(&self) -> String {
        format!("i{}", self.next_instance.fetch_add(1, Ordering::Relaxed))
    }

    /// The cgroup pool; a poisoned lock still holds valid cgroups.
    fn pool(&self) -> MutexGuard<'_, Vec<InstanceCgroup>> {
        self.cgroup_pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cgroup and working directory of a new instance, and its launch spec.
    ///
    /// The child joins its cgroups before `exec`, except those that confine it to the function
    /// CPUs (v1 `cpuset`; the whole group in v2, where one directory holds every controller):
    /// a child confined there before it is raised would be a normal task on CPUs busy with
    /// real-time functions, and could wait for the RT throttle to start at all. Those are
    /// joined by [`crate::priority::Priority::confine`] right after the raise. The real-time
    /// budget group is joined before `exec` too: only there may it become real-time on every
    /// CPU, and a normal task there competes as it would outside.
    pub(crate) fn prepare(
        &self,
        name: &str,
        function: &FunctionSpec,
    ) -> Result<Prepared, JobError> {
        let pooled = self.pool().pop();
        let cgroup = match (&self.cgroups, pooled) {
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
        let work_dir = crate::isolation::private_work_dir(&self.work_root, name, self.user)
            .map_err(StartError::WorkDir)?;
        let (confining, mut joined_early): (Vec<PathBuf>, Vec<PathBuf>) = cgroup
            .as_ref()
            .map(InstanceCgroup::procs_files)
            .unwrap_or_default()
            .into_iter()
            .partition(|file| {
                self.cgroups
                    .as_ref()
                    .is_some_and(|root| root.version() == CgroupVersion::V2)
                    || file.components().any(|c| c.as_os_str() == CPUSET_MOUNT)
            });
        joined_early.extend(self.rt_budget.as_ref().map(RtBudget::procs_file));
        let spec = LaunchSpec {
            command: function.command.clone(),
            env: function.env.clone(),
            work_dir: Some(work_dir.clone()),
            user: self.user,
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

    /// Retires an instance off the answer's path: kills what is left in its cgroup and returns
    /// the emptied cgroup to the pool (or removes it), and removes its working directory.
    pub(crate) fn retire(&self, cgroup: Option<InstanceCgroup>, work_dir: PathBuf) {
        let pool = Arc::clone(&self.cgroup_pool);
        let cpus = self.spawn_cpus.clone();
        tokio::task::spawn_blocking(move || {
            off_function_cpus(&cpus, || {
                let _ = crate::isolation::remove_work_dir(&work_dir);
                let Some(cg) = cgroup else { return };
                let _ = cg.kill_all();
                let empty = cg.processes().is_ok_and(|p| p.is_empty());
                let mut pool = pool.lock().unwrap_or_else(PoisonError::into_inner);
                if empty && pool.len() < MAX_POOLED_CGROUPS && cg.reset_memory_peak().is_ok() {
                    pool.push(cg);
                } else {
                    drop(pool);
                    remove_cgroup(cg);
                }
            });
        });
    }

    /// Retires an instance now, on this thread (at shutdown): removes its cgroup and its
    /// working directory.
    pub(crate) fn retire_now(&self, cgroup: Option<InstanceCgroup>, work_dir: &Path) {
        if let Some(cg) = cgroup {
            remove_cgroup(cg);
        }
        let _ = crate::isolation::remove_work_dir(work_dir);
    }

    /// Removes the pooled cgroups, every instance cgroup left, and the dispatcher's cgroup
    /// subtree (at shutdown, once every instance is retired).
    pub(crate) fn remove_all_cgroups(&self) {
        let pooled = std::mem::take(&mut *self.pool());
        for cg in pooled {
            let _ = cg.remove();
        }
        if let Some(root) = &self.cgroups {
            if let Err(e) = root.clean_stale() {
                debug!(error = %e, "cleaning instance cgroups at shutdown");
            }
            root.remove_base();
        }
        if let Some(budget) = &self.rt_budget {
            if let Err(e) = budget.remove() {
                debug!(error = %e, "removing the real-time budget group at shutdown");
            }
        }
    }
}

/// Kills what is left in an instance cgroup and removes it.
fn remove_cgroup(cg: InstanceCgroup) {
    let _ = cg.kill_all();
    if let Err(e) = cg.remove() {
        debug!(error = %e, "removing an instance cgroup");
    }
}
