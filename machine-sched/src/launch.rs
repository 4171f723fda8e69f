//! How a function process is launched: the one place that turns a function's spec into a
//! `std::process::Command`, shared by one-shot runs ([`crate::process`]) and persistent
//! instances ([`crate::persistent`]).
//!
//! Every function process gets a cleared environment plus only what its spec declares, its own
//! process group (one `kill(-pgid)` reaches everything it starts), its working directory, the
//! unprivileged user when the dispatcher runs as root, and is moved into its instance's
//! cgroups *before* `exec`, so that every page and CPU-second it ever uses is accounted.
//!
//! The process is made with `clone(CLONE_VM | CLONE_VFORK)` ([`vfork`]), not `fork`: the
//! child borrows the dispatcher's memory until it execs instead of copying its page tables.
//! Measured here (a 200 MB process, 2 vCPUs under a concurrent build, launch at nice −20):
//! fork to exec p50 11–20 ms, `vfork` 0.7–0.9 ms; with four cgroup joins 15–33 ms against
//! 0.8–1.5 ms.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};

use nix::unistd::Pid;
use tracing::debug;

mod vfork;

/// What to launch and under which identity.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    /// Program and arguments; the program is looked up the way `execvp` does.
    pub command: Vec<String>,
    /// The only environment the child sees.
    pub env: Vec<(String, String)>,
    /// Working directory; the runner's own when `None`.
    pub work_dir: Option<PathBuf>,
    /// `(uid, gid)` to run as; `None` keeps the dispatcher's identity.
    pub user: Option<(u32, u32)>,
    /// `cgroup.procs` (or v1 `cgroup.procs`) files the child writes `0` into before `exec`,
    /// which moves it into those cgroups.
    pub cgroup_procs: Vec<PathBuf>,
    /// CPUs the child may use until it is confined: `exec` runs there, away from the CPUs
    /// real-time functions keep busy, where a normal-priority task would wait its turn behind
    /// them. Empty: no change.
    pub spawn_cpus: Vec<usize>,
}

/// A spec that cannot be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No program.
    #[error("empty command")]
    EmptyCommand,
    /// A path contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    NulInPath(PathBuf),
}

/// A launched child: its pid, which is also its process group id, and the parent's ends of
/// its three pipes. Nobody has reaped it yet: the caller must.
#[derive(Debug)]
pub(crate) struct Started {
    /// The child's pid and process group id.
    pub(crate) pid: Pid,
    /// Its stdin.
    pub(crate) stdin: ChildStdin,
    /// Its stdout.
    pub(crate) stdout: ChildStdout,
    /// Its stderr.
    pub(crate) stderr: ChildStderr,
}

/// Why [`LaunchSpec::start`] started nothing.
#[derive(Debug)]
pub(crate) struct StartFailure {
    /// The program as given in [`LaunchSpec::command`].
    pub(crate) program: String,
    /// What `fork`/`exec` reported, or the spec's own fault as [`io::ErrorKind::InvalidInput`].
    pub(crate) source: io::Error,
}

impl LaunchSpec {
    /// Spawns the function process: the one launch sequence of one-shot runs and persistent
    /// instances ([`vfork`]: the same steps as [`LaunchSpec::command`]'s, without copying the
    /// dispatcher's address space).
    ///
    /// The child starts with the calling thread's scheduling (a launch thread's:
    /// [`crate::priority::on_launch_thread`], below the dispatcher's own priority) and keeps it
    /// until `exec`; the machine scheduler confines and raises (or lowers) it after.
    pub(crate) fn start(&self) -> Result<Started, StartFailure> {
        let program = self.program().to_owned();
        let plan = match vfork::Plan::new(self) {
            Ok(plan) => plan,
            Err(source) => return Err(StartFailure { program, source }),
        };
        let spawned = match plan.spawn() {
            Ok(spawned) => spawned,
            Err(source) => return Err(StartFailure { program, source }),
        };
        debug!(pid = spawned.pid.as_raw(), program = %program, "spawned function process");
        Ok(spawned)
    }

    /// The program name, for error messages.
    pub fn program(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    /// A `std::process::Command` with stdin, stdout and stderr piped, ready to spawn: the same
    /// process as [`LaunchSpec::start`] makes, for callers that want std's `Child`. It `fork`s
    /// (std cannot `vfork` with pre-exec steps), which copies the caller's page tables.
    pub fn command(&self) -> Result<Command, LaunchError> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or(LaunchError::EmptyCommand)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &self.work_dir {
            cmd.current_dir(dir);
        }
        let files = self
            .cgroup_procs
            .iter()
            .map(|p| {
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| LaunchError::NulInPath(p.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let user = self.user;
        let spawn_cpus = cpu_set(&self.spawn_cpus);
        {
            // SAFETY: the closure runs in the forked child before exec and only makes
            // async-signal-safe calls (setpriority, sched_setaffinity, open, write, close,
            // setgroups, setgid, setuid) on memory prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    // The launching thread runs at a strong nice value; the function starts
                    // at the default one.
                    if libc::setpriority(libc::PRIO_PROCESS, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(set) = &spawn_cpus {
                        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set)
                            != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    // Join the cgroups first: once the identity is dropped, the cgroup files
                    // (owned by root) are no longer writable.
                    for file in &files {
                        join_cgroup(file)?;
                    }
                    if let Some((uid, gid)) = user {
                        drop_privileges(uid, gid)?;
                    }
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }
}

/// A kernel CPU set of `cpus`, or `None` for an empty list.
fn cpu_set(cpus: &[usize]) -> Option<libc::cpu_set_t> {
    if cpus.is_empty() {
        return None;
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET only touches bits inside the
    // set for cpu numbers below CPU_SETSIZE, which the filter guarantees.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        Some(set)
    }
}

/// Becomes `uid`:`gid` with no supplementary groups, in the order that works (groups and gid
/// while still root, uid last).
fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls with no pointers except a null group list of length 0.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` file is `procs` (writing
/// `0` means "myself" in both cgroup versions).
fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: `procs` is a valid NUL-terminated path; the fd is closed on every path.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}
