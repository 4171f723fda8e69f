//! `favordynmods`: moving a process between cgroups without waiting for an RCU grace period.
//!
//! Every write to a `cgroup.procs` file (a new instance joining its cgroups) takes the kernel's
//! `cgroup_threadgroup_rwsem` for writing. By default that per-CPU semaphore is tuned for
//! readers (every `fork` and `exit` reads it), and a writer first waits for an RCU grace
//! period, unless another writer passed within the last one. Measured here (Linux 6.18, 2 vCPU):
//! a write 0.5 s after the previous one took **8–16 ms**, back-to-back writes 0.01 ms. That is
//! why an exec cold start cost 1.4 ms in the machine benchmark (launches back to back) but
//! 8–18 ms on an idle live cluster (one launch now and then): issue 11.
//!
//! The kernel's answer is the cgroup mount option `favordynmods` ("favor dynamic
//! modifications", Documentation/admin-guide/cgroup-v2.rst): writers no longer wait, `fork`
//! and `exit` take a slightly slower path. With it the same spaced writes took 0.2–0.3 ms. The
//! option is per hierarchy but the semaphore is global, so turning it on for one cgroup mount
//! is enough. On recent kernels (6.18 here) it cannot be fully turned off again before a
//! reboot: removing the option left writes fast. That is a host-wide tuning, so the
//! dispatcher logs plainly that it made it ([`favor_dynamic_modifications`]).

use std::ffi::CString;
use std::io;
use std::path::PathBuf;

use super::{unescape_mount_path, CgroupError, FSTYPE_V1, FSTYPE_V2, MOUNTINFO};

/// The mount option.
pub const FAVOR_DYNMODS: &str = "favordynmods";

/// Per-mount options of mountinfo's sixth field and the `MS_*` flag each stands for: a
/// remount replaces the mount's flags, so the ones in force must be passed again.
const MOUNT_FLAGS: [(&str, libc::c_ulong); 8] = [
    ("ro", libc::MS_RDONLY),
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC),
    ("noatime", libc::MS_NOATIME),
    ("nodiratime", libc::MS_NODIRATIME),
    ("relatime", libc::MS_RELATIME),
    ("strictatime", libc::MS_STRICTATIME),
];

/// What [`favor_dynamic_modifications`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dynmods {
    /// A cgroup mount already had the option.
    AlreadyOn(PathBuf),
    /// The option was turned on by remounting this mount.
    TurnedOn(PathBuf),
}

/// How to remount one cgroup mount with `favordynmods`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remount {
    /// The mount point.
    pub target: PathBuf,
    /// Its filesystem type (`cgroup` or `cgroup2`).
    pub fstype: String,
    /// Its source (`cgroup`, `none`, ...).
    pub source: String,
    /// `MS_REMOUNT` and the mount's own flags.
    pub flags: libc::c_ulong,
    /// Its super-block options without `rw`/`ro`, plus `favordynmods`.
    pub data: String,
}

/// The remount that turns the option on, from the text of a `mountinfo` file: `Ok(None)` if
/// a cgroup mount already has it, else the first cgroup2 mount or, failing one, the first v1
/// hierarchy with a controller (a named hierarchy like `name=systemd` has none to repeat).
pub fn plan_remount(text: &str) -> Result<Option<Remount>, Dynmods> {
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let (Some(target), Some(mount_options)) = (left.get(4), left.get(5)) else {
            continue;
        };
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let source = right.next().unwrap_or_default();
        let super_options = right.next().unwrap_or_default();
        if fstype != FSTYPE_V1 && fstype != FSTYPE_V2 {
            continue;
        }
        let target = PathBuf::from(unescape_mount_path(target));
        let options: Vec<&str> = super_options.split(',').collect();
        if options.contains(&FAVOR_DYNMODS) {
            return Err(Dynmods::AlreadyOn(target));
        }
        let flags = mount_options
            .split(',')
            .filter_map(|o| MOUNT_FLAGS.iter().find(|(name, _)| *name == o))
            .fold(libc::MS_REMOUNT, |flags, (_, flag)| flags | flag);
        let mut data: Vec<&str> = options
            .iter()
            .copied()
            .filter(|o| *o != "rw" && *o != "ro" && !o.is_empty())
            .collect();
        data.push(FAVOR_DYNMODS);
        let remount = Remount {
            target,
            fstype: fstype.to_owned(),
            source: source.to_owned(),
            flags,
            data: data.join(","),
        };
        if fstype == FSTYPE_V2 {
            v2.get_or_insert(remount);
        } else if !options.iter().any(|o| o.starts_with("name=")) {
            v1.get_or_insert(remount);
        }
    }
    Ok(v2.or(v1))
}

/// Turns `favordynmods` on for one cgroup mount of this host, unless one has it already (see
/// the module header for why and what it costs). `Ok(None)`: no cgroup mount to remount.
pub fn favor_dynamic_modifications() -> Result<Option<Dynmods>, CgroupError> {
    let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read {
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    let remount = match plan_remount(&text) {
        Err(found) => return Ok(Some(found)),
        Ok(None) => return Ok(None),
        Ok(Some(remount)) => remount,
    };
    let failed = |source: io::Error| CgroupError::Write {
        path: remount.target.clone(),
        value: format!("remount,{}", remount.data),
        source,
    };
    let invalid = || failed(io::Error::from(io::ErrorKind::InvalidInput));
    let c = |s: &str| CString::new(s).map_err(|_| invalid());
    let target =
        CString::new(remount.target.as_os_str().as_encoded_bytes()).map_err(|_| invalid())?;
    let (source, fstype, data) = (c(&remount.source)?, c(&remount.fstype)?, c(&remount.data)?);
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; the
    // kernel only reads them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            remount.flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    Ok(Some(Dynmods::TurnedOn(remount.target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's cgroup mounts (v1 hierarchies and a v2 mount), one per line.
    const V1_AND_V2: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
32 30 0:28 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn remounts_the_v2_mount_keeping_its_flags_and_options() {
        let plan = plan_remount(V1_AND_V2).unwrap().unwrap();
        assert_eq!(plan.target, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(plan.fstype, "cgroup2");
        assert_eq!(plan.data, "nsdelegate,favordynmods");
        assert_eq!(
            plan.flags,
            libc::MS_REMOUNT
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_RELATIME
        );
    }

    #[test]
    fn without_v2_a_controller_hierarchy_not_a_named_one() {
        let v1_only: String = V1_AND_V2
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        let plan = plan_remount(&v1_only).unwrap().unwrap();
        assert_eq!(plan.target, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(plan.data, "cpu,favordynmods");
    }

    #[test]
    fn nothing_to_do_when_on_or_without_cgroups() {
        let on = V1_AND_V2.replace("rw,memory", "rw,memory,favordynmods");
        assert_eq!(
            plan_remount(&on),
            Err(Dynmods::AlreadyOn(PathBuf::from("/sys/fs/cgroup/memory")))
        );
        let none = "30 25 0:26 / /tmp rw - tmpfs tmpfs rw\n";
        assert_eq!(plan_remount(none), Ok(None));
    }
}
