//! Runs one placed invocation through the machine scheduler and turns the outcome into a
//! completion for its shard.
//!
//! The machine's unfinished-invocation counts per class (what polls report) are kept here, in
//! [`MachineLoad`], raised when a placement arrives and lowered when its completion is sent.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tariff_cluster::codec::MAX_FRAME_BYTES;
use tariff_machine_sched::machine::{Job, JobError, MachineScheduler, StartClaim, Ticket};
use tariff_types::wire::{Completion, InvokeError, Placement};
use tariff_types::{ClassId, Stage};
use tracing::{debug, Instrument};

/// Largest output returned: what fits in a frame with room for the envelope.
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

    fn add(&self, class: usize) {
        if let Some(counter) = self.per_class.get(class) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, class: usize) {
        if let Some(counter) = self.per_class.get(class) {
            counter.fetch_sub(1, Ordering::Relaxed);
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

/// Runs placements on this machine.
pub struct Executor {
    /// The machine scheduler that orders and runs the processes.
    pub machine: Arc<MachineScheduler>,
    /// Run every class at the cheapest class's priority: the class-blind baseline.
    pub class_blind: bool,
}

impl Executor {
    /// The class a placement runs at on this machine: its own, or the cheapest when class-blind.
    fn run_as(&self, placement: &Placement, classes: usize) -> ClassId {
        if self.class_blind {
            ClassId(classes.saturating_sub(1) as u8)
        } else {
            placement.class
        }
    }

    /// Fixes the placement's place in its class's arrival order; call it in the order
    /// placements arrive, then [`Executor::execute`] with the ticket.
    pub fn admit(&self, placement: &Placement, classes: usize) -> Ticket {
        self.machine.admit(self.run_as(placement, classes))
    }

    /// Runs `placement` to the end and returns its completion; `load` counts it meanwhile.
    /// `classes` is the cluster's number of price classes; `context` is added to the
    /// function's environment besides the placement's own (where to call back, the CA).
    /// `claim` lets the session give the job up before it starts (its shard was lost).
    ///
    /// The placement's start limit is kept here: if the job has not been launched when it
    /// passes, the job is given up and answered at once, and its wait for a turn runs on
    /// without it (so its class's arrival order holds). Its run limit caps the process's time.
    pub async fn execute(
        &self,
        placement: Placement,
        ticket: Ticket,
        load: &MachineLoad,
        run: Run<'_>,
    ) -> Completion {
        let span = tracing::info_span!(
            "run",
            id = %placement.id,
            class = placement.class.0,
            tenant = %placement.tenant,
            function = %placement.function.name
        );
        let class = placement.class.index();
        load.add(class);
        let id = placement.id;
        let limits = placement.limits;
        let run_as = self.run_as(&placement, run.classes);
        let caller_left = match placement.timeout_ms {
            0 => DEFAULT_RUN_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        // The run limit binds only when it is shorter than what the caller has left.
        let run_limit = limits.get(Stage::Run).filter(|&limit| limit < caller_left);
        let job = Job {
            id: id.0,
            class: run_as,
            classes: run.classes,
            timeout: run_limit.unwrap_or(caller_left),
            env: placement
                .env
                .into_iter()
                .chain(run.context.iter().cloned())
                .collect(),
            function: placement.function,
            tenant: placement.tenant,
            payload: placement.payload,
            max_output: MAX_OUTPUT_BYTES,
            claim: Some(run.claim.clone()),
        };
        let machine = self.machine.clone();
        let result = match limits.get(Stage::Start) {
            None => machine.run_admitted(job, ticket).instrument(span).await,
            Some(start_limit) => {
                let mut running = tokio::spawn(
                    async move { machine.run_admitted(job, ticket).await }.instrument(span),
                );
                tokio::select! {
                    joined = &mut running => joined.unwrap_or(Err(JobError::Cancelled)),
                    () = tokio::time::sleep(start_limit) => {
                        if run.claim.give_up() {
                            load.remove(class);
                            debug!(invocation = %id, "not started within its start limit");
                            return Completion {
                                id,
                                result: Err(InvokeError::StageTimedOut {
                                    stage: Stage::Start,
                                    limit_ms: limits.start_ms,
                                }),
                            };
                        }
                        running.await.unwrap_or(Err(JobError::Cancelled))
                    }
                }
            }
        };
        load.remove(class);
        // The machine's report travels as it is; its error becomes the wire's by `From`.
        let result = result.map_err(|e| {
            debug!(invocation = %id, error = %e, "function did not succeed");
            match e {
                JobError::TimedOut(_) if run_limit.is_some() => InvokeError::StageTimedOut {
                    stage: Stage::Run,
                    limit_ms: limits.run_ms,
                },
                other => InvokeError::from(other),
            }
        });
        Completion { id, result }
    }
}

/// What a run needs from the session that received it, besides the placement.
pub struct Run<'a> {
    /// The cluster's number of price classes.
    pub classes: usize,
    /// Added to the function's environment: where to call back, the CA.
    pub context: &'a [(String, String)],
    /// Lets the session give the job up before it starts.
    pub claim: &'a Arc<StartClaim>,
}
