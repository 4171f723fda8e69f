//! Starting a function process with `clone(CLONE_VM | CLONE_VFORK)`, the way `posix_spawn`
//! does, but with the steps a function needs before `exec` (cgroups, CPUs, user) that
//! `posix_spawn` cannot express.
//!
//! Why not `fork`: `fork` copies the page tables of the whole dispatcher (or of the whole
//! load harness, which embeds one), so its cost grows with the dispatcher's memory and the
//! parent then takes a copy-on-write fault for every page it touches. The child here borrows
//! the parent's memory until it execs; the launching thread is suspended until then.
//!
//! What the child may do. It runs on its own small stack ([`Stack`]) but in the parent's
//! memory, while the dispatcher's other threads keep running. So it must not allocate, take a
//! lock, or call glibc functions that touch process-wide state (`setuid` and its kin signal
//! every thread glibc knows of, and glibc believes the child has the parent's threads):
//! everything it uses is prepared by [`Plan::new`] before the clone, and it makes plain system
//! calls only. Signals: the parent blocks every signal around the clone, so no handler of the
//! dispatcher ever runs in the child on the parent's memory; the child resets every handler to
//! the default and unblocks every signal just before `exec`, as std's `fork` path does.
//! Errors: the child writes the failing step and `errno` into memory it shares with the parent
//! ([`ChildError`]) and exits; the parent, resumed when the child exits or execs, reads it and
//! reaps the child.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout};

use nix::unistd::Pid;
use tracing::debug;

use super::{cpu_set, LaunchSpec, Started};

/// Where `execvp` looks when the environment has no `PATH` (glibc's default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";
/// The child's stack: a few system calls need little; a guard page below catches the rest.
const STACK_BYTES: usize = 128 * 1024;
/// Highest signal number whose handler the child resets (`SIGRTMAX` on Linux).
const MAX_SIGNAL: c_int = 64;
/// The child's exit status when a step before `exec` failed (as a shell's "cannot execute").
const CHILD_FAILED: c_int = 127;

/// Everything the child needs, as C strings and kernel structures made before the clone.
pub(super) struct Plan {
    /// The program, resolved against `PATH` as `execvp` would.
    path: CString,
    /// Arguments, the program name first.
    argv: Vec<CString>,
    /// `KEY=value` strings: the whole environment.
    envp: Vec<CString>,
    /// Directory to change to.
    work_dir: Option<CString>,
    /// `cgroup.procs` files to join.
    cgroup_procs: Vec<CString>,
    /// `(uid, gid)` to become.
    user: Option<(u32, u32)>,
    /// CPUs to run on until confined.
    spawn_cpus: Option<libc::cpu_set_t>,
}

/// A step of the child's way to `exec`, named in the log when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    /// Nothing failed.
    None,
    /// `dup2` of the standard streams.
    Stdio,
    /// `setpgid`.
    ProcessGroup,
    /// `sched_setaffinity`.
    Affinity,
    /// `chdir`.
    WorkDir,
    /// Writing a `cgroup.procs` file.
    Cgroup,
    /// `setgroups`, `setgid`, `setuid`.
    Privileges,
    /// `execve` itself.
    Exec,
}

/// The kernel's `struct sigaction` on x86-64 and aarch64 (handler, flags, restorer, mask),
/// for the raw `rt_sigaction` call.
#[repr(C)]
struct KernelSigaction {
    /// `SIG_DFL` here.
    handler: libc::sighandler_t,
    /// `SA_*` flags.
    flags: libc::c_ulong,
    /// Unused without `SA_RESTORER`.
    restorer: usize,
    /// Signals blocked while the handler runs.
    mask: u64,
}

/// Size of the kernel's signal set, as `rt_sigaction` takes it.
const KERNEL_SIGSET_BYTES: usize = 8;

/// What the child reports to the parent through their shared memory.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct ChildError {
    /// The step that failed.
    step: Step,
    /// Its `errno`.
    errno: c_int,
}

/// The child's argument: the plan, pointer arrays into it, its standard streams, and where it
/// reports an error.
struct ChildArgs<'a> {
    /// The plan.
    plan: &'a Plan,
    /// NULL-terminated `argv`.
    argv: *const *const c_char,
    /// NULL-terminated `envp`.
    envp: *const *const c_char,
    /// The child's ends of its stdin, stdout and stderr pipes.
    stdio: [c_int; 3],
    /// Written by the child if a step fails.
    error: ChildError,
}

impl Plan {
    /// Prepares `spec`'s launch; fails (as `InvalidInput` or `NotFound`) where `exec` would.
    pub(super) fn new(spec: &LaunchSpec) -> io::Result<Plan> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        let nul = |s: &[u8]| CString::new(s).map_err(|_| invalid("a NUL byte in the launch spec"));
        let program = spec
            .command
            .first()
            .ok_or_else(|| invalid("empty command"))?;
        let path = resolve(program, &spec.env, spec.work_dir.as_deref())?;
        Ok(Plan {
            path: nul(path.as_os_str().as_bytes())?,
            argv: spec
                .command
                .iter()
                .map(|a| nul(a.as_bytes()))
                .collect::<io::Result<_>>()?,
            envp: spec
                .env
                .iter()
                .map(|(k, v)| nul(format!("{k}={v}").as_bytes()))
                .collect::<io::Result<_>>()?,
            work_dir: spec
                .work_dir
                .as_ref()
                .map(|d| nul(d.as_os_str().as_bytes()))
                .transpose()?,
            cgroup_procs: spec
                .cgroup_procs
                .iter()
                .map(|p| nul(p.as_os_str().as_bytes()))
                .collect::<io::Result<_>>()?,
            user: spec.user,
            spawn_cpus: cpu_set(&spec.spawn_cpus),
        })
    }

    /// Starts the process: pipes, clone, and the child's steps; returns once it has exec'd.
    pub(super) fn spawn(&self) -> io::Result<Started> {
        let (stdin_read, stdin_write) = pipe()?;
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.envp);
        let mut args = ChildArgs {
            plan: self,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            stdio: [
                stdin_read.as_raw_fd(),
                stdout_write.as_raw_fd(),
                stderr_write.as_raw_fd(),
            ],
            error: ChildError {
                step: Step::None,
                errno: 0,
            },
        };
        let stack = Stack::new()?;
        // SAFETY: `all` and `old` are valid sigset_t values for the duration of the calls.
        // `clone` runs `child_main` on `stack` (which outlives it: with CLONE_VFORK this thread
        // is suspended until the child execs or exits) with a pointer to `args`, which lives
        // on this frame until after the child is done with it; the child keeps to the rules in
        // the module header.
        let (pid, clone_error) = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::addr_of_mut!(args).cast::<c_void>(),
            );
            let clone_error = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            (pid, clone_error)
        };
        drop(stack);
        if pid < 0 {
            return Err(clone_error);
        }
        // SAFETY: the child wrote `args.error` (if at all) before it exited, and this thread
        // resumed only after that; the read is volatile so it is not assumed unchanged.
        let error = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(args.error)) };
        if error.step != Step::None {
            let mut status = 0;
            // SAFETY: reaping our own exited child; `status` is a valid out-pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            debug!(step = ?error.step, errno = error.errno, "function process failed before exec");
            return Err(io::Error::from_raw_os_error(error.errno));
        }
        drop((stdin_read, stdout_write, stderr_write));
        Ok(Started {
            pid: Pid::from_raw(pid),
            stdin: ChildStdin::from(stdin_write),
            stdout: ChildStdout::from(stdout_read),
            stderr: ChildStderr::from(stderr_read),
        })
    }
}

/// The child: the steps of the module header, then `execve`. Never returns.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent passed, alive and not touched by the parent
    // until this child has exec'd or exited (CLONE_VFORK).
    let args = unsafe { &mut *arg.cast::<ChildArgs<'_>>() };
    // SAFETY: plain system calls on memory the plan prepared; see the module header.
    let step = unsafe { child_steps(args) };
    args.error = ChildError {
        step,
        // SAFETY: errno of this thread (its TLS is the suspended parent thread's).
        errno: unsafe { *libc::__errno_location() },
    };
    // SAFETY: `_exit` ends the child without running the parent's atexit handlers.
    unsafe { libc::_exit(CHILD_FAILED) }
}

/// The child's steps; returns the one that failed (`exec` returns only on failure).
///
/// # Safety
/// Only in the child of [`Plan::spawn`]'s clone.
unsafe fn child_steps(args: &ChildArgs<'_>) -> Step {
    let plan = args.plan;
    // SAFETY: (the whole body) system calls whose pointer arguments point into `plan` and the
    // arrays the parent keeps alive, all NUL-terminated where the kernel expects it.
    unsafe {
        for (target, &fd) in args.stdio.iter().enumerate() {
            if libc::dup2(fd, target as c_int) < 0 {
                return Step::Stdio;
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return Step::ProcessGroup;
        }
        // The child keeps the launching thread's strong nice value until `exec`: at nice 0 it
        // shared a CPU evenly with the cheapest class's spinning functions, and its way to
        // `exec` took 3.2 ms at the median under preempt-2x instead of 0.5 ms. The machine
        // scheduler returns the function to nice 0 when it confines it (`priority`).
        if let Some(set) = &plan.spawn_cpus {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                return Step::Affinity;
            }
        }
        if let Some(dir) = &plan.work_dir {
            if libc::chdir(dir.as_ptr()) != 0 {
                return Step::WorkDir;
            }
        }
        // The cgroups before the identity: their files are root's.
        for file in &plan.cgroup_procs {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Step::Cgroup;
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Step::Cgroup;
            }
        }
        // Raw system calls: glibc's wrappers would signal the parent's threads (setxid).
        if let Some((uid, gid)) = plan.user {
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                return Step::Privileges;
            }
        }
        // The raw call: glibc's refuses its internal signals (32, 33), whose ignored state
        // would otherwise pass to the function.
        let default = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for signal in 1..=MAX_SIGNAL {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    &default,
                    std::ptr::null_mut::<KernelSigaction>(),
                    KERNEL_SIGSET_BYTES,
                );
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(plan.path.as_ptr(), args.argv, args.envp);
    }
    Step::Exec
}

/// `program` as `execvp` would find it: as given if it names a path, else the first
/// executable file of that name in the environment's `PATH` (or [`DEFAULT_PATH`]). A relative
/// `PATH` entry counts from `work_dir`, where the child will be.
fn resolve(
    program: &str,
    env: &[(String, String)],
    work_dir: Option<&Path>,
) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let search = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    for dir in search.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let mut candidate = PathBuf::from(dir);
        if candidate.is_relative() {
            if let Some(work_dir) = work_dir {
                candidate = work_dir.join(candidate);
            }
        }
        candidate.push(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{program}: not found in PATH {search}"),
    ))
}

/// Whether `path` is a regular file with an execute bit.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Pointers to `strings` followed by NULL, as `execve` takes them.
fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A close-on-exec pipe as (read end, write end), both above the standard streams, so that
/// the child's `dup2` onto 0–2 never overwrites one of them.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors nobody else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// `fd`, or a close-on-exec duplicate of it numbered 3 or above if it is a standard stream's
/// number (a dispatcher started with a standard stream closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > libc::STDERR_FILENO {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor; the result is ours if non-negative.
    let duplicate = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// The child's stack: an anonymous mapping with a guard page at its low end.
struct Stack {
    /// Start of the mapping.
    base: *mut c_void,
}

impl Stack {
    /// Maps [`STACK_BYTES`] plus a guard page.
    fn new() -> io::Result<Stack> {
        let page = page_size();
        // SAFETY: an anonymous private mapping; the kernel chooses the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_BYTES + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            let error = io::Error::last_os_error();
            // SAFETY: unmapping what was mapped above.
            unsafe { libc::munmap(base, STACK_BYTES + page) };
            return Err(error);
        }
        Ok(Stack { base })
    }

    /// The top of the stack (stacks grow down), 16-byte aligned as the ABI requires.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is page-aligned.
        unsafe { self.base.cast::<u8>().add(STACK_BYTES + page_size()).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the child no longer runs on it (it exec'd or
        // exited before the parent resumed).
        unsafe { libc::munmap(self.base, STACK_BYTES + page_size()) };
    }
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: a plain query.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn spec(command: &[&str]) -> LaunchSpec {
        LaunchSpec {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("X".into(), "42".into()),
            ],
            ..Default::default()
        }
    }

    fn wait(pid: Pid) -> i32 {
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        status
    }

    #[test]
    fn runs_with_its_streams_environment_directory_and_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(&[
            "sh",
            "-c",
            "read line; echo \"$line $X $(pwd) $(cut -d' ' -f5 /proc/$$/stat)\"; echo err >&2",
        ]);
        spec.work_dir = Some(dir.path().to_owned());
        let mut started = Plan::new(&spec).unwrap().spawn().unwrap();
        started.stdin.write_all(b"hello\n").unwrap();
        drop(started.stdin);
        let mut out = String::new();
        started.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        started.stderr.read_to_string(&mut err).unwrap();
        assert_eq!(wait(started.pid), 0);
        let pid = started.pid.as_raw();
        assert_eq!(
            out.trim(),
            format!(
                "hello 42 {} {pid}",
                dir.path().canonicalize().unwrap().display()
            )
        );
        assert_eq!(err.trim(), "err");
    }

    #[test]
    fn a_missing_program_or_directory_is_an_error_not_a_child() {
        let error = Plan::new(&spec(&["no-such-program-here"])).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        let mut missing_dir = spec(&["true"]);
        missing_dir.work_dir = Some("/no/such/dir".into());
        let error = Plan::new(&missing_dir).unwrap().spawn().err().unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
        let error = Plan::new(&spec(&["/etc/passwd"]))
            .unwrap()
            .spawn()
            .err()
            .unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn signals_start_at_their_defaults_and_unblocked() {
        let mut started = Plan::new(&spec(&[
            "sh",
            "-c",
            "grep -E '^Sig(Blk|Ign)' /proc/self/status",
        ]))
        .unwrap()
        .spawn()
        .unwrap();
        let mut out = String::new();
        started.stdout.read_to_string(&mut out).unwrap();
        assert_eq!(wait(started.pid), 0);
        for line in out.lines() {
            assert!(line.ends_with("0000000000000000"), "{out}");
        }
    }
}
