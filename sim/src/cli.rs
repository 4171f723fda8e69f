//! The `tariff sim` command line: parse the flags into a [`SimConfig`], run the sweep, write
//! the JSON report and figures, print the table. Also `--convert-azure`, which turns the Azure
//! Functions 2019 sample into the trace CSV format.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::events::from_secs;
use super::workload::{
    convert_azure_with_progress, summarize_trace, trace_time_scale, WorkloadConfig,
};
use super::{report, run_sweep_with_progress, SimConfig, GB};

/// Loads of the default sweep, around the cluster's capacity.
pub const DEFAULT_LOADS: &str = "0.5,0.7,0.9,1.0,1.1,1.2";
/// File name of the JSON report in the output directory.
pub const REPORT_FILE: &str = "report.json";
/// File name of the latency figure.
pub const FIG4_FILE: &str = "fig4.svg";
/// File name of the memory figure.
pub const FIG5_FILE: &str = "fig5.svg";
/// Default output of `--convert-azure`.
pub const DEFAULT_TRACE_OUT: &str = "trace.csv";

/// Flags of `tariff sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Seed of the workload and of every random choice; the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Machines in the cluster.
    #[arg(long, default_value_t = super::DEFAULT_MACHINES)]
    pub machines: usize,
    /// Cores per machine.
    #[arg(long, default_value_t = super::DEFAULT_CORES)]
    pub cores: usize,
    /// Tariff scheduler shards.
    #[arg(long, default_value_t = super::DEFAULT_SHARDS)]
    pub shards: usize,
    /// k of power-of-k choices.
    #[arg(long, default_value_t = super::DEFAULT_K)]
    pub k: usize,
    /// Price classes.
    #[arg(long, default_value_t = super::DEFAULT_CLASSES)]
    pub classes: usize,
    /// Invocations at or above a class a machine admits (default: its cores).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Simulated seconds (default: 60, or with --trace the whole trace, time-scaled to each
    /// load).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Offered loads to sweep, as fractions of the cluster's cores, comma-separated.
    #[arg(long, default_value = DEFAULT_LOADS)]
    pub loads: String,
    /// Schedulers to compare, comma-separated (tariff, hermod, edf, fifo); default all, or
    /// tariff alone with --memory-experiment.
    #[arg(long)]
    pub schedulers: Option<String>,
    /// Memory per machine in GB (default: unlimited, the latency experiment's set-up).
    #[arg(long)]
    pub memory_gb: Option<f64>,
    /// Swap space per machine in GB (default: unlimited, or 500 with --memory-experiment);
    /// invocations are killed only when memory and swap are both full.
    #[arg(long)]
    pub swap_gb: Option<f64>,
    /// Model swap-in time (Tariff only): swapped memory faults back in at this many GB/s when
    /// its invocation gets a core (the development machine measured about 3.3 GB/s).
    #[arg(long)]
    pub swap_in_gbps: Option<f64>,
    /// Model cold starts (Tariff only): this many ms added to an invocation's first start on a
    /// machine where its function has no warm instance (spawning a static binary measured
    /// about 0.5 ms, starting python3 about 12 ms).
    #[arg(long)]
    pub cold_start_ms: Option<f64>,
    /// How long a function's instance stays warm after it finishes, with --cold-start-ms.
    #[arg(long, default_value_t = super::DEFAULT_KEEP_ALIVE_S)]
    pub keep_alive_s: f64,
    /// With --cold-start-ms: idle instances of every function each machine holds when the
    /// run starts (a live cluster's warm-up leaves some).
    #[arg(long, default_value_t = 0)]
    pub prewarm: u32,
    /// Model communication (Tariff only): this many ms every invocation spends outside a
    /// core (caller to shard to machine and back); `tariff bench --vs-sim` measures it.
    #[arg(long)]
    pub dispatch_overhead_ms: Option<f64>,
    /// Model a live machine in real-time mode (Tariff only): the paying classes run in
    /// class order on this many cores, the cheapest class on every core, sharing what they
    /// leave (the live dispatcher uses cores − 1; see docs/simulator.md).
    #[arg(long)]
    pub rt_cpus: Option<usize>,
    /// With --rt-cpus: the fraction of its fair share of a core the cheapest class gets
    /// (below 1 on a host where other normal-priority work runs; `tariff bench --vs-sim`
    /// measures it).
    #[arg(long, default_value_t = 1.0)]
    pub shared_speed: f64,
    /// With --rt-cpus: the kernel's real-time group budget, as the share of every 100 ms
    /// each real-time core gives the paying classes (the live dispatcher asks for
    /// (cores − 1) ÷ cores); a core out of budget stops its paying task until the next period.
    #[arg(long)]
    pub rt_budget: Option<f64>,
    /// Run the paper's memory experiment (Fig. 5): 32 GB per machine, idle list on.
    #[arg(long)]
    pub memory_experiment: bool,
    /// Let Tariff's shards use the idle list in the latency experiment too.
    #[arg(long)]
    pub idle_list: bool,
    /// Replay this trace CSV (arrival_s,function,duration_ms,memory_mb,class) instead of the
    /// synthetic workload; it is time-scaled to each load.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// EDF deadlines count from arrival (textbook EDF) instead of the paper's literal
    /// runtime × max price / price.
    #[arg(long)]
    pub edf_absolute_deadlines: bool,
    /// Output directory for report.json and the figures (with --convert-azure: the CSV file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Convert the Azure Functions 2019 sample in this directory to a trace CSV, then exit.
    #[arg(long)]
    pub convert_azure: Option<PathBuf>,
    /// Minutes of the day to convert (default: all).
    #[arg(long)]
    pub convert_minutes: Option<usize>,
}

impl SimArgs {
    /// The experiment these flags describe (at the first load).
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        let mut config = if self.memory_experiment {
            SimConfig::paper_memory(1.0)
        } else {
            SimConfig::paper(1.0)
        };
        config.seed = self.seed;
        config.machines = self.machines;
        config.cores = self.cores;
        config.shards = self.shards;
        config.k = self.k;
        config.classes = self.classes;
        config.slots = self.slots.unwrap_or(self.cores as u32);
        config.duration_s = self.duration.unwrap_or(super::DEFAULT_DURATION_S);
        config.whole_trace = self.trace.is_some() && self.duration.is_none();
        config.workload = WorkloadConfig::paper(self.classes);
        config.trace = self.trace.clone();
        config.idle_list |= self.idle_list;
        config.edf_absolute_deadlines = self.edf_absolute_deadlines;
        if let Some(gb) = self.memory_gb {
            anyhow::ensure!(
                gb > 0.0 && gb.is_finite(),
                "--memory-gb must be a positive number"
            );
            config.memory_bytes = Some((gb * GB) as u64);
        }
        if let Some(gbps) = self.swap_in_gbps {
            anyhow::ensure!(
                gbps > 0.0 && gbps.is_finite(),
                "--swap-in-gbps must be a positive number"
            );
            config.overheads.swap_in_bytes_per_s = Some(gbps * GB);
        }
        if let Some(ms) = self.cold_start_ms {
            anyhow::ensure!(
                ms >= 0.0 && ms.is_finite() && self.keep_alive_s >= 0.0,
                "--cold-start-ms and --keep-alive-s must be non-negative numbers"
            );
            config.overheads.cold_start = Some(from_secs(ms / 1e3));
            config.overheads.prewarm = self.prewarm;
        } else {
            anyhow::ensure!(self.prewarm == 0, "--prewarm needs --cold-start-ms");
        }
        config.overheads.keep_alive = from_secs(self.keep_alive_s.max(0.0));
        if let Some(ms) = self.dispatch_overhead_ms {
            anyhow::ensure!(
                ms >= 0.0 && ms.is_finite(),
                "--dispatch-overhead-ms must be a non-negative number"
            );
            config.overheads.dispatch = Some(from_secs(ms / 1e3));
        }
        config.rt_cpus = self.rt_cpus;
        config.rt_budget = self.rt_budget;
        config.shared_speed = self.shared_speed;
        if let Some(gb) = self.swap_gb {
            anyhow::ensure!(
                gb >= 0.0 && gb.is_finite(),
                "--swap-gb must be a non-negative number"
            );
            config.swap_bytes = Some((gb * GB) as u64);
        }
        if let Some(list) = &self.schedulers {
            config.schedulers = list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(str::parse)
                .collect::<Result<_, String>>()
                .map_err(anyhow::Error::msg)?;
        }
        config.validate().context("invalid flags")?;
        Ok(config)
    }

    /// The loads to sweep.
    pub fn loads(&self) -> anyhow::Result<Vec<f64>> {
        let loads = self
            .loads
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .with_context(|| format!("--loads: not a number: {s:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            !loads.is_empty() && loads.iter().all(|l| *l > 0.0 && l.is_finite()),
            "--loads needs positive numbers"
        );
        Ok(loads)
    }
}

/// Writes `contents` to `path`.
fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Warns on stderr when an explicit `--duration` replays only part of a trace at some load
/// (without `--duration` the whole trace is replayed).
fn warn_partial_trace(
    trace: &Path,
    config: &SimConfig,
    loads: &[f64],
    duration_s: f64,
) -> anyhow::Result<()> {
    let summary = summarize_trace(trace)?;
    for &load in loads {
        let scale = trace_time_scale(&summary, config.capacity(), load);
        let end_s = summary.last_arrival_s * scale;
        if duration_s < end_s {
            eprintln!(
                "warning: at load {load} the trace's arrivals run for {end_s:.1} s; \
                 --duration {duration_s} replays {:.1} % of it (omit --duration to replay all)",
                100.0 * duration_s / end_s
            );
        }
    }
    Ok(())
}

/// Runs `tariff sim` with these flags.
pub fn run(args: &SimArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.convert_azure {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TRACE_OUT));
        let bar = tariff_progress::Progress::new("converting the trace", 0, "minutes");
        let summary = convert_azure_with_progress(
            dir,
            &out,
            args.classes,
            args.convert_minutes,
            args.seed,
            &|done, minutes| {
                bar.set_length(minutes as u64);
                bar.set(done as u64);
            },
        )?;
        bar.finish();
        report::print_conversion(&summary, &out);
        return Ok(());
    }
    let config = args.config()?;
    let loads = args.loads()?;
    if let (Some(trace), Some(duration)) = (&args.trace, args.duration) {
        warn_partial_trace(trace, &config, &loads, duration)?;
    }
    let runs = loads.len() * config.schedulers.len();
    let label = if config.trace.is_some() {
        "replaying the trace"
    } else {
        "simulating"
    };
    let bar = tariff_progress::Progress::new(label, runs as u64, "runs");
    let sweep = run_sweep_with_progress(&config, &loads, &|| bar.inc(1))?;
    bar.finish();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write(&dir.join(REPORT_FILE), &sweep.to_json())?;
        write(&dir.join(FIG4_FILE), &report::fig4_svg(&sweep))?;
        if config.memory_bytes.is_some() {
            write(&dir.join(FIG5_FILE), &report::fig5_svg(&sweep))?;
        }
    }
    report::print_table(&sweep);
    Ok(())
}
