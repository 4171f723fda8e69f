//! Persistent function instances: one process that serves many invocations over
//! length-prefixed frames on its stdin and stdout, so that warm invocations skip process
//! creation (fork, exec, dynamic linking, the function's own initialisation).
//!
//! The protocol is specified in `docs/persistent-functions.md`; `tariff-function` is the Rust
//! side for function authors, and its [`frame`] module is the one definition of the frame
//! layout both sides use. This module is the machine's end of it: it starts a runtime
//! ([`PersistentProcess::spawn`]), exchanges one request and its answer at a time
//! ([`PersistentProcess::call`]), and kills or shuts the instance down. Which instance serves
//! which invocation is the dispatcher's instance pool's business, not this module's.
//!
//! The process mechanics are [`crate::process`]'s: the same launch ([`LaunchSpec`]), the same
//! process-group kill, the same two-step reaping under the lock every kill takes, so a kill can
//! never reach a recycled pid. What differs, each for a reason:
//!
//! - The reaper is a dedicated small thread, not a `spawn_blocking` task: it parks in `waitid`
//!   for the instance's whole warm life, which would pin a blocking-pool thread and make
//!   runtime shutdown wait for it. Because it runs while the instance is idle, an instance that
//!   dies between invocations is seen as dead ([`PersistentProcess::is_dead`]) before anyone
//!   sends it a request.
//! - The stderr tail is collected continuously by a task, so a crash report carries the last
//!   [`crate::process::STDERR_TAIL_BYTES`] the instance logged, across all its invocations.
//! - An instance is *poisoned* whenever a call does not end on a frame boundary (timeout, an
//!   oversized or malformed answer, the call's future dropped mid-exchange): its stream
//!   position is unknown, so it is killed and must be discarded.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tariff_function::frame::{self, ANSWER_HEADER_BYTES, REQUEST_HEADER_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tracing::{debug, warn, Instrument};

use crate::launch::{LaunchSpec, StartFailure, Started};
use crate::process::{describe_failure, reap, ProcessHandle, Shared};
use crate::stderr_tail::{stderr_suffix, StderrTail};

/// After the process exits mid-call, how long the call may still take to read what the process
/// wrote before exiting. Data already in the pipe reads in microseconds; the bound only matters
/// when something outside the process group (a `setsid` grandchild) keeps the pipe open.
const EXIT_DRAIN_GRACE: Duration = Duration::from_millis(100);

/// After stdout closes mid-call, how long to wait for the exit status the reaper reports.
/// The kernel closes a dying process's files just before it becomes a zombie, so this is
/// normally microseconds; past it, the process closed stdout but lives on and is killed.
const EXIT_REPORT_GRACE: Duration = Duration::from_millis(500);

/// After a crash, how long to wait for the rest of stderr (the dying process's last lines).
const STDERR_DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Stack of the reaper thread: it makes a few system calls and at most logs a warning, and
/// there is one per warm instance, so it gets far less than the 2 MiB default.
const REAPER_STACK_BYTES: usize = 128 * 1024;

/// Why a persistent instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PersistentError {
    /// The program could not be started (not found, not executable, bad working directory,
    /// an unlaunchable spec).
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program as given in [`LaunchSpec::command`].
        program: String,
        /// What `fork`/`exec` (or the spec check) reported.
        source: io::Error,
    },
    /// The process started but its pipes could not be registered with the tokio reactor (it
    /// has been killed again).
    #[error("could not set up the pipes of `{program}` (pid {pid}): {source}")]
    Pipes {
        /// The program as given in [`LaunchSpec::command`].
        program: String,
        /// The pid it had.
        pid: i32,
        /// What the reactor reported.
        source: io::Error,
    },
    /// The process started but no thread could be started to reap it (it has been killed and
    /// reaped again).
    #[error("could not start the reaper thread for `{program}` (pid {pid}): {source}")]
    Reaper {
        /// The program as given in [`LaunchSpec::command`].
        program: String,
        /// The pid it had.
        pid: i32,
        /// What thread creation reported.
        source: io::Error,
    },
}

/// Why a call produced no output.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The process exited, or closed its stdout, while the request was in flight (or before
    /// it); the instance is dead.
    #[error("function instance ended with {status}{}", stderr_suffix(.stderr_tail))]
    Crashed {
        /// `exit status 3`, `killed by signal 9 (SIGKILL)`, or what else ended it.
        status: String,
        /// The last [`crate::process::STDERR_TAIL_BYTES`] the instance wrote to stderr, lossily decoded.
        stderr_tail: String,
    },
    /// The function answered with an error (status byte [`frame::STATUS_ERROR`]); the
    /// instance stays usable.
    #[error("function reported an error: {0}")]
    FunctionError(String),
    /// No answer within the call's timeout; the instance was killed, since its protocol state
    /// is unknown.
    #[error("function call timed out after {after:?}")]
    TimedOut {
        /// The timeout that expired.
        after: Duration,
    },
    /// The answer's declared length exceeded the call's `max_output`; it was not read and the
    /// instance was killed (its stream would be out of sync).
    #[error("function answer exceeds {limit} bytes")]
    OutputTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The function broke the frame protocol (an unknown status byte, an unwritable request);
    /// the instance was killed.
    #[error("function broke the frame protocol: {0}")]
    Protocol(String),
    /// The instance was killed through [`PersistentHandle::kill`] (cancellation).
    #[error("function instance was killed on request")]
    Killed,
}

/// How a call went wrong before it is turned into a [`CallError`] (which needs the process's
/// state, not just the stream's).
#[derive(Debug)]
enum Failure {
    /// Stdin or stdout closed: the process is gone or going.
    Closed,
    /// The answer declared more than this many bytes.
    TooLarge(usize),
    /// Anything else that leaves the stream unusable, described.
    Protocol(String),
}

/// Kills a persistent instance (and its process group) from anywhere, e.g. on cancellation.
///
/// The same handle one-shot runs use, over the same shared state: its `kill` sets the
/// cancellation flag that makes a pending or later [`PersistentProcess::call`] return
/// [`CallError::Killed`]. Cheap to clone; safe to use after the instance ended (it then does
/// nothing).
pub type PersistentHandle = ProcessHandle;

/// A running persistent instance: one process serving one request at a time.
///
/// Dropping it kills the process group (a warm instance nobody holds would otherwise run
/// unwatched forever); the reaper thread reaps it.
#[derive(Debug)]
pub struct PersistentProcess {
    /// Pid, reaped flag and cancellation, shared with every handle and the reaper thread.
    shared: Arc<Shared>,
    /// The request stream; `None` only while [`PersistentProcess::shutdown`] closes it.
    stdin: Option<pipe::Sender>,
    /// The answer stream.
    stdout: pipe::Receiver,
    /// How the process ended (`exit status 3`, ...), set by the reaper once it is reaped.
    exit: watch::Receiver<Option<String>>,
    /// The stderr tail, filled by the collector task.
    stderr: Arc<StderrTail>,
    /// Becomes true when stderr reaches end of file (every writer is gone).
    stderr_closed: watch::Receiver<bool>,
    /// Set while a call is mid-exchange, and left set when it did not end on a frame
    /// boundary: the instance must not be called again.
    poisoned: bool,
}

impl PersistentProcess {
    /// Spawns the runtime (at normal priority: the caller raises it after exec, and may move
    /// it into cgroups before exec through [`LaunchSpec::cgroup_procs`]).
    ///
    /// The instance counts as warm as soon as this returns: the protocol has no ready frame, a
    /// runtime's own initialisation simply delays its first answer.
    ///
    /// Must be called inside a tokio runtime: the pipes register with its reactor and the
    /// stderr collector is a task on it.
    pub fn spawn(spec: &LaunchSpec) -> Result<PersistentProcess, PersistentError> {
        let program = spec.program().to_owned();
        let Started {
            pid,
            stdin,
            stdout,
            stderr,
        } = spec
            .start()
            .map_err(|StartFailure { program, source }| PersistentError::Spawn {
                program,
                source,
            })?;
        let shared = Arc::new(Shared::new(pid));

        // The reaper first: from then on every failure path can just kill the group.
        let exit = match start_reaper(&shared) {
            Ok(exit) => exit,
            Err(source) => {
                shared.kill_group();
                // Nobody else will reap it; SIGKILL makes this wait short.
                if let Err(e) = reap(&shared) {
                    warn!(pid = pid.as_raw(), error = %e, "could not reap persistent function instance");
                }
                return Err(PersistentError::Reaper {
                    program,
                    pid: pid.as_raw(),
                    source,
                });
            }
        };
        let (stdin, stdout, stderr_rx) = match register_pipes(stdin, stdout, stderr) {
            Ok(pipes) => pipes,
            Err(source) => {
                shared.kill_group();
                return Err(PersistentError::Pipes {
                    program,
                    pid: pid.as_raw(),
                    source,
                });
            }
        };
        let stderr = Arc::new(StderrTail::default());
        let (closed_tx, stderr_closed) = watch::channel(false);
        let collector = Arc::clone(&stderr);
        tokio::spawn(
            async move {
                collector.collect(stderr_rx).await;
                closed_tx.send_replace(true);
            }
            .in_current_span(),
        );

        Ok(PersistentProcess {
            shared,
            stdin: Some(stdin),
            stdout,
            exit,
            stderr,
            stderr_closed,
            poisoned: false,
        })
    }

    /// The instance's pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.shared.pid.as_raw()
    }

    /// A handle that can kill this instance from another task (cancellation).
    pub fn handle(&self) -> PersistentHandle {
        PersistentHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// True once the process has exited, was killed through a handle, or was poisoned by a
    /// failed call: the pool must discard it rather than call it again.
    pub fn is_dead(&self) -> bool {
        self.poisoned
            || self.shared.cancelled.load(Ordering::SeqCst)
            || self.exit.borrow().is_some()
    }

    /// The last [`crate::process::STDERR_TAIL_BYTES`] the instance wrote to stderr, lossily decoded.
    pub fn stderr_tail(&self) -> String {
        self.stderr.text()
    }

    /// Sends one request and waits for its answer, at most `timeout`; an answer longer than
    /// `max_output` is refused unread.
    ///
    /// On timeout the instance is killed (its protocol state is unknown) and
    /// [`CallError::TimedOut`] returned. Only `Ok` and [`CallError::FunctionError`] leave the
    /// instance usable. Dropping the returned future before it completes poisons the instance
    /// for the same reason a timeout does.
    pub async fn call(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        max_output: usize,
    ) -> Result<Vec<u8>, CallError> {
        if let Some(err) = self.unusable() {
            return Err(err);
        }
        let header = match frame::encode_request_header(payload.len()) {
            Ok(header) => header,
            // Nothing was sent, so the instance is still fine.
            Err(e) => return Err(CallError::Protocol(format!("payload refused: {e}"))),
        };
        // Cleared only when the answer has been read in full.
        self.poisoned = true;
        let failure =
            match tokio::time::timeout(timeout, self.exchange(header, payload, max_output)).await {
                Ok(Ok(answer)) => {
                    self.poisoned = false;
                    return answer.map_err(CallError::FunctionError);
                }
                Ok(Err(Failure::Closed)) => return Err(self.crash_report().await),
                Ok(Err(Failure::TooLarge(limit))) => CallError::OutputTooLarge { limit },
                Ok(Err(Failure::Protocol(message))) => CallError::Protocol(message),
                Err(_elapsed) => CallError::TimedOut { after: timeout },
            };
        self.shared.kill_group();
        if self.shared.cancelled.load(Ordering::SeqCst) {
            return Err(CallError::Killed);
        }
        debug!(pid = self.pid(), error = %failure, "persistent instance killed after a failed call");
        Err(failure)
    }

    /// Kills the process group and waits until the process is reaped.
    pub async fn kill(mut self) {
        self.poisoned = true;
        self.shared.kill_group();
        wait_exit(&mut self.exit).await;
    }

    /// Closes stdin (the protocol's "shut down now"), waits up to `grace` for the process to
    /// exit, then kills its group; returns once it is reaped.
    pub async fn shutdown(mut self, grace: Duration) {
        drop(self.stdin.take());
        if tokio::time::timeout(grace, wait_exit(&mut self.exit))
            .await
            .is_err()
        {
            debug!(
                pid = self.pid(),
                ?grace,
                "persistent instance ignored shutdown; killing it"
            );
            self.shared.kill_group();
            wait_exit(&mut self.exit).await;
        }
    }

    /// Why a call cannot even be attempted, if it cannot.
    fn unusable(&self) -> Option<CallError> {
        if self.shared.cancelled.load(Ordering::SeqCst) {
            return Some(CallError::Killed);
        }
        if let Some(status) = self.exit.borrow().clone() {
            return Some(CallError::Crashed {
                status,
                stderr_tail: self.stderr_tail(),
            });
        }
        if self.poisoned {
            // An earlier call's future was dropped mid-exchange; make sure it does not linger.
            self.shared.kill_group();
            return Some(CallError::Crashed {
                status: "killed: an earlier call was abandoned mid-frame".to_owned(),
                stderr_tail: self.stderr_tail(),
            });
        }
        None
    }

    /// Writes one request frame and reads one answer frame. The outer `Result` is the
    /// stream's fate; the inner one is the function's answer.
    async fn exchange(
        &mut self,
        header: [u8; REQUEST_HEADER_BYTES],
        payload: &[u8],
        max_output: usize,
    ) -> Result<Result<Vec<u8>, String>, Failure> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(Failure::Closed);
        };
        let stdout = &mut self.stdout;
        let io = async {
            write_request(stdin, header, payload).await?;
            read_answer(stdout, max_output).await
        };
        let mut exit = self.exit.clone();
        let exited = async {
            wait_exit(&mut exit).await;
            tokio::time::sleep(EXIT_DRAIN_GRACE).await;
        };
        tokio::select! {
            biased;
            result = io => result,
            () = exited => Err(Failure::Closed),
        }
    }

    /// Builds the error for a process that closed its streams mid-call: how it ended and what
    /// it last logged. Kills it if it closed stdout but lives on.
    async fn crash_report(&mut self) -> CallError {
        let status = match tokio::time::timeout(EXIT_REPORT_GRACE, wait_exit(&mut self.exit)).await
        {
            Ok(status) => status,
            Err(_elapsed) => {
                self.shared.kill_group();
                "closed its stdout mid-request (killed)".to_owned()
            }
        };
        if self.shared.cancelled.load(Ordering::SeqCst) {
            return CallError::Killed;
        }
        // The group is dead, so stderr is closing; its last lines are the useful ones.
        let _ = tokio::time::timeout(
            STDERR_DRAIN_GRACE,
            self.stderr_closed.wait_for(|closed| *closed),
        )
        .await;
        debug!(pid = self.pid(), %status, "persistent instance crashed mid-call");
        CallError::Crashed {
            status,
            stderr_tail: self.stderr_tail(),
        }
    }
}

impl Drop for PersistentProcess {
    fn drop(&mut self) {
        // A no-op after `kill` and `shutdown`, where the pid is reaped already.
        self.shared.kill_group();
    }
}

/// Starts the thread that waits for the instance to end, reaps it, and publishes how it ended
/// on the returned channel.
fn start_reaper(shared: &Arc<Shared>) -> io::Result<watch::Receiver<Option<String>>> {
    let (exit_tx, exit) = watch::channel(None);
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name(format!("reap-{}", shared.pid))
        .stack_size(REAPER_STACK_BYTES)
        .spawn(move || {
            let pid = shared.pid.as_raw();
            let status = match reap(&shared) {
                Ok(exit) => describe_status(exit.status),
                Err(e) => {
                    // Only possible if someone else reaped our child (SIGCHLD=SIG_IGN).
                    warn!(pid, error = %e, "could not reap persistent function instance");
                    format!("unknown status ({e})")
                }
            };
            debug!(pid, %status, "persistent function instance ended");
            exit_tx.send_replace(Some(status));
        })?;
    Ok(exit)
}

/// Registers the child's pipes with the tokio reactor (which also makes them non-blocking).
fn register_pipes(
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
) -> io::Result<(pipe::Sender, pipe::Receiver, pipe::Receiver)> {
    Ok((
        pipe::Sender::from_owned_fd(OwnedFd::from(stdin))?,
        pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?,
        pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))?,
    ))
}

/// Waits until the reaper reports how the process ended, and returns that.
async fn wait_exit(exit: &mut watch::Receiver<Option<String>>) -> String {
    match exit.wait_for(Option::is_some).await {
        Ok(status) => status.clone().unwrap_or_default(),
        // The reaper thread ended without reporting, i.e. it panicked.
        Err(_) => "unknown status (reaper thread failed)".to_owned(),
    }
}

/// `exit status 3`, `killed by signal 9 (SIGKILL)`, or `exit status 0`: for an instance, even
/// a clean exit mid-request is a failure worth naming.
fn describe_status(status: i32) -> String {
    const CLEAN_EXIT: &str = "exit status 0";
    describe_failure(status).unwrap_or_else(|| CLEAN_EXIT.to_owned())
}

/// Writes one request frame: its header, then the payload.
async fn write_request(
    stdin: &mut pipe::Sender,
    header: [u8; REQUEST_HEADER_BYTES],
    payload: &[u8],
) -> Result<(), Failure> {
    let result = async {
        stdin.write_all(&header).await?;
        stdin.write_all(payload).await
    }
    .await;
    result.map_err(|e| match e.kind() {
        io::ErrorKind::BrokenPipe => Failure::Closed,
        _ => Failure::Protocol(format!("could not write the request: {e}")),
    })
}

/// Reads one answer frame, refusing a body longer than `max_output` before reading it.
async fn read_answer(
    stdout: &mut pipe::Receiver,
    max_output: usize,
) -> Result<Result<Vec<u8>, String>, Failure> {
    let mut header = [0u8; ANSWER_HEADER_BYTES];
    stdout.read_exact(&mut header).await.map_err(read_failure)?;
    let (status, length) =
        frame::decode_answer_header(header).map_err(|e| Failure::Protocol(e.to_string()))?;
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    if length > max_output {
        return Err(Failure::TooLarge(max_output));
    }
    let mut body = vec![0u8; length];
    stdout.read_exact(&mut body).await.map_err(read_failure)?;
    Ok(frame::answer_of(status, body))
}

/// End of file mid-frame means the process is gone; other read errors leave the stream unusable.
fn read_failure(e: io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Failure::Closed,
        _ => Failure::Protocol(format!("could not read the answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous bound on every test so a bug shows up as a failure, not a hung test run.
    const TEST_BOUND: Duration = Duration::from_secs(20);
    /// Timeout for calls that are expected to answer.
    const CALL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Output limit for calls that are not about the limit.
    const MAX_OUTPUT: usize = 1 << 20;
    /// PATH for finding `python3`, since the child's environment is cleared.
    const TEST_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

    /// A persistent runtime speaking the protocol, steered by its payloads: `pid` answers its
    /// pid, `error` answers an error frame, `crash` logs and exits 3 mid-request, `hang` never
    /// answers, `huge` declares a 1 GiB answer, `bad-status` answers status 7, `ignore-eof`
    /// makes it ignore the closing of stdin, `exit` answers then exits 0; anything else is
    /// echoed.
    const RUNTIME: &str = r#"
import os, struct, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer
ignore_eof = False

def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = inp.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data

def answer(status, body):
    out.write(struct.pack(">BI", status, len(body)) + body)
    out.flush()

while True:
    header = read_exact(4)
    payload = None if header is None else read_exact(struct.unpack(">I", header)[0])
    if payload is None:
        while ignore_eof:
            time.sleep(3600)
        sys.exit(0)
    if payload == b"pid":
        answer(0, str(os.getpid()).encode())
    elif payload == b"error":
        answer(1, b"bad payload")
    elif payload == b"crash":
        sys.stderr.write("about to crash\n")
        sys.stderr.flush()
        os._exit(3)
    elif payload == b"hang":
        time.sleep(3600)
    elif payload == b"huge":
        out.write(struct.pack(">BI", 0, 1 << 30))
        out.flush()
    elif payload == b"bad-status":
        answer(7, b"")
    elif payload == b"ignore-eof":
        ignore_eof = True
        answer(0, b"ok")
    elif payload == b"exit":
        answer(0, b"bye")
        sys.exit(0)
    else:
        answer(0, payload)
"#;

    fn runtime_spec() -> LaunchSpec {
        LaunchSpec {
            command: vec!["python3".into(), "-c".into(), RUNTIME.into()],
            env: vec![("PATH".into(), TEST_PATH.into())],
            ..LaunchSpec::default()
        }
    }

    fn start() -> PersistentProcess {
        PersistentProcess::spawn(&runtime_spec()).expect("python3 runtime starts")
    }

    async fn call(process: &mut PersistentProcess, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        tokio::time::timeout(TEST_BOUND, process.call(payload, CALL_TIMEOUT, MAX_OUTPUT))
            .await
            .expect("call exceeded the test bound")
    }

    /// Whether our child `pid` is gone entirely (killed *and* reaped).
    fn is_gone(pid: i32) -> bool {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    async fn wait_until_gone(pid: i32) {
        tokio::time::timeout(TEST_BOUND, async {
            while !is_gone(pid) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("instance was not killed and reaped");
    }

    #[tokio::test]
    async fn calls_reuse_one_process() {
        let mut process = start();
        for _ in 0..3 {
            let pid = call(&mut process, b"pid").await.unwrap();
            assert_eq!(String::from_utf8(pid).unwrap(), process.pid().to_string());
        }
        assert_eq!(call(&mut process, b"hello").await.unwrap(), b"hello");
        assert_eq!(call(&mut process, b"").await.unwrap(), b"");
        // Larger than a pipe buffer both ways.
        let big = vec![b'x'; MAX_OUTPUT];
        assert_eq!(call(&mut process, &big).await.unwrap(), big);
        assert!(!process.is_dead());
        process.kill().await;
    }

    #[tokio::test]
    async fn function_error_keeps_the_instance_usable() {
        let mut process = start();
        let err = call(&mut process, b"error").await.unwrap_err();
        assert!(
            matches!(err, CallError::FunctionError(ref m) if m == "bad payload"),
            "{err:?}"
        );
        assert!(!process.is_dead());
        assert_eq!(call(&mut process, b"again").await.unwrap(), b"again");
        process.kill().await;
    }

    #[tokio::test]
    async fn crash_mid_call_reports_status_and_stderr_tail() {
        let mut process = start();
        call(&mut process, b"warm").await.unwrap();
        let err = call(&mut process, b"crash").await.unwrap_err();
        match &err {
            CallError::Crashed {
                status,
                stderr_tail,
            } => {
                assert_eq!(status, "exit status 3");
                assert_eq!(stderr_tail, "about to crash\n");
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "function instance ended with exit status 3: about to crash"
        );
        assert!(process.is_dead());
        assert_eq!(process.stderr_tail(), "about to crash\n");
        // A dead instance keeps saying so.
        let again = call(&mut process, b"hello").await.unwrap_err();
        assert!(matches!(again, CallError::Crashed { .. }), "{again:?}");
        let pid = process.pid();
        process.kill().await;
        assert!(is_gone(pid));
    }

    #[tokio::test]
    async fn timeout_kills_the_instance() {
        const TIMEOUT: Duration = Duration::from_millis(200);
        let mut process = start();
        let pid = process.pid();
        let err = process
            .call(b"hang", TIMEOUT, MAX_OUTPUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::TimedOut { after } if after == TIMEOUT),
            "{err:?}"
        );
        assert!(process.is_dead());
        process.kill().await;
        assert!(is_gone(pid));
    }

    #[tokio::test]
    async fn oversized_answer_is_refused_unread() {
        const LIMIT: usize = 1000;
        let mut process = start();
        let pid = process.pid();
        let err = process
            .call(b"huge", CALL_TIMEOUT, LIMIT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::OutputTooLarge { limit: LIMIT }),
            "{err:?}"
        );
        assert!(process.is_dead());
        drop(process);
        wait_until_gone(pid).await;
    }

    #[tokio::test]
    async fn answer_of_exactly_the_limit_is_fine() {
        let mut process = start();
        let payload = vec![b'y'; 1000];
        let out = process.call(&payload, CALL_TIMEOUT, payload.len()).await;
        assert_eq!(out.unwrap(), payload);
        process.kill().await;
    }

    #[tokio::test]
    async fn unknown_status_byte_is_a_protocol_error() {
        let mut process = start();
        let err = call(&mut process, b"bad-status").await.unwrap_err();
        assert!(
            matches!(err, CallError::Protocol(ref m) if m.contains("status byte 7")),
            "{err:?}"
        );
        assert!(process.is_dead());
        process.kill().await;
    }

    #[tokio::test]
    async fn shutdown_closes_stdin_and_the_process_exits() {
        let mut process = start();
        let pid = process.pid();
        call(&mut process, b"warm").await.unwrap();
        let started = tokio::time::Instant::now();
        // A grace far above the test bound: only a clean exit finishes in time.
        tokio::time::timeout(TEST_BOUND, process.shutdown(TEST_BOUND * 2))
            .await
            .expect("runtime did not exit when its stdin closed");
        assert!(started.elapsed() < TEST_BOUND);
        assert!(is_gone(pid));
    }

    #[tokio::test]
    async fn shutdown_kills_a_runtime_that_ignores_it() {
        const GRACE: Duration = Duration::from_millis(200);
        let mut process = start();
        let pid = process.pid();
        call(&mut process, b"ignore-eof").await.unwrap();
        tokio::time::timeout(TEST_BOUND, process.shutdown(GRACE))
            .await
            .expect("shutdown did not kill after its grace");
        assert!(is_gone(pid));
    }

    #[tokio::test]
    async fn kill_via_handle_during_a_call() {
        let mut process = start();
        call(&mut process, b"warm").await.unwrap();
        let handle = process.handle();
        assert_eq!(handle.pid(), process.pid());
        let pid = process.pid();
        let caller = tokio::spawn(async move {
            let result = process.call(b"hang", CALL_TIMEOUT, MAX_OUTPUT).await;
            (result, process)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        handle.kill();
        let (result, process) = tokio::time::timeout(TEST_BOUND, caller)
            .await
            .expect("killed call did not return")
            .unwrap();
        assert!(matches!(result, Err(CallError::Killed)), "{result:?}");
        assert!(process.is_dead());
        process.kill().await;
        assert!(is_gone(pid));
        // Late kills after reaping are harmless no-ops.
        handle.kill();
    }

    #[tokio::test]
    async fn exit_while_idle_is_noticed() {
        let mut process = start();
        assert_eq!(call(&mut process, b"exit").await.unwrap(), b"bye");
        tokio::time::timeout(TEST_BOUND, async {
            while !process.is_dead() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("idle exit was not noticed");
        let err = call(&mut process, b"hello").await.unwrap_err();
        assert!(
            matches!(err, CallError::Crashed { ref status, .. } if status == "exit status 0"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn abandoned_call_poisons_the_instance() {
        let mut process = start();
        let pid = process.pid();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(100),
            process.call(b"hang", CALL_TIMEOUT, MAX_OUTPUT),
        )
        .await;
        assert!(abandoned.is_err(), "hang answered: {abandoned:?}");
        assert!(process.is_dead());
        let err = call(&mut process, b"hello").await.unwrap_err();
        assert!(matches!(err, CallError::Crashed { .. }), "{err:?}");
        drop(process);
        wait_until_gone(pid).await;
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let spec = LaunchSpec {
            command: vec!["/nonexistent/tariff-fn".into()],
            ..LaunchSpec::default()
        };
        let err = PersistentProcess::spawn(&spec).unwrap_err();
        assert!(
            matches!(err, PersistentError::Spawn { ref program, .. } if program == "/nonexistent/tariff-fn"),
            "{err:?}"
        );
        assert!(matches!(
            PersistentProcess::spawn(&LaunchSpec::default()),
            Err(PersistentError::Spawn { .. })
        ));
    }
}
