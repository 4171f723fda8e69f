//! Workloads: the paper's synthetic generator, trace CSV replay, and the Azure 2019 converter.
//!
//! Every source is a streaming iterator of [`Invocation`]s in arrival order, so a run's memory
//! does not grow with simulated time, and every scheduler of an experiment replays an
//! identical stream (same seed, same file).
//!
//! The synthetic model is the paper's (section 4.1): open-loop arrivals at a constant rate
//! (Poisson, i.e. exponential gaps); a fixed table of functions, each with a Pareto runtime
//! distribution of fixed shape α whose scale x_m is drawn from a normal distribution; a price
//! class per function drawn with a roughly bimodal weighting; a total memory per function
//! uniform in 100 MB–10 GB, which each invocation grows to linearly from 100 MB over its run.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal, Pareto};

use super::events::{from_secs, Nanos, NANOS_PER_SEC};

/// Bytes per MiB (the trace and the paper speak of MB; we use binary megabytes throughout).
pub const MB: u64 = 1 << 20;
/// Memory every invocation starts with (paper: "always 100MB").
pub const INITIAL_MEMORY_MB: u64 = 100;
/// Header of the trace CSV format.
pub const TRACE_HEADER: &str = "arrival_s,function,duration_ms,memory_mb,class";
/// Nanoseconds per millisecond.
const NANOS_PER_MS: f64 = 1e6;
/// Salt separating the function-table random stream from the arrival stream.
const ARRIVAL_STREAM_SALT: u64 = 0x9E37_79B9_7F4A_7C15;
/// Shortest runtime the generator produces: x_m is clamped here so a normal draw near zero
/// cannot produce zero-length work (which would make slowdown meaningless).
const MIN_XM_MS: f64 = 1.0;

/// One function invocation as the simulator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invocation {
    /// Arrival time.
    pub arrival: Nanos,
    /// Which function (index into the generator's table or the trace's function names).
    pub function: u32,
    /// CPU time it needs (it is compute bound: paper assumption 1).
    pub runtime: Nanos,
    /// Memory it grows to by the end of its run, in bytes.
    pub memory: u64,
    /// Price class; 0 is the most expensive.
    pub class: u8,
}

/// Errors reading or converting traces.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a CSV file could not be understood.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// The trace holds no invocations.
    #[error("{0}: trace is empty")]
    Empty(PathBuf),
}

/// Parameters of the synthetic workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadConfig {
    /// Distinct functions in the table.
    pub functions: usize,
    /// Pareto shape α, the same for every function (the tail's relative length).
    pub alpha: f64,
    /// Mean of the normal distribution x_m is drawn from, in ms.
    pub xm_mean_ms: f64,
    /// Standard deviation of that normal distribution, in ms.
    pub xm_std_ms: f64,
    /// Weight of each class (index = class id); see [`bimodal_weights`].
    pub class_weights: Vec<f64>,
    /// Smallest total memory of a function, in MB.
    pub memory_min_mb: u64,
    /// Largest total memory of a function, in MB.
    pub memory_max_mb: u64,
}

/// Default number of functions in the table.
pub const DEFAULT_FUNCTIONS: usize = 1000;
/// Default α: 2.5 keeps a long tail (p99.9 ≈ 16 × x_m) with a finite variance, so the
/// offered load converges within a 60 s run.
pub const DEFAULT_ALPHA: f64 = 2.5;
/// Default mean x_m: with α = 2.5 the mean runtime is 5/3 × 60 ms = 100 ms.
pub const DEFAULT_XM_MEAN_MS: f64 = 60.0;
/// Default spread of x_m across functions.
pub const DEFAULT_XM_STD_MS: f64 = 20.0;
/// Default largest function memory (paper: 10 GB).
pub const DEFAULT_MEMORY_MAX_MB: u64 = 10 * 1024;

impl WorkloadConfig {
    /// The paper's workload over `classes` classes.
    pub fn paper(classes: usize) -> Self {
        Self {
            functions: DEFAULT_FUNCTIONS,
            alpha: DEFAULT_ALPHA,
            xm_mean_ms: DEFAULT_XM_MEAN_MS,
            xm_std_ms: DEFAULT_XM_STD_MS,
            class_weights: bimodal_weights(classes),
            memory_min_mb: INITIAL_MEMORY_MB,
            memory_max_mb: DEFAULT_MEMORY_MAX_MB,
        }
    }
}

/// A "vaguely bimodal" weighting over `n` classes: weight 1 + d², where d runs from −1 (the
/// top class) to +1 (the bottom one), so the dearest and cheapest classes are twice as common
/// as the middle. With four classes: 2, 1.11, 1.11, 2.
pub fn bimodal_weights(n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![1.0; n];
    }
    let half = (n - 1) as f64 / 2.0;
    (0..n)
        .map(|i| {
            let d = (i as f64 - half) / half;
            1.0 + d * d
        })
        .collect()
}

/// Draws an index with probability proportional to `weights`.
fn weighted_index<R: Rng>(rng: &mut R, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

/// One function of the synthetic table.
#[derive(Debug, Clone, Copy)]
struct Function {
    /// Its runtime distribution.
    runtime: Pareto<f64>,
    /// Its mean runtime in ms (α x_m / (α − 1)).
    mean_ms: f64,
    /// Its total memory in bytes.
    memory: u64,
    /// Its class.
    class: u8,
}

/// The table of functions a seed produces; shared by every scheduler of an experiment.
#[derive(Debug, Clone)]
pub struct FunctionTable {
    /// The functions.
    functions: Vec<Function>,
}

impl FunctionTable {
    /// Draws the table from `config` and `seed`.
    pub fn new(config: &WorkloadConfig, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let xm = Normal::new(config.xm_mean_ms, config.xm_std_ms.max(0.0))
            .unwrap_or_else(|_| Normal::new(DEFAULT_XM_MEAN_MS, 0.0).expect("valid normal"));
        let alpha = config.alpha.max(1.0 + f64::EPSILON);
        let functions = (0..config.functions.max(1))
            .map(|_| {
                let scale = xm.sample(&mut rng).max(MIN_XM_MS);
                let memory_mb = rng.gen_range(
                    config.memory_min_mb..=config.memory_max_mb.max(config.memory_min_mb),
                );
                Function {
                    runtime: Pareto::new(scale, alpha).expect("positive scale and shape"),
                    mean_ms: alpha * scale / (alpha - 1.0),
                    memory: memory_mb * MB,
                    class: weighted_index(&mut rng, &config.class_weights) as u8,
                }
            })
            .collect();
        Self { functions }
    }

    /// The true mean runtime of an invocation in seconds (functions are equally likely).
    pub fn mean_runtime_s(&self) -> f64 {
        let sum: f64 = self.functions.iter().map(|f| f.mean_ms).sum();
        sum / self.functions.len() as f64 / 1e3
    }
}

/// The synthetic open-loop generator.
#[derive(Debug, Clone)]
pub struct Generator {
    /// The function table.
    table: FunctionTable,
    /// Inter-arrival gaps.
    gaps: Exp<f64>,
    /// The arrival stream's random state.
    rng: SmallRng,
    /// Time of the next arrival, in seconds.
    next_s: f64,
}

impl Generator {
    /// A generator over `table` with `rate` arrivals per second.
    pub fn new(table: FunctionTable, rate: f64, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ ARRIVAL_STREAM_SALT);
        let gaps = Exp::new(rate.max(f64::MIN_POSITIVE)).expect("positive rate");
        let next_s = gaps.sample(&mut rng);
        Self {
            table,
            gaps,
            rng,
            next_s,
        }
    }
}

impl Iterator for Generator {
    type Item = Invocation;

    fn next(&mut self) -> Option<Invocation> {
        let function = self.rng.gen_range(0..self.table.functions.len());
        let f = &self.table.functions[function];
        let runtime_ms = f.runtime.sample(&mut self.rng);
        let invocation = Invocation {
            arrival: from_secs(self.next_s),
            function: function as u32,
            runtime: ((runtime_ms * NANOS_PER_MS) as Nanos).max(1),
            memory: f.memory,
            class: f.class,
        };
        self.next_s += self.gaps.sample(&mut self.rng);
        Some(invocation)
    }
}

/// What a first pass over a trace learned; used to scale it to a target load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSummary {
    /// Invocations in the trace.
    pub invocations: u64,
    /// Sum of their durations in seconds.
    pub busy_s: f64,
    /// Time from the first to the last arrival, in seconds.
    pub span_s: f64,
}

impl TraceSummary {
    /// Cores the trace keeps busy on average, as recorded.
    pub fn offered_cores(&self) -> f64 {
        self.busy_s / self.span_s.max(f64::MIN_POSITIVE)
    }

    /// Mean duration in seconds.
    pub fn mean_runtime_s(&self) -> f64 {
        self.busy_s / self.invocations.max(1) as f64
    }
}

/// One parsed trace row.
struct Row<'a> {
    /// Arrival in seconds.
    arrival_s: f64,
    /// Function name.
    function: &'a str,
    /// Duration in ms.
    duration_ms: f64,
    /// Memory in MB.
    memory_mb: f64,
    /// Class id.
    class: u8,
}

/// Parses one data line of the trace CSV format.
fn parse_row(line: &str) -> Result<Row<'_>, String> {
    let mut fields = line.split(',').map(str::trim);
    let mut field = |name: &str| fields.next().ok_or_else(|| format!("missing {name}"));
    let number = |name: &str, s: &str| -> Result<f64, String> {
        let v: f64 = s
            .parse()
            .map_err(|_| format!("{name}: not a number: {s:?}"))?;
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("{name}: must be a non-negative number: {s:?}"))
        }
    };
    let arrival_s = number("arrival_s", field("arrival_s")?)?;
    let function = field("function")?;
    let duration_ms = number("duration_ms", field("duration_ms")?)?;
    let memory_mb = number("memory_mb", field("memory_mb")?)?;
    let class_field = field("class")?;
    let class = class_field
        .parse()
        .map_err(|_| format!("class: not a class id 0-255: {class_field:?}"))?;
    Ok(Row {
        arrival_s,
        function,
        duration_ms,
        memory_mb,
        class,
    })
}

/// Whether a line is the header, blank or a comment.
fn skip_line(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#') || line.starts_with("arrival_s")
}

/// Opens a file for buffered reading.
fn open(path: &Path) -> Result<BufReader<File>, WorkloadError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| WorkloadError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Reads a whole trace once, validating every line, to learn its size and load.
pub fn summarize_trace(path: &Path) -> Result<TraceSummary, WorkloadError> {
    let mut summary = TraceSummary {
        invocations: 0,
        busy_s: 0.0,
        span_s: 0.0,
    };
    let mut first: Option<f64> = None;
    let mut last = 0.0_f64;
    for (i, line) in open(path)?.lines().enumerate() {
        let line = line.map_err(|source| WorkloadError::Io {
            path: path.to_owned(),
            source,
        })?;
        if skip_line(&line) {
            continue;
        }
        let row = parse_row(&line).map_err(|reason| WorkloadError::Parse {
            path: path.to_owned(),
            line: i + 1,
            reason,
        })?;
        if row.arrival_s < last {
            return Err(WorkloadError::Parse {
                path: path.to_owned(),
                line: i + 1,
                reason: "arrivals must be sorted by time".into(),
            });
        }
        first.get_or_insert(row.arrival_s);
        last = row.arrival_s;
        summary.invocations += 1;
        summary.busy_s += row.duration_ms / 1e3;
    }
    let first = first.ok_or_else(|| WorkloadError::Empty(path.to_owned()))?;
    summary.span_s = last - first;
    Ok(summary)
}

/// Streams a trace CSV, stretching time by `time_scale` (> 1 slows arrivals down).
pub struct TraceReader {
    /// The file's lines.
    lines: std::io::Lines<BufReader<File>>,
    /// Multiplier applied to arrival times.
    time_scale: f64,
    /// Function names seen so far, to number them.
    functions: HashMap<String, u32>,
    /// Highest class id the run knows; higher ids are clamped to it.
    lowest_class: u8,
}

impl TraceReader {
    /// Opens `path` (validated by [`summarize_trace`] first).
    pub fn open(path: &Path, time_scale: f64, classes: usize) -> Result<Self, WorkloadError> {
        Ok(Self {
            lines: open(path)?.lines(),
            time_scale,
            functions: HashMap::new(),
            lowest_class: classes.saturating_sub(1).min(u8::MAX as usize) as u8,
        })
    }
}

impl Iterator for TraceReader {
    type Item = Invocation;

    /// The next invocation; a read or parse error (the file changed since it was summarised)
    /// ends the stream.
    fn next(&mut self) -> Option<Invocation> {
        loop {
            let line = self.lines.next()?.ok()?;
            if skip_line(&line) {
                continue;
            }
            let row = parse_row(&line).ok()?;
            let next_id = self.functions.len() as u32;
            let function = *self
                .functions
                .entry(row.function.to_owned())
                .or_insert(next_id);
            return Some(Invocation {
                arrival: from_secs(row.arrival_s * self.time_scale),
                function,
                runtime: ((row.duration_ms * NANOS_PER_MS) as Nanos).max(1),
                memory: (row.memory_mb * MB as f64) as u64,
                class: row.class.min(self.lowest_class),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Azure Functions 2019 converter.

/// File of per-minute invocation counts in the 2019 trace format.
pub const AZURE_INVOCATIONS_FILE: &str = "104_inv.csv";
/// File of per-function duration percentiles.
pub const AZURE_DURATIONS_FILE: &str = "104_run.csv";
/// File of per-application memory percentiles.
pub const AZURE_MEMORY_FILE: &str = "104_mem.csv";
/// Quantiles of the duration columns `percentile_Average_{0,1,25,50,75,99,100}`.
const AZURE_DURATION_QUANTILES: [f64; 7] = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0];
/// First duration percentile column (after HashFunction, HashApp, HashOwner, Count, Average,
/// Minimum, Maximum).
const AZURE_DURATION_FIRST_COLUMN: usize = 7;
/// Quantiles of the memory columns `AverageAllocatedMb_pct{1,5,25,50,75,95,99,100}`.
const AZURE_MEMORY_QUANTILES: [f64; 8] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0];
/// First memory percentile column (after HashApp, HashOwner, SampleCount, AverageAllocatedMb).
const AZURE_MEMORY_FIRST_COLUMN: usize = 4;
/// First count column of the invocations file (after HashFunction, HashApp, HashOwner).
const AZURE_COUNT_FIRST_COLUMN: usize = 3;
/// Memory assumed for an application missing from the memory file, in MB.
const AZURE_DEFAULT_MEMORY_MB: f64 = 128.0;
/// Characters of a hash kept as the function name in the output.
const AZURE_NAME_CHARS: usize = 12;
/// Seconds per minute of the trace.
const SECONDS_PER_MINUTE: f64 = 60.0;

/// An inverse CDF given by points (quantile, value), linear between them.
#[derive(Debug, Clone)]
struct Quantiles(Vec<(f64, f64)>);

impl Quantiles {
    /// The value at quantile `u` in [0, 1].
    fn at(&self, u: f64) -> f64 {
        let points = &self.0;
        if u <= points[0].0 {
            return points[0].1;
        }
        for pair in points.windows(2) {
            let ((q0, v0), (q1, v1)) = (pair[0], pair[1]);
            if u <= q1 {
                let t = if q1 > q0 { (u - q0) / (q1 - q0) } else { 1.0 };
                return v0 + t * (v1 - v0);
            }
        }
        points[points.len() - 1].1
    }
}

/// Reads a CSV file's data rows (header skipped) as vectors of fields.
fn read_csv(path: &Path) -> Result<Vec<Vec<String>>, WorkloadError> {
    let mut rows = Vec::new();
    for line in open(path)?.lines().skip(1) {
        let line = line.map_err(|source| WorkloadError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !line.trim().is_empty() {
            rows.push(line.split(',').map(|f| f.trim().to_owned()).collect());
        }
    }
    Ok(rows)
}

/// Parses fields `first..first + quantiles.len()` of `row` as an inverse CDF.
fn parse_quantiles(
    path: &Path,
    line: usize,
    row: &[String],
    first: usize,
    quantiles: &[f64],
) -> Result<Quantiles, WorkloadError> {
    let mut points = Vec::with_capacity(quantiles.len());
    for (i, q) in quantiles.iter().enumerate() {
        let field = row.get(first + i).ok_or_else(|| WorkloadError::Parse {
            path: path.to_owned(),
            line,
            reason: format!("expected {} columns", first + quantiles.len()),
        })?;
        let v: f64 = field.parse().map_err(|_| WorkloadError::Parse {
            path: path.to_owned(),
            line,
            reason: format!("not a number: {field:?}"),
        })?;
        points.push((*q, v.max(0.0)));
    }
    // Percentile columns are monotone in the data set; enforce it so interpolation is sane.
    for i in 1..points.len() {
        points[i].1 = points[i].1.max(points[i - 1].1);
    }
    Ok(Quantiles(points))
}

/// How a conversion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Functions with both counts and durations, which were converted.
    pub functions: usize,
    /// Functions skipped for lack of duration data.
    pub skipped: usize,
    /// Invocation rows written.
    pub invocations: u64,
}

/// One function of the Azure sample, ready for sampling.
struct AzureFunction {
    /// Shortened hash used as the name.
    name: String,
    /// Invocations per minute.
    counts: Vec<u32>,
    /// Duration inverse CDF, ms.
    duration: Quantiles,
    /// Memory inverse CDF, MB.
    memory: Quantiles,
    /// Class drawn for it.
    class: u8,
}

/// Converts the Azure Functions 2019 sample in `dir` into the trace CSV format at `out`.
///
/// Each minute's count is spread uniformly at random over the minute; each invocation's
/// duration is drawn from its function's duration percentiles and its memory from its
/// application's memory percentiles (piecewise-linear inverse CDFs); each function gets a class
/// drawn with [`bimodal_weights`] over `classes`, since the trace has no notion of price.
/// `minutes` limits how much of the day is converted.
pub fn convert_azure(
    dir: &Path,
    out: &Path,
    classes: usize,
    minutes: Option<usize>,
    seed: u64,
) -> Result<ConvertSummary, WorkloadError> {
    convert_azure_with_progress(dir, out, classes, minutes, seed, &|_, _| {})
}

/// [`convert_azure`], calling `progress(minutes_done, minutes)` after each minute of the day
/// is written, so a command can show how far the conversion is (the library prints nothing).
pub fn convert_azure_with_progress(
    dir: &Path,
    out: &Path,
    classes: usize,
    minutes: Option<usize>,
    seed: u64,
    progress: &dyn Fn(usize, usize),
) -> Result<ConvertSummary, WorkloadError> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let weights = bimodal_weights(classes.max(1));

    let run_path = dir.join(AZURE_DURATIONS_FILE);
    let mut durations = HashMap::new();
    for (i, row) in read_csv(&run_path)?.iter().enumerate() {
        let q = parse_quantiles(
            &run_path,
            i + 2,
            row,
            AZURE_DURATION_FIRST_COLUMN,
            &AZURE_DURATION_QUANTILES,
        )?;
        durations.insert(row[0].clone(), q);
    }
    let mem_path = dir.join(AZURE_MEMORY_FILE);
    let mut memory = HashMap::new();
    for (i, row) in read_csv(&mem_path)?.iter().enumerate() {
        let q = parse_quantiles(
            &mem_path,
            i + 2,
            row,
            AZURE_MEMORY_FIRST_COLUMN,
            &AZURE_MEMORY_QUANTILES,
        )?;
        memory.insert(row[0].clone(), q);
    }
    let inv_path = dir.join(AZURE_INVOCATIONS_FILE);
    let mut functions = Vec::new();
    let mut skipped = 0;
    for (i, row) in read_csv(&inv_path)?.into_iter().enumerate() {
        let Some(duration) = durations.get(&row[0]).cloned() else {
            skipped += 1;
            continue;
        };
        let memory = row
            .get(1)
            .and_then(|app| memory.get(app).cloned())
            .unwrap_or(Quantiles(vec![(0.0, AZURE_DEFAULT_MEMORY_MB)]));
        let counts = row[AZURE_COUNT_FIRST_COLUMN.min(row.len())..]
            .iter()
            .map(|c| c.parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WorkloadError::Parse {
                path: inv_path.clone(),
                line: i + 2,
                reason: format!("invocation count: {e}"),
            })?;
        functions.push(AzureFunction {
            name: row[0].chars().take(AZURE_NAME_CHARS).collect(),
            counts,
            duration,
            memory,
            class: weighted_index(&mut rng, &weights) as u8,
        });
    }

    let file = File::create(out).map_err(|source| WorkloadError::Io {
        path: out.to_owned(),
        source,
    })?;
    let mut writer = BufWriter::new(file);
    let io = |source| WorkloadError::Io {
        path: out.to_owned(),
        source,
    };
    writeln!(writer, "{TRACE_HEADER}").map_err(io)?;
    let day = functions.iter().map(|f| f.counts.len()).max().unwrap_or(0);
    let minutes = minutes.map_or(day, |m| m.min(day));
    let mut invocations = 0;
    let mut minute_rows: Vec<(f64, usize)> = Vec::new();
    for minute in 0..minutes {
        minute_rows.clear();
        let start = minute as f64 * SECONDS_PER_MINUTE;
        for (f, function) in functions.iter().enumerate() {
            let count = function.counts.get(minute).copied().unwrap_or(0);
            for _ in 0..count {
                minute_rows.push((start + rng.gen::<f64>() * SECONDS_PER_MINUTE, f));
            }
        }
        minute_rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(at, f) in &minute_rows {
            let function = &functions[f];
            let duration_ms = function.duration.at(rng.gen());
            let memory_mb = function.memory.at(rng.gen()).round();
            writeln!(
                writer,
                "{at:.6},{},{duration_ms:.3},{memory_mb},{}",
                function.name, function.class
            )
            .map_err(io)?;
            invocations += 1;
        }
        progress(minute + 1, minutes);
    }
    writer.flush().map_err(io)?;
    Ok(ConvertSummary {
        functions: functions.len(),
        skipped,
        invocations,
    })
}

/// The seconds a trace's arrival times must be multiplied by so that it offers `load` of
/// `cores` (a trace recorded on a bigger fleet is stretched, a smaller one compressed).
pub fn trace_time_scale(summary: &TraceSummary, cores: usize, load: f64) -> f64 {
    summary.offered_cores() / (cores as f64 * load.max(f64::MIN_POSITIVE))
}

/// Nanoseconds to seconds.
pub fn secs(t: Nanos) -> f64 {
    t as f64 / NANOS_PER_SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bimodal_weights_peak_at_both_ends() {
        let w = bimodal_weights(4);
        assert!(w[0] > w[1] && w[3] > w[2]);
        assert!((w[0] - w[3]).abs() < 1e-12);
        assert_eq!(bimodal_weights(1), vec![1.0]);
    }

    #[test]
    fn generator_is_deterministic_and_in_order() {
        let config = WorkloadConfig::paper(4);
        let make = |seed| {
            Generator::new(FunctionTable::new(&config, seed), 1000.0, seed)
                .take(1000)
                .collect::<Vec<_>>()
        };
        let a = make(1);
        assert_eq!(a, make(1));
        assert_ne!(a, make(2));
        assert!(a.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        assert!(a
            .iter()
            .all(|i| i.memory >= INITIAL_MEMORY_MB * MB && i.class < 4));
    }

    #[test]
    fn mean_runtime_matches_the_table() {
        let config = WorkloadConfig::paper(4);
        let table = FunctionTable::new(&config, 3);
        let expected = table.mean_runtime_s();
        let n = 200_000;
        let sum: f64 = Generator::new(table, 1000.0, 3)
            .take(n)
            .map(|i| secs(i.runtime))
            .sum();
        let measured = sum / n as f64;
        assert!(
            (measured / expected - 1.0).abs() < 0.05,
            "{measured} vs {expected}"
        );
    }

    #[test]
    fn quantiles_interpolate_linearly() {
        let q = Quantiles(vec![(0.0, 10.0), (0.5, 20.0), (1.0, 100.0)]);
        assert_eq!(q.at(0.0), 10.0);
        assert_eq!(q.at(0.25), 15.0);
        assert_eq!(q.at(0.75), 60.0);
        assert_eq!(q.at(1.0), 100.0);
    }

    #[test]
    fn rows_parse_and_reject_garbage() {
        let row = parse_row("1.5,f,20.0,256,2").unwrap();
        assert_eq!((row.arrival_s, row.function, row.class), (1.5, "f", 2));
        assert!(parse_row("x,f,20,256,2").is_err());
        assert!(parse_row("1,f,20").is_err());
        assert!(parse_row("1,f,-3,256,2").is_err());
    }
}
