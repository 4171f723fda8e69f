//! cgroup v1: one directory per instance in each of the `memory`, `cpuacct`, `freezer`, `pids`
//! and `cpuset` hierarchies that are mounted (never `cpu`; see the parent module).
//!
//! `memory` is the primary hierarchy: its `cgroup.procs` and `tasks` say who is in the group.
//! `cpuset` needs care: a new v1 cpuset group has empty `cpuset.cpus`/`cpuset.mems` and refuses
//! tasks (`ENOSPC`) until they are set, so every group we create copies them from its parent,
//! and the base sets `cgroup.clone_children` so that the kernel does it for instance groups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    create_dir, read_file, read_ids, read_optional, read_u64, stat_value, subdir_names, wait_until,
    write_file, CgroupError, GroupOps, MemoryLimit, MemoryStat, V1Controller, CGROUP_PROCS,
    FREEZE_DEADLINE, RECLAIM_FLOOR_BYTES,
};

/// Every thread id of the group.
const TASKS: &str = "tasks";
/// Total CPU time of the group, in nanoseconds.
const CPUACCT_USAGE: &str = "cpuacct.usage";
/// Memory charged now, in bytes.
const MEMORY_USAGE: &str = "memory.usage_in_bytes";
/// Peak memory since creation or the last write of `0`, in bytes.
const MEMORY_MAX_USAGE: &str = "memory.max_usage_in_bytes";
/// `FROZEN`, `FREEZING` or `THAWED`; written with `FROZEN` or `THAWED`.
const FREEZER_STATE: &str = "freezer.state";
const FROZEN: &str = "FROZEN";
const THAWED: &str = "THAWED";
/// CPUs a cpuset group's tasks may run on.
const CPUSET_CPUS: &str = "cpuset.cpus";
/// Memory nodes a cpuset group's tasks may allocate from.
const CPUSET_MEMS: &str = "cpuset.mems";
/// `1` makes the kernel copy the parent's cpuset settings into new child groups.
const CLONE_CHILDREN: &str = "cgroup.clone_children";
/// What writing `0` to `memory.max_usage_in_bytes` means: reset to the current usage.
const RESET_PEAK: &str = "0";
/// Nanoseconds per microsecond, for `cpuacct.usage`.
const NS_PER_US: u64 = 1_000;
/// Memory by kind, this group and its descendants (`total_*` keys).
const MEMORY_STAT: &str = "memory.stat";
const STAT_ANON: &str = "total_rss";
const STAT_FILE: &str = "total_cache";
/// Present only with swap accounting (`memory.memsw.*`).
const STAT_SWAP: &str = "total_swap";
/// The limit on RAM the group and its descendants may hold.
const MEMORY_LIMIT: &str = "memory.limit_in_bytes";
/// The limit on RAM plus swap; must stay at or above `memory.limit_in_bytes`.
const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
/// No limit, as v1 limit files take it.
const UNLIMITED: &str = "-1";
/// `oom_kill_disable 0|1` (and `under_oom`); writing `1` turns the OOM killer off.
const OOM_CONTROL: &str = "memory.oom_control";
const OOM_KILL_DISABLE: &str = "1";
/// How readily the kernel's reclaim swaps the group's anonymous memory; 0 never at its limit.
const SWAPPINESS: &str = "memory.swappiness";
/// The kernel's default swappiness, restored when a group is no longer protected.
const DEFAULT_SWAPPINESS: &str = "60";
const NO_SWAPPINESS: &str = "0";

/// The dispatcher's base group in each v1 hierarchy it uses.
#[derive(Debug)]
pub(crate) struct V1Root {
    /// Controller → `<mount>/<base>`.
    bases: BTreeMap<V1Controller, PathBuf>,
}

impl V1Root {
    /// Creates `<mount>/<base>` in every hierarchy; `memory` and `freezer` are required.
    pub(crate) fn new(
        mounts: BTreeMap<V1Controller, PathBuf>,
        base: &Path,
    ) -> Result<V1Root, CgroupError> {
        for required in [V1Controller::Memory, V1Controller::Freezer] {
            if !mounts.contains_key(&required) {
                return Err(CgroupError::NoHierarchy {
                    reason: format!("cgroup v1 without a {} hierarchy", required.name()),
                });
            }
        }
        let mut bases = BTreeMap::new();
        for (controller, mount) in mounts {
            let dir = mount.join(base);
            if controller == V1Controller::Cpuset {
                // Create level by level: each level must have CPUs and memory nodes before the
                // next can hold tasks.
                let mut parent = mount.clone();
                for component in base.components() {
                    let child = parent.join(component);
                    create_dir(&child)?;
                    inherit_cpuset(&child, &parent)?;
                    parent = child;
                }
                write_file(&dir.join(CLONE_CHILDREN), "1")?;
            } else {
                create_dir(&dir)?;
            }
            bases.insert(controller, dir);
        }
        if !bases.contains_key(&V1Controller::Cpuacct) {
            tracing::warn!("no separate cpuacct hierarchy: instance CPU time is unavailable");
        }
        Ok(V1Root { bases })
    }

    /// The base's memory directory; `memory` is required by [`V1Root::new`].
    fn memory_base(&self) -> &Path {
        &self.bases[&V1Controller::Memory]
    }

    /// Limits the base's RAM to `limit_bytes`, leaves swap unlimited (`memsw` first, so it
    /// never falls below the RAM limit) and turns the OOM killer off for the subtree.
    pub(crate) fn limit_memory(&self, limit_bytes: u64) -> Result<MemoryLimit, CgroupError> {
        let base = self.memory_base();
        let memsw = base.join(MEMSW_LIMIT);
        if memsw.exists() {
            write_file(&memsw, UNLIMITED)?;
        }
        write_file(&base.join(MEMORY_LIMIT), &limit_bytes.to_string())?;
        let oom_killer_disabled = write_file(&base.join(OOM_CONTROL), OOM_KILL_DISABLE).is_ok();
        Ok(MemoryLimit {
            limit_bytes,
            oom_killer_disabled,
        })
    }

    /// What the whole subtree holds.
    pub(crate) fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        read_memory_stat(self.memory_base())
    }

    /// `<mount>/<base>` of every hierarchy.
    pub(crate) fn base_dirs(&self) -> Vec<PathBuf> {
        self.bases.values().cloned().collect()
    }

    /// Writes `cpus` to the base's `cpuset.cpus` and copies `cpuset.mems` from its parent.
    pub(crate) fn confine_cpus(&self, cpus: &str) -> Result<bool, CgroupError> {
        let Some(base) = self.bases.get(&V1Controller::Cpuset) else {
            return Ok(false);
        };
        if let Some(parent) = base.parent() {
            let mems = read_file(&parent.join(CPUSET_MEMS))?;
            write_file(&base.join(CPUSET_MEMS), mems.trim())?;
        }
        write_file(&base.join(CPUSET_CPUS), cpus)?;
        Ok(true)
    }

    /// Creates `name` in every hierarchy.
    pub(crate) fn create(&self, name: &str) -> Result<V1Group, CgroupError> {
        let group = self.open(name);
        for (controller, dir) in &group.dirs {
            create_dir(dir)?;
            if *controller == V1Controller::Cpuset {
                // clone_children already did this on a real kernel; fixtures need it.
                inherit_cpuset(dir, &self.bases[controller])?;
            }
        }
        Ok(group)
    }

    /// The group `name` without touching the filesystem (for stale groups).
    pub(crate) fn open(&self, name: &str) -> V1Group {
        V1Group {
            dirs: self
                .bases
                .iter()
                .map(|(c, base)| (*c, base.join(name)))
                .collect(),
        }
    }

    /// Instance groups present under the base in any hierarchy.
    pub(crate) fn instance_names(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for base in self.bases.values() {
            names.extend(subdir_names(base)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Copies `cpuset.cpus` and `cpuset.mems` from `parent` into `dir` where `dir`'s are empty.
fn inherit_cpuset(dir: &Path, parent: &Path) -> Result<(), CgroupError> {
    for file in [CPUSET_CPUS, CPUSET_MEMS] {
        let own = read_optional(&dir.join(file))?.unwrap_or_default();
        if own.trim().is_empty() {
            let inherited = read_file(&parent.join(file))?;
            write_file(&dir.join(file), inherited.trim())?;
        }
    }
    Ok(())
}

/// One instance's directory in each v1 hierarchy.
#[derive(Debug)]
pub(crate) struct V1Group {
    dirs: BTreeMap<V1Controller, PathBuf>,
}

impl V1Group {
    fn dir(&self, controller: V1Controller) -> Option<&PathBuf> {
        self.dirs.get(&controller)
    }

    /// `memory` is required by [`V1Root::new`], so this always exists.
    fn memory_dir(&self) -> &Path {
        &self.dirs[&V1Controller::Memory]
    }

    fn freezer_state(&self) -> PathBuf {
        self.dirs[&V1Controller::Freezer].join(FREEZER_STATE)
    }
}

impl GroupOps for V1Group {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.values().map(|d| d.join(CGROUP_PROCS)).collect()
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.values().cloned().collect()
    }

    fn primary_procs(&self) -> PathBuf {
        self.memory_dir().join(CGROUP_PROCS)
    }

    fn threads(&self) -> Result<Vec<i32>, CgroupError> {
        read_ids(&self.memory_dir().join(TASKS))
    }

    fn cpu_usage_us(&self) -> Result<u64, CgroupError> {
        let dir = self
            .dir(V1Controller::Cpuacct)
            .ok_or(CgroupError::Unsupported {
                what: "CPU usage (no separate cpuacct hierarchy)",
            })?;
        Ok(read_u64(&dir.join(CPUACCT_USAGE))? / NS_PER_US)
    }

    fn memory_current(&self) -> Result<u64, CgroupError> {
        read_u64(&self.memory_dir().join(MEMORY_USAGE))
    }

    fn memory_peak(&self) -> Result<u64, CgroupError> {
        read_u64(&self.memory_dir().join(MEMORY_MAX_USAGE))
    }

    fn reset_memory_peak(&self) -> Result<bool, CgroupError> {
        write_file(&self.memory_dir().join(MEMORY_MAX_USAGE), RESET_PEAK)?;
        Ok(true)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let path = self.freezer_state();
        let target = if frozen { FROZEN } else { THAWED };
        write_file(&path, target)?;
        let done = wait_until(FREEZE_DEADLINE, || {
            let state = read_file(&path)?;
            if state.trim() == target {
                return Ok(true);
            }
            if frozen {
                // A task that was busy in the kernel leaves the group FREEZING; asking again
                // makes the freezer retry it.
                write_file(&path, target)?;
            }
            Ok(false)
        })?;
        if done {
            Ok(())
        } else {
            Err(CgroupError::FreezeTimeout {
                path,
                waited: FREEZE_DEADLINE,
            })
        }
    }

    fn kill_by_kernel(&self) -> Result<bool, CgroupError> {
        Ok(false)
    }

    fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        read_memory_stat(self.memory_dir())
    }

    fn protect_from_swap(&self, protect: bool) -> Result<(), CgroupError> {
        let value = if protect {
            NO_SWAPPINESS
        } else {
            DEFAULT_SWAPPINESS
        };
        write_file(&self.memory_dir().join(SWAPPINESS), value)
    }

    fn reclaim(&self) -> Result<(), CgroupError> {
        let limit = self.memory_dir().join(MEMORY_LIMIT);
        // EBUSY only says the kernel could not get all the way down: what it freed is freed.
        let squeezed = write_file(&limit, &RECLAIM_FLOOR_BYTES.to_string());
        write_file(&limit, UNLIMITED)?;
        match squeezed {
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// Reads a v1 group's `memory.stat`; without swap accounting its swap is 0.
fn read_memory_stat(dir: &Path) -> Result<MemoryStat, CgroupError> {
    let path = dir.join(MEMORY_STAT);
    let content = read_file(&path)?;
    Ok(MemoryStat {
        anon: stat_value(&path, &content, STAT_ANON)?.unwrap_or(0),
        file: stat_value(&path, &content, STAT_FILE)?.unwrap_or(0),
        swapped: stat_value(&path, &content, STAT_SWAP)?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_fixture::{get, put};
    use super::super::{CgroupRoot, CgroupVersion, Layout};
    use super::*;

    /// A v1 fixture: one mount directory per controller, roots holding what the kernel's do.
    fn fixture(controllers: &[V1Controller]) -> (tempfile::TempDir, Layout) {
        let tmp = tempfile::tempdir().unwrap();
        let mut mounts = Vec::new();
        for &c in controllers {
            let mount = tmp.path().join(c.name());
            put(&mount, CGROUP_PROCS, "");
            if c == V1Controller::Cpuset {
                put(&mount, CPUSET_CPUS, "0-1\n");
                put(&mount, CPUSET_MEMS, "0\n");
            }
            mounts.push((c, mount));
        }
        (tmp, Layout::v1(mounts))
    }

    #[test]
    fn creates_base_and_instance_in_every_hierarchy_but_never_cpu() {
        let (tmp, layout) = fixture(&V1Controller::ALL);
        let root = CgroupRoot::with_layout(layout, "tariff/m1").unwrap();
        assert_eq!(root.version(), CgroupVersion::V1);
        let group = root.create("inst-1").unwrap();
        for c in V1Controller::ALL {
            assert!(tmp.path().join(c.name()).join("tariff/m1/inst-1").is_dir());
        }
        assert!(!tmp.path().join("cpu").exists());
        let files = group.procs_files();
        assert_eq!(files.len(), 5);
        assert!(files
            .iter()
            .all(|f| f.ends_with("tariff/m1/inst-1/cgroup.procs")));
        assert_eq!(group.name(), "inst-1");
    }

    #[test]
    fn cpuset_levels_inherit_cpus_and_mems_and_base_clones_children() {
        let (tmp, layout) = fixture(&V1Controller::ALL);
        let root = CgroupRoot::with_layout(layout, "tariff/m1").unwrap();
        let cpuset = tmp.path().join("cpuset");
        for level in ["tariff", "tariff/m1"] {
            assert_eq!(get(&cpuset.join(level), CPUSET_CPUS), "0-1");
            assert_eq!(get(&cpuset.join(level), CPUSET_MEMS), "0");
        }
        assert_eq!(get(&cpuset.join("tariff/m1"), CLONE_CHILDREN), "1");

        assert!(root.confine_cpus(&[1]).unwrap());
        assert_eq!(get(&cpuset.join("tariff/m1"), CPUSET_CPUS), "1");
        root.create("inst").unwrap();
        assert_eq!(get(&cpuset.join("tariff/m1/inst"), CPUSET_CPUS), "1");
        assert_eq!(get(&cpuset.join("tariff/m1/inst"), CPUSET_MEMS), "0");
    }

    #[test]
    fn confine_without_cpuset_is_false_and_empty_list_is_an_error() {
        let (_tmp, layout) = fixture(&[V1Controller::Memory, V1Controller::Freezer]);
        let root = CgroupRoot::with_layout(layout, "tariff").unwrap();
        assert!(!root.confine_cpus(&[0]).unwrap());
        assert!(matches!(root.confine_cpus(&[]), Err(CgroupError::NoCpus)));
    }

    #[test]
    fn memory_and_freezer_are_required() {
        let (_tmp, layout) = fixture(&[V1Controller::Memory, V1Controller::Cpuacct]);
        assert!(matches!(
            CgroupRoot::with_layout(layout, "tariff"),
            Err(CgroupError::NoHierarchy { .. })
        ));
    }

    #[test]
    fn accounting_parses_kernel_files() {
        let (tmp, layout) = fixture(&V1Controller::ALL);
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        let mem = tmp.path().join("memory/b/i");
        put(
            &tmp.path().join("cpuacct/b/i"),
            CPUACCT_USAGE,
            "123456789\n",
        );
        put(&mem, MEMORY_USAGE, "4096\n");
        put(&mem, MEMORY_MAX_USAGE, "8192\n");
        put(&mem, CGROUP_PROCS, "10\n11\n");
        put(&mem, TASKS, "10\n11\n12\n");
        assert_eq!(group.cpu_usage_us().unwrap(), 123_456);
        assert_eq!(group.memory_current().unwrap(), 4096);
        assert_eq!(group.memory_peak().unwrap(), 8192);
        assert_eq!(group.processes().unwrap(), [10, 11]);
        assert_eq!(group.threads().unwrap(), [10, 11, 12]);
        assert!(group.reset_memory_peak().unwrap());
        assert_eq!(get(&mem, MEMORY_MAX_USAGE), "0");
    }

    #[test]
    fn cpu_usage_without_cpuacct_is_unsupported() {
        let (_tmp, layout) = fixture(&[V1Controller::Memory, V1Controller::Freezer]);
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        assert!(matches!(
            group.cpu_usage_us(),
            Err(CgroupError::Unsupported { .. })
        ));
    }

    #[test]
    fn freeze_and_thaw_write_freezer_state() {
        let (tmp, layout) = fixture(&V1Controller::ALL);
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        let freezer = tmp.path().join("freezer/b/i");
        group.freeze().unwrap();
        assert_eq!(get(&freezer, FREEZER_STATE), FROZEN);
        group.thaw().unwrap();
        assert_eq!(get(&freezer, FREEZER_STATE), THAWED);
    }

    #[test]
    fn add_process_writes_every_hierarchy() {
        let (tmp, layout) = fixture(&V1Controller::ALL);
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        group.add_process(4242).unwrap();
        for c in V1Controller::ALL {
            assert_eq!(
                get(&tmp.path().join(c.name()).join("b/i"), CGROUP_PROCS),
                "4242"
            );
        }
    }

    #[test]
    fn clean_stale_removes_empty_leftovers() {
        // Memory + freezer only: their fixture groups hold no files after creation, so `rmdir`
        // works on the temp dir as it would on cgroupfs.
        let (tmp, layout) = fixture(&[V1Controller::Memory, V1Controller::Freezer]);
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        std::fs::create_dir(tmp.path().join("memory/b/old-1")).unwrap();
        std::fs::create_dir(tmp.path().join("freezer/b/old-1")).unwrap();
        std::fs::create_dir(tmp.path().join("freezer/b/old-2")).unwrap();
        assert_eq!(root.clean_stale().unwrap(), 2);
        assert!(!tmp.path().join("memory/b/old-1").exists());
        assert!(!tmp.path().join("freezer/b/old-2").exists());
    }
}
