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
mod decimal;
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
    secs, FunctionTable, Generator, Invocation, TraceReader, TraceSummary, WorkloadConfig,
    WorkloadError, MB,
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
/// Swap space per machine in the memory experiment: the paper's 500 GB SSD (section 4.3,
/// "with a 500GB SSD, a provider would comfortably be able to avoid killing").
pub const MEMORY_EXPERIMENT_SWAP_GB: f64 = 500.0;
/// Default keep-alive of a warm instance when cold starts are modelled: ten minutes, the
/// order of what public providers keep idle instances for.
pub const DEFAULT_KEEP_ALIVE_S: f64 = 600.0;
/// Period of housekeeping ticks: utilisation and memory samples, and blocked shards' retry.
/// 10 ms is a tenth of the mean runtime: fine enough to see memory grow, cheap next to the
/// ~16 000 events per simulated second of the default set-up.
pub const TICK: Nanos = 10_000_000;
/// Period of the real-time budget ([`SimConfig::rt_budget`]): the live dispatcher's
/// `cpu.rt_period_us`, 100 ms.
pub const RT_BUDGET_PERIOD: Nanos = 100_000_000;
/// The least real-time budget per period a core may have (0.1 ms, a share of 0.001): below it
/// paying work would crawl (and a budget rounded to nothing would never finish).
pub const MIN_RT_BUDGET: Nanos = 100_000;
/// The most idle instances a pool may start with: each is a number in memory, and a machine
/// with more idle instances of one function than this is not a machine.
pub const MAX_PREWARM: u32 = 10_000;
/// How far past a trace's last arrival a whole-trace run ends, so that arrival is inside the
/// run (arrivals at or after the end are not simulated).
pub const TRACE_END_MARGIN_S: f64 = 1e-3;
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

/// Costs the paper assumes away (its assumption 3: swapping is free; and no cold starts),
/// which Tariff's run can charge so that the simulator speaks about the live system. Only
/// Tariff's run models them; the baselines stay the paper's ideal ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Overheads {
    /// Bytes per second at which a swapped invocation's memory faults back in when it gets a
    /// core; the time is added to its run on that core. Swapping out (kernel write-back) and
    /// swapping in ahead of time while the invocation waits cost nothing. `None`: free.
    pub swap_in_bytes_per_s: Option<f64>,
    /// Time added to an invocation's first start on a machine where its function has no
    /// idle instance: each machine keeps, per function, a pool of idle instances, as the live
    /// machine scheduler does; a start takes the most recently idled one that has been idle
    /// for less than `keep_alive`, or pays this, and a finished invocation puts its instance
    /// back. So two overlapping calls of a function with one warm instance pay one cold start,
    /// as they do live. `None`: no cold starts.
    pub cold_start: Option<Nanos>,
    /// How long a finished function's instance stays warm on its machine.
    pub keep_alive: Nanos,
    /// Idle instances each machine holds of every function when the run starts (cold-start
    /// model only): a live cluster's warm-up leaves some, and `tariff bench --vs-sim` counts
    /// them from the live run.
    pub prewarm: u32,
    /// Time every invocation spends outside a core on its way through a live cluster: the
    /// caller to the shard, the shard to the machine, the answer back (QUIC on loopback, the
    /// shard's and the dispatcher's handling). It is added to each latency and holds no core.
    /// `None`: communication is instant (paper assumption 2).
    pub dispatch: Option<Nanos>,
}

impl Overheads {
    /// Whether any overhead is modelled (the paper's set-ups have none, and their reports
    /// say nothing about overheads).
    pub fn any(&self) -> bool {
        self.swap_in_bytes_per_s.is_some() || self.cold_start.is_some() || self.dispatch.is_some()
    }
}

/// A set-up that cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A count that must be at least one is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// More classes than a class id holds.
    #[error("{0} classes: at most 255")]
    TooManyClasses(usize),
    /// k of power-of-k outside 1..=machines.
    #[error("k = {k} must be between 1 and the number of machines ({machines}): power-of-k polls k machines")]
    K {
        /// The k asked for.
        k: usize,
        /// Machines in the cluster.
        machines: usize,
    },
    /// A duration that is not a positive number of seconds.
    #[error("duration {0} s must be a positive number of seconds")]
    Duration(f64),
    /// A load that is not a positive fraction.
    #[error("load {0} must be a positive number")]
    Load(f64),
    /// No scheduler to run.
    #[error("no scheduler to run")]
    NoSchedulers,
    /// A cheapest-class speed outside (0, 1].
    #[error("the cheapest class's share of a core, {0}, must be in (0, 1]")]
    SharedSpeed(f64),
    /// A real-time budget below [`MIN_RT_BUDGET`] per period or above a whole core, or without
    /// the live machine model.
    #[error(
        "the real-time budget {0} must be at least {min} and at most 1, with --rt-cpus",
        min = MIN_RT_BUDGET as f64 / RT_BUDGET_PERIOD as f64
    )]
    RtBudget(f64),
    /// More idle instances per function and machine than [`MAX_PREWARM`].
    #[error("--prewarm {0}: at most {MAX_PREWARM} idle instances per function and machine")]
    Prewarm(u32),
    /// Real-time cores outside 1..=cores.
    #[error("{rt} real-time cores must be between 1 and the machine's cores ({cores})")]
    RtCpus {
        /// The real-time cores asked for.
        rt: usize,
        /// Cores per machine.
        cores: usize,
    },
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The set-up is impossible.
    #[error("invalid set-up")]
    Config(#[from] ConfigError),
    /// The workload could not be read.
    #[error("workload")]
    Workload(#[from] WorkloadError),
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
    /// Swap space per machine in bytes (memory model only); `None` is unlimited. Killing
    /// happens only when memory and swap together are full.
    pub swap_bytes: Option<u64>,
    /// Overheads of the live system Tariff's run can model; all off in the paper's set-ups.
    pub overheads: Overheads,
    /// Whether Tariff's shards place from the idle list (off in the latency experiment).
    pub idle_list: bool,
    /// Tariff only: model a live machine in real-time mode instead of the paper's (and the
    /// dispatcher's user-space mode's) one run queue over every core. The paying classes run
    /// in price-class order on this many cores (their `SCHED_FIFO` CPUs; the live dispatcher
    /// keeps at least one CPU out, so `cores − 1` on a machine of two or more), while the
    /// cheapest class runs outside real time on every core: one turn per core in arrival
    /// order, the turns sharing fairly what the running paying tasks leave
    /// (docs/machine-scheduler.md, "Every CPU works"). `None`: the paper's model.
    pub rt_cpus: Option<usize>,
    /// Live machine model only: the kernel's real-time group budget, as the share of every
    /// [`RT_BUDGET_PERIOD`] each real-time core gives the paying classes (the live dispatcher's
    /// `cpu.rt_runtime_us` ÷ `cpu.rt_period_us`). A core whose paying work has used its share
    /// of the period is throttled: the paying task on it stops until the next period, and
    /// the cheapest class gets the core meanwhile. Periods begin, as the kernel's do, when a
    /// paying task first runs after a quiet spell. `None`: no budget.
    pub rt_budget: Option<f64>,
    /// Live machine model only: the fraction of its fair share of a core the cheapest class
    /// actually gets. It is a normal task, so on a host where other normal work runs (other
    /// builds, the load generator) it shares the CPUs with that too; 1 on a dedicated
    /// machine. `tariff bench --vs-sim` measures it on the live run.
    pub shared_speed: f64,
    /// The synthetic workload (ignored when replaying a trace).
    pub workload: WorkloadConfig,
    /// A trace CSV to replay instead of the synthetic workload.
    pub trace: Option<PathBuf>,
    /// With a trace: run until its last arrival (time-scaled to each load) instead of
    /// `duration_s`, so the whole trace is replayed whatever the load.
    pub whole_trace: bool,
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
            swap_bytes: None,
            overheads: Overheads::default(),
            idle_list: false,
            rt_cpus: None,
            rt_budget: None,
            shared_speed: 1.0,
            workload: WorkloadConfig::paper(DEFAULT_CLASSES),
            trace: None,
            whole_trace: false,
            edf_absolute_deadlines: false,
        }
    }

    /// The paper's memory experiment (Fig. 5) at `load`: Tariff only, 32 GB per machine,
    /// a 500 GB swap device, idle list on.
    pub fn paper_memory(load: f64) -> Self {
        Self {
            schedulers: vec![SchedulerKind::TARIFF],
            memory_bytes: Some((MEMORY_EXPERIMENT_GB * GB) as u64),
            swap_bytes: Some((MEMORY_EXPERIMENT_SWAP_GB * GB) as u64),
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

    /// Checks that the set-up can run: every count positive, k a number of machines, a
    /// positive duration. A run of an impossible set-up would otherwise report all zeros.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("machines", self.machines),
            ("cores", self.cores),
            ("shards", self.shards),
            ("classes", self.classes),
            ("slots", self.slots as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.classes > usize::from(u8::MAX) {
            return Err(ConfigError::TooManyClasses(self.classes));
        }
        if !(1..=self.machines).contains(&self.k) {
            return Err(ConfigError::K {
                k: self.k,
                machines: self.machines,
            });
        }
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return Err(ConfigError::Duration(self.duration_s));
        }
        if !(self.load > 0.0 && self.load.is_finite()) {
            return Err(ConfigError::Load(self.load));
        }
        if self.schedulers.is_empty() {
            return Err(ConfigError::NoSchedulers);
        }
        if !(self.shared_speed > 0.0 && self.shared_speed <= 1.0) {
            return Err(ConfigError::SharedSpeed(self.shared_speed));
        }
        if let Some(share) = self.rt_budget {
            let runtime = share * RT_BUDGET_PERIOD as f64;
            if !(runtime >= MIN_RT_BUDGET as f64 && share <= 1.0) || self.rt_cpus.is_none() {
                return Err(ConfigError::RtBudget(share));
            }
        }
        if self.overheads.prewarm > MAX_PREWARM {
            return Err(ConfigError::Prewarm(self.overheads.prewarm));
        }
        if let Some(rt) = self.rt_cpus {
            if !(1..=self.cores).contains(&rt) {
                return Err(ConfigError::RtCpus {
                    rt,
                    cores: self.cores,
                });
            }
        }
        Ok(())
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
enum Source<'a> {
    /// The synthetic generator.
    Synthetic(Box<Generator>),
    /// A trace being replayed.
    Trace(Box<TraceReader>),
    /// A list given by the caller ([`run_invocations`]).
    List(std::iter::Copied<std::slice::Iter<'a, Invocation>>),
}

impl Iterator for Source<'_> {
    type Item = Invocation;

    fn next(&mut self) -> Option<Invocation> {
        match self {
            Self::Synthetic(g) => g.next(),
            Self::Trace(t) => t.next(),
            Self::List(l) => l.next(),
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
    /// Simulated seconds until just after the last (time-scaled) arrival (trace runs).
    trace_end_s: Option<f64>,
}

impl Workload {
    /// Prepares the workload of `config`; `trace` is the summary of its trace, if it replays
    /// one (read once for every load of a sweep).
    fn new(config: &SimConfig, trace: Option<&TraceSummary>) -> Self {
        match trace {
            Some(summary) => {
                let time_scale =
                    workload::trace_time_scale(summary, config.capacity(), config.load);
                Self {
                    table: None,
                    rate: 0.0,
                    mean_runtime_s: summary.mean_runtime_s(),
                    time_scale,
                    trace_end_s: Some(summary.last_arrival_s * time_scale + TRACE_END_MARGIN_S),
                }
            }
            None => {
                let table = FunctionTable::new(&config.workload, config.seed);
                let mean = table.mean_runtime_s();
                Self {
                    table: Some(table),
                    rate: config.load * config.capacity() as f64 / mean,
                    mean_runtime_s: mean,
                    time_scale: 1.0,
                    trace_end_s: None,
                }
            }
        }
    }

    /// A fresh, identical stream of invocations.
    fn source(&self, config: &SimConfig) -> Result<Source<'static>, WorkloadError> {
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
    /// A timer the policy set fired (it may be stale; the policy checks `generation`). Only
    /// policies that set timers need it.
    fn timer(&mut self, _now: Nanos, _id: u32, _generation: u32, _ctx: &mut Ctx) {}
}

/// Runs `policy` over `source` until `end`; returns the measurements and the event count.
fn simulate(
    policy: &mut dyn SimScheduler,
    mut source: Source<'_>,
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
            Event::Timer { id, generation } => policy.timer(now, id, generation, &mut ctx),
            Event::Tick => {
                policy.tick(now, &mut ctx);
                ctx.events.push(now + TICK, Event::Tick);
            }
        }
    }
    let popped = ctx.events.popped();
    ctx.stats.close();
    (ctx.stats, popped)
}

/// Runs one scheduler on the experiment's workload.
fn run_one(
    config: &SimConfig,
    workload: &Workload,
    kind: SchedulerKind,
) -> Result<SchedulerReport, WorkloadError> {
    Ok(run_source(config, workload.source(config)?, kind))
}

/// Runs one scheduler on `source`.
fn run_source(config: &SimConfig, source: Source<'_>, kind: SchedulerKind) -> SchedulerReport {
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
    report::scheduler_report(config, kind, &stats, events)
}

/// Runs every scheduler of `config` on exactly these invocations (sorted by arrival) instead
/// of a generated workload or a trace file, until `config.duration_s`; `config.load` is only
/// a label. This is how the load harness replays the very schedule it sent to a live cluster
/// (`tariff bench --vs-sim`), so the two sides see the same arrivals, not the same statistics.
pub fn run_invocations(
    config: &SimConfig,
    invocations: &[Invocation],
) -> Result<ExperimentReport, SimError> {
    config.validate()?;
    let runtime_s: f64 = invocations.iter().map(|i| secs(i.runtime)).sum();
    let mean_runtime_s = runtime_s / invocations.len().max(1) as f64;
    let mut experiment = report::experiment_report(config, mean_runtime_s, 0.0);
    experiment.schedulers = config
        .schedulers
        .iter()
        .map(|&kind| run_source(config, Source::List(invocations.iter().copied()), kind))
        .collect();
    Ok(experiment)
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
pub fn run_experiment(config: &SimConfig) -> Result<ExperimentReport, SimError> {
    let mut sweep = run_sweep(config, &[config.load])?;
    Ok(sweep.experiments.remove(0))
}

/// Runs `config` at each of `loads`, every scheduler in parallel where cores allow.
pub fn run_sweep(config: &SimConfig, loads: &[f64]) -> Result<SweepReport, SimError> {
    run_sweep_with_progress(config, loads, &|| {})
}

/// [`run_sweep`], calling `job_done` as each (load, scheduler) run ends — there are
/// `loads.len() × config.schedulers.len()` — so a command can show how far the sweep is (the
/// library prints nothing). Runs end in any order, from several threads.
pub fn run_sweep_with_progress(
    config: &SimConfig,
    loads: &[f64],
    job_done: &(dyn Fn() + Sync),
) -> Result<SweepReport, SimError> {
    let mut configs: Vec<SimConfig> = loads
        .iter()
        .map(|&load| SimConfig {
            load,
            ..config.clone()
        })
        .collect();
    for config in &configs {
        config.validate()?;
    }
    let summary = config
        .trace
        .as_deref()
        .map(workload::summarize_trace)
        .transpose()?;
    let workloads: Vec<Workload> = configs
        .iter()
        .map(|c| Workload::new(c, summary.as_ref()))
        .collect();
    for (config, workload) in configs.iter_mut().zip(&workloads) {
        if let (true, Some(end)) = (config.whole_trace, workload.trace_end_s) {
            config.duration_s = end;
        }
    }
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
