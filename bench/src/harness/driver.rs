//! The open-loop generator: one task sleeps until each scheduled send time and hands the
//! invocation to its own task; answers flow to one collector that records them.
//!
//! The generator never waits for an answer, so a slow cluster cannot slow the offered load
//! down; it only refuses to send (and records [`CLIENT_OVERLOAD`]) when more than
//! `max_outstanding` invocations are unanswered, so an overloaded cluster costs a bounded
//! amount of the harness's memory instead of hanging it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;
use tariff_cluster::client::{Client, ClientError};
use tariff_cluster::cluster::Cluster;
use tariff_types::wire::{InvokeRequest, MemoryPressure};
use tokio::sync::mpsc;

use tariff_types::tenant::Token;

use super::output;
use super::record::{
    client_error_kind, Answer, PhaseRecorder, Sample, Stages, CLIENT_OVERLOAD, LOST,
};
use super::schedule::{PhasePlan, Target};

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How long past an invocation's own timeout the harness waits for the client before it
/// records the call as [`LOST`]: the client gives up shortly after the timeout itself, so
/// this only ends a phase that would otherwise wait forever.
const LOST_GRACE: Duration = Duration::from_secs(10);

/// Opens `per_shard` QUIC connections to each shard, each with a long-lived session stream
/// (no stream to open per request). Several connections per shard spread the client side's
/// packet processing: one connection is one quinn state machine.
pub async fn connect(
    cluster: &Cluster,
    shards: &[SocketAddr],
    per_shard: usize,
    token: Option<Token>,
) -> Result<Vec<Client>, ClientError> {
    // Each tenant's connections are its own: a token is presented per stream.
    let mut clients = Vec::new();
    for _ in 0..per_shard.max(1) {
        for &addr in shards {
            let client = Client::connect(cluster, addr, token.clone()).await?;
            clients.push(client.with_session().await?);
        }
    }
    Ok(clients)
}

/// What every invocation of a run shares.
#[derive(Clone)]
pub struct RunContext {
    /// Connections per tenant (by the plan's tenant index), each tenant's used round-robin
    /// (so shards alternate).
    pub clients: Vec<Vec<Client>>,
    /// The plan's distinct calls.
    pub targets: Arc<Vec<Target>>,
    /// Class names, most expensive first.
    pub classes: Arc<Vec<String>>,
    /// Per-invocation timeout, ms.
    pub timeout_ms: u64,
    /// Most unanswered invocations before the generator refuses to send more.
    pub max_outstanding: usize,
    /// Draw a progress line.
    pub progress: bool,
}

/// Counters the progress line shows.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

/// Runs one phase and returns its recorder and the time from its start to its last answer.
pub async fn run_phase(
    ctx: &RunContext,
    plan: &PhasePlan,
    label: &str,
) -> (PhaseRecorder, Duration) {
    let recorder = PhaseRecorder::new(plan, ctx.classes.len(), ctx.clients.len());
    let counters = Arc::new(Counters::default());
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let start = Instant::now();
    // The same instant on the wall clock the answers' timings use, for the inbound and
    // outbound stages.
    let start_unix_us = tariff_types::wire::unix_micros();

    let collector = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut recorder = recorder;
            let mut last = start;
            while let Some(sample) = rx.recv().await {
                last = Instant::now();
                counters.answered.fetch_add(1, Ordering::Relaxed);
                if matches!(sample.answer, Answer::Err(_)) {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                recorder.record(&sample);
            }
            (recorder, last - start)
        })
    };
    let ticker = ctx.progress.then(|| {
        let counters = counters.clone();
        let bar = tariff_progress::Progress::new(
            label.to_owned(),
            plan.invocations.len() as u64,
            "answered",
        );
        let task = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
                loop {
                    tick.tick().await;
                    let sent = counters.sent.load(Ordering::Relaxed);
                    let answered = counters.answered.load(Ordering::Relaxed);
                    bar.set(answered);
                    bar.message(format!(
                        "sent {sent}, in flight {}, failed {}",
                        sent.saturating_sub(answered),
                        counters.failed.load(Ordering::Relaxed)
                    ));
                }
            })
        };
        (task, bar)
    });

    // The generator is a blocking thread: `std::thread::sleep` wakes within tens of µs,
    // where tokio's timer wheel rounds every sleep up to the next millisecond, which would add
    // ~0.5 ms of the harness's own lag to every latency measured from the scheduled time.
    let generator = {
        let ctx = ctx.clone();
        let invocations = plan.invocations.clone();
        let counters = counters.clone();
        let runtime = tokio::runtime::Handle::current();
        // The pool's thread may come back from other work (an embedded dispatcher's launch
        // runs as a normal task on other CPUs): the generator runs as the runtime's own
        // threads do, above every function in an embedded cluster in real-time mode.
        let scheduling = tariff_machine_sched::rt::ThreadScheduling::current();
        tokio::task::spawn_blocking(move || {
            scheduling.apply();
            for (i, planned) in invocations.into_iter().enumerate() {
                let scheduled = start + planned.at;
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
                let target = &ctx.targets[planned.target as usize];
                if outstanding.load(Ordering::Relaxed) >= ctx.max_outstanding {
                    let _ = tx.send(Sample {
                        class: planned.class,
                        tenant: target.tenant,
                        cost: 0.0,
                        degraded: false,
                        retried: false,
                        scheduled: planned.at,
                        latency: scheduled.elapsed(),
                        answer: Answer::Err(CLIENT_OVERLOAD.into()),
                        memory: MemoryPressure::default(),
                    });
                    continue;
                }
                outstanding.fetch_add(1, Ordering::Relaxed);
                let tenant_clients =
                    &ctx.clients[usize::from(target.tenant).min(ctx.clients.len() - 1)];
                let client = tenant_clients[i % tenant_clients.len()].clone();
                let request = InvokeRequest {
                    function: target.function.clone(),
                    class: ctx.classes[planned.class as usize].clone(),
                    payload: target.payload.clone(),
                    timeout_ms: ctx.timeout_ms,
                    limits: Default::default(),
                    idempotency_key: None,
                };
                let (tx, outstanding) = (tx.clone(), outstanding.clone());
                let sent_at_us = start_unix_us + planned.at.as_micros() as u64;
                let tenant = target.tenant;
                // No timeout (0): the client waits as long as it takes, and so does the harness.
                let bound = match ctx.timeout_ms {
                    0 => Duration::MAX,
                    ms => Duration::from_millis(ms) + LOST_GRACE,
                };
                runtime.spawn(async move {
                    let asked = request.class.clone();
                    let mut memory = MemoryPressure::default();
                    let answer = tokio::time::timeout(bound, client.invoke(request)).await;
                    let (answer, cost, degraded, retried) = match answer {
                        Ok(Ok(Ok(outcome))) => {
                            memory = outcome.run.memory;
                            (
                                Answer::Ok(Stages::of(
                                    &outcome,
                                    sent_at_us,
                                    tariff_types::wire::unix_micros(),
                                )),
                                outcome.cost.total,
                                !outcome.cost.class.is_empty() && outcome.cost.class != asked,
                                outcome.attempts > 1,
                            )
                        }
                        Ok(Ok(Err(e))) => (Answer::Err(e.kind().into()), 0.0, false, false),
                        Ok(Err(e)) => {
                            (Answer::Err(client_error_kind(&e).into()), 0.0, false, false)
                        }
                        Err(_) => (Answer::Err(LOST.into()), 0.0, false, false),
                    };
                    let latency = scheduled.elapsed();
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send(Sample {
                        class: planned.class,
                        tenant,
                        cost,
                        degraded,
                        retried,
                        scheduled: planned.at,
                        latency,
                        answer,
                        memory,
                    });
                });
            }
        })
    };
    generator.await.expect("the generator does not panic");
    let result = collector.await.expect("the collector does not panic");
    // A phase lasts at least its arrival window, so a burst answered early does not inflate
    // the throughput.
    let result = (result.0, result.1.max(plan.duration));
    if let Some((ticker, bar)) = ticker {
        ticker.abort();
        bar.finish();
        output::progress_done(
            label,
            plan.invocations.len() as u64,
            counters.failed.load(Ordering::Relaxed),
            result.1,
        );
    }
    result
}
