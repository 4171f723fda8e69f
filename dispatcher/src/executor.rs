//! Runs one placed invocation and turns the outcome into a completion for its shard.
//!
//! The machine's unfinished-invocation counts per class (what polls report) are kept here, in
//! [`MachineLoad`], raised when a placement arrives and lowered when its completion is sent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tariff_common::codec::MAX_FRAME_BYTES;
use tariff_common::wire::{Completion, InvocationId, InvokeError, Placement, RunReport};
use tariff_machine_sched::{LaunchSpec, ProcessHandle, RunError, RunRequest};
use tracing::{debug, Instrument};

/// Largest stdout returned: what fits in a frame with room for the envelope.
pub const MAX_OUTPUT_BYTES: usize = MAX_FRAME_BYTES - (64 << 10);
/// Run time allowed when a placement carries no timeout.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Unfinished invocations on this machine, per class.
#[derive(Debug)]
pub struct MachineLoad {
    per_class: Vec<AtomicU32>,
}

impl MachineLoad {
    /// Counters for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            per_class: (0..classes).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn add(&self, class: usize, delta: i32) {
        if let Some(counter) = self.per_class.get(class) {
            if delta > 0 {
                counter.fetch_add(delta as u32, Ordering::Relaxed);
            } else {
                counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            }
        }
    }

    /// Counts per class, most expensive first.
    pub fn snapshot(&self) -> Vec<u32> {
        self.per_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Unfinished invocations in all classes.
    pub fn total(&self) -> u32 {
        self.snapshot().iter().sum()
    }
}

/// Processes currently running, so a cancel can reach them and memory can be measured.
#[derive(Debug, Default)]
pub struct Running {
    processes: Mutex<HashMap<InvocationId, ProcessHandle>>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InvocationId, ProcessHandle>> {
        self.processes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kills the invocation's process, if it is running here.
    pub fn cancel(&self, id: InvocationId) {
        if let Some(handle) = self.lock().get(&id) {
            debug!(invocation = %id, "cancelled by its shard");
            handle.kill();
        }
    }

    /// Kills every running function (at shutdown: nothing outlives its dispatcher).
    pub fn kill_all(&self) {
        for handle in self.lock().values() {
            handle.kill();
        }
    }

    /// Process ids of every running function.
    pub fn pids(&self) -> Vec<i32> {
        self.lock().values().map(ProcessHandle::pid).collect()
    }
}

/// Where and how this machine runs functions.
#[derive(Debug, Clone)]
pub struct Executor {
    /// Working directory given to functions.
    pub work_dir: PathBuf,
}

impl Executor {
    /// Runs `placement` to the end and returns its completion. `load` and `running` are
    /// updated on the way in and out.
    pub async fn execute(
        &self,
        placement: Placement,
        load: &MachineLoad,
        running: &Running,
    ) -> Completion {
        let span = tracing::info_span!(
            "run",
            id = %placement.id,
            class = placement.class.0,
            tenant = %placement.tenant,
            function = %placement.function.name
        );
        let class = placement.class.index();
        load.add(class, 1);
        let completion = self.run(placement, running).instrument(span).await;
        load.add(class, -1);
        completion
    }

    async fn run(&self, placement: Placement, running: &Running) -> Completion {
        let id = placement.id;
        let timeout = match placement.timeout_ms {
            0 => DEFAULT_RUN_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let request = RunRequest {
            launch: LaunchSpec {
                command: placement.function.command,
                env: placement.function.env,
                work_dir: Some(self.work_dir.clone()),
                ..LaunchSpec::default()
            },
            stdin: placement.payload,
            timeout,
            max_output: MAX_OUTPUT_BYTES,
        };
        let result = match tariff_machine_sched::spawn(request) {
            Ok(process) => {
                running.lock().insert(id, process.handle());
                let result = process.wait().await;
                running.lock().remove(&id);
                result
            }
            Err(e) => Err(e),
        };
        let result = result
            .map(|out| RunReport {
                output: out.stdout,
                started_at_us: out.started_at_us,
                finished_at_us: out.finished_at_us,
                peak_memory_bytes: out.peak_memory_bytes,
                cpu_time_us: out.cpu_time_us,
            })
            .map_err(|e| {
                debug!(error = %e, "function did not succeed");
                to_invoke_error(e)
            });
        Completion { id, result }
    }
}

fn to_invoke_error(error: RunError) -> InvokeError {
    match error {
        RunError::Spawn { .. } => InvokeError::StartFailed(error.to_string()),
        RunError::Failed {
            status,
            stderr_tail,
            ..
        } => InvokeError::FunctionFailed {
            status,
            stderr_tail,
        },
        RunError::TimedOut { after } => InvokeError::TimedOut(after.as_millis() as u64),
        RunError::OutputTooLarge { limit } => InvokeError::FunctionFailed {
            status: format!("output larger than {limit} bytes"),
            stderr_tail: String::new(),
        },
        RunError::Killed => InvokeError::FunctionFailed {
            status: "killed on request".into(),
            stderr_tail: String::new(),
        },
    }
}
