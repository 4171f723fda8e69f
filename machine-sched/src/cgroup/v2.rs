//! cgroup v2: one directory per instance in the unified hierarchy, with `memory`, `pids` (and
//! `cpuset` when offered) delegated down our subtree, and `cpu` never (see the parent module).
//!
//! CPU time comes from `cpu.stat`, which every v2 group has without the `cpu` controller;
//! freezing and killing use the core files `cgroup.freeze` (5.2+) and `cgroup.kill` (5.14+).
//! Resetting `memory.peak` (6.12+) applies only to reads through the file descriptor that was
//! written, so a group keeps that descriptor open once it has reset its peak.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{
    create_dir, parse_u64, read_file, read_ids, read_optional, read_u64, stat_value, subdir_names,
    wait_until, write_file, CgroupError, GroupOps, MemoryLimit, MemoryStat, CGROUP_PROCS,
    CPU_CONTROLLER, FREEZE_DEADLINE,
};

/// Controllers a group may delegate to its children.
const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
/// Controllers a group delegates to its children (`+name` enables, `-name` disables).
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
/// Every thread id of the group.
const CGROUP_THREADS: &str = "cgroup.threads";
/// `1` freezes the group, `0` thaws it.
const CGROUP_FREEZE: &str = "cgroup.freeze";
/// Holds `frozen 0|1` among other keys.
const CGROUP_EVENTS: &str = "cgroup.events";
/// Writing `1` kills every process in the group (5.14+).
const CGROUP_KILL: &str = "cgroup.kill";
/// CPU statistics, including `usage_usec`, present without the `cpu` controller.
const CPU_STAT: &str = "cpu.stat";
/// The `cpu.stat` key for total CPU time in microseconds.
const USAGE_USEC: &str = "usage_usec";
/// Memory charged now, in bytes.
const MEMORY_CURRENT: &str = "memory.current";
/// Peak memory, in bytes (5.19+; writable per file descriptor since 6.12).
const MEMORY_PEAK: &str = "memory.peak";
/// What is written to `memory.peak` to reset it (any non-empty string works).
const RESET_PEAK: &str = "reset";
/// CPUs the group's tasks may run on.
const CPUSET_CPUS: &str = "cpuset.cpus";
/// The `cgroup.events` key that reports the frozen state.
const FROZEN_KEY: &str = "frozen";

/// Required controller, also what [`super::Layout`] looks for to prefer v2.
pub(crate) const MEMORY_CONTROLLER: &str = "memory";
/// Memory by kind (`anon`, `file`, ...), this group and its descendants.
const MEMORY_STAT: &str = "memory.stat";
const STAT_ANON: &str = "anon";
const STAT_FILE: &str = "file";
/// Bytes in swap now.
const MEMORY_SWAP_CURRENT: &str = "memory.swap.current";
/// The limit on swap; `0` keeps the group out of swap, `max` lifts the limit.
const MEMORY_SWAP_MAX: &str = "memory.swap.max";
/// Writing a byte count asks the kernel to reclaim that much from the group (5.19+).
const MEMORY_RECLAIM: &str = "memory.reclaim";
/// The hard limit on RAM.
const MEMORY_MAX: &str = "memory.max";
/// No limit, as v2 limit files take it.
const MAX: &str = "max";
const PIDS_CONTROLLER: &str = "pids";
const CPUSET_CONTROLLER: &str = "cpuset";

/// Whether the v2 mount at `mount` offers `controller` at its root.
pub(crate) fn offers_controller(mount: &Path, controller: &str) -> Result<bool, CgroupError> {
    let listed = read_optional(&mount.join(CGROUP_CONTROLLERS))?.unwrap_or_default();
    Ok(listed.split_whitespace().any(|c| c == controller))
}

/// The enabled controllers listed in `dir/cgroup.subtree_control` (read back without `+`).
fn subtree_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let listed = read_optional(&dir.join(SUBTREE_CONTROL))?.unwrap_or_default();
    Ok(listed
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_owned())
        .collect())
}

/// The dispatcher's base group in the unified hierarchy.
#[derive(Debug)]
pub(crate) struct V2Root {
    base: PathBuf,
    cpuset: bool,
}

impl V2Root {
    /// Creates `<mount>/<base>`, enabling our controllers on the mount root and every level so
    /// that instance groups get them.
    pub(crate) fn new(mount: PathBuf, base: &Path) -> Result<V2Root, CgroupError> {
        if !offers_controller(&mount, MEMORY_CONTROLLER)? {
            return Err(CgroupError::NoHierarchy {
                reason: format!("{} does not offer memory", mount.display()),
            });
        }
        let mut wanted = vec![MEMORY_CONTROLLER];
        for optional in [PIDS_CONTROLLER, CPUSET_CONTROLLER] {
            if offers_controller(&mount, optional)? {
                wanted.push(optional);
            }
        }
        if subtree_controllers(&mount)?
            .iter()
            .any(|c| c == CPU_CONTROLLER)
        {
            tracing::warn!(
                mount = %mount.display(),
                "the cgroup v2 root delegates `cpu`: with RT group scheduling, real-time \
                 functions under it may be refused SCHED_FIFO"
            );
        }
        enable_controllers(&mount, &wanted)?;
        let mut dir = mount;
        for component in base.components() {
            dir.push(component);
            create_dir(&dir)?;
            // Our own levels: undo anyone's `+cpu` (see the module header of `cgroup`).
            if subtree_controllers(&dir)?
                .iter()
                .any(|c| c == CPU_CONTROLLER)
            {
                write_file(&dir.join(SUBTREE_CONTROL), &format!("-{CPU_CONTROLLER}"))?;
            }
            enable_controllers(&dir, &wanted)?;
        }
        Ok(V2Root {
            base: dir,
            cpuset: wanted.contains(&CPUSET_CONTROLLER),
        })
    }

    /// Limits the base's RAM to `limit_bytes` with swap unlimited. v2 cannot turn the OOM
    /// killer off, so the dispatcher must act before the limit.
    pub(crate) fn limit_memory(&self, limit_bytes: u64) -> Result<MemoryLimit, CgroupError> {
        write_file(&self.base.join(MEMORY_MAX), &limit_bytes.to_string())?;
        let swap_max = self.base.join(MEMORY_SWAP_MAX);
        if swap_max.exists() {
            write_file(&swap_max, MAX)?;
        }
        Ok(MemoryLimit {
            limit_bytes,
            oom_killer_disabled: false,
        })
    }

    /// What the whole subtree holds.
    pub(crate) fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        read_memory_stat(&self.base)
    }

    /// `<mount>/<base>`.
    pub(crate) fn base_dir(&self) -> PathBuf {
        self.base.clone()
    }

    /// Writes `cpus` to the base's `cpuset.cpus`.
    pub(crate) fn confine_cpus(&self, cpus: &str) -> Result<bool, CgroupError> {
        if !self.cpuset {
            return Ok(false);
        }
        write_file(&self.base.join(CPUSET_CPUS), cpus)?;
        Ok(true)
    }

    /// Creates the group `name`.
    pub(crate) fn create(&self, name: &str) -> Result<V2Group, CgroupError> {
        let group = self.open(name);
        create_dir(&group.dir)?;
        Ok(group)
    }

    /// The group `name` without touching the filesystem (for stale groups).
    pub(crate) fn open(&self, name: &str) -> V2Group {
        V2Group {
            dir: self.base.join(name),
            peak_fd: Mutex::new(None),
        }
    }

    /// Instance groups present under the base.
    pub(crate) fn instance_names(&self) -> Result<Vec<String>, CgroupError> {
        subdir_names(&self.base)
    }
}

/// Enables in `dir` those of `wanted` not yet enabled, in one write. Never called with `cpu`.
fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    debug_assert!(!wanted.contains(&CPU_CONTROLLER));
    let enabled = subtree_controllers(dir)?;
    let missing: Vec<String> = wanted
        .iter()
        .filter(|w| !enabled.iter().any(|e| e == *w))
        .map(|w| format!("+{w}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&dir.join(SUBTREE_CONTROL), &missing.join(" "))
}

/// One instance's group in the unified hierarchy.
#[derive(Debug)]
pub(crate) struct V2Group {
    dir: PathBuf,
    /// The `memory.peak` descriptor a reset was written through; peaks are read through it.
    peak_fd: Mutex<Option<File>>,
}

impl V2Group {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Reads the whole of `file` from offset 0.
fn read_from_start(file: &mut File) -> io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut content = String::new();
    file.read_to_string(&mut content)?;
    Ok(content)
}

impl GroupOps for V2Group {
    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.file(CGROUP_PROCS)]
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn primary_procs(&self) -> PathBuf {
        self.file(CGROUP_PROCS)
    }

    fn threads(&self) -> Result<Vec<i32>, CgroupError> {
        read_ids(&self.file(CGROUP_THREADS))
    }

    fn cpu_usage_us(&self) -> Result<u64, CgroupError> {
        let path = self.file(CPU_STAT);
        let content = read_file(&path)?;
        let value = content
            .lines()
            .find_map(|l| l.strip_prefix(USAGE_USEC)?.strip_prefix(' '))
            .ok_or_else(|| CgroupError::Parse {
                path: path.clone(),
                content: content.clone(),
            })?;
        parse_u64(&path, value)
    }

    fn memory_current(&self) -> Result<u64, CgroupError> {
        read_u64(&self.file(MEMORY_CURRENT))
    }

    fn memory_peak(&self) -> Result<u64, CgroupError> {
        let path = self.file(MEMORY_PEAK);
        let mut held = self.peak_fd.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = held.as_mut() {
            let content = read_from_start(file).map_err(|source| CgroupError::Read {
                path: path.clone(),
                source,
            })?;
            return parse_u64(&path, &content);
        }
        match read_optional(&path)? {
            Some(content) => parse_u64(&path, &content),
            // Before 5.19 there is no peak: the current usage is the best lower bound.
            None => self.memory_current(),
        }
    }

    fn reset_memory_peak(&self) -> Result<bool, CgroupError> {
        let path = self.file(MEMORY_PEAK);
        if !path.exists() {
            return Ok(false);
        }
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // Before 6.12 `memory.peak` is read-only and kernfs refuses to open it for writing.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(false),
            Err(source) => return Err(CgroupError::Read { path, source }),
        };
        match file.write_all(RESET_PEAK.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(source) => {
                return Err(CgroupError::Write {
                    path,
                    value: RESET_PEAK.to_owned(),
                    source,
                })
            }
        }
        *self.peak_fd.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
        Ok(true)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        write_file(&self.file(CGROUP_FREEZE), if frozen { "1" } else { "0" })?;
        let events = self.file(CGROUP_EVENTS);
        let want = if frozen { "1" } else { "0" };
        let done = wait_until(FREEZE_DEADLINE, || {
            // No cgroup.events only happens in fixtures: nothing to wait for.
            let Some(content) = read_optional(&events)? else {
                return Ok(true);
            };
            Ok(content.lines().any(|l| {
                l.strip_prefix(FROZEN_KEY)
                    .and_then(|v| v.strip_prefix(' '))
                    .is_some_and(|v| v.trim() == want)
            }))
        })?;
        if done {
            Ok(())
        } else {
            Err(CgroupError::FreezeTimeout {
                path: events,
                waited: FREEZE_DEADLINE,
            })
        }
    }

    fn kill_by_kernel(&self) -> Result<bool, CgroupError> {
        let path = self.file(CGROUP_KILL);
        if !path.exists() {
            return Ok(false);
        }
        write_file(&path, "1")?;
        Ok(true)
    }

    fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        read_memory_stat(&self.dir)
    }

    fn protect_from_swap(&self, protect: bool) -> Result<(), CgroupError> {
        let path = self.file(MEMORY_SWAP_MAX);
        if !path.exists() {
            // No swap controller (kernel without swap accounting): nothing to protect from.
            return Ok(());
        }
        write_file(&path, if protect { "0" } else { MAX })
    }

    fn reclaim(&self) -> Result<(), CgroupError> {
        let path = self.file(MEMORY_RECLAIM);
        if !path.exists() {
            return Err(CgroupError::Unsupported {
                what: "memory.reclaim (Linux 5.19 and later)",
            });
        }
        let current = self.memory_current()?;
        match write_file(&path, &current.to_string()) {
            // EAGAIN: less than asked could be reclaimed; what was, was.
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EAGAIN) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// Reads a v2 group's `memory.stat` and `memory.swap.current` (0 without swap accounting).
fn read_memory_stat(dir: &Path) -> Result<MemoryStat, CgroupError> {
    let path = dir.join(MEMORY_STAT);
    let content = read_file(&path)?;
    let swapped = match read_optional(&dir.join(MEMORY_SWAP_CURRENT))? {
        Some(text) => parse_u64(&dir.join(MEMORY_SWAP_CURRENT), &text)?,
        None => 0,
    };
    Ok(MemoryStat {
        anon: stat_value(&path, &content, STAT_ANON)?.unwrap_or(0),
        file: stat_value(&path, &content, STAT_FILE)?.unwrap_or(0),
        swapped,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_fixture::{get, put};
    use super::super::{CgroupRoot, CgroupVersion, Layout};
    use super::*;

    /// A v2 fixture whose root offers `controllers` and already delegates `root_subtree`.
    fn fixture(controllers: &str, root_subtree: &str) -> (tempfile::TempDir, Layout) {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), CGROUP_CONTROLLERS, controllers);
        put(tmp.path(), SUBTREE_CONTROL, root_subtree);
        put(tmp.path(), CGROUP_PROCS, "1\n");
        let layout = Layout::v2(tmp.path());
        (tmp, layout)
    }

    fn tokens(dir: &Path) -> Vec<String> {
        get(dir, SUBTREE_CONTROL)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn enables_memory_pids_cpuset_along_the_path_never_cpu() {
        let (tmp, layout) = fixture("cpuset cpu io memory hugetlb pids rdma\n", "");
        let root = CgroupRoot::with_layout(layout, "tariff/m1").unwrap();
        assert_eq!(root.version(), CgroupVersion::V2);
        for dir in [
            tmp.path().to_owned(),
            tmp.path().join("tariff"),
            tmp.path().join("tariff/m1"),
        ] {
            let t = tokens(&dir);
            assert_eq!(t, ["+memory", "+pids", "+cpuset"], "{}", dir.display());
            assert!(!t.iter().any(|c| c == "+cpu" || c == "cpu"));
        }
        assert_eq!(root.base_dirs(), [tmp.path().join("tariff/m1")]);
    }

    #[test]
    fn only_missing_controllers_are_enabled_and_cpu_is_removed_from_our_levels() {
        let (tmp, layout) = fixture("cpu memory pids\n", "cpu memory\n");
        // A previous tenant enabled `cpu` on our level.
        put(
            &tmp.path().join("tariff"),
            SUBTREE_CONTROL,
            "cpu memory pids\n",
        );
        CgroupRoot::with_layout(layout, "tariff").unwrap();
        // Root: only pids was missing; its `cpu` is not ours to change.
        assert_eq!(tokens(tmp.path()), ["+pids"]);
        // Our level: `-cpu` then the (fixture-forgotten) memory and pids again.
        let ours = tokens(&tmp.path().join("tariff"));
        assert!(!ours.iter().any(|c| c == "+cpu" || c == "cpu"), "{ours:?}");
    }

    #[test]
    fn without_memory_v2_is_refused() {
        let (_tmp, layout) = fixture("hugetlb\n", "");
        assert!(matches!(
            CgroupRoot::with_layout(layout, "tariff"),
            Err(CgroupError::NoHierarchy { .. })
        ));
    }

    #[test]
    fn confine_cpus_writes_base_cpuset_when_offered() {
        let (tmp, layout) = fixture("cpuset memory pids\n", "");
        let root = CgroupRoot::with_layout(layout, "tariff").unwrap();
        assert!(root.confine_cpus(&[0, 1]).unwrap());
        assert_eq!(get(&tmp.path().join("tariff"), CPUSET_CPUS), "0,1");

        let (_tmp, layout) = fixture("memory pids\n", "");
        let root = CgroupRoot::with_layout(layout, "tariff").unwrap();
        assert!(!root.confine_cpus(&[0]).unwrap());
    }

    #[test]
    fn accounting_parses_kernel_files() {
        let (tmp, layout) = fixture("memory pids\n", "");
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        let dir = tmp.path().join("b/i");
        put(
            &dir,
            CPU_STAT,
            "usage_usec 7340\nuser_usec 5000\nsystem_usec 2340\nnr_periods 0\n",
        );
        put(&dir, MEMORY_CURRENT, "4096\n");
        put(&dir, CGROUP_PROCS, "10\n");
        put(&dir, CGROUP_THREADS, "10\n13\n");
        assert_eq!(group.cpu_usage_us().unwrap(), 7340);
        assert_eq!(group.memory_current().unwrap(), 4096);
        // No memory.peak (kernel < 5.19): current usage, and reset is unsupported.
        assert_eq!(group.memory_peak().unwrap(), 4096);
        assert!(!group.reset_memory_peak().unwrap());
        assert_eq!(group.processes().unwrap(), [10]);
        assert_eq!(group.threads().unwrap(), [10, 13]);
        assert_eq!(group.procs_files(), [dir.join(CGROUP_PROCS)]);

        put(&dir, MEMORY_PEAK, "65536\n");
        assert_eq!(group.memory_peak().unwrap(), 65536);
        assert!(group.reset_memory_peak().unwrap());
        assert!(get(&dir, MEMORY_PEAK).starts_with(RESET_PEAK));
        // Later peaks are read through the descriptor the reset was written to.
        put(&dir, MEMORY_PEAK, "1024\n");
        assert_eq!(group.memory_peak().unwrap(), 1024);
    }

    #[test]
    fn cpu_stat_without_usage_is_a_parse_error() {
        let (tmp, layout) = fixture("memory\n", "");
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        put(&tmp.path().join("b/i"), CPU_STAT, "nr_periods 0\n");
        assert!(matches!(
            group.cpu_usage_us(),
            Err(CgroupError::Parse { .. })
        ));
    }

    #[test]
    fn freeze_waits_for_cgroup_events() {
        let (tmp, layout) = fixture("memory\n", "");
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        let dir = tmp.path().join("b/i");
        put(&dir, CGROUP_EVENTS, "populated 1\nfrozen 1\n");
        group.freeze().unwrap();
        assert_eq!(get(&dir, CGROUP_FREEZE), "1");
        put(&dir, CGROUP_EVENTS, "populated 1\nfrozen 0\n");
        group.thaw().unwrap();
        assert_eq!(get(&dir, CGROUP_FREEZE), "0");
    }

    #[test]
    fn kill_all_uses_cgroup_kill_when_present() {
        let (tmp, layout) = fixture("memory\n", "");
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        let dir = tmp.path().join("b/i");
        put(&dir, CGROUP_PROCS, "");
        group.kill_all().unwrap();
        assert!(
            !dir.join(CGROUP_KILL).exists(),
            "empty group: nothing to kill"
        );
        // A fixture "process" that never leaves: cgroup.kill is written, then the bounded wait
        // gives up.
        put(&dir, CGROUP_PROCS, "999999999\n");
        put(&dir, CGROUP_KILL, "");
        let err = group.kill_all().unwrap_err();
        assert!(matches!(err, CgroupError::KillTimeout { remaining: 1, .. }));
        assert_eq!(get(&dir, CGROUP_KILL), "1");
    }

    #[test]
    fn remove_deletes_the_group_dir() {
        let (tmp, layout) = fixture("memory\n", "");
        let root = CgroupRoot::with_layout(layout, "b").unwrap();
        let group = root.create("i").unwrap();
        group.remove().unwrap();
        assert!(!tmp.path().join("b/i").exists());
        assert!(tmp.path().join("b").is_dir());
    }
}
