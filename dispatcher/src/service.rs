//! The dispatcher service: one per machine. It keeps a session with every shard, answers
//! polls, runs what is placed on it and keeps its idle-list entry current.
//!
//! Each shard session is a control stream plus one lane per class (see `docs/protocol.md`).
//! A session that fails is retried with backoff, so shards can restart under a running
//! dispatcher. Every [`IDLE_TICK`] the dispatcher measures free memory and asks the pure
//! [`IdleAdvertiser`] whether to join, update or leave an idle list.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tariff_cluster::cluster::{Cluster, ClusterError, CLUSTER_SERVER_NAME};
use tariff_cluster::codec::{self, CodecError};
use tariff_cluster::metrics::{MetricsError, MetricsServer};
use tariff_types::class::MAX_CLASSES;
use tariff_types::policy::Policy;
use tariff_types::wire::{
    context_env, Completion, DispatcherHello, DispatcherToShard, IdleEntry, InvocationId,
    MachineLoad as LoadReport, MemoryReport, Orphan, Placement, ShardToDispatcher, StreamOpen,
};
use tariff_types::ClassId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use crate::executor::{Executor, MachineLoad, Run};
use crate::memory_report::MemoryTotals;
use crate::metrics::{DispatcherExposition, DispatcherMetrics, LevelSource, Levels};
use tariff_machine_sched::machine::{MachineScheduler, StartClaim};
use tariff_machine_sched::memory_guard::{self, GuardReading, MemoryOptions};
use tariff_policy::idle_advert::{
    least_crowded, shards_to_poll, IdleAction, IdleAdvertiser, IdlePolicy,
};

/// How often free memory is measured and the idle-list entry reconsidered.
pub const IDLE_TICK: Duration = Duration::from_millis(50);
/// First wait before reconnecting to a shard; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long to wait for shards to report their idle-list lengths.
const QUERY_TIMEOUT: Duration = Duration::from_millis(200);
/// File in the data directory holding the bound metrics address (when `--metrics` is given),
/// for scripts and tests that asked for port 0.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";
/// Default k for choosing a shard's idle list.
pub const DEFAULT_K: usize = 3;

/// Everything a dispatcher is configured with.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// Shards to serve.
    pub shards: Vec<SocketAddr>,
    /// This machine's name, unique in the cluster.
    pub machine: String,
    /// CPUs functions may use.
    pub cores: u32,
    /// Memory functions may use, in bytes.
    pub memory_bytes: u64,
    /// Invocations at or above one class run at once (default: cores).
    pub slots: u32,
    /// Directory for the dispatcher's files and the functions' working directory.
    pub data_dir: PathBuf,
    /// Shards compared when joining an idle list.
    pub k: usize,
    /// The cluster's policy: Tariff's, or a class-blind baseline.
    pub policy: Policy,
    /// Where to serve Prometheus metrics (`GET /metrics`); none when `None`.
    pub metrics: Option<SocketAddr>,
    /// How memory is enforced and when the machine lists itself idle.
    pub memory: MemorySettings,
}

/// How a dispatcher keeps its functions inside `--memory` and advertises free memory (issue
/// 15). Shares are of `memory_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct MemorySettings {
    /// Enforce the limit and swap or kill by class (`false`: only measure, as before).
    pub enforce: bool,
    /// The machine is on an idle list while at least this share is free.
    pub idle_threshold: f64,
    /// Free memory must move by this share to update the idle-list entry.
    pub idle_significant: f64,
    /// Below this share free, the cheapest classes' stopped work is swapped out.
    pub low_watermark: f64,
    /// Swapping out goes on until this share is free.
    pub high_watermark: f64,
    /// Below this share free, with swap exhausted, the cheapest class is killed.
    pub kill_watermark: f64,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            enforce: true,
            idle_threshold: tariff_policy::idle_advert::DEFAULT_IDLE_THRESHOLD,
            idle_significant: tariff_policy::idle_advert::DEFAULT_SIGNIFICANT_CHANGE,
            low_watermark: memory_guard::DEFAULT_LOW_WATERMARK,
            high_watermark: memory_guard::DEFAULT_HIGH_WATERMARK,
            kill_watermark: memory_guard::DEFAULT_KILL_WATERMARK,
        }
    }
}

impl MemorySettings {
    /// The memory guard's options for a machine whose functions may use `limit_bytes`.
    pub fn guard_options(&self, limit_bytes: u64) -> MemoryOptions {
        MemoryOptions {
            low_watermark: self.low_watermark,
            high_watermark: self.high_watermark,
            kill_watermark: self.kill_watermark,
            ..MemoryOptions::new(limit_bytes)
        }
    }

    /// The idle-list policy for a machine whose functions may use `limit_bytes`.
    pub fn idle_policy(&self, limit_bytes: u64) -> IdlePolicy {
        IdlePolicy {
            memory_bytes: limit_bytes,
            threshold: self.idle_threshold,
            significant: self.idle_significant,
        }
    }
}

/// Why a dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Credentials or endpoint.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The data directory could not be prepared.
    #[error("dispatcher data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// No shard address was given.
    #[error("a dispatcher needs at least one shard address (--shards)")]
    NoShards,
}

/// A live session with one shard, as the rest of the dispatcher sees it.
struct ShardHandle {
    control: mpsc::UnboundedSender<DispatcherToShard>,
    queries: Arc<Mutex<HashMap<u64, oneshot::Sender<u32>>>>,
}

struct Shared {
    options: DispatcherOptions,
    endpoint: quinn::Endpoint,
    /// The cluster's CA certificate (PEM), passed to functions so they can call shards.
    ca_pem: String,
    executor: Executor,
    load: MachineLoad,
    /// The warm set last sent to the shards.
    warm_sent: Mutex<Vec<String>>,
    /// Free memory as last measured by the idle tick (every [`IDLE_TICK`]).
    free_memory: AtomicU64,
    shards: Mutex<HashMap<usize, ShardHandle>>,
    advertiser: Mutex<IdleAdvertiser>,
    next_seq: AtomicU64,
    /// The cluster's number of price classes, learned from the first shard's welcome.
    classes: AtomicUsize,
    /// The classes' names, learned with their number, for metric labels.
    class_names: std::sync::OnceLock<Vec<String>>,
    /// The Prometheus series.
    metrics: Arc<DispatcherMetrics>,
    /// What memory pressure has cost each class, for the heartbeats' memory report.
    memory_totals: MemoryTotals,
}

impl LevelSource for Shared {
    fn levels(&self) -> Levels {
        let (idle_instances, running_processes) = self.executor.machine.instance_counts();
        Levels {
            free_memory_bytes: self.free_memory.load(Ordering::Relaxed),
            running: self.load.snapshot()[..self.classes.load(Ordering::Relaxed)].to_vec(),
            idle_instances,
            running_processes,
            listed: self.advertiser().listed_on().is_some(),
            shards: self.shards().len(),
        }
    }

    fn class_name(&self, index: usize) -> String {
        self.class_names
            .get()
            .and_then(|names| names.get(index))
            .cloned()
            .unwrap_or_else(|| index.to_string())
    }
}

impl Shared {
    /// Sends the end of a keyed invocation whose session is gone to a shard still connected,
    /// which settles its key; with none connected it is dropped, and the key's resubmission
    /// waits out the first caller's deadline (docs/failures.md).
    fn hand_over(&self, orphan: Orphan) {
        let shards = self.shards();
        let sent = shards.values().any(|shard| {
            shard
                .control
                .send(DispatcherToShard::Orphan(orphan.clone()))
                .is_ok()
        });
        if sent {
            info!(invocation = %orphan.completion.id, "handed a lost shard's keyed invocation to another shard");
        } else {
            warn!(invocation = %orphan.completion.id, "no shard to hand a keyed invocation's end to");
        }
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, HashMap<usize, ShardHandle>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn advertiser(&self) -> std::sync::MutexGuard<'_, IdleAdvertiser> {
        self.advertiser.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Measures free memory and remembers it: the memory guard's last reading (the functions'
    /// cgroups, bounded by the machine's available memory) where it runs, else the resident
    /// memory of every function process read from `/proc`.
    fn measure_free_memory(&self) -> u64 {
        let free = self
            .executor
            .machine
            .guarded_free_memory()
            .unwrap_or_else(|| {
                let used = self.executor.machine.used_memory();
                self.options.memory_bytes.saturating_sub(used)
            });
        self.free_memory.store(free, Ordering::Relaxed);
        free
    }

    /// How the machine's memory stands, for a heartbeat: the memory guard's last reading
    /// where it runs, else the idle tick's free memory and the function processes' resident
    /// sets; and what memory pressure has cost each class.
    fn memory_report(&self) -> MemoryReport {
        let machine = &self.executor.machine;
        let reading = machine.memory_reading().unwrap_or_else(|| GuardReading {
            used_bytes: machine.used_memory(),
            free_bytes: self.free_memory.load(Ordering::Relaxed),
            ..GuardReading::default()
        });
        MemoryReport {
            used_bytes: reading.used_bytes,
            free_bytes: reading.free_bytes,
            swap_total_bytes: reading.swap_total_bytes,
            swap_free_bytes: reading.swap_free_bytes,
            per_class: self
                .memory_totals
                .snapshot(self.classes.load(Ordering::Relaxed)),
        }
    }

    fn load_report(&self) -> LoadReport {
        LoadReport {
            per_class: self.load.snapshot()[..self.classes.load(Ordering::Relaxed)].to_vec(),
            slots: self.options.slots,
            // The idle tick's measurement: polls are on the placement path and must not read
            // /proc for every function process.
            free_memory_bytes: self.free_memory.load(Ordering::Relaxed),
            warm: self.executor.machine.warm_functions(),
        }
    }
}

/// A configured dispatcher.
pub struct Dispatcher {
    shared: Arc<Shared>,
    /// The bound `--metrics` endpoint, if one was asked for.
    metrics: Option<MetricsServer>,
}

impl Dispatcher {
    /// Prepares the QUIC endpoint around a machine scheduler (see
    /// [`crate::machine_setup`]). The price classes are learned from the shards, so every
    /// machine follows the cluster's table without configuration.
    pub fn new(
        cluster: &Cluster,
        options: DispatcherOptions,
        machine: Arc<MachineScheduler>,
    ) -> Result<Self, DispatcherError> {
        let first = *options.shards.first().ok_or(DispatcherError::NoShards)?;
        // The dispatcher's certificate is what lets it register a machine; shards refuse
        // machine streams from anyone else.
        let identity = cluster.identity(tariff_cluster::cluster::Role::Dispatcher)?;
        let endpoint = cluster.client_endpoint(first, Some(&identity))?;
        let metrics = options.metrics.map(MetricsServer::bind_std).transpose()?;
        if let Some(server) = &metrics {
            let data_err = |source| DispatcherError::DataDir {
                path: options.data_dir.clone(),
                source,
            };
            std::fs::create_dir_all(&options.data_dir).map_err(data_err)?;
            std::fs::write(
                options.data_dir.join(METRICS_ADDR_FILE),
                server.local_addr().to_string(),
            )
            .map_err(data_err)?;
        }
        let shared = Arc::new(Shared {
            class_names: std::sync::OnceLock::new(),
            metrics: Arc::new(DispatcherMetrics::new(options.cores, options.memory_bytes)),
            memory_totals: MemoryTotals::default(),
            advertiser: Mutex::new(IdleAdvertiser::new(
                options.memory.idle_policy(options.memory_bytes),
            )),
            executor: Executor {
                machine,
                class_blind: options.policy.is_class_blind(),
            },
            load: MachineLoad::new(MAX_CLASSES),
            warm_sent: Mutex::default(),
            free_memory: AtomicU64::new(options.memory_bytes),
            shards: Mutex::default(),
            next_seq: AtomicU64::new(1),
            endpoint,
            ca_pem: cluster.ca_pem().to_owned(),
            classes: AtomicUsize::new(0),
            options,
        });
        Ok(Self { shared, metrics })
    }

    /// Where the dispatcher serves its metrics, if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Serves until `shutdown` completes.
    ///
    /// Everything the dispatcher logs is inside a `dispatcher{machine=NAME}` span, so the
    /// lines of several dispatchers in one process (`tariff local`) can be told apart.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let span = tracing::info_span!("dispatcher", machine = %self.shared.options.machine);
        let metrics = self.metrics.map(|server| {
            let exposition = DispatcherExposition {
                metrics: self.shared.metrics.clone(),
                source: self.shared.clone(),
            };
            tokio::spawn(server.serve(Arc::new(exposition)))
        });
        serve(self.shared, shutdown).instrument(span).await;
        if let Some(task) = metrics {
            task.abort();
        }
    }
}

/// The body of [`Dispatcher::run`], inside the dispatcher's span.
async fn serve(shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    info!(
        machine = %shared.options.machine,
        cores = shared.options.cores,
        slots = shared.options.slots,
        memory = shared.options.memory_bytes,
        shards = shared.options.shards.len(),
        "dispatcher starting"
    );
    start_memory_guard(&shared);
    let mut tasks = Vec::new();
    for (index, &addr) in shared.options.shards.iter().enumerate() {
        tasks.push(tokio::spawn(
            keep_session(shared.clone(), index, addr).in_current_span(),
        ));
    }
    tasks.push(tokio::spawn(advertise(shared.clone()).in_current_span()));
    tasks.push(tokio::spawn(
        shared
            .executor
            .machine
            .clone()
            .reap_forever()
            .in_current_span(),
    ));
    shutdown.await;
    info!("dispatcher shutting down");
    for task in tasks {
        task.abort();
    }
    shared.executor.machine.shutdown().await;
    shared.endpoint.close(0u32.into(), b"shutdown");
}

/// Enforces `--memory` and starts swapping by class, or says plainly why not: without it the
/// functions meet the kernel's OOM killer, which knows nothing of classes.
fn start_memory_guard(shared: &Shared) {
    let settings = shared.options.memory;
    if !settings.enforce {
        info!("memory: not enforced (asked not to): --memory only shapes idle-list membership");
        return;
    }
    let options = settings.guard_options(shared.options.memory_bytes);
    match shared.executor.machine.start_memory_guard(options) {
        Ok(start) => info!(
            limit_bytes = start.limit.limit_bytes,
            oom_killer_disabled = start.limit.oom_killer_disabled,
            swap_total_bytes = start.machine.swap_total_bytes,
            low_watermark = settings.low_watermark,
            high_watermark = settings.high_watermark,
            kill_watermark = settings.kill_watermark,
            "memory: functions limited to --memory together; swapped out by class under pressure"
        ),
        Err(error) => warn!(
            %error,
            "memory: --memory is NOT enforced: functions may outgrow it and meet the kernel's \
             OOM killer, which does not know price classes"
        ),
    }
}

/// Keeps a session with one shard, reconnecting with backoff.
async fn keep_session(shared: Arc<Shared>, index: usize, addr: SocketAddr) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match session(&shared, index, addr).await {
            Ok(()) => {
                info!(shard = %addr, "shard session ended");
                backoff = FIRST_BACKOFF;
            }
            Err(error) => debug!(shard = %addr, %error, "shard session failed"),
        }
        shared.shards().remove(&index);
        shared.advertiser().shard_lost(index);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why a session with a shard ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("framing: {0}")]
    Codec(#[from] CodecError),
    #[error("stream: {0}")]
    Stream(#[from] quinn::ConnectionError),
    #[error("shard did not welcome us")]
    NoWelcome,
    #[error("shard silent for {0:?}: taken for lost")]
    Silent(Duration),
    #[error("shard has {shard} price classes but other shards have {ours}: give every shard the same --classes")]
    ClassMismatch { shard: usize, ours: usize },
}

async fn session(shared: &Arc<Shared>, index: usize, addr: SocketAddr) -> Result<(), SessionError> {
    let conn = shared
        .endpoint
        .connect(addr, CLUSTER_SERVER_NAME)
        .map_err(|e| SessionError::Connect(e.to_string()))?
        .await
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let options = &shared.options;
    let hello = DispatcherHello {
        machine: options.machine.clone(),
        cores: options.cores,
        memory_bytes: options.memory_bytes,
        slots: options.slots,
    };
    codec::write_message(&mut send, &StreamOpen::DispatcherControl(hello)).await?;
    let Some(ShardToDispatcher::Welcome {
        shard_id,
        classes,
        liveness_ms,
    }) = codec::read_message(&mut recv).await?
    else {
        return Err(SessionError::NoWelcome);
    };
    let known = match shared.classes.compare_exchange(
        0,
        classes.len(),
        Ordering::Relaxed,
        Ordering::Relaxed,
    ) {
        Ok(_) => classes.len(),
        Err(known) => known,
    };
    if classes.len() == known {
        let _ = shared.class_names.set(classes.clone());
    }
    if classes.len() != known {
        return Err(SessionError::ClassMismatch {
            shard: classes.len(),
            ours: known,
        });
    }
    info!(shard = %addr, shard_id, "registered with shard");
    let (control, outbox) = mpsc::unbounded_channel::<DispatcherToShard>();
    // What a function placed by this shard needs to call back into its chain: the address
    // this dispatcher reached the shard at, and the CA to verify it.
    let context = Arc::new(vec![
        (context_env::SHARD.to_owned(), addr.to_string()),
        (context_env::CA.to_owned(), shared.ca_pem.clone()),
    ]);
    // What this session placed and has not finished: given up (or killed) if the session
    // ends, because nobody is left to take their answers.
    let in_flight: InFlight = Arc::default();
    let mut lanes = Vec::new();
    for class in 0..known {
        let (mut lane_send, lane_recv) = conn.open_bi().await?;
        let open = StreamOpen::ClassLane {
            machine: options.machine.clone(),
            class: ClassId(class as u8),
        };
        codec::write_message(&mut lane_send, &open).await?;
        lanes.push(tokio::spawn(
            serve_lane(
                shared.clone(),
                conn.clone(),
                lane_send,
                lane_recv,
                context.clone(),
                in_flight.clone(),
            )
            .in_current_span(),
        ));
    }
    let queries: Arc<Mutex<HashMap<u64, oneshot::Sender<u32>>>> = Arc::default();
    shared.shards().insert(
        index,
        ShardHandle {
            control: control.clone(),
            queries: queries.clone(),
        },
    );
    let _ = control.send(DispatcherToShard::Warm(
        shared.executor.machine.warm_functions(),
    ));
    let writer = tokio::spawn(codec::forward(outbox, send).in_current_span());
    let liveness = Duration::from_millis(liveness_ms.max(MIN_LIVENESS_MS));
    let beating = Arc::clone(shared);
    let heartbeat = tokio::spawn(codec::heartbeats(control.clone(), liveness, move || {
        DispatcherToShard::Memory(beating.memory_report())
    }));
    let result = loop {
        // A read cut short by the timeout loses a partial frame, but the session ends then.
        match tokio::time::timeout(
            liveness,
            codec::read_message::<ShardToDispatcher, _>(&mut recv),
        )
        .await
        {
            Ok(Ok(Some(message))) => handle_control(shared, &control, &queries, message),
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(e)) => break Err(e.into()),
            Err(_silent) => {
                warn!(shard = %addr, ?liveness, "shard silent; reconnecting");
                break Err(SessionError::Silent(liveness));
            }
        }
    };
    heartbeat.abort();
    writer.abort();
    for lane in lanes {
        lane.abort();
    }
    conn.close(0u32.into(), b"session over");
    abandon_in_flight(shared, &in_flight);
    result
}

/// What a session placed and has not finished, with the claim that can still stop each from
/// starting; and whether the session is over (its lanes may linger a moment after).
#[derive(Default)]
struct SessionWork {
    claims: Mutex<HashMap<InvocationId, Arc<StartClaim>>>,
    over: std::sync::atomic::AtomicBool,
}

impl SessionWork {
    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<InvocationId, Arc<StartClaim>>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the session has ended: nobody reads its lanes any more.
    fn is_over(&self) -> bool {
        self.over.load(Ordering::SeqCst)
    }
}

/// A session's [`SessionWork`], shared with its lanes and runs.
type InFlight = Arc<SessionWork>;

/// Shortest liveness bound a dispatcher accepts from a shard, so that a misconfigured shard
/// cannot make it send heartbeats in a busy loop.
const MIN_LIVENESS_MS: u64 = 40;

/// The session with the shard that placed these is over: the shard has answered them (as
/// lost, or placed them again elsewhere), so running them on would only waste the machine
/// and, for a function placed again, run it twice. Those still waiting never start; running
/// ones are killed.
fn abandon_in_flight(shared: &Shared, in_flight: &InFlight) {
    in_flight.over.store(true, Ordering::SeqCst);
    let abandoned: Vec<(InvocationId, Arc<StartClaim>)> = in_flight.claims().drain().collect();
    if abandoned.is_empty() {
        return;
    }
    info!(
        count = abandoned.len(),
        "stopping invocations of a lost shard session"
    );
    for (id, claim) in abandoned {
        if !claim.give_up() {
            shared.executor.machine.cancel(id.0);
        }
    }
}

fn handle_control(
    shared: &Shared,
    control: &mpsc::UnboundedSender<DispatcherToShard>,
    queries: &Mutex<HashMap<u64, oneshot::Sender<u32>>>,
    message: ShardToDispatcher,
) {
    match message {
        ShardToDispatcher::Poll { seq } => {
            let load = shared.load_report();
            let _ = control.send(DispatcherToShard::Load { seq, load });
        }
        ShardToDispatcher::IdleListLength { seq, length } => {
            let waiter = queries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&seq);
            if let Some(waiter) = waiter {
                let _ = waiter.send(length);
            }
        }
        ShardToDispatcher::Cancel(id) => shared.executor.machine.cancel(id.0),
        ShardToDispatcher::Welcome { .. } | ShardToDispatcher::Heartbeat => {}
    }
}

/// Reads placements from one class lane, runs each, writes completions back on the lane.
///
/// A lane that ends while the connection lives (the shard sent something malformed) closes
/// the connection: a session without one of its lanes is of no use, and reconnecting
/// re-registers the machine cleanly.
async fn serve_lane(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    context: Arc<Vec<(String, String)>>,
    in_flight: InFlight,
) {
    let (done, outbox) = mpsc::unbounded_channel::<Completion>();
    let writer = tokio::spawn(codec::forward(outbox, send).in_current_span());
    loop {
        match codec::read_message::<Placement, _>(&mut recv).await {
            Ok(Some(placement)) => {
                let classes = shared.classes.load(Ordering::Relaxed);
                // The ticket is taken here, in the order placements arrive on the lane.
                let ticket = shared.executor.admit(&placement, classes);
                let shared = shared.clone();
                let done = done.clone();
                let context = context.clone();
                let claim = Arc::new(StartClaim::default());
                // A keyed invocation runs on if the session ends: its end settles its key
                // through another shard (`Orphan`), so the caller's resubmission need not run
                // it again.
                let keyed = placement.idempotency_key.clone().map(|key| Orphan {
                    key,
                    tenant: placement.tenant.clone(),
                    function: placement.function.name.clone(),
                    class: placement.class,
                    completion: Completion {
                        id: placement.id,
                        result: Err(tariff_types::InvokeError::Cancelled),
                    },
                });
                if keyed.is_none() {
                    in_flight.claims().insert(placement.id, claim.clone());
                }
                let in_flight = in_flight.clone();
                tokio::spawn(
                    async move {
                        let placement_class = placement.class.index();
                        let class = shared.class_name(placement_class);
                        let run = Run {
                            classes,
                            context: &context,
                            claim: &claim,
                        };
                        let completion = shared
                            .executor
                            .execute(placement, ticket, &shared.load, run)
                            .await;
                        in_flight.claims().remove(&completion.id);
                        shared.memory_totals.ran(placement_class, &completion);
                        shared.metrics.ran(class, &completion);
                        match keyed {
                            Some(orphan) if in_flight.is_over() => shared.hand_over(Orphan {
                                completion,
                                ..orphan
                            }),
                            _ => {
                                let _ = done.send(completion);
                            }
                        }
                    }
                    .in_current_span(),
                );
            }
            Ok(None) => break,
            Err(error) => {
                debug!(%error, "lane ended");
                if error.is_protocol_violation() {
                    conn.close(LANE_BROKEN.into(), b"malformed placement");
                }
                break;
            }
        }
    }
    drop(done);
    let _ = writer.await;
}

/// QUIC application code for closing a session whose lane broke.
const LANE_BROKEN: u32 = 1;

/// Keeps the machine's idle-list entry in step with its free memory and queue.
async fn advertise(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(IDLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        announce_warm(&shared);
        let free = shared.measure_free_memory();
        let queue = shared.load.total();
        let action = shared.advertiser().observe(free, queue);
        match action {
            IdleAction::Nothing => {}
            IdleAction::Update(shard, entry) => send_idle(&shared, shard, entry),
            IdleAction::Leave(shard) => {
                let entry = IdleEntry {
                    listed: false,
                    free_memory_bytes: free,
                    queue_length: queue,
                };
                send_idle(&shared, shard, entry);
            }
            IdleAction::Join(entry) => {
                if let Some(shard) = choose_shard(&shared).await {
                    send_idle(&shared, shard, entry);
                    shared.advertiser().joined(shard, entry);
                    debug!(shard, free, "joined an idle list");
                }
            }
        }
    }
}

/// Tells every shard which functions have an idle warm instance here, when that changes, so
/// they can place those functions where no process needs starting.
fn announce_warm(shared: &Shared) {
    let warm = shared.executor.machine.warm_functions();
    let mut sent = shared.warm_sent.lock().unwrap_or_else(|p| p.into_inner());
    if *sent == warm {
        return;
    }
    for handle in shared.shards().values() {
        let _ = handle.control.send(DispatcherToShard::Warm(warm.clone()));
    }
    *sent = warm;
}

fn send_idle(shared: &Shared, shard: usize, entry: IdleEntry) {
    if let Some(handle) = shared.shards().get(&shard) {
        let _ = handle.control.send(DispatcherToShard::Idle(entry));
    }
}

/// Asks k connected shards for their idle-list lengths and picks the shortest.
async fn choose_shard(shared: &Shared) -> Option<usize> {
    let waiting: Vec<(usize, oneshot::Receiver<u32>)> = {
        let shards = shared.shards();
        let mut connected: Vec<usize> = shards.keys().copied().collect();
        // Sorted so the draw depends on the rng alone, not on the map's iteration order.
        connected.sort_unstable();
        shards_to_poll(&connected, shared.options.k, &mut rand::thread_rng())
            .into_iter()
            .filter_map(|index| {
                let handle = shards.get(&index)?;
                let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                handle
                    .queries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(seq, tx);
                handle
                    .control
                    .send(DispatcherToShard::QueryIdleListLength { seq })
                    .ok()?;
                Some((index, rx))
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
    let mut lengths = Vec::new();
    for (index, rx) in waiting {
        if let Ok(Ok(length)) = tokio::time::timeout_at(deadline, rx).await {
            lengths.push((index, length));
        }
    }
    least_crowded(&lengths)
}
