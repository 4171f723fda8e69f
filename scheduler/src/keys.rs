//! Idempotency keys: a caller that may send an invocation twice (it lost its shard and
//! resubmits to another) names it with a key, and the function runs once.
//!
//! The key's binding lives in the cluster store, because the shard that sees the resubmission
//! is not the one that saw the first ([`tariff_cluster::store::KeyedRun`]):
//!
//! 1. Before queuing a keyed invocation the shard claims the key, bound until the caller's
//!    deadline. If the key is held and answered, the stored answer is the answer (marked
//!    `replayed`); if it is held and still running, the shard waits for its answer.
//! 2. When the run ends the shard stores its answer under the key, *before* answering, and
//!    the key binds for [`WINDOW`] more. An answer that shows the function did not run (the
//!    shard refused it, its queue limit passed) frees the key instead, so a retry runs.
//! 3. If the shard is lost while the run goes on, the machine keeps running it (a keyed
//!    placement survives its session) and hands its end to another shard as an
//!    [`Orphan`]; that shard bills it and stores the answer ([`settle_orphan`]). The waiting
//!    resubmission picks it up.
//! 4. If machine and shard are both lost, nobody can answer: the key stays bound until the
//!    first caller's deadline, then a resubmission claims it and runs the function again.
//!
//! Store calls are blocking (SQLite, or the etcd thread's bounded wait), so they run on the
//! blocking pool. Only keyed invocations pay for them: two writes each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tariff_cluster::codec;
use tariff_cluster::store::{ClusterStore, KeyedRun, StoreError};
use tariff_types::recovery::MAX_IDEMPOTENCY_KEY;
use tariff_types::wire::{unix_micros, InvocationId, InvocationOutcome, InvokeError, Orphan};
use tariff_types::Stage;
use tracing::{debug, warn};

use crate::charge;
use crate::service::Service;
use crate::state::Answer;

/// How long a key keeps its answer after the run ends: a resubmission within it gets the
/// answer, a later one runs the function again.
pub const WINDOW: Duration = Duration::from_secs(600);
/// How long past the caller's deadline a running key stays bound (answers in flight).
const GRACE: Duration = Duration::from_secs(2);
/// How often a resubmission looks for the answer of a run still going elsewhere.
const POLL: Duration = Duration::from_millis(50);
/// How often a shard forgets keys past their window.
pub(crate) const PURGE_EVERY: Duration = Duration::from_secs(60);

/// What claiming a key came to.
pub(crate) enum Claim {
    /// This invocation holds the key: run it, then [`settle`].
    Run(String),
    /// An earlier run's answer, to be given again.
    Answered(Box<Answer>),
}

/// The store's name for `tenant`'s key `key`, after checking the key.
pub(crate) fn store_key(tenant: &str, key: &str) -> Result<String, InvokeError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(InvokeError::Protocol(format!(
            "an idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    Ok(format!("{tenant}/{key}"))
}

/// Claims `key` for `invocation` until `deadline` (the caller's) or finds the earlier run's
/// answer; waits while another run holds it, at most until `deadline`.
pub(crate) async fn claim(
    store: &Arc<dyn ClusterStore>,
    key: String,
    invocation: InvocationId,
    deadline: Instant,
    timeout: Duration,
) -> Result<Claim, InvokeError> {
    let until_us =
        unix_micros() + micros(deadline.saturating_duration_since(Instant::now()) + GRACE);
    let run = KeyedRun {
        invocation: invocation.0,
        until_us,
        answer: None,
    };
    loop {
        let held = blocking(store, {
            let (key, run) = (key.clone(), run.clone());
            move |store| store.claim_key(&key, &run, unix_micros())
        })
        .await?;
        let Some(held) = held else {
            return Ok(Claim::Run(key));
        };
        if let Some(answer) = held.answer {
            let mut answer: Answer = codec::decode(&answer).map_err(|e| {
                InvokeError::StartFailed(format!(
                    "the stored answer for this key does not decode: {e}"
                ))
            })?;
            if let Ok(outcome) = &mut answer {
                outcome.replayed = true;
            }
            debug!(%key, "answered from an earlier run with the same key");
            return Ok(Claim::Answered(Box::new(answer)));
        }
        if Instant::now() + POLL > deadline {
            return Err(InvokeError::TimedOut(timeout.as_millis() as u64));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stores `answer` under `key` (or frees the key if the function did not run), before the
/// caller is answered. A store failure is logged: the caller still gets its answer, and a
/// resubmission would wait until the key's deadline and run again.
pub(crate) async fn settle(
    store: &Arc<dyn ClusterStore>,
    key: String,
    invocation: InvocationId,
    answer: &Answer,
) {
    let Some(ran) = ran(answer) else {
        // The machine was lost, or the caller's time ran out: the run may still end (an
        // orphan settles it), so the key stays bound until its deadline.
        return;
    };
    let (bytes, until_us) = if ran {
        match codec::encode_body(answer) {
            Ok(bytes) => (bytes, unix_micros() + micros(WINDOW)),
            Err(e) => {
                warn!(%key, error = %e, "could not encode the answer to keep it");
                (Vec::new(), 0)
            }
        }
    } else {
        (Vec::new(), 0)
    };
    let result = blocking(store, move |store| {
        store.settle_key(&key, invocation.0, &bytes, until_us)
    })
    .await;
    if let Err(e) = result {
        warn!(error = %e, "could not settle an idempotency key");
    }
}

/// Whether the answer shows the function ran (its answer is kept), did not run (the key is
/// freed), or may still be running somewhere (`None`: the key stays bound).
fn ran(answer: &Answer) -> Option<bool> {
    use InvokeError as E;
    match answer {
        Ok(_) => Some(true),
        Err(
            E::FunctionFailed { .. }
            | E::StageTimedOut {
                stage: Stage::Run, ..
            },
        ) => Some(true),
        Err(E::MachineLost(_) | E::TimedOut(_) | E::Cancelled | E::KilledUnderMemoryPressure) => {
            None
        }
        Err(_) => Some(false),
    }
}

/// Bills and keeps the end of a keyed invocation whose shard was lost; `machine` ran it.
pub(crate) async fn settle_orphan(service: Arc<Service>, machine: String, orphan: Orphan) {
    let Orphan {
        key,
        tenant,
        function,
        class,
        completion,
    } = orphan;
    let mut answer = completion.result.map(|run| InvocationOutcome {
        id: completion.id,
        machine,
        queued_at_us: 0,
        placed_at_us: 0,
        run,
        cost: Default::default(),
        chain: Default::default(),
        attempts: 1,
        replayed: false,
    });
    if let Ok(outcome) = &mut answer {
        outcome.cost = charge::bill(&service, &tenant, &function, class, outcome).await;
    }
    debug!(%key, "settling the key of an orphaned run");
    settle(service.store_arc(), key, completion.id, &answer).await;
}

/// Forgets keys past their window, every [`PURGE_EVERY`], forever.
pub(crate) async fn purge_forever(store: Arc<dyn ClusterStore>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    loop {
        tick.tick().await;
        match blocking(&store, |store| store.purge_keyed_runs(unix_micros())).await {
            Ok(0) => {}
            Ok(purged) => debug!(purged, "forgot idempotency keys past their window"),
            Err(e) => warn!(error = %e, "could not purge idempotency keys"),
        }
    }
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn ClusterStore>,
    call: impl FnOnce(&dyn ClusterStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, InvokeError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| InvokeError::StartFailed(format!("store call failed: {e}")))?
        .map_err(|e| InvokeError::StartFailed(format!("idempotency key: {e}")))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
