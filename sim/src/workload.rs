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
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal, Pareto};

use super::decimal;
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
    /// A file could not be read or written (the cause is the source, not repeated here, so a
    /// chained message names it once).
    #[error("{path}")]
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
    /// The trace's arrivals span no time (a single row, or every row at one instant), so it
    /// has no rate to scale to a load.
    #[error(
        "{path}: {invocations} invocation(s) all arriving at {at_s} s: a trace needs arrivals \
         spread over time to be scaled to a load"
    )]
    NoSpan {
        /// The file.
        path: PathBuf,
        /// Invocations in it.
        invocations: u64,
        /// The one arrival time, in seconds.
        at_s: f64,
    },
    /// No file of an Azure trace directory plays a role the converter needs.
    #[error("{dir}: no {role} file (looked for {patterns}); the directory holds: {found}")]
    AzureFileMissing {
        /// The directory.
        dir: PathBuf,
        /// What the file holds ("invocation counts", …).
        role: &'static str,
        /// The names accepted for it.
        patterns: String,
        /// The CSV files the directory does hold.
        found: String,
    },
    /// Several files of an Azure trace directory could play one role.
    #[error("{dir}: several {role} files ({candidates}); put one day's files in a directory")]
    AzureFileAmbiguous {
        /// The directory.
        dir: PathBuf,
        /// What the file holds.
        role: &'static str,
        /// The candidates.
        candidates: String,
    },
    /// A CSV header lacks a column the converter needs (the file has another layout).
    #[error("{path}: header has no column {column:?} (header: {header})")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column looked for.
        column: String,
        /// The header found, shortened.
        header: String,
    },
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
    /// The last arrival, in seconds from the trace's time zero.
    pub last_arrival_s: f64,
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

/// Parses one data line of the trace CSV format (without its line ending).
fn parse_row(line: &[u8]) -> Result<Row<'_>, String> {
    match parse_plain_row(line) {
        Some(row) => Ok(row),
        None => parse_any_row(text(line)?),
    }
}

/// A line as text.
fn text(line: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_owned())
}

/// [`parse_row`] for the rows traces are made of, five plain fields with nothing to trim
/// (see [`decimal`]), read from the bytes in one pass without the general parser's cost;
/// `None` leaves the line to [`parse_any_row`], which gives the same row or says what is
/// wrong with it.
fn parse_plain_row(line: &[u8]) -> Option<Row<'_>> {
    let mut fields = line.split(|&b| b == b',');
    let arrival_s = decimal::decimal(fields.next()?)?;
    let function = fields.next()?;
    let duration_ms = decimal::decimal(fields.next()?)?;
    let memory_mb = decimal::decimal(fields.next()?)?;
    let class = decimal::small_uint(fields.next()?)?;
    // Spaces or non-ASCII at either end of the name may be trimmed: the general parser decides.
    let plain = |byte: Option<&u8>| byte.is_none_or(|&b| b > b' ' && b.is_ascii());
    if !(plain(function.first()) && plain(function.last())) {
        return None;
    }
    Some(Row {
        arrival_s,
        function: std::str::from_utf8(function).ok()?,
        duration_ms,
        memory_mb,
        class,
    })
}

/// Parses one data line of the trace CSV format, whatever its spacing and number syntax.
fn parse_any_row(line: &str) -> Result<Row<'_>, String> {
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
fn skip_line(line: &[u8]) -> bool {
    // A data row starts with its arrival time: decided without decoding or trimming.
    if line.first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    // Not text: not skipped, so the parser says what is wrong.
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let line = line.trim();
    line.is_empty() || line.starts_with('#') || line.starts_with("arrival_s")
}

/// Reads the next line of `reader` into `buffer` and returns it without its line ending;
/// `None` at the end of the file. Lines are bytes: only a row the plain parser cannot read
/// is decoded as text.
fn next_line<'b>(
    reader: &mut BufReader<File>,
    buffer: &'b mut Vec<u8>,
) -> std::io::Result<Option<&'b [u8]>> {
    buffer.clear();
    if reader.read_until(b'\n', buffer)? == 0 {
        return Ok(None);
    }
    let mut line = buffer.as_slice();
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    Ok(Some(line))
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

/// Bytes of trace each of the two summarising threads parses per round: a round holds
/// twice this in memory, and a thread costs tens of microseconds to start, which is noise
/// next to parsing a mebibyte (about 20,000 rows).
const SUMMARY_CHUNK: usize = 1 << 20;

/// Reads a whole trace once, validating every line, to learn its size and load.
///
/// The run cannot start before this pass ends (the time scale depends on every row), so it
/// parses on two threads: each round reads two chunks of whole lines and parses the second on
/// a thread of its own while this one parses the first. The sum of the durations is still
/// taken row by row in file order, so it is the very number one thread computes, and the
/// first bad line is reported, with its number, as one thread would report it.
pub fn summarize_trace(path: &Path) -> Result<TraceSummary, WorkloadError> {
    summarize_in_chunks(path, SUMMARY_CHUNK)
}

/// [`summarize_trace`], parsing `chunk` bytes per thread and round.
fn summarize_in_chunks(path: &Path, chunk: usize) -> Result<TraceSummary, WorkloadError> {
    let io_error = |source| WorkloadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut total = SummaryTotal::default();
    let mut buffer: Vec<u8> = Vec::new();
    let mut carried = 0;
    loop {
        // Refill after the partial line carried over from the last round.
        buffer.resize(carried + 2 * chunk, 0);
        let mut filled = carried;
        let mut failed = None;
        while filled < buffer.len() {
            match file.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let at_end = filled < buffer.len();
        // Whole lines only, unless the file ended: its last line may lack a line ending.
        let whole = if at_end && failed.is_none() {
            filled
        } else {
            buffer[..filled]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        };
        let lines = &buffer[..whole];
        let middle = lines[..lines.len() / 2]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let (first, second) = lines.split_at(middle);
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| ChunkSummary::of(second));
            let first = ChunkSummary::of(first);
            (
                first,
                second
                    .join()
                    .expect("the summarising thread does not panic"),
            )
        });
        total.add(first, path)?;
        total.add(second, path)?;
        if let Some(source) = failed {
            return Err(io_error(source));
        }
        if at_end {
            break;
        }
        buffer.copy_within(whole..filled, 0);
        carried = filled - whole;
    }
    total.finish(path)
}

/// One chunk of a trace, summarised on its own: what [`summarize_trace`] needs of it, with
/// line numbers counted from the chunk's first line.
#[derive(Debug, Default)]
struct ChunkSummary {
    /// Lines in the chunk (0-based numbers below are within it).
    lines: usize,
    /// Each row's duration in seconds, in file order.
    durations_s: Vec<f64>,
    /// The first row's line and arrival.
    first: Option<(usize, f64)>,
    /// The last row's arrival.
    last: f64,
    /// The first line that is not a row or is out of order within the chunk, and why.
    error: Option<(usize, String)>,
}

impl ChunkSummary {
    /// Parses `bytes`, whole lines, up to its first bad line.
    fn of(bytes: &[u8]) -> Self {
        let mut chunk = Self::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (mut line, after) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            rest = after;
            let i = chunk.lines;
            chunk.lines += 1;
            while let [start @ .., b'\r'] = line {
                line = start;
            }
            if skip_line(line) {
                continue;
            }
            let row = match parse_row(line) {
                Ok(row) => row,
                Err(reason) => {
                    chunk.error = Some((i, reason));
                    break;
                }
            };
            if chunk.first.is_some() && row.arrival_s < chunk.last {
                chunk.error = Some((i, UNSORTED.into()));
                break;
            }
            chunk.first.get_or_insert((i, row.arrival_s));
            chunk.last = row.arrival_s;
            chunk.durations_s.push(row.duration_ms / 1e3);
        }
        chunk
    }
}

/// Why a row is refused when it arrives before the row above it.
const UNSORTED: &str = "arrivals must be sorted by time";

/// The chunks of a trace summarised so far, in file order.
#[derive(Debug, Default)]
struct SummaryTotal {
    /// Lines before the next chunk.
    lines: usize,
    /// Rows so far.
    invocations: u64,
    /// Their durations, summed in file order.
    busy_s: f64,
    /// The first row's arrival.
    first: Option<f64>,
    /// The last row's arrival (0 before any row, as arrivals are never negative).
    last: f64,
}

impl SummaryTotal {
    /// Adds the next chunk, or reports the trace's first bad line if it is in this chunk.
    fn add(&mut self, chunk: ChunkSummary, path: &Path) -> Result<(), WorkloadError> {
        let error = |i: usize, reason: String| WorkloadError::Parse {
            path: path.to_owned(),
            line: i + 1,
            // A first line that is neither a row nor the header is most likely another
            // layout's header (the Azure 2021 trace's `app,func,end_timestamp,duration`).
            reason: if i == 0 {
                format!("{reason}; a trace starts with the header {TRACE_HEADER} (other layouts: convert them first)")
            } else {
                reason
            },
        };
        if let Some((i, arrival_s)) = chunk.first {
            if arrival_s < self.last {
                return Err(error(self.lines + i, UNSORTED.into()));
            }
        }
        if let Some((i, reason)) = chunk.error {
            return Err(error(self.lines + i, reason));
        }
        if let Some((_, arrival_s)) = chunk.first {
            self.first.get_or_insert(arrival_s);
            self.last = chunk.last;
        }
        self.lines += chunk.lines;
        self.invocations += chunk.durations_s.len() as u64;
        for duration_s in chunk.durations_s {
            self.busy_s += duration_s;
        }
        Ok(())
    }

    /// The summary of the whole trace.
    fn finish(self, path: &Path) -> Result<TraceSummary, WorkloadError> {
        let first = self
            .first
            .ok_or_else(|| WorkloadError::Empty(path.to_owned()))?;
        let span_s = self.last - first;
        if span_s <= 0.0 {
            return Err(WorkloadError::NoSpan {
                path: path.to_owned(),
                invocations: self.invocations,
                at_s: first,
            });
        }
        Ok(TraceSummary {
            invocations: self.invocations,
            busy_s: self.busy_s,
            span_s,
            last_arrival_s: self.last,
        })
    }
}

/// FNV-1a, the hash of the replay's function-name table: every row looks its name up, and
/// SipHash (the standard map's default, keyed against chosen collisions) cost more than the
/// lookup needs for names read from the user's own file.
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        /// FNV-1a's 64-bit offset basis.
        const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
        Self(OFFSET_BASIS)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        /// FNV-1a's 64-bit prime.
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Invocations the reading thread hands to the replay at a time: one hand-over (which wakes
/// the reading thread, waiting on a full channel) per this many rows keeps the channel's cost
/// per row negligible.
const TRACE_BATCH: usize = 4096;
/// Batches the reading thread may parse ahead of the replay: enough to ride out a burst of
/// arrivals, few enough that the memory a run holds stays flat (256 KiB).
const TRACE_BATCHES_AHEAD: usize = 2;

/// Streams a trace CSV, stretching time by `time_scale` (> 1 slows arrivals down).
///
/// The file is read and parsed on a thread of its own, which sends the invocations in
/// batches through a bounded channel: on the full-day trace of docs/simulator.md, reading
/// was about a seventh of the run, and the replay never looks back, so it overlaps the
/// simulation on a second core. The stream is the very one a single thread would read.
pub struct TraceReader {
    /// Batches parsed ahead; `None` once hung up.
    batches: Option<Receiver<Vec<Invocation>>>,
    /// The batch being handed out.
    batch: std::vec::IntoIter<Invocation>,
    /// The reading thread, joined when the reader is dropped.
    reading: Option<JoinHandle<()>>,
}

impl TraceReader {
    /// Opens `path` (validated by [`summarize_trace`] first) and starts reading it.
    pub fn open(path: &Path, time_scale: f64, classes: usize) -> Result<Self, WorkloadError> {
        let mut rows = TraceRows {
            reader: open(path)?,
            line: Vec::new(),
            time_scale,
            functions: HashMap::default(),
            lowest_class: classes.saturating_sub(1).min(u8::MAX as usize) as u8,
        };
        let (send, batches) = sync_channel(TRACE_BATCHES_AHEAD);
        let reading = std::thread::Builder::new()
            .name("trace-reader".into())
            .spawn(move || loop {
                let batch: Vec<Invocation> = rows.by_ref().take(TRACE_BATCH).collect();
                // An empty batch is the end; a failed send means the replay stopped early.
                if batch.is_empty() || send.send(batch).is_err() {
                    break;
                }
            })
            .map_err(|source| WorkloadError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            batches: Some(batches),
            batch: Vec::new().into_iter(),
            reading: Some(reading),
        })
    }
}

impl Iterator for TraceReader {
    type Item = Invocation;

    /// The next invocation; a read or parse error (the file changed since it was summarised)
    /// ends the stream.
    fn next(&mut self) -> Option<Invocation> {
        loop {
            if let Some(invocation) = self.batch.next() {
                return Some(invocation);
            }
            self.batch = self.batches.as_ref()?.recv().ok()?.into_iter();
        }
    }
}

impl Drop for TraceReader {
    fn drop(&mut self) {
        // Hang up first: a reading thread waiting on a full channel then stops instead of
        // reading the rest of the file.
        self.batches = None;
        if let Some(reading) = self.reading.take() {
            if let Err(panic) = reading.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// The rows of a trace CSV as invocations, read on [`TraceReader`]'s thread.
struct TraceRows {
    /// The file.
    reader: BufReader<File>,
    /// The current line, reused so a row costs no allocation.
    line: Vec<u8>,
    /// Multiplier applied to arrival times.
    time_scale: f64,
    /// Function names seen so far, to number them.
    functions: HashMap<String, u32, BuildHasherDefault<NameHasher>>,
    /// Highest class id the run knows; higher ids are clamped to it.
    lowest_class: u8,
}

impl Iterator for TraceRows {
    type Item = Invocation;

    /// The next invocation; a read or parse error ends the stream.
    fn next(&mut self) -> Option<Invocation> {
        loop {
            let line = next_line(&mut self.reader, &mut self.line).ok()??;
            if skip_line(line) {
                continue;
            }
            let row = parse_row(line).ok()?;
            let function = match self.functions.get(row.function) {
                Some(&id) => id,
                None => {
                    let id = self.functions.len() as u32;
                    self.functions.insert(row.function.to_owned(), id);
                    id
                }
            };
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

/// A file of the 2019 trace layout the converter reads, and the names it is known by: the
/// vHive invitro samples (`104_inv.csv`, `1000_run.csv`, …), the names invitro's sampler
/// writes, and the public data set's own (`invocations_per_function_md.anon.d01.csv`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureFile {
    /// Per-minute invocation counts per function.
    Invocations,
    /// Duration percentiles per function.
    Durations,
    /// Allocated-memory percentiles per application.
    Memory,
}

impl AzureFile {
    /// What the file holds, for messages.
    pub fn role(self) -> &'static str {
        match self {
            Self::Invocations => "invocation counts",
            Self::Durations => "duration percentiles",
            Self::Memory => "memory percentiles",
        }
    }

    /// Suffixes (any prefix, e.g. `104_`, `1000_`) and prefixes a file of this role has.
    fn patterns(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Self::Invocations => (
                &["_inv.csv"],
                &["invocations_per_function", "invocations.csv"],
            ),
            Self::Durations => (&["_run.csv"], &["function_durations", "durations.csv"]),
            Self::Memory => (&["_mem.csv"], &["app_memory", "memory.csv"]),
        }
    }

    /// Whether `name` is a file of this role.
    fn matches(self, name: &str) -> bool {
        let (suffixes, prefixes) = self.patterns();
        name.ends_with(".csv")
            && (suffixes.iter().any(|s| name.ends_with(s))
                || prefixes.iter().any(|p| name.starts_with(p)))
    }

    /// The accepted names, for messages.
    fn describe(self) -> String {
        let (suffixes, prefixes) = self.patterns();
        suffixes
            .iter()
            .map(|s| format!("*{s}"))
            .chain(prefixes.iter().map(|p| {
                if p.ends_with(".csv") {
                    (*p).to_owned()
                } else {
                    format!("{p}*.csv")
                }
            }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The one file of this role in `dir`.
    pub fn find(self, dir: &Path) -> Result<PathBuf, WorkloadError> {
        let entries = std::fs::read_dir(dir).map_err(|source| WorkloadError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut csvs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| WorkloadError::Io {
                path: dir.to_owned(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".csv") {
                csvs.push(name);
            }
        }
        csvs.sort();
        let candidates: Vec<&String> = csvs.iter().filter(|n| self.matches(n)).collect();
        match candidates.as_slice() {
            [one] => Ok(dir.join(one)),
            [] => Err(WorkloadError::AzureFileMissing {
                dir: dir.to_owned(),
                role: self.role(),
                patterns: self.describe(),
                found: if csvs.is_empty() {
                    "no CSV files".to_owned()
                } else {
                    csvs.join(", ")
                },
            }),
            many => Err(WorkloadError::AzureFileAmbiguous {
                dir: dir.to_owned(),
                role: self.role(),
                candidates: many
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// Function hash column (invocations and durations files).
const AZURE_FUNCTION_COLUMN: &str = "HashFunction";
/// Application hash column (every file).
const AZURE_APP_COLUMN: &str = "HashApp";
/// Duration percentile columns and their quantiles.
const AZURE_DURATION_COLUMNS: [(&str, f64); 7] = [
    ("percentile_Average_0", 0.0),
    ("percentile_Average_1", 0.01),
    ("percentile_Average_25", 0.25),
    ("percentile_Average_50", 0.5),
    ("percentile_Average_75", 0.75),
    ("percentile_Average_99", 0.99),
    ("percentile_Average_100", 1.0),
];
/// Memory percentile columns and their quantiles.
const AZURE_MEMORY_COLUMNS: [(&str, f64); 8] = [
    ("AverageAllocatedMb_pct1", 0.01),
    ("AverageAllocatedMb_pct5", 0.05),
    ("AverageAllocatedMb_pct25", 0.25),
    ("AverageAllocatedMb_pct50", 0.5),
    ("AverageAllocatedMb_pct75", 0.75),
    ("AverageAllocatedMb_pct95", 0.95),
    ("AverageAllocatedMb_pct99", 0.99),
    ("AverageAllocatedMb_pct100", 1.0),
];
/// Prefix of the sample's per-minute count columns (`minute_1`…); the public data set names
/// them `1`…`1440` and has a `Trigger` column before them, which is not a count.
const AZURE_MINUTE_PREFIX: &str = "minute_";
/// Characters of a header quoted in an error.
const HEADER_CHARS_SHOWN: usize = 160;
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

/// A CSV file read whole: its header and data rows, split into fields.
struct Csv {
    /// The file, for messages.
    path: PathBuf,
    /// Column names.
    header: Vec<String>,
    /// Data rows with their 1-based line numbers.
    rows: Vec<(usize, Vec<String>)>,
}

impl Csv {
    /// Reads `path`.
    fn read(path: &Path) -> Result<Self, WorkloadError> {
        let mut lines = open(path)?.lines().enumerate();
        let io = |source| WorkloadError::Io {
            path: path.to_owned(),
            source,
        };
        let header = match lines.next() {
            Some((_, line)) => split_fields(&line.map_err(io)?),
            None => return Err(WorkloadError::Empty(path.to_owned())),
        };
        let mut rows = Vec::new();
        for (i, line) in lines {
            let line = line.map_err(io)?;
            if !line.trim().is_empty() {
                rows.push((i + 1, split_fields(&line)));
            }
        }
        Ok(Self {
            path: path.to_owned(),
            header,
            rows,
        })
    }

    /// The index of column `name`.
    fn column(&self, name: &str) -> Result<usize, WorkloadError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| WorkloadError::MissingColumn {
                path: self.path.clone(),
                column: name.to_owned(),
                header: self.header_shown(),
            })
    }

    /// The header, shortened for a message.
    fn header_shown(&self) -> String {
        let whole = self.header.join(",");
        match whole.char_indices().nth(HEADER_CHARS_SHOWN) {
            Some((cut, _)) => format!("{}…", &whole[..cut]),
            None => whole,
        }
    }

    /// Field `column` of `row` (line `line`), or a parse error naming it.
    fn field<'a>(
        &self,
        line: usize,
        row: &'a [String],
        column: usize,
    ) -> Result<&'a str, WorkloadError> {
        row.get(column)
            .map(String::as_str)
            .ok_or_else(|| WorkloadError::Parse {
                path: self.path.clone(),
                line,
                reason: format!(
                    "{} fields, the header has {} (no {})",
                    row.len(),
                    self.header.len(),
                    self.header[column]
                ),
            })
    }

    /// Reads columns `columns` (name, quantile) of `row` as an inverse CDF.
    fn quantiles(
        &self,
        line: usize,
        row: &[String],
        columns: &[(usize, f64)],
    ) -> Result<Quantiles, WorkloadError> {
        let mut points = Vec::with_capacity(columns.len());
        for &(column, q) in columns {
            let field = self.field(line, row, column)?;
            let v: f64 = field.parse().map_err(|_| WorkloadError::Parse {
                path: self.path.clone(),
                line,
                reason: format!("{}: not a number: {field:?}", self.header[column]),
            })?;
            points.push((q, v.max(0.0)));
        }
        // Percentile columns are monotone in the data set; enforce it so interpolation is sane.
        for i in 1..points.len() {
            points[i].1 = points[i].1.max(points[i - 1].1);
        }
        Ok(Quantiles(points))
    }

    /// The indices of named quantile columns.
    fn quantile_columns(&self, names: &[(&str, f64)]) -> Result<Vec<(usize, f64)>, WorkloadError> {
        names
            .iter()
            .map(|&(name, q)| Ok((self.column(name)?, q)))
            .collect()
    }

    /// The per-minute count columns, in order: `minute_N` or a bare number `N`.
    fn minute_columns(&self) -> Result<Vec<usize>, WorkloadError> {
        let columns: Vec<usize> = self
            .header
            .iter()
            .enumerate()
            .filter(|(_, h)| {
                let n = h.strip_prefix(AZURE_MINUTE_PREFIX).unwrap_or(h);
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
            .map(|(i, _)| i)
            .collect();
        if columns.is_empty() {
            return Err(WorkloadError::MissingColumn {
                path: self.path.clone(),
                column: format!("{AZURE_MINUTE_PREFIX}1 or 1 (per-minute counts)"),
                header: self.header_shown(),
            });
        }
        Ok(columns)
    }
}

/// Splits a CSV line into trimmed fields (the Azure files quote nothing).
fn split_fields(line: &str) -> Vec<String> {
    line.split(',').map(|f| f.trim().to_owned()).collect()
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

    let runs = Csv::read(&AzureFile::Durations.find(dir)?)?;
    let mems = Csv::read(&AzureFile::Memory.find(dir)?)?;
    let invs = Csv::read(&AzureFile::Invocations.find(dir)?)?;

    let run_function = runs.column(AZURE_FUNCTION_COLUMN)?;
    let run_app = runs.column(AZURE_APP_COLUMN)?;
    let run_columns = runs.quantile_columns(&AZURE_DURATION_COLUMNS)?;
    let mut durations = HashMap::new();
    for (line, row) in &runs.rows {
        let q = runs.quantiles(*line, row, &run_columns)?;
        let key = (
            runs.field(*line, row, run_app)?.to_owned(),
            runs.field(*line, row, run_function)?.to_owned(),
        );
        durations.insert(key, q);
    }
    let mem_app = mems.column(AZURE_APP_COLUMN)?;
    let mem_columns = mems.quantile_columns(&AZURE_MEMORY_COLUMNS)?;
    let mut memory = HashMap::new();
    for (line, row) in &mems.rows {
        let q = mems.quantiles(*line, row, &mem_columns)?;
        memory.insert(mems.field(*line, row, mem_app)?.to_owned(), q);
    }
    let inv_function = invs.column(AZURE_FUNCTION_COLUMN)?;
    let inv_app = invs.column(AZURE_APP_COLUMN)?;
    let minute_columns = invs.minute_columns()?;
    let mut functions = Vec::new();
    let mut skipped = 0;
    for (line, row) in &invs.rows {
        let name = invs.field(*line, row, inv_function)?;
        let app = invs.field(*line, row, inv_app)?;
        let Some(duration) = durations.get(&(app.to_owned(), name.to_owned())).cloned() else {
            skipped += 1;
            continue;
        };
        let memory = memory
            .get(app)
            .cloned()
            .unwrap_or(Quantiles(vec![(0.0, AZURE_DEFAULT_MEMORY_MB)]));
        let counts = minute_columns
            .iter()
            .map(|&c| {
                let field = invs.field(*line, row, c)?;
                field.parse::<u32>().map_err(|_| WorkloadError::Parse {
                    path: invs.path.clone(),
                    line: *line,
                    reason: format!("{}: not an invocation count: {field:?}", invs.header[c]),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        functions.push(AzureFunction {
            name: name.chars().take(AZURE_NAME_CHARS).collect(),
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
        let row = parse_row(b"1.5,f,20.0,256,2").unwrap();
        assert_eq!((row.arrival_s, row.function, row.class), (1.5, "f", 2));
        assert!(parse_row(b"x,f,20,256,2").is_err());
        assert!(parse_row(b"1,f,20").is_err());
        assert!(parse_row(b"1,f,-3,256,2").is_err());
        assert!(parse_row(b"1,\xff,3,256,2").is_err());
        // What the plain parser leaves (spaces, exponents) the general one reads alike.
        let spaced = parse_row(b" 1.5 , f ,2e1, 256 ,2").unwrap();
        assert_eq!(
            (spaced.arrival_s, spaced.function, spaced.duration_ms),
            (1.5, "f", 20.0)
        );
        assert_eq!((spaced.memory_mb, spaced.class), (256.0, 2));
    }

    /// The summary as one thread reading line by line computes it (the code before the
    /// summary was split over two threads), errors as `(line, reason)`.
    fn summarize_line_by_line(text: &str) -> Result<(u64, f64, f64, f64), (usize, String)> {
        let (mut invocations, mut busy_s, mut first, mut last) = (0, 0.0, None, 0.0_f64);
        for (i, line) in text.lines().enumerate() {
            if skip_line(line.as_bytes()) {
                continue;
            }
            let row = parse_row(line.as_bytes()).map_err(|reason| (i + 1, reason))?;
            if row.arrival_s < last {
                return Err((i + 1, UNSORTED.into()));
            }
            first.get_or_insert(row.arrival_s);
            last = row.arrival_s;
            invocations += 1;
            busy_s += row.duration_ms / 1e3;
        }
        Ok((invocations, busy_s, first.unwrap_or_default(), last))
    }

    /// Chunks of every size from a few bytes to more than the file, on traces with a bad
    /// line or a row out of order at every line: the same summary to the last bit, or the
    /// same first error on the same line, as one thread reading line by line.
    #[test]
    fn the_summary_does_not_depend_on_where_chunks_split() {
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(3);
        let mut rows = vec![TRACE_HEADER.to_owned(), "# a comment".to_owned()];
        let mut at = 0.0;
        for i in 0..40 {
            at += rng.gen_range(0..2000) as f64 / 1000.0;
            let duration: f64 = rng.gen_range(1..10_000_000) as f64 / 1000.0;
            rows.push(format!(
                "{at:.3},f{},{duration:.3},{},{}",
                i % 7,
                100 + i,
                i % 4
            ));
            if i % 9 == 0 {
                rows.push(String::new());
            }
        }
        let dir = std::env::temp_dir().join(format!("tariff-sim-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.csv");
        let mut traces = vec![rows.join("\n"), rows.join("\r\n") + "\r\n"];
        for line in 0..rows.len() {
            let mut bad = rows.clone();
            bad[line] = "1,f,not a number,256,2".into();
            traces.push(bad.join("\n"));
            let mut unsorted = rows.clone();
            unsorted.insert(line, "0.5,f,1,256,2".into());
            traces.push(unsorted.join("\n") + "\n");
        }
        for text in &traces {
            std::fs::write(&path, text).unwrap();
            let expected = summarize_line_by_line(text);
            for chunk in [
                1,
                2,
                3,
                5,
                8,
                13,
                21,
                34,
                55,
                text.len() / 2,
                text.len() + 1,
            ] {
                let got = summarize_in_chunks(&path, chunk);
                match (&expected, got) {
                    (Ok((invocations, busy_s, first, last)), Ok(summary)) => {
                        assert_eq!(summary.invocations, *invocations);
                        assert_eq!(summary.busy_s.to_bits(), busy_s.to_bits(), "chunk {chunk}");
                        assert_eq!(summary.span_s, last - first);
                        assert_eq!(summary.last_arrival_s, *last);
                    }
                    (
                        Err((line, reason)),
                        Err(WorkloadError::Parse {
                            line: l, reason: r, ..
                        }),
                    ) => {
                        assert_eq!(
                            (l, r.split(';').next().unwrap()),
                            (*line, reason.as_str()),
                            "chunk {chunk}"
                        );
                    }
                    (expected, got) => panic!("chunk {chunk}: expected {expected:?}, got {got:?}"),
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
