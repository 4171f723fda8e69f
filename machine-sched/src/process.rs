//! The process runner: starts one function process, feeds it its payload, collects its output
//! and its resource use, and kills it (with everything it started) on timeout or cancellation.
//!
//! This is the thin I/O driver around the run order in [`tariff_policy::run_queue`]; it makes no
//! scheduling decisions. Design points, each for a reason:
//!
//! - `std::process::Command`, not `tokio::process`: tokio's child reaper would race our
//!   `wait4`, and only `wait4` returns the rusage (peak RSS, CPU time) we bill by.
//! - The child leads its own process group, so one `kill(-pgid)` also reaches grandchildren.
//! - The pid is reaped in two steps: `waitid(WNOWAIT)` waits for the exit but leaves a zombie,
//!   then, under the same lock every kill takes, the group is killed (stragglers left behind by
//!   the function die and release our pipes) and `wait4` reaps. Because nobody else reaps this
//!   pid and kills check the `reaped` flag under that lock, a kill can never hit a recycled pid.
//! - Pipes are driven as async tokio pipes rather than blocking threads: a process costs one
//!   blocking thread (the reaper) instead of four, and giving up on a pipe is just a drop.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tariff_types::wire::{unix_micros, RunReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::launch::{LaunchSpec, StartFailure, Started};
pub use crate::stderr_tail::STDERR_TAIL_BYTES;
use crate::stderr_tail::{stderr_suffix, StderrTail};

/// Bytes a fresh Linux pipe holds (16 pages): a payload this small is written at spawn without
/// blocking.
const PIPE_CAPACITY_BYTES: usize = 64 * 1024;

/// Chunk size for pipe reads; one page-sized pipe buffer's worth of data per read call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Linux reports `ru_maxrss` in KiB.
const BYTES_PER_KIB: u64 = 1024;

/// Microseconds per second, for `timeval` conversion.
const MICROS_PER_SEC: u64 = 1_000_000;

/// What to run and under which limits.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Program, environment, identity and cgroups: see [`LaunchSpec`].
    pub launch: LaunchSpec,
    /// Payload written to the child's stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// Wall-clock limit from spawn; after it the whole process group is killed.
    pub timeout: Duration,
    /// Largest stdout accepted; more is [`RunError::OutputTooLarge`].
    pub max_output: usize,
}

/// Why a run produced no [`RunReport`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started (not found, not executable, bad working directory).
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program as given in [`LaunchSpec::command`].
        program: String,
        /// What `fork`/`exec` reported.
        source: io::Error,
    },
    /// The process exited non-zero or was killed by a signal nobody here sent.
    #[error("process ended with {status}{}", stderr_suffix(.stderr_tail))]
    Failed {
        /// `exit status 3` or `killed by signal 9 (SIGKILL)`.
        status: String,
        /// The last [`STDERR_TAIL_BYTES`] of stderr, lossily decoded.
        stderr_tail: String,
        /// Stdout and resource use up to the failure: failed runs still used CPU. Boxed, so
        /// every other result stays small.
        output: Box<RunReport>,
    },
    /// The process group was killed because the run exceeded [`RunRequest::timeout`].
    #[error("process timed out after {after:?}")]
    TimedOut {
        /// The timeout that expired.
        after: Duration,
    },
    /// Stdout exceeded [`RunRequest::max_output`]; the process group was killed.
    #[error("process wrote more than {limit} bytes to stdout")]
    OutputTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The process group was killed through [`ProcessHandle::kill`] (cancellation).
    #[error("process was killed on request")]
    Killed,
}

/// State shared by a running process and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The child's pid, which is also its process group id.
    pub(crate) pid: Pid,
    /// True once the pid has been reaped; kills check it under the lock so they never reach
    /// a recycled pid.
    pub(crate) reaped: Mutex<bool>,
    /// Set by [`ProcessHandle::kill`] so `wait` reports [`RunError::Killed`].
    pub(crate) cancelled: AtomicBool,
}

impl Shared {
    /// The state of the fresh, unreaped child `pid`.
    pub(crate) fn new(pid: Pid) -> Self {
        Self {
            pid,
            reaped: Mutex::new(false),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Locks the `reaped` flag; a poisoned lock still holds a valid bool.
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.reaped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// SIGKILLs the whole process group unless the leader has been reaped already.
    pub(crate) fn kill_group(&self) {
        let reaped = self.lock();
        if !*reaped {
            kill_group_unreaped(self.pid);
        }
    }
}

/// SIGKILLs the process group `pgid`; the caller guarantees its leader is not yet reaped.
fn kill_group_unreaped(pgid: Pid) {
    match killpg(pgid, Signal::SIGKILL) {
        // ESRCH: the group is already empty, which is what we wanted.
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => warn!(pgid = pgid.as_raw(), error = %e, "could not kill process group"),
    }
}

/// Kills a running process (and its process group) from anywhere, e.g. on cancellation.
///
/// Cheap to clone. Safe to use after the process ended: it then does nothing.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    /// Shared with the [`RunningProcess`].
    pub(crate) shared: Arc<Shared>,
}

impl ProcessHandle {
    /// Kills the process group; the pending [`RunningProcess::wait`] returns [`RunError::Killed`].
    pub fn kill(&self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        self.shared.kill_group();
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.shared.pid.as_raw()
    }
}

/// A started process; call [`RunningProcess::wait`] to feed it and collect its result.
///
/// Dropping it (or the `wait` future) before the process ended kills the process group; the
/// zombie is then reaped by the reaper task, which keeps running on its own.
#[derive(Debug)]
pub struct RunningProcess {
    /// Shared with every [`ProcessHandle`].
    shared: Arc<Shared>,
    /// Pipes and payload; `None` once `wait` took them.
    io: Option<ChildIo>,
    /// When the timeout expires.
    deadline: Instant,
    /// The timeout, for the error message.
    timeout: Duration,
    /// Stdout limit.
    max_output: usize,
    /// Wall clock at spawn, microseconds since the epoch.
    started_at_us: u64,
}

/// The parent's ends of the child's standard streams, and what to write.
#[derive(Debug)]
struct ChildIo {
    /// The child's stdin, unless the payload was already written and stdin closed at spawn.
    stdin: Option<ChildStdin>,
    /// The child's stdout.
    stdout: ChildStdout,
    /// The child's stderr.
    stderr: ChildStderr,
    /// Payload for stdin.
    payload: Vec<u8>,
}

/// Starts `req.launch` (see [`LaunchSpec`]) with its payload.
///
/// Must be called within a tokio runtime (the pipes register with its reactor in `wait`).
pub fn spawn(req: RunRequest) -> Result<RunningProcess, RunError> {
    let RunRequest {
        launch,
        stdin,
        timeout,
        max_output,
    } = req;
    let started_at_us = unix_micros();
    let deadline = Instant::now() + timeout;
    let Started {
        pid,
        stdin: mut stdin_pipe,
        stdout,
        stderr,
    } = launch
        .start()
        .map_err(|StartFailure { program, source }| RunError::Spawn { program, source })?;
    // A payload that fits in the empty pipe is written and stdin closed right now, without
    // blocking: the child then never waits for its input, so it is runnable the moment the
    // machine scheduler raises it, and processes of a class run in the order they were raised.
    let stdin_pipe = if stdin.len() <= PIPE_CAPACITY_BYTES {
        use std::io::Write;
        match stdin_pipe.write_all(&stdin) {
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => None,
            Err(e) => {
                debug!(error = %e, "could not write function stdin");
                None
            }
        }
    } else {
        Some(stdin_pipe)
    };
    Ok(RunningProcess {
        shared: Arc::new(Shared::new(pid)),
        io: Some(ChildIo {
            stdin: stdin_pipe,
            stdout,
            stderr,
            payload: stdin,
        }),
        deadline,
        timeout,
        max_output,
        started_at_us,
    })
}

/// How the reaped child ended and what it used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit {
    /// Raw wait status from `wait4`.
    pub(crate) status: i32,
    /// `ru_maxrss` converted to bytes.
    peak_memory_bytes: u64,
    /// `ru_utime + ru_stime` in microseconds.
    cpu_time_us: u64,
    /// Wall clock at reaping, microseconds since the epoch.
    finished_at_us: u64,
    /// Runqueue wait of the main thread, µs.
    runqueue_wait_us: u64,
}

impl RunningProcess {
    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.shared.pid.as_raw()
    }

    /// When its timeout expires (counted from [`spawn`]).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A handle that can kill this process from another task.
    pub fn handle(&self) -> ProcessHandle {
        ProcessHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Writes the payload, collects stdout and the stderr tail, reaps the child and reports.
    ///
    /// The timeout counts from [`spawn`], not from this call.
    ///
    /// This is where a one-shot run's [`RunReport`] is built: output, time stamps, and the
    /// process's own rusage and schedstat. The machine scheduler then completes it with what
    /// only it knows (when the job arrived, the instance cgroup's figures).
    pub async fn wait(mut self) -> Result<RunReport, RunError> {
        let Some(io) = self.io.take() else {
            // Only `wait` takes the pipes and it consumes `self`.
            unreachable!("RunningProcess::wait called twice");
        };
        let shared = Arc::clone(&self.shared);
        let mut reaper = tokio::task::spawn_blocking(move || reap(&shared));

        let pipes = drive_pipes(io, self.max_output, &self.shared);
        let finished = async {
            let (pipes, exit) = tokio::join!(pipes, &mut reaper);
            (pipes, exit)
        };
        let (pipes, exit) = match tokio::time::timeout_at(self.deadline, finished).await {
            Ok(done) => done,
            Err(_elapsed) => {
                self.shared.kill_group();
                // SIGKILL cannot be ignored, so the reaper finishes promptly.
                let _ = (&mut reaper).await;
                if self.shared.cancelled.load(Ordering::SeqCst) {
                    return Err(RunError::Killed);
                }
                debug!(pid = self.pid(), "function process timed out");
                return Err(RunError::TimedOut {
                    after: self.timeout,
                });
            }
        };
        let exit = match exit {
            Ok(Ok(exit)) => exit,
            Ok(Err(e)) => {
                // wait4 failing on our own unreaped child means the pid was reaped elsewhere
                // (someone installed SIGCHLD=SIG_IGN); there is no status to report.
                warn!(pid = self.pid(), error = %e, "could not reap function process");
                return Err(RunError::Failed {
                    status: format!("unknown status ({e})"),
                    stderr_tail: String::new(),
                    output: Box::default(),
                });
            }
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        };
        if self.shared.cancelled.load(Ordering::SeqCst) {
            return Err(RunError::Killed);
        }
        let (stdout, stderr_tail) = pipes?;
        let output = RunReport {
            output: stdout,
            started_at_us: self.started_at_us,
            finished_at_us: exit.finished_at_us,
            peak_memory_bytes: exit.peak_memory_bytes,
            cpu_time_us: exit.cpu_time_us,
            // Sampled by the machine scheduler while it waits for the process (`meter`).
            memory_byte_ms: 0,
            // A one-shot run always starts a process.
            cold_start: true,
            // Known only to the machine scheduler, which saw the job arrive.
            start_us: 0,
            // Time the main thread was runnable but waited for a CPU (preempted or queued
            // behind others), read from its schedstat before it was reaped.
            preempted_us: exit.runqueue_wait_us,
            // Known only to the machine scheduler, which swaps stopped functions out.
            memory: Default::default(),
        };
        match describe_failure(exit.status) {
            None => Ok(output),
            Some(status) => Err(RunError::Failed {
                status,
                stderr_tail,
                output: Box::new(output),
            }),
        }
    }
}

impl Drop for RunningProcess {
    fn drop(&mut self) {
        // Runs at the end of every `wait` too, where the pid is already reaped and this is a
        // no-op. Otherwise the run was abandoned: don't leave the function running unwatched.
        self.shared.kill_group();
        if self.io.is_some() {
            // `wait` never ran, so nobody will reap the child: do it off the caller's thread.
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || reap(&shared));
        }
    }
}

/// Writes stdin and reads stdout and stderr concurrently; returns stdout and the stderr tail.
///
/// Concurrency matters: a child that writes a lot before reading its stdin would deadlock
/// against a runner that writes all of stdin first.
async fn drive_pipes(
    io: ChildIo,
    max_output: usize,
    shared: &Shared,
) -> Result<(Vec<u8>, String), RunError> {
    let ChildIo {
        stdin,
        stdout,
        stderr,
        payload,
    } = io;
    let write = write_stdin(stdin, payload);
    let read_out = async {
        let result = read_stdout(stdout, max_output).await;
        if result.is_err() {
            // Stop the producer now rather than letting it run to its timeout.
            shared.kill_group();
        }
        result
    };
    let read_err = read_stderr_tail(stderr);
    let ((), stdout, stderr_tail) = tokio::join!(write, read_out, read_err);
    Ok((stdout?, stderr_tail))
}

/// Writes the payload and closes stdin. A child that exits without reading is fine: the
/// resulting broken pipe is ignored.
async fn write_stdin(stdin: Option<ChildStdin>, payload: Vec<u8>) {
    let Some(stdin) = stdin else {
        return;
    };
    let result = async {
        let mut tx = pipe::Sender::from_owned_fd(OwnedFd::from(stdin))?;
        tx.write_all(&payload).await
        // Dropping `tx` closes the pipe, which is the child's end of input.
    }
    .await;
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => debug!(error = %e, "could not write function stdin"),
    }
}

/// Reads stdout to the end, failing as soon as it exceeds `limit` bytes.
async fn read_stdout(stdout: ChildStdout, limit: usize) -> Result<Vec<u8>, RunError> {
    let too_large = RunError::OutputTooLarge { limit };
    let mut rx = match pipe::Receiver::from_owned_fd(OwnedFd::from(stdout)) {
        Ok(rx) => rx,
        Err(e) => {
            warn!(error = %e, "could not read function stdout");
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match rx.read(&mut chunk).await {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > limit {
                    return Err(too_large);
                }
                out.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!(error = %e, "function stdout read failed");
                return Ok(out);
            }
        }
    }
}

/// Reads stderr to the end, keeping only its last [`STDERR_TAIL_BYTES`].
async fn read_stderr_tail(stderr: ChildStderr) -> String {
    let Ok(rx) = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr)) else {
        return String::new();
    };
    let tail = StderrTail::default();
    tail.collect(rx).await;
    tail.text()
}

/// Blocks until the child exits, kills what it left in its group, and reaps it with rusage.
pub(crate) fn reap(shared: &Shared) -> io::Result<Exit> {
    // Step 1: wait for the exit but leave the zombie, so the pid (and pgid) stays ours.
    loop {
        match waitid(
            Id::Pid(shared.pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    // The zombie still has its scheduler statistics; they are gone once reaped.
    let runqueue_wait_us = crate::rt::runqueue_wait_us(shared.pid.as_raw()).unwrap_or(0);
    // Step 2: under the lock every kill takes, clean up stragglers and reap.
    let mut reaped = shared.lock();
    kill_group_unreaped(shared.pid);
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, exclusively borrowed out-pointers for the
        // duration of the call; the pid is our own child.
        let rc = unsafe { libc::wait4(shared.pid.as_raw(), &mut status, 0, &mut usage) };
        if rc >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            // Mark it reaped anyway: either way the pid is no longer ours to signal.
            *reaped = true;
            return Err(err);
        }
    }
    *reaped = true;
    drop(reaped);
    Ok(Exit {
        status,
        peak_memory_bytes: u64::try_from(usage.ru_maxrss)
            .unwrap_or(0)
            .saturating_mul(BYTES_PER_KIB),
        cpu_time_us: timeval_us(usage.ru_utime).saturating_add(timeval_us(usage.ru_stime)),
        finished_at_us: unix_micros(),
        runqueue_wait_us,
    })
}

/// A `timeval` in microseconds; negative fields (never produced by the kernel) count as zero.
fn timeval_us(tv: libc::timeval) -> u64 {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    secs.saturating_mul(MICROS_PER_SEC).saturating_add(micros)
}

/// `None` for a clean exit, otherwise `exit status 3` or `killed by signal 9 (SIGKILL)`.
pub(crate) fn describe_failure(status: i32) -> Option<String> {
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => None,
            code => Some(format!("exit status {code}")),
        }
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = Signal::try_from(sig)
            .map(Signal::as_str)
            .unwrap_or("unknown");
        Some(format!("killed by signal {sig} ({name})"))
    } else {
        Some(format!("unexpected wait status {status:#x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous bound on every test so a bug shows up as a failure, not a hung test run.
    const TEST_BOUND: Duration = Duration::from_secs(20);
    /// Timeout for runs that are expected to finish.
    const RUN_TIMEOUT: Duration = Duration::from_secs(10);
    /// Stdout limit for runs that are not about the limit.
    const MAX_OUTPUT: usize = 1 << 20;
    /// PATH for `sh -c` scripts, since the child's environment is cleared.
    const TEST_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

    fn request(command: &[&str], stdin: &[u8]) -> RunRequest {
        RunRequest {
            launch: LaunchSpec {
                command: command.iter().map(|s| s.to_string()).collect(),
                env: vec![("PATH".into(), TEST_PATH.into())],
                ..LaunchSpec::default()
            },
            stdin: stdin.to_vec(),
            timeout: RUN_TIMEOUT,
            max_output: MAX_OUTPUT,
        }
    }

    async fn run(req: RunRequest) -> Result<RunReport, RunError> {
        let process = spawn(req)?;
        tokio::time::timeout(TEST_BOUND, process.wait())
            .await
            .expect("run exceeded the test bound")
    }

    /// Whether `pid` no longer runs (gone, or a zombie waiting for a reaper we don't control).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state letter follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn cat_echoes_stdin() {
        let out = run(request(&["/bin/cat"], b"hello tariff")).await.unwrap();
        assert_eq!(out.output, b"hello tariff");
        assert!(out.finished_at_us >= out.started_at_us);
    }

    #[tokio::test]
    async fn env_is_only_what_was_given() {
        let mut req = request(&["/usr/bin/env"], b"");
        req.launch.env = vec![("ONLY".into(), "this".into())];
        let out = run(req).await.unwrap();
        assert_eq!(out.output, b"ONLY=this\n");
    }

    #[tokio::test]
    async fn work_dir_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(&["/bin/pwd"], b"");
        req.launch.work_dir = Some(dir.path().to_path_buf());
        let out = run(req).await.unwrap();
        let expected = dir.path().canonicalize().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.output).trim(),
            expected.to_str().unwrap()
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = spawn(request(&["/nonexistent/tariff-fn"], b""))
            .err()
            .unwrap();
        assert!(
            matches!(err, RunError::Spawn { ref program, .. } if program == "/nonexistent/tariff-fn")
        );
        assert!(err
            .to_string()
            .starts_with("could not start `/nonexistent/tariff-fn`"));
        assert!(matches!(
            spawn(request(&[], b"")),
            Err(RunError::Spawn { .. })
        ));
    }

    #[tokio::test]
    async fn nonzero_exit_reports_status_and_stderr_tail() {
        let err = run(request(
            &["/bin/sh", "-c", "echo out; echo boom >&2; exit 3"],
            b"",
        ))
        .await
        .unwrap_err();
        match err {
            RunError::Failed {
                status,
                stderr_tail,
                output,
            } => {
                assert_eq!(status, "exit status 3");
                assert_eq!(stderr_tail, "boom\n");
                assert_eq!(output.output, b"out\n");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stderr_keeps_only_the_tail() {
        // 3000 lines of "line\n" (15 000 bytes) and a final marker.
        let script = "i=0; while [ $i -lt 3000 ]; do echo line >&2; i=$((i+1)); done; \
                      echo END >&2; exit 1";
        let err = run(request(&["/bin/sh", "-c", script], b""))
            .await
            .unwrap_err();
        let RunError::Failed { stderr_tail, .. } = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(stderr_tail.len(), STDERR_TAIL_BYTES);
        assert!(stderr_tail.ends_with("line\nEND\n"));
    }

    #[tokio::test]
    async fn death_by_signal_is_named() {
        let err = run(request(&["/bin/sh", "-c", "kill -TERM $$"], b""))
            .await
            .unwrap_err();
        let RunError::Failed { status, .. } = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(status, "killed by signal 15 (SIGTERM)");
    }

    #[tokio::test]
    async fn timeout_kills_the_process() {
        let mut req = request(&["/bin/sleep", "10"], b"");
        req.timeout = Duration::from_millis(200);
        let err = run(req).await.unwrap_err();
        assert!(
            matches!(err, RunError::TimedOut { after } if after == Duration::from_millis(200)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn kill_via_handle_kills_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let process = spawn(request(&["/bin/sh", "-c", &script], b"")).unwrap();
        let handle = process.handle();
        assert_eq!(handle.pid(), process.pid());
        let waiter = tokio::spawn(process.wait());

        let grandchild = tokio::time::timeout(TEST_BOUND, async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&pid_file) {
                    if let Ok(pid) = text.trim().parse::<i32>() {
                        return pid;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("grandchild never started");
        assert!(!is_dead(grandchild));

        handle.kill();
        let result = tokio::time::timeout(TEST_BOUND, waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(result, Err(RunError::Killed)), "{result:?}");
        // The grandchild may briefly remain as a zombie of whoever adopted it.
        tokio::time::timeout(TEST_BOUND, async {
            while !is_dead(grandchild) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("grandchild survived the group kill");
        // Late kills after reaping are harmless no-ops.
        handle.kill();
    }

    #[tokio::test]
    async fn stragglers_are_killed_when_the_function_exits() {
        // The background sleep holds stdout open; without the group kill, wait would hang.
        let out = run(request(&["/bin/sh", "-c", "sleep 30 & echo done"], b""))
            .await
            .unwrap();
        assert_eq!(out.output, b"done\n");
    }

    #[tokio::test]
    async fn output_beyond_the_limit_is_an_error() {
        const LIMIT: usize = 1000;
        let mut req = request(&["/bin/sh", "-c", "head -c 100000 /dev/zero"], b"");
        req.max_output = LIMIT;
        let err = run(req).await.unwrap_err();
        assert!(
            matches!(err, RunError::OutputTooLarge { limit: LIMIT }),
            "{err:?}"
        );

        let mut req = request(&["/bin/sh", "-c", "head -c 1000 /dev/zero"], b"");
        req.max_output = LIMIT;
        assert_eq!(
            run(req).await.unwrap().output.len(),
            LIMIT,
            "exactly the limit is fine"
        );
    }

    #[tokio::test]
    async fn child_that_ignores_a_large_stdin_does_not_hang() {
        const PAYLOAD_BYTES: usize = 8 << 20;
        let payload = vec![b'x'; PAYLOAD_BYTES];
        let out = run(request(&["/bin/sh", "-c", "echo early"], &payload))
            .await
            .unwrap();
        assert_eq!(out.output, b"early\n");
    }

    #[tokio::test]
    async fn resource_use_is_measured() {
        let script = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
        let out = run(request(&["/bin/sh", "-c", script], b"")).await.unwrap();
        assert!(out.peak_memory_bytes > 0);
        assert!(out.cpu_time_us > 0);
    }

    #[tokio::test]
    async fn dropping_without_wait_kills_and_reaps() {
        let process = spawn(request(&["/bin/sleep", "30"], b"")).unwrap();
        let pid = process.pid();
        drop(process);
        tokio::time::timeout(TEST_BOUND, async {
            // Our own child: only "gone" counts, a zombie would mean nobody reaped it.
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("dropped process was not killed and reaped");
    }

    #[test]
    fn failure_descriptions() {
        const EXIT_3: i32 = 3 << 8;
        assert_eq!(describe_failure(0), None);
        assert_eq!(describe_failure(EXIT_3).as_deref(), Some("exit status 3"));
        assert_eq!(
            describe_failure(libc::SIGKILL).as_deref(),
            Some("killed by signal 9 (SIGKILL)")
        );
    }
}
