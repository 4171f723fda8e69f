//! `tariff sim`: a discrete-event simulator of the paper's experiments (section 4), driving
//! Tariff's live policy code in virtual time.
//!
//! Tariff's run in the simulator is not a model of Tariff: it is the shard's
//! [`tariff_policy::ShardCore`] (queue selection, idle list, power-of-k placement), the
//! machine scheduler's [`tariff_policy::run_queue::RunQueue`] (preemptive priority, FCFS within a
//! class) and the dispatcher's [`tariff_policy::swap`] victim choice, fed events with a
//! virtual `now`. The baselines (Hermod, centralised EDF, FIFO) are small models written here.
//!
//! One module per concept: [`workload`] (generator, trace replay, Azure converter),
//! [`events`] (virtual time), one module per scheduler, [`stats`], [`report`] (JSON, SVG and
//! the table) and [`cli`] (the `tariff sim` arguments).

pub mod cli;
pub mod edf;
pub mod events;
pub mod fifo;
pub mod hermod;
pub mod report;
mod slots;
pub mod stats;
pub mod tariff;
pub mod workload;

use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;
use tariff_types::Policy;

pub use cli::{run, SimArgs};
pub use report::{ExperimentReport, SchedulerReport, SweepReport};

use events::{from_secs, Event, EventQueue, Nanos};
use stats::Stats;
use workload::{
    FunctionTable, Generator, Invocation, TraceReader, WorkloadConfig, WorkloadError, MB,
};

/// Price of the most expensive class; class i of n costs `MAX_PRICE × (n − i) / n`, which for
/// four classes is Tariff's default table 2.0, 1.5, 1.0, 0.5.
pub const MAX_PRICE: f64 = 2.0;
/// Default machines (paper: 100).
pub const DEFAULT_MACHINES: usize = 100;
/// Default cores per machine (paper: 8).
pub const DEFAULT_CORES: usize = 8;
/// Default scheduler shards (paper: 4).
pub const DEFAULT_SHARDS: usize = 4;
/// Default k of power-of-k (paper: 3).
pub const DEFAULT_K: usize = 3;
/// Default number of price classes.
pub const DEFAULT_CLASSES: usize = 4;
/// Default simulated seconds.
pub const DEFAULT_DURATION_S: f64 = 60.0;
/// Memory per machine in the paper's memory experiment (Fig. 5).
pub const MEMORY_EXPERIMENT_GB: f64 = 32.0;
/// Period of housekeeping ticks: utilisation and memory samples, and blocked shards' retry.
/// 10 ms is a tenth of the mean runtime: fine enough to see memory grow, cheap next to the
/// ~16 000 events per simulated second of the default set-up.
pub const TICK: Nanos = 10_000_000;
/// Bytes per GB (binary, like [`MB`]).
pub const GB: f64 = (1u64 << 30) as f64;

/// The schedulers the simulator compares: each policy a live cluster can run (Tariff's and
/// its class-blind baselines, the one [`Policy`] type), plus centralised EDF, an ideal no
/// cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// A cluster policy: Tariff (the live shard, run queue and swap code), Hermod
    /// (class-blind power-of-k least-loaded, early binding, processor sharing) or FIFO (one
    /// global queue, non-preemptive, class-blind).
    Cluster(Policy),
    /// Centralised preemptive EDF on one machine with every core.
    Edf,
}

impl SchedulerKind {
    /// Tariff.
    pub const TARIFF: Self = Self::Cluster(Policy::Tariff);
    /// The Hermod baseline.
    pub const HERMOD: Self = Self::Cluster(Policy::Hermod);
    /// The FIFO baseline.
    pub const FIFO: Self = Self::Cluster(Policy::Fifo);
    /// Every scheduler, in report order.
    pub const ALL: [SchedulerKind; 4] = [Self::TARIFF, Self::HERMOD, Self::Edf, Self::FIFO];

    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cluster(policy) => policy.name(),
            Self::Edf => "edf",
        }
    }
}

impl Serialize for SchedulerKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl std::str::FromStr for SchedulerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown scheduler {s:?} (tariff, hermod, edf, fifo)"))
    }
}

/// One experiment: a cluster, a workload and a load.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice (workload and policies).
    pub seed: u64,
    /// Machines.
    pub machines: usize,
    /// Cores per machine.
    pub cores: usize,
    /// Tariff's scheduler shards.
    pub shards: usize,
    /// k of power-of-k (Tariff's polls, Hermod's choices, the dispatcher's shard choice).
    pub k: usize,
    /// Price classes.
    pub classes: usize,
    /// Invocations at or above a class a Tariff machine admits (see
    /// [`tariff_policy::placement::has_room`]); the number of cores by default.
    pub slots: u32,
    /// Simulated seconds of arrivals; the run stops then, unfinished work is counted.
    pub duration_s: f64,
    /// Offered load as a fraction of the cluster's cores.
    pub load: f64,
    /// Schedulers to run, each on an identical workload.
    pub schedulers: Vec<SchedulerKind>,
    /// Memory per machine in bytes; `None` is the latency experiment's "absurdly high" memory,
    /// which also turns the memory model off.
    pub memory_bytes: Option<u64>,
    /// Whether Tariff's shards place from the idle list (off in the latency experiment).
    pub idle_list: bool,
    /// The synthetic workload (ignored when replaying a trace).
    pub workload: WorkloadConfig,
    /// A trace CSV to replay instead of the synthetic workload.
    pub trace: Option<PathBuf>,
    /// EDF deadlines count from arrival (textbook EDF) instead of the paper's literal
    /// `runtime × max_price / price`; see [`edf`].
    pub edf_absolute_deadlines: bool,
}

impl SimConfig {
    /// The paper's latency experiment (Fig. 4) at `load`.
    pub fn paper(load: f64) -> Self {
        Self {
            seed: 1,
            machines: DEFAULT_MACHINES,
            cores: DEFAULT_CORES,
            shards: DEFAULT_SHARDS,
            k: DEFAULT_K,
            classes: DEFAULT_CLASSES,
            slots: DEFAULT_CORES as u32,
            duration_s: DEFAULT_DURATION_S,
            load,
            schedulers: SchedulerKind::ALL.to_vec(),
            memory_bytes: None,
            idle_list: false,
            workload: WorkloadConfig::paper(DEFAULT_CLASSES),
            trace: None,
            edf_absolute_deadlines: false,
        }
    }

    /// The paper's memory experiment (Fig. 5) at `load`: Tariff only, 32 GB per machine,
    /// idle list on.
    pub fn paper_memory(load: f64) -> Self {
        Self {
            schedulers: vec![SchedulerKind::TARIFF],
            memory_bytes: Some((MEMORY_EXPERIMENT_GB * GB) as u64),
            idle_list: true,
            ..Self::paper(load)
        }
    }

    /// Price of each class, most expensive first.
    pub fn prices(&self) -> Vec<f64> {
        let n = self.classes as f64;
        (0..self.classes)
            .map(|i| MAX_PRICE * (n - i as f64) / n)
            .collect()
    }

    /// Cores in the cluster.
    pub fn capacity(&self) -> usize {
        self.machines * self.cores
    }

    /// The simulated end of the run.
    fn end(&self) -> Nanos {
        from_secs(self.duration_s)
    }
}

/// The invocation stream of a run.
enum Source {
    /// The synthetic generator.
    Synthetic(Box<Generator>),
    /// A trace being replayed.
    Trace(Box<TraceReader>),
}

impl Iterator for Source {
    type Item = Invocation;

    fn next(&mut self) -> Option<Invocation> {
        match self {
            Self::Synthetic(g) => g.next(),
            Self::Trace(t) => t.next(),
        }
    }
}

/// What every scheduler run needs to know about its workload, computed once per experiment.
#[derive(Debug, Clone)]
struct Workload {
    /// The function table (synthetic runs).
    table: Option<FunctionTable>,
    /// Arrivals per second (synthetic runs).
    rate: f64,
    /// Mean runtime in seconds.
    mean_runtime_s: f64,
    /// Multiplier on the trace's arrival times (trace runs).
    time_scale: f64,
}

impl Workload {
    /// Prepares the workload of `config`.
    fn new(config: &SimConfig) -> Result<Self, WorkloadError> {
        match &config.trace {
            Some(path) => {
                let summary = workload::summarize_trace(path)?;
                Ok(Self {
                    table: None,
                    rate: 0.0,
                    mean_runtime_s: summary.mean_runtime_s(),
                    time_scale: workload::trace_time_scale(
                        &summary,
                        config.capacity(),
                        config.load,
                    ),
                })
            }
            None => {
                let table = FunctionTable::new(&config.workload, config.seed);
                let mean = table.mean_runtime_s();
                Ok(Self {
                    table: Some(table),
                    rate: config.load * config.capacity() as f64 / mean,
                    mean_runtime_s: mean,
                    time_scale: 1.0,
                })
            }
        }
    }

    /// A fresh, identical stream of invocations.
    fn source(&self, config: &SimConfig) -> Result<Source, WorkloadError> {
        match (&config.trace, &self.table) {
            (Some(path), _) => Ok(Source::Trace(Box::new(TraceReader::open(
                path,
                self.time_scale,
                config.classes,
            )?))),
            (None, Some(table)) => Ok(Source::Synthetic(Box::new(Generator::new(
                table.clone(),
                self.rate,
                config.seed,
            )))),
            (None, None) => unreachable!("synthetic workloads always have a table"),
        }
    }
}

/// Shared state every scheduler model writes into.
pub(crate) struct Ctx {
    /// Pending events.
    pub events: EventQueue,
    /// Measurements.
    pub stats: Stats,
}

/// A scheduler as the event loop drives it.
pub(crate) trait SimScheduler {
    /// An invocation arrived.
    fn arrive(&mut self, now: Nanos, invocation: Invocation, ctx: &mut Ctx);
    /// A completion event fired (it may be stale; the policy checks `generation`).
    fn complete(&mut self, now: Nanos, id: u32, generation: u32, ctx: &mut Ctx);
    /// Periodic housekeeping: sample utilisation (and memory), retry blocked work.
    fn tick(&mut self, now: Nanos, ctx: &mut Ctx);
}

/// Runs `policy` over `source` until `end`; returns the measurements and the event count.
fn simulate(
    policy: &mut dyn SimScheduler,
    mut source: Source,
    end: Nanos,
    stats: Stats,
) -> (Stats, u64) {
    let mut ctx = Ctx {
        events: EventQueue::new(),
        stats,
    };
    let mut pending = source.next().filter(|i| i.arrival < end);
    if let Some(first) = &pending {
        ctx.events.push(first.arrival, Event::Arrival);
    }
    ctx.events.push(TICK, Event::Tick);
    while let Some((now, event)) = ctx.events.pop() {
        if now >= end {
            break;
        }
        match event {
            Event::Arrival => {
                let Some(invocation) = pending.take() else {
                    continue;
                };
                ctx.stats.arrived(invocation.class);
                policy.arrive(now, invocation, &mut ctx);
                pending = source.next().filter(|i| i.arrival < end);
                if let Some(next) = &pending {
                    ctx.events.push(next.arrival.max(now), Event::Arrival);
                }
            }
            Event::Completion { id, generation } => policy.complete(now, id, generation, &mut ctx),
            Event::Tick => {
                policy.tick(now, &mut ctx);
                ctx.events.push(now + TICK, Event::Tick);
            }
        }
    }
    let popped = ctx.events.popped();
    (ctx.stats, popped)
}

/// Runs one scheduler on the experiment's workload.
fn run_one(
    config: &SimConfig,
    workload: &Workload,
    kind: SchedulerKind,
) -> Result<SchedulerReport, WorkloadError> {
    let source = workload.source(config)?;
    let stats_machines = match kind {
        SchedulerKind::Edf => 1,
        _ => config.machines,
    };
    let stats = Stats::new(config.classes, stats_machines);
    let mut policy: Box<dyn SimScheduler> = match kind {
        SchedulerKind::TARIFF => Box::new(tariff::Tariff::new(config)),
        SchedulerKind::HERMOD => Box::new(hermod::Hermod::new(config)),
        SchedulerKind::Edf => Box::new(edf::Edf::new(config)),
        SchedulerKind::FIFO => Box::new(fifo::Fifo::new(config)),
    };
    let (stats, events) = simulate(policy.as_mut(), source, config.end(), stats);
    Ok(report::scheduler_report(config, kind, &stats, events))
}

/// Runs `jobs` on up to the machine's parallelism in threads, keeping results in job order so
/// the output does not depend on scheduling.
fn parallel<T: Send, R: Send>(jobs: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let count = jobs.len();
    let queue: Mutex<Vec<(usize, T)>> = Mutex::new(jobs.into_iter().enumerate().rev().collect());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..count).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let job = queue.lock().expect("job queue").pop();
                let Some((i, job)) = job else { break };
                let r = work(job);
                results.lock().expect("results")[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// Runs every scheduler of `config` on an identical workload.
pub fn run_experiment(config: &SimConfig) -> Result<ExperimentReport, WorkloadError> {
    let mut sweep = run_sweep(config, &[config.load])?;
    Ok(sweep.experiments.remove(0))
}

/// Runs `config` at each of `loads`, every scheduler in parallel where cores allow.
pub fn run_sweep(config: &SimConfig, loads: &[f64]) -> Result<SweepReport, WorkloadError> {
    run_sweep_with_progress(config, loads, &|| {})
}

/// [`run_sweep`], calling `job_done` as each (load, scheduler) run ends — there are
/// `loads.len() × config.schedulers.len()` — so a command can show how far the sweep is (the
/// library prints nothing). Runs end in any order, from several threads.
pub fn run_sweep_with_progress(
    config: &SimConfig,
    loads: &[f64],
    job_done: &(dyn Fn() + Sync),
) -> Result<SweepReport, WorkloadError> {
    let configs: Vec<SimConfig> = loads
        .iter()
        .map(|&load| SimConfig {
            load,
            ..config.clone()
        })
        .collect();
    let workloads = configs
        .iter()
        .map(Workload::new)
        .collect::<Result<Vec<_>, _>>()?;
    let jobs: Vec<(usize, SchedulerKind)> = (0..configs.len())
        .flat_map(|i| config.schedulers.iter().map(move |&k| (i, k)))
        .collect();
    let results = parallel(jobs.clone(), |(i, kind)| {
        let result = run_one(&configs[i], &workloads[i], kind);
        job_done();
        result
    });
    let mut experiments: Vec<ExperimentReport> = configs
        .iter()
        .zip(&workloads)
        .map(|(c, w)| report::experiment_report(c, w.mean_runtime_s, w.rate))
        .collect();
    for ((i, _), result) in jobs.into_iter().zip(results) {
        experiments[i].schedulers.push(result?);
    }
    Ok(SweepReport { experiments })
}

/// Bytes to MB, for reports.
pub(crate) fn to_mb(bytes: u64) -> f64 {
    bytes as f64 / MB as f64
}
