//! Recording answers and assembling the report: per-class HDR histograms of end-to-end latency
//! and of each stage, errors by kind, latency over time, throughput, and the ratios between
//! phases and between policies.
//!
//! Latency is end-to-end from each invocation's *scheduled* send time, so a generator that
//! falls behind shows up as latency instead of hiding it (no coordinated omission).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tariff_cluster::client::ClientError;
use tariff_types::wire::{InvocationOutcome, MemoryPressure};

use super::schedule::PhasePlan;
use super::workload::{ArrivalKind, Workload};

/// Largest value the histograms hold, µs (one hour); larger values are clamped to it.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
/// Significant digits of the per-class histograms (0.1 % resolution).
const SIGNIFICANT_DIGITS: u8 = 3;
/// Significant digits of the per-second histograms: 1 % is plenty for a time series and keeps
/// one histogram per class per second small.
const OVER_TIME_DIGITS: u8 = 2;
/// Error kind of an invocation the harness did not send because too many were outstanding.
pub const CLIENT_OVERLOAD: &str = "client_overload";
/// Error kind of an invocation the harness stopped waiting for: no answer and no error from
/// the client well past its deadline.
pub const LOST: &str = "lost";
/// Error kinds of invocations whose connection to their shard broke before an answer: the
/// caller knows it has none.
const CUT_OFF_KINDS: [&str; 3] = [
    "client_connection",
    "client_no_answer",
    "client_unreachable",
];
/// Error kinds of invocations never answered before their deadline: the client gave up
/// waiting, or the harness did.
const LOST_KINDS: [&str; 2] = ["client_timed_out", LOST];

/// What became of an invocation that failed, from its error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The cluster answered it (with an error).
    Answered,
    /// The connection to its shard broke before an answer.
    CutOff,
    /// Nobody answered before its deadline.
    Lost,
}

impl Fate {
    /// The fate of a failure of `kind`.
    pub fn of(kind: &str) -> Self {
        if LOST_KINDS.contains(&kind) {
            Fate::Lost
        } else if CUT_OFF_KINDS.contains(&kind) {
            Fate::CutOff
        } else {
            Fate::Answered
        }
    }
}
/// Quantiles at which the latency CDF is kept for the plot: dense in the tail, where the
/// classes differ.
const CDF_QUANTILES: [f64; 20] = [
    0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998,
    0.999, 0.9999, 1.0,
];
/// Names of the stages, in the order of [`Stages::values`].
pub const STAGE_NAMES: [&str; 7] = [
    "queued",
    "placement",
    "start",
    "run",
    "preempted",
    "inbound",
    "outbound",
];

/// Where an invocation's time went, µs, from the timings in its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    /// In the shard's queue (accepted → placed).
    pub queued: u64,
    /// Placed → received by the machine: the shard-to-dispatcher hop.
    pub placement: u64,
    /// Received on the machine → function started (process creation if cold, waiting for a
    /// CPU or instance on the machine).
    pub start: u64,
    /// Function started → finished (includes preempted time).
    pub run: u64,
    /// Runnable but held back by dearer work.
    pub preempted: u64,
    /// Scheduled send time → accepted by the shard: the generator's lag, the client, QUIC and
    /// the shard's accept (wall clocks of one host in an embedded cluster).
    pub inbound: u64,
    /// Function finished → answer received by the client: the completion's way back through
    /// the dispatcher and the shard, QUIC, and the client task's wake-up.
    pub outbound: u64,
    /// A process had to be started for it (no warm instance), which `start` includes.
    pub cold_start: bool,
}

impl Stages {
    /// Stages of a successful answer scheduled to be sent at `sent_at_us` and received at
    /// `received_at_us` (µs since the epoch, as the answer's timings). `placement` is what
    /// remains of placed → started once the machine's own start time is taken out; shard,
    /// dispatcher and harness clocks are the same host's clock in a local cluster, and
    /// saturate at 0 across hosts.
    pub fn of(outcome: &InvocationOutcome, sent_at_us: u64, received_at_us: u64) -> Self {
        let t = outcome.timings();
        Self {
            queued: t.queued_us(),
            placement: t.start_us().saturating_sub(outcome.run.start_us),
            start: outcome.run.start_us,
            run: t.run_us(),
            preempted: outcome.run.preempted_us,
            inbound: outcome.queued_at_us.saturating_sub(sent_at_us),
            outbound: received_at_us.saturating_sub(outcome.run.finished_at_us),
            cold_start: outcome.run.cold_start,
        }
    }

    /// The values in [`STAGE_NAMES`] order.
    pub fn values(&self) -> [u64; 7] {
        [
            self.queued,
            self.placement,
            self.start,
            self.run,
            self.preempted,
            self.inbound,
            self.outbound,
        ]
    }
}

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It ran; where its time went.
    Ok(Stages),
    /// It failed; the error kind (an [`InvokeError`] kind, `client_*` or [`CLIENT_OVERLOAD`]).
    Err(String),
}

/// One answered (or refused) invocation.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Class index.
    pub class: u8,
    /// Tenant index (into the plan's tenants).
    pub tenant: u8,
    /// What it was billed (0 unless it ran).
    pub cost: f64,
    /// It ran at another class than it asked for: its tenant's budget degraded it.
    pub degraded: bool,
    /// It ran, but only after its first machine was lost (it was placed more than once).
    pub retried: bool,
    /// Scheduled send time from the start of the phase.
    pub scheduled: Duration,
    /// Answer time minus scheduled time.
    pub latency: Duration,
    /// The result.
    pub answer: Answer,
    /// What memory pressure cost it (zero unless it ran on a machine short of memory).
    pub memory: MemoryPressure,
}

/// The report's name for a request that got no answer.
pub fn client_error_kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::Cluster(_) => "client_credentials",
        ClientError::Unreachable { .. } | ClientError::NoneReachable { .. } => "client_unreachable",
        ClientError::Connection(_) => "client_connection",
        ClientError::Codec(_) => "client_codec",
        ClientError::NoAnswer => "client_no_answer",
        ClientError::Unexpected(_) => "client_unexpected",
        ClientError::Refused(_) => "client_refused",
        ClientError::Denied(_) => "client_denied",
        ClientError::TimedOut(_) => "client_timed_out",
    }
}

fn histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, digits).expect("bounds and digits are valid")
}

/// Accumulates one class of one phase.
struct ClassRecorder {
    scheduled: u64,
    retried: u64,
    latency: Histogram<u64>,
    stages: [Histogram<u64>; STAGE_NAMES.len()],
    errors: BTreeMap<String, u64>,
    /// Latency by second of scheduled send time.
    per_second: Vec<Histogram<u64>>,
    /// Memory pressure's cost, summed.
    memory: MemoryTotals,
    /// The `start` stage of the answers that were cold starts.
    cold_start: Histogram<u64>,
}

impl ClassRecorder {
    fn new() -> Self {
        Self {
            scheduled: 0,
            retried: 0,
            latency: histogram(SIGNIFICANT_DIGITS),
            stages: std::array::from_fn(|_| histogram(SIGNIFICANT_DIGITS)),
            errors: BTreeMap::new(),
            per_second: Vec::new(),
            memory: MemoryTotals::default(),
            cold_start: histogram(SIGNIFICANT_DIGITS),
        }
    }
}

/// Accumulates one tenant's answers in one phase.
struct TenantRecorder {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    spent: f64,
    degraded: u64,
    first_degraded: Option<Duration>,
    first_refused: Option<Duration>,
}

impl TenantRecorder {
    fn new() -> Self {
        Self {
            latency: histogram(SIGNIFICANT_DIGITS),
            errors: BTreeMap::new(),
            spent: 0.0,
            degraded: 0,
            first_degraded: None,
            first_refused: None,
        }
    }

    fn record(&mut self, sample: &Sample) {
        let earliest = |slot: &mut Option<Duration>| {
            *slot = Some(slot.map_or(sample.scheduled, |t| t.min(sample.scheduled)));
        };
        match &sample.answer {
            Answer::Ok(_) => {
                let us = (sample.latency.as_micros() as u64).max(1);
                self.latency.saturating_record(us);
                self.spent += sample.cost;
                if sample.degraded {
                    self.degraded += 1;
                    earliest(&mut self.first_degraded);
                }
            }
            Answer::Err(kind) => {
                *self.errors.entry(kind.clone()).or_default() += 1;
                if kind == OVER_BUDGET {
                    earliest(&mut self.first_refused);
                }
            }
        }
    }

    fn finish(self, name: &str, secs: f64) -> TenantReport {
        let ok = self.latency.len();
        TenantReport {
            tenant: name.to_owned(),
            ok,
            failed: self.errors.values().sum(),
            errors: self.errors,
            throughput_per_s: ok as f64 / secs,
            latency_us: Percentiles::of(&self.latency),
            spent: self.spent,
            degraded: self.degraded,
            first_degraded_s: self.first_degraded.map(|t| t.as_secs_f64()),
            first_refused_s: self.first_refused.map(|t| t.as_secs_f64()),
        }
    }
}

/// The error kind of a call refused for its tenant's budget.
pub const OVER_BUDGET: &str = "over_budget";

/// One tenant in one phase: what it got and what it paid.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    /// The tenant.
    pub tenant: String,
    /// Answered with a result.
    pub ok: u64,
    /// Failed (refused for its budget included).
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Results per second of the phase.
    pub throughput_per_s: f64,
    /// End-to-end latency of its results.
    pub latency_us: Percentiles,
    /// What its results cost it.
    pub spent: f64,
    /// Results it got at a cheaper class than it asked for (its budget degraded it).
    pub degraded: u64,
    /// Scheduled time, from the phase's start, of its first degraded call.
    pub first_degraded_s: Option<f64>,
    /// Scheduled time of its first call refused for its budget.
    pub first_refused_s: Option<f64>,
}

/// Accumulates the answers of one phase of one policy.
pub struct PhaseRecorder {
    classes: Vec<ClassRecorder>,
    tenants: Vec<TenantRecorder>,
    /// Per error kind, the earliest answer of that kind from the phase's start.
    first_error: BTreeMap<String, Duration>,
}

impl PhaseRecorder {
    /// A recorder for `plan`'s invocations over `classes` classes and `tenants` tenants.
    pub fn new(plan: &PhasePlan, classes: usize, tenants: usize) -> Self {
        let mut recorder = Self {
            classes: (0..classes).map(|_| ClassRecorder::new()).collect(),
            tenants: (0..tenants.max(1)).map(|_| TenantRecorder::new()).collect(),
            first_error: BTreeMap::new(),
        };
        for p in &plan.invocations {
            if let Some(c) = recorder.classes.get_mut(p.class as usize) {
                c.scheduled += 1;
            }
        }
        recorder
    }

    /// Records one answer.
    pub fn record(&mut self, sample: &Sample) {
        if let Some(tenant) = self.tenants.get_mut(sample.tenant as usize) {
            tenant.record(sample);
        }
        if let Answer::Err(kind) = &sample.answer {
            let at = sample.scheduled + sample.latency;
            let first = self.first_error.entry(kind.clone()).or_insert(at);
            *first = (*first).min(at);
        }
        let Some(class) = self.classes.get_mut(sample.class as usize) else {
            return;
        };
        class.memory.swapped_out_bytes += sample.memory.swapped_out_bytes;
        class.memory.swapped_in_bytes += sample.memory.swapped_in_bytes;
        class.memory.held_us += sample.memory.held_us;
        match &sample.answer {
            Answer::Ok(stages) => {
                let us = (sample.latency.as_micros() as u64).max(1);
                class.latency.saturating_record(us);
                class.retried += u64::from(sample.retried);
                for (h, v) in class.stages.iter_mut().zip(stages.values()) {
                    h.saturating_record(v.max(1));
                }
                if stages.cold_start {
                    class.cold_start.saturating_record(stages.start.max(1));
                }
                let second = sample.scheduled.as_secs() as usize;
                if class.per_second.len() <= second {
                    class
                        .per_second
                        .resize_with(second + 1, || histogram(OVER_TIME_DIGITS));
                }
                class.per_second[second].saturating_record(us);
            }
            Answer::Err(kind) => *class.errors.entry(kind.clone()).or_default() += 1,
        }
    }

    /// The phase's report. `elapsed` runs from the phase's start to its last answer.
    pub fn finish(
        self,
        plan: &PhasePlan,
        class_names: &[String],
        tenant_names: &[String],
        elapsed: Duration,
        shards: usize,
    ) -> PhaseReport {
        let secs = elapsed.as_secs_f64().max(f64::EPSILON);
        let tenants = self
            .tenants
            .into_iter()
            .zip(tenant_names)
            .map(|(t, name)| t.finish(name, secs))
            .collect();
        let seconds = self
            .classes
            .iter()
            .map(|c| c.per_second.len())
            .max()
            .unwrap_or(0);
        let over_time = (0..seconds)
            .map(|s| SecondReport {
                second: s as u64,
                classes: self
                    .classes
                    .iter()
                    .zip(class_names)
                    .filter_map(|(c, name)| {
                        let h = c.per_second.get(s).filter(|h| !h.is_empty())?;
                        Some(SecondClass {
                            class: name.clone(),
                            count: h.len(),
                            p50_us: h.value_at_quantile(0.5),
                            p99_us: h.value_at_quantile(0.99),
                        })
                    })
                    .collect(),
            })
            .collect();
        let classes: Vec<ClassReport> = self
            .classes
            .into_iter()
            .zip(class_names)
            .map(|(c, name)| {
                let ok = c.latency.len();
                ClassReport {
                    class: name.clone(),
                    scheduled: c.scheduled,
                    ok,
                    retried: c.retried,
                    failed: c.errors.values().sum(),
                    errors: c.errors,
                    latency_us: Percentiles::of(&c.latency),
                    stages_us: STAGE_NAMES
                        .iter()
                        .zip(&c.stages)
                        .map(|(n, h)| ((*n).to_owned(), Percentiles::of(h)))
                        .collect(),
                    throughput_per_s: ok as f64 / secs,
                    cdf: cdf(&c.latency),
                    memory: c.memory,
                    cold_starts: c.cold_start.len(),
                    cold_start_us: Percentiles::of(&c.cold_start),
                }
            })
            .collect();
        let ok: u64 = classes.iter().map(|c| c.ok).sum();
        let failed: u64 = classes.iter().map(|c| c.failed).sum();
        let fate_count = |fate: Fate| -> u64 {
            classes
                .iter()
                .flat_map(|c| &c.errors)
                .filter(|(kind, _)| Fate::of(kind) == fate)
                .map(|(_, n)| n)
                .sum()
        };
        let fates = Fates {
            answered: ok + fate_count(Fate::Answered),
            retried: classes.iter().map(|c| c.retried).sum(),
            cut_off: fate_count(Fate::CutOff),
            lost: fate_count(Fate::Lost),
            first_error_s: self
                .first_error
                .iter()
                .map(|(kind, at)| (kind.clone(), at.as_secs_f64()))
                .collect(),
        };
        let cold_starts = classes.iter().map(|c| c.cold_starts).sum();
        PhaseReport {
            name: plan.name.clone(),
            arrival: plan.arrival,
            target_rate_per_s: plan.rate,
            offered_rate_per_s: plan.invocations.len() as f64
                / plan.duration.as_secs_f64().max(f64::EPSILON),
            duration_s: plan.duration.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            scheduled: plan.invocations.len() as u64,
            ok,
            failed,
            throughput_per_s: ok as f64 / secs,
            placements_per_s_per_shard: ok as f64 / secs / shards.max(1) as f64,
            fates,
            classes,
            tenants,
            over_time,
            cold_starts,
        }
    }
}

/// Percentiles of a histogram, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// Reads them off a histogram (all 0 when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One class of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    /// Class name.
    pub class: String,
    /// Invocations scheduled.
    pub scheduled: u64,
    /// Invocations answered with a result.
    pub ok: u64,
    /// Of `ok`, those placed more than once (their first machine was lost).
    pub retried: u64,
    /// Invocations that failed, all kinds; `ok + failed == scheduled`.
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// End-to-end latency from the scheduled send time, successful invocations.
    pub latency_us: Percentiles,
    /// Per stage (see [`STAGE_NAMES`]), successful invocations.
    pub stages_us: BTreeMap<String, Percentiles>,
    /// Successful invocations per second of the phase.
    pub throughput_per_s: f64,
    /// Points of the latency CDF (empty without answers).
    pub cdf: Vec<CdfPoint>,
    /// What memory pressure cost the class's successful calls, summed (kills are the
    /// `killed_memory_pressure` errors).
    pub memory: MemoryTotals,
    /// Of `ok`, the calls for which a process had to be started (no warm instance).
    pub cold_starts: u64,
    /// Their `start` stage (received on the machine → function running), all zero without
    /// cold starts.
    pub cold_start_us: Percentiles,
}

/// Bytes swapped out and in and time held for memory, summed over a class's answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryTotals {
    /// Bytes paged out to swap.
    pub swapped_out_bytes: u64,
    /// Bytes brought back from swap.
    pub swapped_in_bytes: u64,
    /// µs held stopped waiting for memory.
    pub held_us: u64,
}

/// One point of a latency CDF.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CdfPoint {
    /// Fraction of invocations at or below `us`.
    pub quantile: f64,
    /// Latency, µs.
    pub us: u64,
}

fn cdf(h: &Histogram<u64>) -> Vec<CdfPoint> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|&quantile| CdfPoint {
            quantile,
            us: h.value_at_quantile(quantile),
        })
        .collect()
}

/// Latency of one class in one second.
#[derive(Debug, Clone, Serialize)]
pub struct SecondClass {
    /// Class name.
    pub class: String,
    /// Successful invocations scheduled in that second.
    pub count: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
}

/// Latency by second of scheduled send time.
#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    /// Seconds from the start of the phase.
    pub second: u64,
    /// Classes with answers in that second.
    pub classes: Vec<SecondClass>,
}

/// What became of a phase's invocations, for failure scenarios: every one is answered
/// (`answered`), cut off or lost, so the three add up to what was scheduled (less any the
/// harness did not send, `client_overload`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fates {
    /// Answered by the cluster, with a result or an error.
    pub answered: u64,
    /// Results placed more than once (their first machine was lost).
    pub retried: u64,
    /// The connection to their shard broke before an answer (`client_connection`,
    /// `client_no_answer`, `client_unreachable`).
    pub cut_off: u64,
    /// No answer before their deadline (`client_timed_out`, `lost`): what exactly-once
    /// forbids.
    pub lost: u64,
    /// Per error kind, its first answer, s from the phase's start.
    pub first_error_s: BTreeMap<String, f64>,
}

/// One phase of one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Phase name.
    pub name: String,
    /// Arrival process.
    pub arrival: ArrivalKind,
    /// Rate asked for.
    pub target_rate_per_s: f64,
    /// Rate scheduled (invocations ÷ arrival window).
    pub offered_rate_per_s: f64,
    /// Arrival window, s.
    pub duration_s: f64,
    /// Phase start to last answer, s.
    pub elapsed_s: f64,
    /// Invocations scheduled.
    pub scheduled: u64,
    /// Answered with a result.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Successful invocations per second of `elapsed_s`.
    pub throughput_per_s: f64,
    /// `throughput_per_s` ÷ shards: what each shard placed per second.
    pub placements_per_s_per_shard: f64,
    /// Answered, placed again, cut off and lost.
    pub fates: Fates,
    /// Per class, most expensive first.
    pub classes: Vec<ClassReport>,
    /// Per tenant, in the workload's order.
    pub tenants: Vec<TenantReport>,
    /// Latency over time.
    pub over_time: Vec<SecondReport>,
    /// Calls of every class for which a process had to be started (the classes' sum; each
    /// class has its own `start` figures for them).
    pub cold_starts: u64,
}

/// The top class's p99 in the last phase against the first: the overload claim.
#[derive(Debug, Clone, Serialize)]
pub struct TopClassRatio {
    /// The class (the most expensive one with traffic).
    pub class: String,
    /// The reference (first reported) phase.
    pub reference_phase: String,
    /// The loaded (last reported) phase.
    pub phase: String,
    /// p99 in the reference phase, µs.
    pub reference_p99_us: u64,
    /// p99 in the loaded phase, µs.
    pub p99_us: u64,
    /// `p99_us ÷ reference_p99_us`.
    pub ratio: f64,
}

/// Everything measured for one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// `tariff`, `fifo`, or `cluster` for a running cluster of unknown policy.
    pub policy: String,
    /// Reported phases in order.
    pub phases: Vec<PhaseReport>,
    /// With two or more phases.
    pub top_class_p99_ratio: Option<TopClassRatio>,
    /// The `--chaos` events as they happened.
    pub chaos: Vec<super::chaos::ChaosRecord>,
    /// The warm-up phase, when the workload has one: not part of the comparison, but what it
    /// left on the machines (its cold starts) is what the first reported phase starts from.
    pub warmup: Option<PhaseReport>,
}

impl PolicyReport {
    /// Assembles a policy's report and its top-class ratio.
    pub fn new(policy: &str, phases: Vec<PhaseReport>) -> Self {
        let top_class_p99_ratio = top_class_ratio(&phases);
        Self {
            policy: policy.into(),
            phases,
            top_class_p99_ratio,
            chaos: Vec::new(),
            warmup: None,
        }
    }
}

fn top_class_ratio(phases: &[PhaseReport]) -> Option<TopClassRatio> {
    let (first, last) = (phases.first()?, phases.last()?);
    if phases.len() < 2 {
        return None;
    }
    let (reference, loaded) = first
        .classes
        .iter()
        .zip(&last.classes)
        .find(|(a, b)| a.ok > 0 && b.ok > 0)?;
    Some(TopClassRatio {
        class: loaded.class.clone(),
        reference_phase: first.name.clone(),
        phase: last.name.clone(),
        reference_p99_us: reference.latency_us.p99,
        p99_us: loaded.latency_us.p99,
        ratio: loaded.latency_us.p99 as f64 / reference.latency_us.p99.max(1) as f64,
    })
}

/// Baseline ÷ Tariff for one class of one phase (above 1: Tariff is faster).
#[derive(Debug, Clone, Serialize)]
pub struct ClassRatio {
    /// Phase.
    pub phase: String,
    /// Class.
    pub class: String,
    /// Ratio of medians.
    pub p50: f64,
    /// Ratio of 99th percentiles.
    pub p99: f64,
}

/// Per-class ratios of `baseline` to `tariff`, for classes with answers in both.
pub fn compare(tariff: &PolicyReport, baseline: &PolicyReport) -> Vec<ClassRatio> {
    let mut ratios = Vec::new();
    for (a, b) in tariff.phases.iter().zip(&baseline.phases) {
        for (ca, cb) in a.classes.iter().zip(&b.classes) {
            if ca.ok == 0 || cb.ok == 0 {
                continue;
            }
            ratios.push(ClassRatio {
                phase: a.name.clone(),
                class: ca.class.clone(),
                p50: cb.latency_us.p50 as f64 / ca.latency_us.p50.max(1) as f64,
                p99: cb.latency_us.p99 as f64 / ca.latency_us.p99.max(1) as f64,
            });
        }
    }
    ratios
}

/// Where the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    /// An embedded cluster started by the harness (false: `--shards`).
    pub local: bool,
    /// Shards.
    pub shards: usize,
    /// Dispatchers (local only).
    pub dispatchers: Option<usize>,
    /// Cores per dispatcher (local only).
    pub cores: Option<u32>,
    /// CPUs functions ran on (local only).
    pub function_cpus: Vec<usize>,
    /// Real-time machine scheduling asked for (local only; the dispatcher log says if it got it).
    pub rt: Option<bool>,
    /// CPUs the paying classes ran on in real-time mode (local only): all the function CPUs
    /// under a real-time budget, else all but one.
    pub real_time_cpus: Vec<usize>,
    /// The share of each of those CPUs the paying classes' real-time group budget gave them
    /// per period (local embedded cluster only; `None`: no budget, or not known).
    pub rt_budget: Option<f64>,
    /// QUIC connections per shard the harness used.
    pub connections_per_shard: usize,
    /// Host CPUs.
    pub host_cpus: usize,
}

/// The whole `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The workload as run.
    pub workload: Workload,
    /// The cluster.
    pub cluster: ClusterInfo,
    /// Class names, most expensive first.
    pub classes: Vec<String>,
    /// Invocations scheduled in reported phases, per policy.
    pub scheduled: u64,
    /// One per policy run, Tariff first.
    pub policies: Vec<PolicyReport>,
    /// Baseline ÷ Tariff per phase and class (with `--compare`).
    pub ratios: Vec<ClassRatio>,
}

impl BenchReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::schedule::Planned;

    fn plan(classes: &[u8]) -> PhasePlan {
        PhasePlan {
            name: "p".into(),
            warmup: false,
            rate: 10.0,
            duration: Duration::from_secs(2),
            arrival: ArrivalKind::Constant,
            invocations: classes
                .iter()
                .enumerate()
                .map(|(i, &class)| Planned {
                    at: Duration::from_millis(100 * i as u64),
                    target: 0,
                    class,
                })
                .collect(),
        }
    }

    fn sample(class: u8, ms: u64, answer: Answer) -> Sample {
        Sample {
            tenant: 0,
            cost: 0.0,
            degraded: false,
            retried: false,
            class,
            scheduled: Duration::from_millis(ms * 100),
            latency: Duration::from_millis(ms),
            answer,
            memory: MemoryPressure::default(),
        }
    }

    fn names() -> Vec<String> {
        vec!["critical".into(), "batch".into()]
    }

    #[test]
    fn counts_add_up_and_stages_are_kept() {
        let p = plan(&[0, 0, 1, 1, 1]);
        let mut r = PhaseRecorder::new(&p, 2, 1);
        let stages = Stages {
            queued: 10,
            placement: 20,
            start: 30,
            run: 40,
            preempted: 5,
            inbound: 3,
            outbound: 4,
            cold_start: false,
        };
        let cold = Stages {
            start: 900,
            cold_start: true,
            ..stages
        };
        r.record(&sample(0, 1, Answer::Ok(cold)));
        r.record(&sample(0, 15, Answer::Ok(stages)));
        r.record(&sample(1, 2, Answer::Err("timed_out".into())));
        r.record(&sample(1, 3, Answer::Err(CLIENT_OVERLOAD.into())));
        r.record(&sample(1, 4, Answer::Ok(stages)));
        let report = r.finish(&p, &names(), &["t".to_owned()], Duration::from_secs(2), 2);
        assert_eq!(report.scheduled, 5);
        assert_eq!(report.ok + report.failed, 5);
        for c in &report.classes {
            assert_eq!(c.ok + c.failed, c.scheduled, "{}", c.class);
            assert_eq!(c.stages_us.len(), STAGE_NAMES.len());
        }
        assert_eq!(report.classes[1].errors["timed_out"], 1);
        assert_eq!(report.classes[0].stages_us["run"].p50, 40);
        // The cold start is counted, and its start stage kept apart from the warm one's.
        assert_eq!(report.classes[0].cold_starts, 1);
        assert_eq!(report.classes[0].cold_start_us.p50, 900);
        assert_eq!(report.classes[1].cold_starts, 0);
        assert_eq!(report.cold_starts, 1);
        assert_eq!(report.throughput_per_s, 1.5);
        assert_eq!(report.placements_per_s_per_shard, 0.75);
        // Scheduled at 100 ms and 1.5 s: seconds 0 and 1.
        assert_eq!(report.over_time.len(), 2);
        let p99 = report.classes[0].latency_us.p99;
        assert!((14_990..=15_010).contains(&p99), "{p99}");
    }

    fn phase_with(name: &str, p99s: &[u64]) -> PhaseReport {
        let p = plan(&[]);
        let mut report = PhaseRecorder::new(&p, 2, 1).finish(
            &p,
            &names(),
            &["t".to_owned()],
            Duration::from_secs(1),
            1,
        );
        report.name = name.into();
        for (c, &p99) in report.classes.iter_mut().zip(p99s) {
            c.ok = u64::from(p99 > 0);
            c.latency_us.p99 = p99;
            c.latency_us.p50 = p99 / 2;
        }
        report
    }

    #[test]
    fn top_class_ratio_and_comparison() {
        let tariff = PolicyReport::new(
            "tariff",
            vec![
                phase_with("low", &[100, 100]),
                phase_with("high", &[110, 900]),
            ],
        );
        let ratio = tariff.top_class_p99_ratio.as_ref().unwrap();
        assert_eq!(ratio.class, "critical");
        assert!((ratio.ratio - 1.1).abs() < 1e-9);
        let fifo = PolicyReport::new(
            "fifo",
            vec![
                phase_with("low", &[100, 100]),
                phase_with("high", &[2000, 0]),
            ],
        );
        let ratios = compare(&tariff, &fifo);
        // The batch class of the high phase has no fifo answers: left out.
        assert_eq!(ratios.len(), 3);
        assert!((ratios[2].p99 - 2000.0 / 110.0).abs() < 1e-9);
        assert!(PolicyReport::new("x", vec![phase_with("only", &[1, 1])])
            .top_class_p99_ratio
            .is_none());
    }
}
