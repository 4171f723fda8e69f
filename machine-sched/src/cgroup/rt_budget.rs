//! The paying classes' real-time budget: one v1 `cpu` cgroup per machine, with a
//! `cpu.rt_runtime_us` budget on every CPU, that every function process joins at launch.
//!
//! Why. Real-time functions on every CPU of a host can starve the kernel threads that `fork`,
//! `exec` and `exit` wait for (MACHINE-NOTES: stalls of seconds), so without a budget the
//! paying classes are kept off one CPU ([`crate::rt::function_cpus`]). That costs the top class
//! its tail: two `critical` calls that overlap run one after the other on the one real-time
//! CPU of a 2-CPU host (issue 11: `critical` p99 1.76× its unloaded p99). On a kernel with
//! `CONFIG_RT_GROUP_SCHED` the kernel itself can enforce the rule instead: a group's real-time
//! tasks run at most `cpu.rt_runtime_us` of every `cpu.rt_period_us` *on each CPU*, and CFS
//! (kernel threads, launches, the cheapest class) gets the rest of every CPU, guaranteed. So
//! with a budget the paying classes may use every CPU, and whatever they do, every CPU keeps
//! [`BUDGET_PERIOD_US`] − runtime of each period for everything else.
//!
//! This is the one `cpu` group Tariff makes (see the parent module: never per instance). It is
//! shared by every function of the machine, because a warm instance serves calls of any class:
//! the cheapest class, a normal task, runs in it too, under its CFS weight, which is set to
//! one normal task's weight per function CPU ([`SHARES_PER_CPU`]) so that it competes for the
//! CPUs as it did outside the group.
//!
//! Layout: `<cpu mount>/<base>` (the same base path as the instance cgroups, e.g.
//! `tariff/<machine>`). Each intermediate directory needs a budget of its own at least the sum
//! of its children's: an intermediate this module creates takes all that its parent has left
//! (so the machines of one host share it), an existing one is left as it is. The kernel checks
//! these sums; [`RtBudget::create`] computes them itself, in the kernel's fixed-point
//! bandwidth units, so that it asks only for what will be granted.
//!
//! Only cgroup v1 has real-time group budgets; on v2, or without `CONFIG_RT_GROUP_SCHED` (no
//! `cpu.rt_runtime_us`), [`RtBudget::detect`] fails and the dispatcher keeps a CPU free of
//! real-time functions instead.

use std::fs;
use std::path::{Path, PathBuf};

use super::{
    check_base, create_dir, read_file, read_u64, unescape_mount_path, write_file, CgroupError,
    CGROUP_PROCS, CPU_CONTROLLER, FSTYPE_V1, MOUNTINFO,
};

/// A group's real-time runtime per period on each CPU, µs; `-1` means unlimited.
pub const CPU_RT_RUNTIME: &str = "cpu.rt_runtime_us";
/// A group's real-time period, µs.
pub const CPU_RT_PERIOD: &str = "cpu.rt_period_us";
/// A group's CFS weight (1024 is one nice-0 task).
pub const CPU_SHARES: &str = "cpu.shares";
/// The budget's period, µs. Short enough that a throttled CPU is back for real-time work
/// within tens of milliseconds, long enough that a 20 ms call fits in one period's runtime
/// at any share above 20 %.
pub const BUDGET_PERIOD_US: u64 = 100_000;
/// CFS weight of one nice-0 task, which the group gets per function CPU.
pub const SHARES_PER_CPU: u64 = 1024;
/// Smallest runtime worth a budget, µs: below it a paying call would be throttled at once.
pub const MIN_RUNTIME_US: u64 = 10_000;
/// The kernel's fixed-point shift for bandwidth ratios (`BW_SHIFT` in kernel/sched).
const BW_SHIFT: u32 = 20;

/// The machine's real-time budget group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtBudget {
    /// `<cpu mount>/<base>`.
    dir: PathBuf,
    /// Directories above `dir` that this budget created, deepest first (removed at the end if
    /// empty).
    created: Vec<PathBuf>,
    /// Real-time runtime per period on each CPU, µs.
    runtime_us: u64,
}

impl RtBudget {
    /// Finds the v1 `cpu` hierarchy in `/proc/self/mountinfo` and creates the budget group
    /// `<mount>/<base>` with `share` of every CPU for real-time work (see
    /// [`RtBudget::create`]).
    pub fn detect(base: &str, share: f64, cpus: usize) -> Result<RtBudget, CgroupError> {
        let text = read_file(Path::new(MOUNTINFO))?;
        let mount = cpu_mount(&text).ok_or_else(|| CgroupError::NoHierarchy {
            reason: "no cgroup v1 `cpu` hierarchy (real-time group budgets are v1 only)".into(),
        })?;
        RtBudget::create(&mount, base, share, cpus)
    }

    /// Creates (or takes over, after a crash) `<mount>/<base>` with a real-time runtime of
    /// `share` of [`BUDGET_PERIOD_US`] on each CPU (less if the parent has less left) and the
    /// CFS weight of `cpus` normal tasks. Fails if the kernel has no group budgets
    /// (`cpu.rt_runtime_us` missing) or less than [`MIN_RUNTIME_US`] is left.
    pub fn create(
        mount: &Path,
        base: &str,
        share: f64,
        cpus: usize,
    ) -> Result<RtBudget, CgroupError> {
        let base = check_base(base)?;
        if !mount.join(CPU_RT_RUNTIME).exists() {
            return Err(CgroupError::NoHierarchy {
                reason: format!(
                    "{} has no {CPU_RT_RUNTIME}: the kernel lacks CONFIG_RT_GROUP_SCHED",
                    mount.display()
                ),
            });
        }
        let shares = (SHARES_PER_CPU * cpus.max(1) as u64).to_string();
        let components: Vec<&std::ffi::OsStr> = base.iter().collect();
        let mut created = Vec::new();
        let mut parent = mount.to_owned();
        let mut runtime_us = 0;
        for (depth, component) in components.iter().enumerate() {
            let dir = parent.join(component);
            let leaf = depth + 1 == components.len();
            let fresh = !dir.exists();
            if fresh {
                create_dir(&dir)?;
                if !leaf {
                    created.push(dir.clone());
                }
            }
            if leaf || fresh || read_u64(&dir.join(CPU_RT_RUNTIME)).unwrap_or(0) == 0 {
                let left = left_over(&parent, &dir)?;
                let wanted = if leaf {
                    left.min(bandwidth(share_runtime(share), BUDGET_PERIOD_US))
                } else {
                    left
                };
                let runtime = runtime_for(wanted, BUDGET_PERIOD_US);
                if runtime < MIN_RUNTIME_US {
                    let _ = remove_created(leaf.then_some(&dir), &created);
                    return Err(CgroupError::Parse {
                        path: parent.join(CPU_RT_RUNTIME),
                        content: format!(
                            "{runtime} µs of real-time runtime left for {}",
                            dir.display()
                        ),
                    });
                }
                // A period change is checked against the runtime in force: clear it first.
                write_file(&dir.join(CPU_RT_RUNTIME), "0")?;
                write_file(&dir.join(CPU_RT_PERIOD), &BUDGET_PERIOD_US.to_string())?;
                write_file(&dir.join(CPU_RT_RUNTIME), &runtime.to_string())?;
                runtime_us = runtime;
            }
            if read_u64(&dir.join(CPU_SHARES)).unwrap_or(0) < SHARES_PER_CPU * cpus.max(1) as u64 {
                write_file(&dir.join(CPU_SHARES), &shares)?;
            }
            parent = dir;
        }
        created.reverse();
        Ok(RtBudget {
            dir: parent,
            created,
            runtime_us,
        })
    }

    /// The group's `cgroup.procs`: a function process writes itself there before `exec`.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join(CGROUP_PROCS)
    }

    /// The group's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Real-time runtime per period on each CPU, µs.
    pub fn runtime_us(&self) -> u64 {
        self.runtime_us
    }

    /// The share of each CPU real-time functions may take.
    pub fn share(&self) -> f64 {
        self.runtime_us as f64 / BUDGET_PERIOD_US as f64
    }

    /// Removes the group, and the directories above it that it created if they are empty
    /// (at shutdown, once every function process is gone). The kernel returns the runtime to
    /// the parent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_created(Some(&self.dir), &self.created)
    }
}

/// Removes `leaf` (if any) and then `created`, deepest first; a directory still in use by
/// another machine stays.
fn remove_created(leaf: Option<&PathBuf>, created: &[PathBuf]) -> Result<(), CgroupError> {
    if let Some(dir) = leaf {
        fs::remove_dir(dir).map_err(|source| CgroupError::RemoveDir {
            path: dir.clone(),
            source,
        })?;
    }
    for dir in created {
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}

/// The mount point of the v1 hierarchy carrying the `cpu` controller.
fn cpu_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let super_options = right.nth(1)?;
        (fstype == FSTYPE_V1 && super_options.split(',').any(|o| o == CPU_CONTROLLER))
            .then(|| PathBuf::from(unescape_mount_path(mount_point)))
    })
}

/// The runtime, µs per [`BUDGET_PERIOD_US`], of `share` of a CPU.
fn share_runtime(share: f64) -> u64 {
    (share.clamp(0.0, 1.0) * BUDGET_PERIOD_US as f64) as u64
}

/// The kernel's bandwidth of `runtime` per `period` (`to_ratio`): a fraction in units of
/// 2^-[`BW_SHIFT`].
fn bandwidth(runtime: u64, period: u64) -> u64 {
    (runtime << BW_SHIFT) / period.max(1)
}

/// The largest runtime per `period` whose bandwidth is at most `bw`.
fn runtime_for(bw: u64, period: u64) -> u64 {
    (bw * period) >> BW_SHIFT
}

/// A group's bandwidth from its files: unlimited (`-1`) is the whole CPU.
fn group_bandwidth(dir: &Path) -> Result<u64, CgroupError> {
    let runtime_path = dir.join(CPU_RT_RUNTIME);
    let runtime = read_file(&runtime_path)?;
    let runtime: i64 = runtime.trim().parse().map_err(|_| CgroupError::Parse {
        path: runtime_path,
        content: runtime.clone(),
    })?;
    if runtime < 0 {
        return Ok(1 << BW_SHIFT);
    }
    let period = read_u64(&dir.join(CPU_RT_PERIOD))?;
    Ok(bandwidth(runtime as u64, period))
}

/// What `parent`'s budget has left for `child`: its bandwidth less that of `child`'s
/// siblings (the kernel's schedulability rule).
fn left_over(parent: &Path, child: &Path) -> Result<u64, CgroupError> {
    let mut left = group_bandwidth(parent)?;
    let entries = fs::read_dir(parent).map_err(|source| CgroupError::Read {
        path: parent.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path == child || !path.is_dir() || !path.join(CPU_RT_RUNTIME).exists() {
            continue;
        }
        left = left.saturating_sub(group_bandwidth(&path)?);
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `cpu` mount: the root's budget as the kernel's default, and groups as
    /// directories with the files the kernel would give them.
    fn fixture(root_runtime: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CPU_RT_RUNTIME), root_runtime).unwrap();
        fs::write(dir.path().join(CPU_RT_PERIOD), "1000000").unwrap();
        dir
    }

    /// A group someone else made, with this budget.
    fn other_group(mount: &Path, name: &str, runtime: u64, period: u64) {
        let dir = mount.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(CPU_RT_RUNTIME), runtime.to_string()).unwrap();
        fs::write(dir.join(CPU_RT_PERIOD), period.to_string()).unwrap();
    }

    fn read(path: PathBuf) -> u64 {
        fs::read_to_string(path).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn the_machine_gets_its_share_and_the_parent_all_that_is_left() {
        let mount = fixture("950000");
        let budget = RtBudget::create(mount.path(), "tariff/m1", 0.5, 2).unwrap();
        assert_eq!(budget.dir(), mount.path().join("tariff/m1"));
        assert_eq!(budget.runtime_us(), 50_000);
        assert!((budget.share() - 0.5).abs() < 1e-9);
        let parent = mount.path().join("tariff");
        assert_eq!(read(parent.join(CPU_RT_PERIOD)), BUDGET_PERIOD_US);
        assert_eq!(read(parent.join(CPU_RT_RUNTIME)), 94_999);
        assert_eq!(read(parent.join(CPU_SHARES)), 2048);
        assert_eq!(read(budget.dir().join(CPU_SHARES)), 2048);
        assert_eq!(budget.procs_file(), budget.dir().join(CGROUP_PROCS));
    }

    #[test]
    fn a_second_machine_gets_what_the_first_left() {
        let mount = fixture("950000");
        let first = RtBudget::create(mount.path(), "tariff/m1", 0.5, 2).unwrap();
        let second = RtBudget::create(mount.path(), "tariff/m2", 0.5, 2).unwrap();
        assert_eq!(first.runtime_us(), 50_000);
        assert!(second.runtime_us() < 45_000 && second.runtime_us() > 44_000);
        let error = RtBudget::create(mount.path(), "tariff/m3", 0.5, 2).unwrap_err();
        assert!(error.to_string().contains("left for"), "{error}");
        assert!(!mount.path().join("tariff/m3").exists());
        // cgroupfs removes a group's control files with it; the fixture's must go first.
        for dir in ["tariff/m2", "tariff/m1", "tariff"] {
            for file in fs::read_dir(mount.path().join(dir)).unwrap().flatten() {
                if file.path().is_file() {
                    fs::remove_file(file.path()).unwrap();
                }
            }
        }
        second.remove().unwrap();
        assert!(mount.path().join("tariff").exists(), "still used by m1");
        first.remove().unwrap();
        assert!(!mount.path().join("tariff").exists());
    }

    #[test]
    fn other_groups_budgets_are_respected_and_unlimited_means_a_whole_cpu() {
        let mount = fixture("-1");
        other_group(mount.path(), "audio", 800_000, 1_000_000);
        let budget = RtBudget::create(mount.path(), "tariff/m1", 0.5, 1).unwrap();
        assert!(budget.runtime_us() < 20_000 && budget.runtime_us() > 19_000);
        assert_eq!(read(budget.dir().join(CPU_SHARES)), 1024);
    }

    #[test]
    fn no_group_budgets_no_budget() {
        let dir = tempfile::tempdir().unwrap();
        let error = RtBudget::create(dir.path(), "tariff/m1", 0.5, 2).unwrap_err();
        assert!(
            error.to_string().contains("CONFIG_RT_GROUP_SCHED"),
            "{error}"
        );
        assert!(!dir.path().join("tariff").exists());
    }

    #[test]
    fn finds_the_cpu_hierarchy_only() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/cpuacct rw,relatime shared:8 - cgroup cgroup rw,cpuacct
31 25 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
        assert_eq!(
            cpu_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(cpu_mount("32 25 0:28 / /u rw - cgroup2 cgroup2 rw"), None);
    }
}
