//! Workload files of `tariff bench`: what to send, in which mix, at what rate, in which phases.
//!
//! A workload is a TOML file (examples in `bench/workloads/`, format in `docs/bench.md`). It is
//! parsed and checked here, before any cluster is started, so a typo costs a clear message and
//! not a run. Names of classes are checked later against the cluster's own classes
//! ([`Workload::check_classes`]), because a running cluster may have other classes than the
//! default ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default per-invocation timeout: long enough that a 2× overload of 20 ms calls drains.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default length of one burst cycle of the bursty arrival process.
pub const DEFAULT_BURST_PERIOD_MS: u64 = 1_000;
/// Default share of each cycle the bursty process is on: 4× the mean rate during bursts.
pub const DEFAULT_BURST_DUTY: f64 = 0.25;
/// Longest CPU spin a trace row is replayed as: the trace's long tail (minutes) would
/// otherwise occupy a 1-CPU test cluster for the whole run.
pub const DEFAULT_TRACE_MAX_SPIN_MS: u64 = 1_000;
/// Function every trace row is replayed on: the warm persistent example, so the replay
/// measures scheduling, not process creation.
pub const TRACE_FUNCTION: &str = "counter";
/// Name of the one phase of a trace replay.
pub const TRACE_PHASE: &str = "trace";
/// Most invocations one phase may schedule: the schedule is held in memory (a few tens of
/// bytes each) and each one is answered.
pub const MAX_INVOCATIONS_PER_PHASE: usize = 5_000_000;

/// Why a workload file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("reading workload {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a workload.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{0}")]
    Invalid(String),
    /// A class named in the workload is not one of the cluster's.
    #[error("class `{class}` is not one of the cluster's classes ({known})")]
    UnknownClass {
        /// The name in the workload.
        class: String,
        /// The cluster's classes, comma-separated.
        known: String,
    },
}

/// How arrivals are spaced within a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    /// Exponential gaps at the target rate (the usual open-loop model).
    #[default]
    Poisson,
    /// Evenly spaced at the target rate.
    Constant,
    /// On/off: Poisson at `rate / duty` during the first `duty` of every period, silent in the
    /// rest, so the mean rate is the target but the load comes in waves.
    Bursty,
}

/// One function call shape in the mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixEntry {
    /// Registered function name.
    pub function: String,
    /// Payload sent on stdin (for `counter`: `spin 20` burns 20 ms of CPU, anything else is a
    /// no-op). Exclusive with `payload_bytes`.
    #[serde(default)]
    pub payload: Option<String>,
    /// Send a filler payload of this many bytes instead (to measure payload-size effects).
    #[serde(default)]
    pub payload_bytes: Option<usize>,
    /// CPU milliseconds one call needs: sizes `load` phases (capacity = function CPUs ×
    /// 1000 / mean CPU ms). 0 for no-ops.
    #[serde(default)]
    pub cpu_ms: f64,
    /// Relative weight in the mix.
    #[serde(default = "one")]
    pub weight: f64,
    /// The class every call of this entry is sent in (`critical` page views, `batch` image
    /// resizes: the paper's web-server case, where the class belongs to the function). Without
    /// it the class is drawn from `[classes]`, independently of the function.
    #[serde(default)]
    pub class: Option<String>,
    /// The tenant making this entry's calls (default: the workload's `tenant`): several
    /// tenants share one cluster, for budget scenarios.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Mark this entry's function safe to run again (`deploy --retries N`): a copy of it is
    /// deployed as [`MixEntry::deployed_name`], so that a lost machine's calls of this entry
    /// are placed again while the same function without retries is answered "machine lost"
    /// (chaos scenarios compare the two). Needs a cluster the harness starts.
    #[serde(default)]
    pub retries: Option<u32>,
}

impl MixEntry {
    /// The function this entry's calls go to: its `function`, or with `retries` the copy
    /// deployed with them (`counter-retry2`).
    pub fn deployed_name(&self) -> String {
        match self.retries {
            Some(n) if n > 0 => format!("{}-retry{n}", self.function),
            _ => self.function.clone(),
        }
    }
}

/// A tenant an embedded cluster makes for the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Its monthly budget (class-price units); none: unlimited. An embedded cluster starts
    /// every run with nothing spent.
    #[serde(default)]
    pub budget: Option<f64>,
}

/// A stretch of load at one rate. Phases run one after the other, each until its last
/// invocation is answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Name in the report (`unloaded`, `overload`, ...).
    pub name: String,
    /// Seconds of arrivals.
    pub duration_s: f64,
    /// Target rate, invocations per second. Exclusive with `load`.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Target rate as a multiple of the cluster's CPU capacity for this mix. Exclusive with
    /// `rate`.
    #[serde(default)]
    pub load: Option<f64>,
    /// Arrival process; defaults to the workload's.
    #[serde(default)]
    pub arrival: Option<ArrivalKind>,
    /// A warm-up phase is sent but not reported (it brings warm instances up).
    #[serde(default)]
    pub warmup: bool,
}

/// Shape of the local cluster the workload wants (command-line flags override it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterShape {
    /// Scheduler shards.
    pub shards: Option<usize>,
    /// Dispatchers.
    pub dispatchers: Option<usize>,
    /// Cores per dispatcher: a number, or `"all"` for every CPU this process may use, so a
    /// scenario about the whole machine measures the whole machine wherever it runs.
    pub cores: Option<Cores>,
    /// Memory per dispatcher in MiB: what its functions may use together (a memory-pressure
    /// scenario sizes it below what its functions ask for).
    pub memory_mb: Option<u64>,
}

/// Cores of the embedded cluster's dispatchers in a workload's `[cluster]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cores {
    /// This many cores per dispatcher.
    Count(u32),
    /// Every CPU the harness may use (`cores = "all"`).
    All(AllCores),
}

/// The word `all` (the only string [`Cores`] accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllCores {
    /// Every CPU.
    All,
}

impl Cores {
    /// The number of cores, given how many CPUs the host lets this process use.
    pub fn resolve(self, host_cpus: usize) -> u32 {
        match self {
            Cores::Count(n) => n,
            Cores::All(AllCores::All) => u32::try_from(host_cpus).unwrap_or(u32::MAX),
        }
    }
}

/// How the calls of a workload get their classes on one cluster (from
/// [`Workload::check_classes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassChoice {
    /// One weight per cluster class (the cluster's order, most expensive first), for mix
    /// entries without a class of their own.
    pub weights: Vec<f64>,
    /// Per mix entry, the class index its calls are sent in, if the entry fixes one.
    pub fixed: Vec<Option<u8>>,
}

/// A parsed and checked workload file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Scenario name, shown in the table and the report.
    pub name: String,
    /// Seed of every random draw (arrival gaps, function and class choice).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Default arrival process of the phases.
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Period of the bursty process, milliseconds.
    #[serde(default = "default_burst_period_ms")]
    pub burst_period_ms: u64,
    /// Share of the period the bursty process is on, in (0, 1].
    #[serde(default = "default_burst_duty")]
    pub burst_duty: f64,
    /// Per-invocation timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Tenant the calls are made as: an embedded cluster creates it; against a running
    /// cluster its token is looked up (see `--token`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Tenants with settings (budgets), by name; `tenant` and every mix entry's tenant are
    /// made whether listed or not.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSpec>,
    /// Class name → relative weight; every class of the cluster equally if absent.
    #[serde(default)]
    pub classes: BTreeMap<String, f64>,
    /// The function mix.
    #[serde(default)]
    pub mix: Vec<MixEntry>,
    /// The phases, in order.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Replay this trace CSV (docs/simulator.md format) instead of `mix` and `phases`; a
    /// relative path is relative to the workload file.
    #[serde(default)]
    pub trace: Option<PathBuf>,
    /// Trace time multiplier: 2.0 replays at half speed.
    #[serde(default = "one")]
    pub trace_time_scale: f64,
    /// Longest spin a trace row becomes, milliseconds.
    #[serde(default = "default_trace_max_spin_ms")]
    pub trace_max_spin_ms: u64,
    /// Replay only the trace's first seconds.
    #[serde(default)]
    pub trace_duration_s: Option<f64>,
    /// Local cluster shape.
    #[serde(default)]
    pub cluster: ClusterShape,
}

fn one() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    1
}
fn default_burst_period_ms() -> u64 {
    DEFAULT_BURST_PERIOD_MS
}
fn default_burst_duty() -> f64 {
    DEFAULT_BURST_DUTY
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_tenant() -> String {
    "bench".into()
}
fn default_trace_max_spin_ms() -> u64 {
    DEFAULT_TRACE_MAX_SPIN_MS
}

impl Workload {
    /// Reads and checks a workload file; a relative `trace` is resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut workload = Self::parse(&text).map_err(|e| match e {
            WorkloadError::Parse { message, .. } => WorkloadError::Parse {
                path: path.to_owned(),
                message,
            },
            WorkloadError::Invalid(message) => WorkloadError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        if let Some(trace) = &workload.trace {
            if trace.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                workload.trace = Some(base.join(trace));
            }
        }
        Ok(workload)
    }

    /// Parses and checks workload text.
    pub fn parse(text: &str) -> Result<Self, WorkloadError> {
        let workload: Self = toml::from_str(text).map_err(|e| WorkloadError::Parse {
            path: PathBuf::from("<workload>"),
            message: e.to_string(),
        })?;
        workload.validate()?;
        Ok(workload)
    }

    /// Every tenant the workload's calls are made as, its own `tenant` first: the index of a
    /// name here is a call's tenant in the schedule.
    pub fn tenant_names(&self) -> Vec<String> {
        let mut names = vec![self.tenant.clone()];
        let others = self
            .mix
            .iter()
            .filter_map(|e| e.tenant.clone())
            .chain(self.tenants.keys().cloned());
        for name in others {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The index in [`Workload::tenant_names`] of the tenant making `entry`'s calls.
    pub fn tenant_of(&self, entry: &MixEntry, names: &[String]) -> u8 {
        let name = entry.tenant.as_ref().unwrap_or(&self.tenant);
        names.iter().position(|n| n == name).unwrap_or(0) as u8
    }

    /// Checks what can be checked without a cluster.
    fn validate(&self) -> Result<(), WorkloadError> {
        let invalid = |m: String| Err(WorkloadError::Invalid(m));
        let tenants = self.tenant_names();
        if tenants.len() > usize::from(u8::MAX) {
            return invalid(format!("{} tenants; at most 255", tenants.len()));
        }
        for name in &tenants {
            if let Err(e) = tariff_types::tenant::validate_tenant_name(name) {
                return invalid(e.to_string());
            }
        }
        for (name, tenant) in &self.tenants {
            if let Err(e) = tariff_types::billing::validate_budget(tenant.budget) {
                return invalid(format!("tenant `{name}`: {e}"));
            }
        }
        if !(self.burst_duty > 0.0 && self.burst_duty <= 1.0) {
            return invalid(format!(
                "burst_duty must be in (0, 1], not {}",
                self.burst_duty
            ));
        }
        if self.burst_period_ms == 0 {
            return invalid("burst_period_ms must be positive".into());
        }
        for (class, weight) in &self.classes {
            if !(weight.is_finite() && *weight >= 0.0) {
                return invalid(format!("class `{class}`: weight must be ≥ 0, not {weight}"));
            }
        }
        if !self.classes.is_empty() && self.classes.values().sum::<f64>() <= 0.0 {
            return invalid("class weights must not all be 0".into());
        }
        if !self.classes.is_empty()
            && !self.mix.is_empty()
            && self.mix.iter().all(|e| e.class.is_some())
        {
            // Silently ignoring the table would let a reader believe it shapes the load.
            return invalid(
                "every [[mix]] entry fixes its `class`, so `[classes]` would never be used: remove it"
                    .into(),
            );
        }
        if self.trace.is_some() {
            if !self.mix.is_empty() || !self.phases.is_empty() {
                return invalid(
                    "a trace workload has no `mix` or `phases`: the trace is both".into(),
                );
            }
            if !(self.trace_time_scale.is_finite() && self.trace_time_scale > 0.0) {
                return invalid("trace_time_scale must be positive".into());
            }
            return Ok(());
        }
        if self.mix.is_empty() {
            return invalid("the workload needs at least one [[mix]] entry (or a `trace`)".into());
        }
        for entry in &self.mix {
            let f = &entry.function;
            if entry.payload.is_some() && entry.payload_bytes.is_some() {
                return invalid(format!(
                    "mix `{f}`: give `payload` or `payload_bytes`, not both"
                ));
            }
            if !(entry.weight.is_finite() && entry.weight >= 0.0) {
                return invalid(format!("mix `{f}`: weight must be ≥ 0"));
            }
            if !(entry.cpu_ms.is_finite() && entry.cpu_ms >= 0.0) {
                return invalid(format!("mix `{f}`: cpu_ms must be ≥ 0"));
            }
            if entry.class.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return invalid(format!("mix `{f}`: class must not be empty"));
            }
        }
        if self.mix.iter().map(|e| e.weight).sum::<f64>() <= 0.0 {
            return invalid("mix weights must not all be 0".into());
        }
        if self.phases.is_empty() {
            return invalid("the workload needs at least one [[phases]] entry".into());
        }
        for phase in &self.phases {
            let p = &phase.name;
            if !(phase.duration_s.is_finite() && phase.duration_s > 0.0) {
                return invalid(format!("phase `{p}`: duration_s must be positive"));
            }
            match (phase.rate, phase.load) {
                (Some(_), Some(_)) => {
                    return invalid(format!("phase `{p}`: give `rate` or `load`, not both"))
                }
                (None, None) => return invalid(format!("phase `{p}`: give `rate` or `load`")),
                (Some(x), None) | (None, Some(x)) if !(x.is_finite() && x > 0.0) => {
                    return invalid(format!("phase `{p}`: rate/load must be positive"))
                }
                _ => {}
            }
            if phase.load.is_some() && self.mean_cpu_ms() <= 0.0 {
                return invalid(format!(
                    "phase `{p}` sets `load`, which needs the mix's `cpu_ms` (capacity = CPUs × 1000 / cpu_ms)"
                ));
            }
        }
        Ok(())
    }

    /// Weighted mean CPU milliseconds of one call of the mix.
    pub fn mean_cpu_ms(&self) -> f64 {
        let total: f64 = self.mix.iter().map(|e| e.weight).sum();
        if total <= 0.0 {
            return 0.0;
        }
        self.mix.iter().map(|e| e.weight * e.cpu_ms).sum::<f64>() / total
    }

    /// Checks the class names (of `[classes]` and of the mix entries) against the cluster's
    /// and says how each call gets its class there.
    pub fn check_classes(&self, cluster_classes: &[String]) -> Result<ClassChoice, WorkloadError> {
        let unknown = |class: &str| WorkloadError::UnknownClass {
            class: class.to_owned(),
            known: cluster_classes.join(", "),
        };
        let index_of = |class: &str| {
            cluster_classes
                .iter()
                .position(|c| c == class)
                .and_then(|i| u8::try_from(i).ok())
                .ok_or_else(|| unknown(class))
        };
        for class in self.classes.keys() {
            index_of(class)?;
        }
        let fixed = self
            .mix
            .iter()
            .map(|e| e.class.as_deref().map(index_of).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let weights = if self.classes.is_empty() {
            vec![1.0; cluster_classes.len()]
        } else {
            cluster_classes
                .iter()
                .map(|c| self.classes.get(c).copied().unwrap_or(0.0))
                .collect()
        };
        Ok(ClassChoice { weights, fixed })
    }

    /// The payload bytes of a mix entry.
    pub fn payload(entry: &MixEntry) -> Vec<u8> {
        match (&entry.payload, entry.payload_bytes) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(n)) => vec![b'x'; n],
            (None, None) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
[classes]
critical = 1
batch = 3
[[mix]]
function = "counter"
payload = "spin 20"
cpu_ms = 20
[[phases]]
name = "unloaded"
duration_s = 1
load = 0.3
[[phases]]
name = "overload"
duration_s = 2
rate = 100
arrival = "bursty"
"#;

    #[test]
    fn parses_a_good_workload_with_defaults() {
        let w = Workload::parse(GOOD).unwrap();
        assert_eq!(w.seed, 1);
        assert_eq!(w.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(w.phases[1].arrival, Some(ArrivalKind::Bursty));
        assert_eq!(w.mean_cpu_ms(), 20.0);
        let names: Vec<String> = ["critical", "high", "standard", "batch"]
            .map(String::from)
            .to_vec();
        let choice = w.check_classes(&names).unwrap();
        assert_eq!(choice.weights, vec![1.0, 0.0, 0.0, 3.0]);
        assert_eq!(choice.fixed, vec![None]);
    }

    #[test]
    fn mix_entries_name_their_tenants_and_tenants_their_budgets() {
        let text = GOOD.replace(
            "cpu_ms = 20\n",
            "cpu_ms = 20\ntenant = \"scraper\"\n[tenants.quiet]\nbudget = 2.5\n",
        );
        let w = Workload::parse(&format!("tenant = \"shop\"\n{text}")).unwrap();
        let names = w.tenant_names();
        assert_eq!(names, ["shop", "scraper", "quiet"]);
        assert_eq!(w.tenant_of(&w.mix[0], &names), 1);
        assert_eq!(w.tenants["quiet"].budget, Some(2.5));
        let bad = Workload::parse(&format!("tenant = \"Shop!\"\n{GOOD}")).unwrap_err();
        assert!(bad.to_string().contains("tenant name"), "{bad}");
        let negative = text.replace("budget = 2.5", "budget = -1.0");
        let bad = Workload::parse(&negative).unwrap_err();
        assert!(bad.to_string().contains("budget"), "{bad}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Workload::parse(&GOOD.replace("duration_s = 1", "durtion_s = 1")).unwrap_err();
        assert!(e.to_string().contains("durtion_s"), "{e}");
        let e = Workload::parse(&GOOD.replace("rate = 100", "rate = 100\nload = 2")).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let e = Workload::parse(&GOOD.replace("cpu_ms = 20", "")).unwrap_err();
        assert!(e.to_string().contains("cpu_ms"), "{e}");
        let e = Workload::parse(&GOOD.replace("\"bursty\"", "\"wavy\"")).unwrap_err();
        assert!(e.to_string().contains("wavy"), "{e}");
        let e = Workload::parse("name = \"x\"").unwrap_err();
        assert!(e.to_string().contains("[[mix]]"), "{e}");
    }

    #[test]
    fn unknown_class_lists_the_known_ones() {
        let w = Workload::parse(&GOOD.replace("batch = 3", "bulk = 3")).unwrap();
        let e = w
            .check_classes(&["critical".into(), "batch".into()])
            .unwrap_err();
        assert!(e.to_string().contains("bulk") && e.to_string().contains("critical, batch"));
    }

    #[test]
    fn trace_workload_excludes_mix() {
        let w = Workload::parse("name = \"t\"\ntrace = \"a.csv\"").unwrap();
        assert_eq!(w.trace_max_spin_ms, DEFAULT_TRACE_MAX_SPIN_MS);
        assert!(Workload::parse(&format!("trace = \"a.csv\"\n{GOOD}")).is_err());
    }

    /// A web-vs-batch mix: page views are `critical`, resizes `batch`.
    const BOUND: &str = r#"
name = "bound"
[[mix]]
function = "counter"
payload = "spin 20"
cpu_ms = 20
weight = 20
class = "critical"
[[mix]]
function = "counter"
payload = "spin 200"
cpu_ms = 200
weight = 80
class = "batch"
[[phases]]
name = "overload"
duration_s = 1
load = 2
[cluster]
dispatchers = 1
cores = "all"
"#;

    fn four_classes() -> Vec<String> {
        ["critical", "high", "standard", "batch"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_mix_entry_can_fix_its_class() {
        let w = Workload::parse(BOUND).unwrap();
        let choice = w.check_classes(&four_classes()).unwrap();
        assert_eq!(choice.fixed, vec![Some(0), Some(3)]);
        assert_eq!(w.mean_cpu_ms(), 0.2 * 20.0 + 0.8 * 200.0);
        assert_eq!(w.cluster.cores, Some(Cores::All(AllCores::All)));
        assert_eq!(w.cluster.cores.unwrap().resolve(6), 6);
    }

    #[test]
    fn fixed_and_drawn_classes_mix() {
        let text = BOUND
            .replacen(
                "name = \"bound\"\n",
                "name = \"bound\"\n[classes]\nhigh = 1\n",
                1,
            )
            .replacen("class = \"batch\"\n", "", 1);
        let w = Workload::parse(&text).unwrap();
        let choice = w.check_classes(&four_classes()).unwrap();
        assert_eq!(choice.fixed, vec![Some(0), None]);
        assert_eq!(choice.weights, vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn bad_fixed_classes_are_refused() {
        // A class the cluster does not have is named, with the ones it has.
        let w = Workload::parse(&BOUND.replace("\"batch\"", "\"bulk\"")).unwrap();
        let e = w.check_classes(&four_classes()).unwrap_err();
        assert!(
            e.to_string().contains("bulk") && e.to_string().contains("critical, high"),
            "{e}"
        );
        // A class table no entry would use is an error, not silently ignored.
        let e = Workload::parse(&BOUND.replacen("[[mix]]", "[classes]\nbatch = 1\n[[mix]]", 1))
            .unwrap_err();
        assert!(e.to_string().contains("never be used"), "{e}");
        let e = Workload::parse(&BOUND.replace("\"critical\"", "\" \"")).unwrap_err();
        assert!(e.to_string().contains("must not be empty"), "{e}");
        let e = Workload::parse(&BOUND.replace("\"all\"", "\"most\"")).unwrap_err();
        assert!(
            e.to_string().contains("cores") || e.to_string().contains("variant"),
            "{e}"
        );
    }

    #[test]
    fn an_entry_with_retries_calls_its_own_copy() {
        let w =
            Workload::parse(&GOOD.replace("cpu_ms = 20\n", "cpu_ms = 20\nretries = 2\n")).unwrap();
        assert_eq!(w.mix[0].retries, Some(2));
        assert_eq!(w.mix[0].deployed_name(), "counter-retry2");
        let w = Workload::parse(GOOD).unwrap();
        assert_eq!(w.mix[0].deployed_name(), "counter");
    }

    #[test]
    fn shipped_workloads_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 4, "expected the shipped scenarios, found {seen}");
    }
}
