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
//! (so the machines of one host share it), an existing one keeps its budget. The kernel checks
//! these sums; [`RtBudget::create`] computes them itself, in the kernel's fixed-point
//! bandwidth units, so that it asks only for what will be granted.
//!
//! Leftovers. A budget group left behind is not harmless: it keeps its runtime from every other
//! group of the host, so a few of them leave a new machine less than [`MIN_RUNTIME_US`] and it
//! falls back to keeping a CPU free (and an empty intermediate keeps 95 % of the host's
//! real-time bandwidth). So:
//! - the intermediates are the host's, not one machine's: whichever machine leaves them empty
//!   removes them, whoever created them (with two machines on a host, the one that created
//!   `tariff` is not always the last to leave);
//! - a machine holds a lock on `<`[`LOCK_DIR`]`>/<base>.lock` while its process lives; the
//!   kernel releases it however the process ends, `SIGKILL` included. A machine's start removes
//!   the groups beside its own whose lock it can take (their dispatcher is dead) and which hold
//!   no task and no group. A group without a lock file (made before these locks, or by
//!   something else) may belong to a live machine, and stays;
//! - the last handle of a budget removes its group when dropped, if it holds the lock (a
//!   dispatcher that fails to start after its budget was made), and a failed
//!   [`RtBudget::create`] removes what it made;
//! - a group removed a moment ago still counts against its parent for an RCU grace period
//!   (12–22 ms here), so the runtime a sweep or a departed machine freed is waited for.
//!
//! Only cgroup v1 has real-time group budgets; on v2, or without `CONFIG_RT_GROUP_SCHED` (no
//! `cpu.rt_runtime_us`), [`RtBudget::detect`] fails and the dispatcher keeps a CPU free of
//! real-time functions instead.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{
    check_base, read_file, read_u64, unescape_mount_path, write_file, CgroupError, CGROUP_PROCS,
    CPU_CONTROLLER, FSTYPE_V1, MOUNTINFO,
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
/// Where a machine's lock file is, `<LOCK_DIR>/<base>.lock`: held while its dispatcher lives,
/// so that another machine's start can tell a dead machine's group from a live one's. On a
/// tmpfs, so that a reboot clears the locks with the groups.
pub const LOCK_DIR: &str = "/run/tariff/rt-budget";
/// The extension of a lock file.
const LOCK_EXTENSION: &str = "lock";
/// How often a start tries for its own lock while another process holds it. Another start
/// checking this group for staleness holds it for microseconds; a live dispatcher with the
/// same base (a misconfiguration) holds it for good, and then this one goes on without it.
const LOCK_ATTEMPTS: u32 = 20;
/// Pause between those attempts.
const LOCK_RETRY: Duration = Duration::from_millis(10);
/// How often [`RtBudget::create`] walks the path again when a directory vanished under it:
/// another machine, leaving, removed an intermediate it had found empty.
const CREATE_ATTEMPTS: u32 = 3;
/// How long a runtime the parent has room for may still be refused (`EINVAL`): a group
/// removed a moment ago (by this start's sweep, or by a machine that just left) counts
/// against its parent until an RCU grace period has passed, 12–22 ms measured on these hosts.
const RELEASE_WAIT: Duration = Duration::from_millis(250);
/// Pause between writes while waiting for that.
const RELEASE_POLL: Duration = Duration::from_millis(2);

/// The machine's real-time budget group. Clones share the group; the last one dropped removes
/// it if [`RtBudget::remove`] has not (and it is empty).
#[derive(Debug, Clone)]
pub struct RtBudget {
    /// The group's directories and lock.
    group: Arc<Group>,
    /// Real-time runtime per period on each CPU, µs.
    runtime_us: u64,
}

/// A budget group's directories and its machine's lock; removes them when dropped.
#[derive(Debug)]
struct Group {
    /// `<cpu mount>/<base>`.
    dir: PathBuf,
    /// The directories between the mount and `dir`, deepest first. Shared by the machines of
    /// the host; whichever leaves one empty removes it.
    intermediates: Vec<PathBuf>,
    /// This machine's lock until the group is removed, or `None` where it could not be had
    /// (no writable [`LOCK_DIR`], or a live process with the same base holds it): the group is
    /// then never taken for stale, and only [`RtBudget::remove`] removes it, for it may be
    /// that other process's too.
    lock: Mutex<Option<OwnerLock>>,
    /// Whether the group was removed. After that whatever is at `dir` is another machine's
    /// (a dispatcher restarted on the same data directory), and nothing here touches it.
    removed: AtomicBool,
}

/// A lock file held exclusively (`flock`) by this process.
#[derive(Debug)]
struct OwnerLock {
    /// The lock file.
    path: PathBuf,
    /// The open file that holds the lock; closing it (or the process ending) releases it.
    _held: File,
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
        RtBudget::create(&mount, Path::new(LOCK_DIR), base, share, cpus)
    }

    /// Creates (or takes over, after a crash) `<mount>/<base>` with a real-time runtime of
    /// `share` of [`BUDGET_PERIOD_US`] on each CPU (less if the parent has less left) and the
    /// CFS weight of `cpus` normal tasks, holding the lock `<locks>/<base>.lock` while this
    /// process lives. First removes the groups beside it that dead machines left (see the
    /// module header). Fails, leaving nothing it made, if the kernel has no group budgets
    /// (`cpu.rt_runtime_us` missing) or less than [`MIN_RUNTIME_US`] is left.
    pub fn create(
        mount: &Path,
        locks: &Path,
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
        let lock_path = locks.join(&base).with_added_extension(LOCK_EXTENSION);
        // Before the group exists or is reused: a start that finds it stale checks under this
        // lock, so it cannot remove the group between this start's walk and its first launch.
        let lock = OwnerLock::take(&lock_path);
        let dir = mount.join(&base);
        if let Some(sibling_locks) = lock_path.parent() {
            remove_stale_siblings(&dir, sibling_locks);
        }
        let mut made = Vec::new();
        let mut attempt = 1;
        let runtime_us = loop {
            match walk(mount, &base, share, cpus, &mut made) {
                Ok(runtime_us) => break runtime_us,
                Err(e) if vanished(&e) && attempt < CREATE_ATTEMPTS => attempt += 1,
                Err(e) => {
                    // Deepest first; one another machine now uses stays.
                    for made in made.iter().rev() {
                        let _ = fs::remove_dir(made);
                    }
                    // A group taken over that stays keeps its lock file, for a later sweep.
                    if let Some(held) = lock.filter(|_| !dir.exists()) {
                        let _ = fs::remove_file(&held.path);
                    }
                    return Err(e);
                }
            }
        };
        let intermediates = base
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .map(|a| mount.join(a))
            .collect();
        Ok(RtBudget {
            group: Arc::new(Group {
                dir,
                intermediates,
                lock: Mutex::new(lock),
                removed: AtomicBool::new(false),
            }),
            runtime_us,
        })
    }

    /// The group's `cgroup.procs`: a function process writes itself there before `exec`.
    pub fn procs_file(&self) -> PathBuf {
        self.group.dir.join(CGROUP_PROCS)
    }

    /// The group's directory.
    pub fn dir(&self) -> &Path {
        &self.group.dir
    }

    /// Real-time runtime per period on each CPU, µs.
    pub fn runtime_us(&self) -> u64 {
        self.runtime_us
    }

    /// The share of each CPU real-time functions may take.
    pub fn share(&self) -> f64 {
        self.runtime_us as f64 / BUDGET_PERIOD_US as f64
    }

    /// Removes the group, then each directory above it that no other machine uses any more,
    /// and gives up its lock (at shutdown, once every function process is gone). The kernel
    /// returns the runtime to the parent. Fails only if the group itself cannot go (a process
    /// is still in it); its lock is then kept, so a later start can still tell it stale.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.group.remove()
    }
}

impl Group {
    /// See [`RtBudget::remove`].
    fn remove(&self) -> Result<(), CgroupError> {
        let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.removed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CgroupError::RemoveDir {
                    path: self.dir.clone(),
                    source,
                })
            }
        }
        self.removed.store(true, Ordering::Relaxed);
        for dir in &self.intermediates {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Another machine's group is under it, so also under those above it.
                Err(_) => break,
            }
        }
        // Unlinked while still held, then released: a start waiting for it finds the file
        // gone and makes its own (see `OwnerLock::take`).
        if let Some(held) = lock.take() {
            let _ = fs::remove_file(&held.path);
        }
        Ok(())
    }
}

impl Drop for Group {
    /// The last handle gone: nothing will launch into the group any more. Only a group this
    /// machine holds the lock of (see [`Group::lock`]).
    fn drop(&mut self) {
        let owned = self.lock.get_mut().unwrap_or_else(PoisonError::into_inner);
        if owned.is_some() {
            let _ = self.remove();
        }
    }
}

impl OwnerLock {
    /// Takes the lock at `path` (creating the file), or `None` (see [`Group::lock`]).
    fn take(path: &Path) -> Option<OwnerLock> {
        for _ in 0..LOCK_ATTEMPTS {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).ok()?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .ok()?;
            match file.try_lock() {
                Ok(()) if same_file(&file, path) => {
                    return Some(OwnerLock {
                        path: path.to_owned(),
                        _held: file,
                    })
                }
                // A start that found this group stale unlinked the file between the open
                // and the lock: the lock guards nothing; take the new file's.
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => std::thread::sleep(LOCK_RETRY),
                Err(TryLockError::Error(_)) => return None,
            }
        }
        None
    }
}

/// Whether `file` is still the file at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Removes what dead machines left beside `dir`: for each lock file in `sibling_locks` but
/// `dir`'s own that this process can lock (so no live process holds it), the group of the
/// same name if it holds no task and no group, then the lock file (also when a test's or an
/// operator's cleanup removed the group already). Returns how many groups went.
fn remove_stale_siblings(dir: &Path, sibling_locks: &Path) -> usize {
    let (Some(parent), Some(own)) = (dir.parent(), dir.file_name()) else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(sibling_locks) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let lock_path = entry.path();
        if lock_path.extension() != Some(OsStr::new(LOCK_EXTENSION)) {
            continue;
        }
        let Some(name) = lock_path.file_stem() else {
            continue;
        };
        if name == own {
            continue;
        }
        let Ok(lock) = OpenOptions::new().read(true).write(true).open(&lock_path) else {
            continue;
        };
        // Held: its dispatcher lives, whether or not its group has tasks now. (A lock is
        // per open file, so this holds within one process too: `tariff local`'s machines.)
        if lock.try_lock().is_err() {
            continue;
        }
        let group = parent.join(name);
        if group.exists() {
            if !unused(&group) || fs::remove_dir(&group).is_err() {
                continue;
            }
            removed += 1;
        }
        let _ = fs::remove_file(&lock_path);
    }
    removed
}

/// After someone other than its machine removed the budget group `dir` (a test or the harness
/// cleaning up after a dispatcher it killed, see [`super::remove_listed_subtrees`]): removes
/// the directories above it that are left empty, as its machine would have
/// ([`RtBudget::remove`]). Only budget intermediates (`cpu` groups, which have
/// `cpu.rt_runtime_us`); the other hierarchies' empty levels are removed by
/// [`super::remove_listed_subtrees`] itself. Returns how many went.
pub fn remove_empty_intermediates(dir: &Path) -> usize {
    // Stops at the mount, which cannot be removed, or at the first directory still in use.
    super::remove_empty_parents(dir, usize::MAX, |parent| {
        parent.join(CPU_RT_RUNTIME).exists()
    })
}

/// Whether the group at `dir` holds no task and no group (a function process that outlived
/// its dispatcher keeps its group).
fn unused(dir: &Path) -> bool {
    let no_tasks = fs::read_to_string(dir.join(CGROUP_PROCS)).is_ok_and(|p| p.trim().is_empty());
    let no_groups = fs::read_dir(dir)
        .is_ok_and(|mut entries| !entries.any(|e| e.is_ok_and(|e| e.path().is_dir())));
    no_tasks && no_groups
}

/// Creates or takes over each directory of `<mount>/<base>` and sets its budget (see
/// [`RtBudget::create`]); the leaf's runtime. Adds the directories it creates to `made`.
fn walk(
    mount: &Path,
    base: &Path,
    share: f64,
    cpus: usize,
    made: &mut Vec<PathBuf>,
) -> Result<u64, CgroupError> {
    let shares = (SHARES_PER_CPU * cpus.max(1) as u64).to_string();
    let components: Vec<&std::ffi::OsStr> = base.iter().collect();
    let mut parent = mount.to_owned();
    let mut runtime_us = 0;
    for (depth, component) in components.iter().enumerate() {
        let dir = parent.join(component);
        let leaf = depth + 1 == components.len();
        // One level at a time, never `create_dir_all`: a parent that vanished must fail the
        // walk (to be walked again), not come back without a budget.
        let fresh = match fs::create_dir(&dir) {
            Ok(()) => {
                made.push(dir.clone());
                true
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => return Err(CgroupError::CreateDir { path: dir, source }),
        };
        if leaf || fresh || read_u64(&dir.join(CPU_RT_RUNTIME)).unwrap_or(0) == 0 {
            let left = left_over(&parent, &dir)?;
            let wanted = if leaf {
                left.min(bandwidth(share_runtime(share), BUDGET_PERIOD_US))
            } else {
                left
            };
            let runtime = runtime_for(wanted, BUDGET_PERIOD_US);
            if runtime < MIN_RUNTIME_US {
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
            write_runtime(&dir, runtime)?;
            runtime_us = runtime;
        }
        if read_u64(&dir.join(CPU_SHARES)).unwrap_or(0) < SHARES_PER_CPU * cpus.max(1) as u64 {
            write_file(&dir.join(CPU_SHARES), &shares)?;
        }
        parent = dir;
    }
    Ok(runtime_us)
}

/// Writes `runtime` as `dir`'s real-time runtime, waiting up to [`RELEASE_WAIT`] for
/// the budget of groups removed a moment ago to return to the parent.
fn write_runtime(dir: &Path, runtime: u64) -> Result<(), CgroupError> {
    let path = dir.join(CPU_RT_RUNTIME);
    let value = runtime.to_string();
    let start = Instant::now();
    loop {
        match write_file(&path, &value) {
            Err(CgroupError::Write { source, .. })
                if source.kind() == io::ErrorKind::InvalidInput
                    && start.elapsed() < RELEASE_WAIT =>
            {
                std::thread::sleep(RELEASE_POLL)
            }
            written => return written,
        }
    }
}

/// Whether `error` says a directory of the walk vanished under it.
fn vanished(error: &CgroupError) -> bool {
    match error {
        CgroupError::CreateDir { source, .. }
        | CgroupError::Read { source, .. }
        | CgroupError::Write { source, .. } => source.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
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
        let locks = tempfile::tempdir().unwrap();
        let budget = RtBudget::create(mount.path(), locks.path(), "tariff/m1", 0.5, 2).unwrap();
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
        let locks = tempfile::tempdir().unwrap();
        let first = RtBudget::create(mount.path(), locks.path(), "tariff/m1", 0.5, 2).unwrap();
        let second = RtBudget::create(mount.path(), locks.path(), "tariff/m2", 0.5, 2).unwrap();
        assert_eq!(first.runtime_us(), 50_000);
        assert!(second.runtime_us() < 45_000 && second.runtime_us() > 44_000);
        let error = RtBudget::create(mount.path(), locks.path(), "tariff/m3", 0.5, 2).unwrap_err();
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
        // The machine that made `tariff` leaves first: the last one out removes it all the
        // same (it used to stay, with 95 % of the host's real-time bandwidth).
        first.remove().unwrap();
        assert!(mount.path().join("tariff").exists(), "still used by m2");
        second.remove().unwrap();
        assert!(!mount.path().join("tariff").exists());
        assert_eq!(
            fs::read_dir(locks.path().join("tariff")).unwrap().count(),
            0
        );
    }

    #[test]
    fn the_last_handle_removes_the_group_and_a_failed_create_what_it_made() {
        let mount = fixture("950000");
        let locks = tempfile::tempdir().unwrap();
        let budget = RtBudget::create(mount.path(), locks.path(), "tariff/m1", 0.5, 2).unwrap();
        let clone = budget.clone();
        for dir in ["tariff/m1", "tariff"] {
            for file in fs::read_dir(mount.path().join(dir)).unwrap().flatten() {
                if file.path().is_file() {
                    fs::remove_file(file.path()).unwrap();
                }
            }
        }
        drop(budget);
        assert!(clone.dir().exists(), "a clone still holds it");
        drop(clone);
        assert!(!mount.path().join("tariff").exists());

        // Too little left for any machine: the walk fails after making `tariff`.
        let mount = fixture("5000");
        let error = RtBudget::create(mount.path(), locks.path(), "tariff/m1", 0.5, 2).unwrap_err();
        assert!(error.to_string().contains("left for"), "{error}");
        assert!(!mount.path().join("tariff").exists());
    }

    #[test]
    fn other_groups_budgets_are_respected_and_unlimited_means_a_whole_cpu() {
        let mount = fixture("-1");
        let locks = tempfile::tempdir().unwrap();
        other_group(mount.path(), "audio", 800_000, 1_000_000);
        let budget = RtBudget::create(mount.path(), locks.path(), "tariff/m1", 0.5, 1).unwrap();
        assert!(budget.runtime_us() < 20_000 && budget.runtime_us() > 19_000);
        assert_eq!(read(budget.dir().join(CPU_SHARES)), 1024);
    }

    #[test]
    fn no_group_budgets_no_budget() {
        let dir = tempfile::tempdir().unwrap();
        let error = RtBudget::create(dir.path(), dir.path(), "tariff/m1", 0.5, 2).unwrap_err();
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
