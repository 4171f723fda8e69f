//! One cgroup per function instance: CPU-time and peak-memory accounting, freezing, and killing
//! everything an instance ever started, over cgroup v1 or v2.
//!
//! The dispatcher owns one subtree, its *base* (e.g. `tariff/<machine-name>`), in every
//! hierarchy it uses ([`CgroupRoot`]); each instance gets one group under it
//! ([`InstanceCgroup`]). v1 and v2 are two implementations of one private trait
//! ([`GroupOps`]) in [`v1`] and [`v2`]; the shared logic (killing, removal, name checks) lives
//! here so that it is written once.
//!
//! # Never the `cpu` controller (but for one budget group)
//!
//! The kernels we run on have `CONFIG_RT_GROUP_SCHED`. With it, a task in a child `cpu` group can
//! only be `SCHED_FIFO` if that group (and each parent) has a non-zero `cpu.rt_runtime_us`, and
//! the budgets of sibling groups must sum below their parent's: per-instance `cpu` groups would
//! either refuse real-time priority (`sched_setscheduler` fails with `EPERM`) or split a fixed
//! real-time budget across instances. So:
//!
//! - **v1:** instances never join the `cpu` hierarchy, and a hierarchy co-mounted with `cpu`
//!   (the common `cpu,cpuacct`) is not used at all. CPU time comes from `cpuacct.usage` (ns) in
//!   the separate `cpuacct` hierarchy; without one, [`InstanceCgroup::cpu_usage_us`] is
//!   [`CgroupError::Unsupported`].
//! - **v2:** `+cpu` is never written to `cgroup.subtree_control` in our subtree (and `-cpu` is
//!   written to our own groups if someone enabled it). CPU time comes from `usage_usec` in
//!   `cpu.stat`, which every v2 group has even without the `cpu` controller. If the mount root
//!   itself delegates `cpu` to our base, a warning is logged: real-time tasks may then fail.
//!
//! The one exception is [`rt_budget`]: a single v1 `cpu` group per machine, shared by all its
//! functions, with a real-time budget on every CPU, so that the paying classes may use every
//! CPU while the kernel keeps a share of each for everything else.
//!
//! # Layout
//!
//! [`CgroupRoot::detect`] reads `/proc/self/mountinfo`: it prefers v2 when the unified mount
//! offers `memory`, else v1 with `memory` and `freezer` (required) plus `cpuacct`, `pids` and
//! `cpuset` when mounted. [`CgroupRoot::with_layout`] takes explicit mount points so that the
//! unit tests run against temp-dir fixtures that mimic the kernel's files.

pub mod dynmods;
pub mod rt_budget;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the kernel lists mounts, with the super-block options that name v1 controllers.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Filesystem type of a v1 hierarchy in mountinfo.
const FSTYPE_V1: &str = "cgroup";
/// Filesystem type of the v2 unified hierarchy in mountinfo.
const FSTYPE_V2: &str = "cgroup2";
/// The v1 controller that must never hold instances (see the module header).
const CPU_CONTROLLER: &str = "cpu";
/// Processes of a group, one pid per line (both versions).
const CGROUP_PROCS: &str = "cgroup.procs";

/// How long [`InstanceCgroup::kill_all`] keeps killing before giving up. Killed processes
/// usually leave within a millisecond; a process stuck in uninterruptible sleep may not.
const KILL_DEADLINE: Duration = Duration::from_secs(2);
/// How long [`InstanceCgroup::remove`] retries `rmdir` while the kernel finishes tearing down
/// the last exited tasks (`EBUSY`).
const REMOVE_DEADLINE: Duration = Duration::from_secs(2);
/// What [`InstanceCgroup::reclaim`] squeezes a v1 group's limit to: the kernel refuses a
/// limit below what it cannot reclaim, and a frozen group's pages can all go.
pub const RECLAIM_FLOOR_BYTES: u64 = 1 << 20;
/// How long freezing may take before [`InstanceCgroup::freeze`] reports it.
const FREEZE_DEADLINE: Duration = Duration::from_secs(1);
/// Poll interval of the bounded waits above.
const POLL_STEP: Duration = Duration::from_millis(2);
/// Attempts at creating a base whose shared intermediate another machine may remove meanwhile
/// ([`CgroupRoot::with_layout`]).
const CREATE_ATTEMPTS: usize = 3;

/// Which cgroup interface a [`CgroupRoot`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Separate hierarchies per controller (`/sys/fs/cgroup/memory`, ...).
    V1,
    /// One unified hierarchy with `cgroup.subtree_control`.
    V2,
}

/// The v1 controllers Tariff uses; `cpu` is deliberately absent (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum V1Controller {
    /// Memory accounting (`memory.usage_in_bytes`, `memory.max_usage_in_bytes`); required.
    Memory,
    /// CPU-time accounting (`cpuacct.usage`) without the `cpu` controller's RT budgets.
    Cpuacct,
    /// Freezing (`freezer.state`); required.
    Freezer,
    /// Process counting, so that fork bombs can be capped later.
    Pids,
    /// Confining instances to a set of CPUs.
    Cpuset,
}

impl V1Controller {
    /// Every controller, in the order hierarchies are created.
    pub const ALL: [V1Controller; 5] = [
        V1Controller::Memory,
        V1Controller::Cpuacct,
        V1Controller::Freezer,
        V1Controller::Pids,
        V1Controller::Cpuset,
    ];

    /// The controller's name as the kernel spells it in mount options.
    pub fn name(self) -> &'static str {
        match self {
            V1Controller::Memory => "memory",
            V1Controller::Cpuacct => "cpuacct",
            V1Controller::Freezer => "freezer",
            V1Controller::Pids => "pids",
            V1Controller::Cpuset => "cpuset",
        }
    }

    fn from_name(name: &str) -> Option<V1Controller> {
        V1Controller::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Where the cgroup hierarchies are mounted: found by [`Layout::detect`], or given explicitly
/// (tests point it at a temp-dir fixture).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    kind: LayoutKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LayoutKind {
    V1(BTreeMap<V1Controller, PathBuf>),
    V2(PathBuf),
}

impl Layout {
    /// A v1 layout: the mount point of each controller's hierarchy. Controllers left out are
    /// not used.
    pub fn v1(mounts: impl IntoIterator<Item = (V1Controller, PathBuf)>) -> Layout {
        Layout {
            kind: LayoutKind::V1(mounts.into_iter().collect()),
        }
    }

    /// A v2 layout: the unified hierarchy's mount point.
    pub fn v2(mount: impl Into<PathBuf>) -> Layout {
        Layout {
            kind: LayoutKind::V2(mount.into()),
        }
    }

    /// The layout of this machine, from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout, CgroupError> {
        let text = fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read {
            path: PathBuf::from(MOUNTINFO),
            source,
        })?;
        Layout::from_mountinfo(&text)
    }

    /// The layout described by the text of a `mountinfo` file: v2 if the unified mount's
    /// `cgroup.controllers` offers `memory`, else the v1 hierarchies of the controllers we use,
    /// skipping any hierarchy that also carries `cpu`.
    pub fn from_mountinfo(text: &str) -> Result<Layout, CgroupError> {
        let mut unified = None;
        let mut v1 = BTreeMap::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let super_options = right.nth(1).unwrap_or_default();
            let mount_point = PathBuf::from(unescape_mount_path(mount_point));
            if fstype == FSTYPE_V2 && unified.is_none() {
                unified = Some(mount_point);
            } else if fstype == FSTYPE_V1 {
                let options: Vec<&str> = super_options.split(',').collect();
                if options.contains(&CPU_CONTROLLER) {
                    // Co-mounted with `cpu`: joining it would put instances in `cpu` groups.
                    continue;
                }
                for controller in options.iter().filter_map(|o| V1Controller::from_name(o)) {
                    v1.entry(controller).or_insert_with(|| mount_point.clone());
                }
            }
        }
        if let Some(mount) = unified {
            if v2::offers_controller(&mount, v2::MEMORY_CONTROLLER)? {
                return Ok(Layout::v2(mount));
            }
        }
        if v1.is_empty() {
            return Err(CgroupError::NoHierarchy {
                reason: "no cgroup2 mount offering memory and no usable v1 hierarchy".into(),
            });
        }
        Ok(Layout::v1(v1))
    }

    /// Which interface this layout uses.
    pub fn version(&self) -> CgroupVersion {
        match self.kind {
            LayoutKind::V1(_) => CgroupVersion::V1,
            LayoutKind::V2(_) => CgroupVersion::V2,
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What can go wrong driving cgroups; each variant names the file or value involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy offers what Tariff needs.
    #[error("no usable cgroup hierarchy: {reason}")]
    NoHierarchy {
        /// What was missing.
        reason: String,
    },
    /// The base path is absolute-after-trimming, empty or climbs with `..`.
    #[error("invalid cgroup base {base:?}: must be a relative path without `..`")]
    InvalidBase {
        /// The base as given.
        base: String,
    },
    /// An instance name that is not a single path component.
    #[error("invalid instance cgroup name {name:?}: must be one path component")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// An empty CPU list would leave instances nowhere to run.
    #[error("cannot confine instances to an empty CPU list")]
    NoCpus,
    /// Reading a control file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing a control file failed.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A control file held something other than the expected format.
    #[error("unexpected content in {path}: {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// Creating a group directory failed.
    #[error("creating cgroup {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Removing a group directory failed (or kept failing with `EBUSY` past the deadline).
    #[error("removing cgroup {path}: {source}")]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The last error.
        source: io::Error,
    },
    /// Signalling a member process failed for a reason other than it being gone already.
    #[error("killing pid {pid}: {source}")]
    Kill {
        /// The process.
        pid: i32,
        /// The errno.
        source: Errno,
    },
    /// Processes were still in the group when [`InstanceCgroup::kill_all`] gave up.
    #[error("{remaining} processes still in {path} after {waited:?} of killing")]
    KillTimeout {
        /// The group's `cgroup.procs`.
        path: PathBuf,
        /// How many were left.
        remaining: usize,
        /// How long it tried.
        waited: Duration,
    },
    /// The group did not report frozen within the deadline.
    #[error("{path} not frozen after {waited:?}")]
    FreezeTimeout {
        /// The file polled for the frozen state.
        path: PathBuf,
        /// How long it waited.
        waited: Duration,
    },
    /// This layout cannot provide the figure (e.g. v1 without a separate `cpuacct`).
    #[error("{what} is not available with this cgroup layout")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
}

/// The version-specific half of an instance group; v1 and v2 each implement it once.
pub(crate) trait GroupOps: fmt::Debug + Send + Sync {
    /// The `cgroup.procs` files of every hierarchy the group spans.
    fn procs_files(&self) -> Vec<PathBuf>;
    /// The group's directories, leaf-first order irrelevant; removed by `rmdir`.
    fn dirs(&self) -> Vec<PathBuf>;
    /// The `cgroup.procs` whose content decides whether the group is empty.
    fn primary_procs(&self) -> PathBuf;
    /// Every thread id in the group.
    fn threads(&self) -> Result<Vec<i32>, CgroupError>;
    /// CPU time of everything the group ran, in microseconds.
    fn cpu_usage_us(&self) -> Result<u64, CgroupError>;
    /// Memory charged now, in bytes.
    fn memory_current(&self) -> Result<u64, CgroupError>;
    /// Peak memory since creation or reset, in bytes.
    fn memory_peak(&self) -> Result<u64, CgroupError>;
    /// Restarts peak tracking; `false` when the kernel cannot.
    fn reset_memory_peak(&self) -> Result<bool, CgroupError>;
    /// Freezes (`true`) or thaws (`false`) and waits, bounded, for the kernel to finish.
    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError>;
    /// Asks the kernel to kill the whole group at once; `false` when it cannot (no
    /// `cgroup.kill`), and the caller signals each process itself.
    fn kill_by_kernel(&self) -> Result<bool, CgroupError>;
    /// What the group holds now: anonymous, file-backed and swapped bytes.
    fn memory_stat(&self) -> Result<MemoryStat, CgroupError>;
    /// Keeps the kernel's own reclaim from swapping the group's anonymous memory (`true`), or
    /// lets it (`false`).
    fn protect_from_swap(&self, protect: bool) -> Result<(), CgroupError>;
    /// Asks the kernel to reclaim what it can of the group's memory now, and returns when it
    /// has tried.
    fn reclaim(&self) -> Result<(), CgroupError>;
}

/// Memory a group holds, by kind, read from the kernel's `memory.stat` (and, on v2,
/// `memory.swap.current`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStat {
    /// Anonymous memory in RAM (heaps, stacks): what swapping can move out.
    pub anon: u64,
    /// Page cache charged to the group: reclaimable without swap.
    pub file: u64,
    /// Bytes of the group's memory in swap now.
    pub swapped: u64,
}

impl MemoryStat {
    /// Bytes in RAM.
    pub fn resident(&self) -> u64 {
        self.anon + self.file
    }
}

/// How [`CgroupRoot::limit_memory`] left the functions' memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The limit on RAM the functions together may use, in bytes.
    pub limit_bytes: u64,
    /// Whether the kernel's OOM killer is off for the functions' subtree (v1
    /// `memory.oom_control`): at the limit their allocations wait, and the dispatcher chooses
    /// whom to kill. v2 has no such switch: there the dispatcher must act before the limit.
    pub oom_killer_disabled: bool,
}

/// The version-specific half of the dispatcher's subtree.
#[derive(Debug)]
enum RootImpl {
    V1(v1::V1Root),
    V2(v2::V2Root),
}

/// The dispatcher's own subtree, e.g. `tariff/<machine-name>`, in every hierarchy it uses.
/// Instance groups are created under it, and a restarted dispatcher finds its predecessor's
/// leftovers there ([`CgroupRoot::clean_stale`]).
#[derive(Debug)]
pub struct CgroupRoot {
    inner: RootImpl,
    /// Directory levels of the base above its own (`tariff/<machine>`: 1), which the machine
    /// that leaves them empty removes ([`CgroupRoot::remove_base`]).
    intermediates: usize,
}

impl CgroupRoot {
    /// Detects the layout from `/proc/self/mountinfo` (v2 when the unified mount offers
    /// `memory`, else v1) and creates `<mount>/<base>` in every hierarchy used. For v2,
    /// `memory`, `pids` (and `cpuset` when offered) are enabled in `cgroup.subtree_control`
    /// along the path, never `cpu`.
    pub fn detect(base: &str) -> Result<CgroupRoot, CgroupError> {
        CgroupRoot::with_layout(Layout::detect()?, base)
    }

    /// Like [`CgroupRoot::detect`], with explicit mount points (tests use temp-dir fixtures).
    ///
    /// The intermediate levels (`tariff`) are shared by the machines of a host, and the last
    /// machine to leave removes them ([`CgroupRoot::remove_base`]); one may vanish between two
    /// steps of the creation here, which then starts again (at most [`CREATE_ATTEMPTS`] times).
    pub fn with_layout(layout: Layout, base: &str) -> Result<CgroupRoot, CgroupError> {
        let base = check_base(base)?;
        let intermediates = base.components().count() - 1;
        let mut attempt = 1;
        loop {
            let made = match &layout.kind {
                LayoutKind::V1(mounts) => v1::V1Root::new(mounts.clone(), &base).map(RootImpl::V1),
                LayoutKind::V2(mount) => v2::V2Root::new(mount.clone(), &base).map(RootImpl::V2),
            };
            match made {
                Ok(inner) => {
                    return Ok(CgroupRoot {
                        inner,
                        intermediates,
                    })
                }
                Err(e) if e.vanished() && attempt < CREATE_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the base directories, then the intermediate levels above them that no other
    /// machine uses any more (an `rmdir` of a group with groups in it fails, which is the
    /// test). Call it once every instance group is gone. An intermediate an operator made
    /// (say, one delegated to the unprivileged user a dispatcher runs as) goes too once
    /// empty: make it again, or give each dispatcher a base of its own, before the next start.
    pub fn remove_base(&self) {
        for dir in self.base_dirs() {
            if remove_dir_retrying(&dir).is_ok() {
                remove_empty_parents(&dir, self.intermediates, |_| true);
            }
        }
    }

    /// Which interface this root drives.
    pub fn version(&self) -> CgroupVersion {
        match self.inner {
            RootImpl::V1(_) => CgroupVersion::V1,
            RootImpl::V2(_) => CgroupVersion::V2,
        }
    }

    /// The base directories, one per hierarchy, so that a caller (or a test) can remove the
    /// whole subtree when the dispatcher is done with it.
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        match &self.inner {
            RootImpl::V1(r) => r.base_dirs(),
            RootImpl::V2(r) => vec![r.base_dir()],
        }
    }

    /// Confines every instance to `cpus` through `cpuset` on the base group, so that real-time
    /// functions can be kept off a CPU reserved for the kernel and CFS. Call it before creating
    /// instances: v1 refuses to shrink a parent below a child's CPUs. `Ok(false)` when no
    /// `cpuset` controller is available.
    pub fn confine_cpus(&self, cpus: &[usize]) -> Result<bool, CgroupError> {
        if cpus.is_empty() {
            return Err(CgroupError::NoCpus);
        }
        let list = cpus
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        match &self.inner {
            RootImpl::V1(r) => r.confine_cpus(&list),
            RootImpl::V2(r) => r.confine_cpus(&list),
        }
    }

    /// Creates the instance group `name` under the base (an existing one is reused).
    pub fn create(&self, name: &str) -> Result<InstanceCgroup, CgroupError> {
        check_name(name)?;
        let ops: Box<dyn GroupOps> = match &self.inner {
            RootImpl::V1(r) => Box::new(r.create(name)?),
            RootImpl::V2(r) => Box::new(r.create(name)?),
        };
        Ok(InstanceCgroup {
            name: name.to_owned(),
            ops,
        })
    }

    /// The existing instance group `name`, without creating anything: for reading what a
    /// running instance holds and freezing it, where its owner keeps the group itself.
    pub fn open(&self, name: &str) -> Result<InstanceCgroup, CgroupError> {
        check_name(name)?;
        let ops: Box<dyn GroupOps> = match &self.inner {
            RootImpl::V1(r) => Box::new(r.open(name)),
            RootImpl::V2(r) => Box::new(r.open(name)),
        };
        Ok(InstanceCgroup {
            name: name.to_owned(),
            ops,
        })
    }

    /// Enforces `limit_bytes` as what every function on the machine may hold in RAM together,
    /// on the base group, with swap beyond it unlimited, and (v1) the kernel's OOM killer off
    /// for the subtree so that the dispatcher, which knows the price classes, chooses whom to
    /// kill. The dispatcher itself is not in the subtree, so it survives whatever happens in it.
    pub fn limit_memory(&self, limit_bytes: u64) -> Result<MemoryLimit, CgroupError> {
        match &self.inner {
            RootImpl::V1(r) => r.limit_memory(limit_bytes),
            RootImpl::V2(r) => r.limit_memory(limit_bytes),
        }
    }

    /// What every function on the machine holds together now (the base group's figures).
    pub fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        match &self.inner {
            RootImpl::V1(r) => r.memory_stat(),
            RootImpl::V2(r) => r.memory_stat(),
        }
    }

    /// Kills the processes of, and removes, every instance group left under the base by a
    /// previous run of this dispatcher. Returns how many groups were removed.
    pub fn clean_stale(&self) -> Result<usize, CgroupError> {
        let names = match &self.inner {
            RootImpl::V1(r) => r.instance_names()?,
            RootImpl::V2(r) => r.instance_names()?,
        };
        let mut removed = 0;
        for name in names {
            let ops: Box<dyn GroupOps> = match &self.inner {
                RootImpl::V1(r) => Box::new(r.open(&name)),
                RootImpl::V2(r) => Box::new(r.open(&name)),
            };
            tracing::info!(instance = %name, "removing stale instance cgroup");
            InstanceCgroup { name, ops }.remove()?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// One function instance's group: every process the instance starts stays in it, so its CPU
/// time and memory are accounted, and freezing or killing it reaches all of them.
#[derive(Debug)]
pub struct InstanceCgroup {
    name: String,
    ops: Box<dyn GroupOps>,
}

impl InstanceCgroup {
    /// The instance name the group was created with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `cgroup.procs` files (one per hierarchy) a child writes `0` into before `exec` to
    /// join this group, so that nothing it does escapes accounting.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.ops.procs_files()
    }

    /// Moves process `pid` (all its threads) into the group, in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for file in self.ops.procs_files() {
            write_file(&file, &value)?;
        }
        Ok(())
    }

    /// Every thread id in the group: real-time priority is per thread, so raising an instance
    /// means raising each of these.
    pub fn threads(&self) -> Result<Vec<i32>, CgroupError> {
        self.ops.threads()
    }

    /// Every process id in the group.
    pub fn processes(&self) -> Result<Vec<i32>, CgroupError> {
        read_ids(&self.ops.primary_procs())
    }

    /// CPU time used by everything in the group since creation, in microseconds.
    pub fn cpu_usage_us(&self) -> Result<u64, CgroupError> {
        self.ops.cpu_usage_us()
    }

    /// Memory charged to the group now, in bytes.
    pub fn memory_current(&self) -> Result<u64, CgroupError> {
        self.ops.memory_current()
    }

    /// Peak memory since creation or the last [`InstanceCgroup::reset_memory_peak`], in bytes
    /// (v1 `memory.max_usage_in_bytes`; v2 `memory.peak`, or the current usage on kernels
    /// older than 5.19 that lack it).
    pub fn memory_peak(&self) -> Result<u64, CgroupError> {
        self.ops.memory_peak()
    }

    /// Restarts peak tracking, so that a warm instance's next invocation reports its own peak.
    /// `Ok(false)` when the kernel cannot (v2 before 6.12, where `memory.peak` is read-only).
    pub fn reset_memory_peak(&self) -> Result<bool, CgroupError> {
        self.ops.reset_memory_peak()
    }

    /// Freezes every task in the group and waits (bounded) until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.ops.set_frozen(true)
    }

    /// Lets a frozen group run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.ops.set_frozen(false)
    }

    /// What the group holds now: anonymous, file-backed and swapped bytes.
    pub fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        self.ops.memory_stat()
    }

    /// Has the kernel reclaim what it can of this group's memory now (v1: its limit squeezed
    /// to [`RECLAIM_FLOOR_BYTES`] and lifted again; v2: `memory.reclaim`). After
    /// `MADV_PAGEOUT`, the group's pages are written to swap but still in RAM as swap cache;
    /// this frees them (measured: 17 ms for 64 MiB, docs/memory.md). Call it on a frozen group,
    /// or its pages come straight back.
    pub fn reclaim(&self) -> Result<(), CgroupError> {
        self.ops.reclaim()
    }

    /// Keeps the kernel's own reclaim (at the machine's limit) from swapping this group's
    /// anonymous memory, or lets it again: the top class's memory is never swapped while a
    /// cheaper class has some (v1 `memory.swappiness` 0, v2 `memory.swap.max` 0). The
    /// dispatcher's own page-out ignores this, and never chooses the top class while a
    /// cheaper one has swappable memory.
    pub fn protect_from_swap(&self, protect: bool) -> Result<(), CgroupError> {
        self.ops.protect_from_swap(protect)
    }

    /// Kills every process in the group: with `cgroup.kill` where the kernel has it (v2, 5.14+),
    /// else by freezing the group (so nothing forks in between), `SIGKILL`ing each member and
    /// thawing, repeated until the group is empty or [`KILL_DEADLINE`] passes.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let procs = self.ops.primary_procs();
        let start = Instant::now();
        loop {
            let pids = read_ids(&procs)?;
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= KILL_DEADLINE {
                return Err(CgroupError::KillTimeout {
                    path: procs,
                    remaining: pids.len(),
                    waited: start.elapsed(),
                });
            }
            if !self.ops.kill_by_kernel()? {
                // Best effort: a group that will not freeze is still killed one by one.
                let frozen = self.ops.set_frozen(true).is_ok();
                let killed = pids.iter().try_for_each(|&pid| signal_kill(pid));
                if frozen {
                    self.ops.set_frozen(false)?;
                }
                killed?;
            }
            thread::sleep(POLL_STEP);
        }
    }

    /// Kills whatever is left, then removes the group's directories, retrying `rmdir` (bounded)
    /// while the kernel finishes tearing down exited tasks.
    pub fn remove(self) -> Result<(), CgroupError> {
        if !self.processes().unwrap_or_default().is_empty() {
            self.kill_all()?;
        }
        for dir in self.ops.dirs() {
            remove_dir_retrying(&dir)?;
        }
        Ok(())
    }
}

/// Kills every process in the cgroup subtrees listed in the file `listing` (one directory
/// per line, as a dispatcher records its own at start) and removes them, bottom up, with the
/// real-time budget's intermediates they leave empty ([`rt_budget::remove_empty_intermediates`])
/// and the one level above each other base that it leaves empty (a dispatcher's base is
/// `tariff/<machine>`), as the dispatcher would have had it been the last to leave; how many
/// directories were removed. For a dispatcher that was killed and will not come back to clean up itself
/// (tests, the harness's chaos runs): a dispatcher started again on the same data directory
/// cleans its stale groups on its own.
pub fn remove_listed_subtrees(listing: &Path) -> usize {
    let Ok(text) = fs::read_to_string(listing) else {
        return 0;
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|base| {
            let dir = Path::new(base.trim());
            remove_subtree(dir)
                + rt_budget::remove_empty_intermediates(dir)
                + remove_empty_parents(dir, 1, |_| true)
        })
        .sum()
}

/// Removes `dir` and every group under it, killing their processes first.
fn remove_subtree(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed: usize = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| remove_subtree(&e.path()))
        .sum();
    let deadline = Instant::now() + KILL_DEADLINE;
    loop {
        let procs = fs::read_to_string(dir.join(CGROUP_PROCS)).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for &pid in &pids {
            let _ = signal_kill(pid);
        }
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        thread::sleep(POLL_STEP);
    }
    if remove_dir_retrying(dir).is_ok() {
        removed += 1;
    }
    removed
}

impl CgroupError {
    /// Whether a file or directory of the subtree being made was not found: another machine
    /// removed a shared intermediate while it was being made ([`CgroupRoot::with_layout`]).
    fn vanished(&self) -> bool {
        match self {
            CgroupError::CreateDir { source, .. }
            | CgroupError::Read { source, .. }
            | CgroupError::Write { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Removes up to `levels` directories above `dir` while each is empty (`rmdir` refuses a
/// group with groups in it) and `ours` says it is one of Tariff's levels; how many went.
pub(crate) fn remove_empty_parents(
    dir: &Path,
    levels: usize,
    ours: impl Fn(&Path) -> bool,
) -> usize {
    let mut removed = 0;
    let mut above = dir.parent();
    while let Some(parent) = above.filter(|_| removed < levels) {
        if !ours(parent) || fs::remove_dir(parent).is_err() {
            break;
        }
        removed += 1;
        above = parent.parent();
    }
    removed
}

/// Sends `SIGKILL`; a process that is already gone is not an error.
fn signal_kill(pid: i32) -> Result<(), CgroupError> {
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(CgroupError::Kill { pid, source }),
    }
}

/// `rmdir` that tolerates a missing directory and retries `EBUSY` until [`REMOVE_DEADLINE`].
pub(crate) fn remove_dir_retrying(dir: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < REMOVE_DEADLINE =>
            {
                thread::sleep(POLL_STEP);
            }
            Err(source) => {
                return Err(CgroupError::RemoveDir {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

/// The base as a relative path; rejects empty bases and `..`, which would escape the mount.
fn check_base(base: &str) -> Result<PathBuf, CgroupError> {
    let trimmed = base.trim_matches('/');
    let path = PathBuf::from(trimmed);
    let invalid = || CgroupError::InvalidBase {
        base: base.to_owned(),
    };
    if trimmed.is_empty() {
        return Err(invalid());
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(invalid());
    }
    Ok(path)
}

/// Instance names become one directory level.
fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(CgroupError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Reads a control file.
pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a control file, `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a control file in one `write(2)`, as the kernel expects. The file is created if
/// missing, which only ever happens in test fixtures (cgroupfs refuses creation).
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Parses a file holding one unsigned number.
/// The value of `key` in a flat-keyed file such as `memory.stat` (`key value` per line), or
/// `None` when the key is absent.
pub(crate) fn stat_value(
    path: &Path,
    content: &str,
    key: &str,
) -> Result<Option<u64>, CgroupError> {
    content
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(|v| parse_u64(path, v))
        .transpose()
}

pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let content = read_file(path)?;
    parse_u64(path, &content)
}

pub(crate) fn parse_u64(path: &Path, content: &str) -> Result<u64, CgroupError> {
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content: content.to_owned(),
    })
}

/// Parses a file of ids, one per line (`cgroup.procs`, `tasks`, `cgroup.threads`).
pub(crate) fn read_ids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let content = read_file(path)?;
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse().map_err(|_| CgroupError::Parse {
                path: path.to_owned(),
                content: content.clone(),
            })
        })
        .collect()
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(|source| CgroupError::CreateDir {
        path: dir.to_owned(),
        source,
    })
}

/// The names of the subdirectories of `dir` (instance groups under a base); none if `dir` is
/// missing.
pub(crate) fn subdir_names(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Polls `done` until it holds or `deadline` passes; `false` on timeout.
pub(crate) fn wait_until(
    deadline: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(true);
        }
        if start.elapsed() >= deadline {
            return Ok(false);
        }
        thread::sleep(POLL_STEP);
    }
}

#[cfg(test)]
pub(crate) mod test_fixture {
    //! Temp-dir fixtures that mimic the kernel's cgroup files, youki style: the code under test
    //! writes real files, and the tests read back what it wrote.

    use super::*;

    /// Writes `content` to `dir/file`, creating `dir`.
    pub fn put(dir: &Path, file: &str, content: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(file), content).unwrap();
    }

    /// Reads `dir/file`.
    pub fn get(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /nonexistent/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_hybrid_without_unified_memory_is_v1_without_cpu() {
        let layout = Layout::from_mountinfo(MOUNTINFO_HYBRID).unwrap();
        let LayoutKind::V1(mounts) = &layout.kind else {
            panic!("expected v1, got {layout:?}");
        };
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[&V1Controller::Cpuacct],
            PathBuf::from("/sys/fs/cgroup/cpuacct")
        );
        assert!(mounts.values().all(|p| !p.ends_with("cpu")));
    }

    #[test]
    fn mountinfo_skips_cpuacct_co_mounted_with_cpu() {
        let text = "\
1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 / /cg/memory rw - cgroup cgroup rw,memory
";
        let layout = Layout::from_mountinfo(text).unwrap();
        assert_eq!(
            layout,
            Layout::v1([(V1Controller::Memory, PathBuf::from("/cg/memory"))])
        );
    }

    #[test]
    fn mountinfo_prefers_v2_with_memory() {
        let dir = tempfile::tempdir().unwrap();
        test_fixture::put(
            dir.path(),
            "cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
        let text = format!(
            "1 0 0:1 / {} rw - cgroup2 cgroup2 rw\n2 0 0:2 / /cg/memory rw - cgroup cgroup rw,memory\n",
            dir.path().display()
        );
        assert_eq!(
            Layout::from_mountinfo(&text).unwrap(),
            Layout::v2(dir.path())
        );
    }

    #[test]
    fn mountinfo_without_cgroups_is_an_error() {
        let text = "1 0 0:1 / / rw - ext4 /dev/vda rw\n";
        assert!(matches!(
            Layout::from_mountinfo(text),
            Err(CgroupError::NoHierarchy { .. })
        ));
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\"), r"/end\");
    }

    #[test]
    fn the_last_machine_to_leave_removes_the_shared_intermediate() {
        let dir = tempfile::tempdir().unwrap();
        let layout = || {
            Layout::v1([
                (V1Controller::Memory, dir.path().join("memory")),
                (V1Controller::Freezer, dir.path().join("freezer")),
            ])
        };
        for mount in ["memory", "freezer"] {
            fs::create_dir(dir.path().join(mount)).unwrap();
        }
        let m1 = CgroupRoot::with_layout(layout(), "tariff/m1").unwrap();
        let m2 = CgroupRoot::with_layout(layout(), "tariff/m2").unwrap();
        m1.remove_base();
        for mount in ["memory", "freezer"] {
            let shared = dir.path().join(mount).join("tariff");
            assert!(!shared.join("m1").exists() && shared.join("m2").exists());
        }
        m2.remove_base();
        for mount in ["memory", "freezer"] {
            assert!(!dir.path().join(mount).join("tariff").exists(), "{mount}");
            assert!(dir.path().join(mount).exists(), "never above the base");
        }
    }

    #[test]
    fn base_and_names_are_checked() {
        assert_eq!(
            check_base("/tariff/m1/").unwrap(),
            PathBuf::from("tariff/m1")
        );
        assert!(check_base("").is_err());
        assert!(check_base("tariff/../etc").is_err());
        assert!(check_name("inst-1").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_parse_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        test_fixture::put(dir.path(), "cgroup.procs", "12\n345\n\n");
        assert_eq!(
            read_ids(&dir.path().join("cgroup.procs")).unwrap(),
            [12, 345]
        );
        test_fixture::put(dir.path(), "cgroup.procs", "x\n");
        assert!(matches!(
            read_ids(&dir.path().join("cgroup.procs")),
            Err(CgroupError::Parse { .. })
        ));
    }

    #[test]
    fn remove_tolerates_missing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        remove_dir_retrying(&dir.path().join("gone")).unwrap();
    }

    #[test]
    fn listed_subtrees_are_removed_bottom_up() {
        let dir = tempfile::tempdir().unwrap();
        // A dispatcher's base is `tariff/<machine>`; the empty `tariff` above goes too.
        let (memory, pids) = (
            dir.path().join("memory/tariff/base"),
            dir.path().join("pids/tariff/base"),
        );
        fs::create_dir_all(memory.join("instance-1")).unwrap();
        fs::create_dir_all(&pids).unwrap();
        let listing = dir.path().join("cgroups");
        let missing = dir.path().join("freezer/tariff/base");
        let text = format!(
            "{}\n{}\n\n{}\n",
            memory.display(),
            pids.display(),
            missing.display()
        );
        fs::write(&listing, text).unwrap();
        assert_eq!(remove_listed_subtrees(&listing), 5);
        assert!(!memory.exists() && !pids.exists());
        assert!(!dir.path().join("memory/tariff").exists());
        assert!(
            dir.path().join("memory").exists(),
            "never above the base's parent"
        );
        assert_eq!(remove_listed_subtrees(&dir.path().join("no-listing")), 0);
    }
}
