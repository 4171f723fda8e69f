//! `tariff bench --vs-sim`: the schedule just sent to the live cluster, replayed through the
//! simulator on a model of the same cluster, and the two sides' per-class p50 and p99 put
//! side by side.
//!
//! The simulator gets the very invocations the harness sent (send time, class, the call's
//! CPU time), not a workload with the same statistics, so the comparison is not blurred by
//! two random draws. Each reported phase is simulated on its own, from an empty cluster, as
//! the harness runs it (a phase ends when its last call is answered). What the simulator
//! cannot know it is told, and the report says what it was told:
//!
//! * **the cluster's shape**: shards, machines (dispatchers), cores per machine, slots (the
//!   dispatcher's, = cores), and, when the dispatchers ran in real-time mode, how many of
//!   each machine's cores the paying classes may use ([`rt::function_cpus`], the dispatcher's
//!   own rule), which turns on the simulator's live machine model (`SimConfig::rt_cpus`);
//! * **the dispatch overhead**: the time a call spends outside a core on its way through the
//!   live cluster (QUIC, the shard, the dispatcher, the answer back). It is measured in this
//!   run, on the first reported phase's most expensive class (nothing outranks it, so its
//!   latency less its run time is path, not queueing): p50 of latency − p50 of the `run`
//!   stage;
//! * **the cheapest class's share of a core** (real-time mode only): it runs as a normal
//!   task, so on a shared host it also shares the CPUs with everything else there (another
//!   engineer's compiler took two thirds of it in one run, and a build starting between two
//!   phases halved it). That is the host, not Tariff, so it is measured per phase: the
//!   class's mean CPU time per call ÷ the mean of its `run` stage (at most 1). The run stage
//!   also holds the time the paying classes preempted it, which the model charges again, so
//!   the share errs on the slow side by up to the paying classes' share of a core.
//!
//! Latency itself is never fitted: the later phases' latencies (the overload) are predicted
//! from the first phase's path and each phase's CPU share.

use serde::Serialize;
use tariff_machine_sched::rt;
use tariff_sim::events::from_secs;
use tariff_sim::workload::Invocation;
use tariff_sim::{Overheads, SchedulerKind, SimConfig, SimError, DEFAULT_K};

use super::record::{ClusterInfo, PhaseReport, PolicyReport};
use super::schedule::{PhasePlan, Plan};

/// The agreement the issue asks for: the simulator within 25 % of the live cluster per class.
pub const TARGET_ERROR: f64 = 0.25;
/// Simulated time past the last arrival plus all the phase's work on one core: every call has
/// finished by then, however the cluster ordered them.
const DRAIN_MARGIN_S: f64 = 10.0;
/// µs per ms.
const US_PER_MS: f64 = 1000.0;
/// Name of the live cluster stage that is the function's time on its machine.
const RUN_STAGE: &str = "run";

/// One class of one phase, both sides.
#[derive(Debug, Clone, Serialize)]
pub struct ClassVsSim {
    /// Class name.
    pub class: String,
    /// Calls answered by the live cluster.
    pub live_ok: u64,
    /// Calls the simulator completed.
    pub sim_completed: u64,
    /// Live median latency, ms.
    pub live_p50_ms: f64,
    /// Simulated median latency, ms.
    pub sim_p50_ms: f64,
    /// (sim − live) ÷ live of the median.
    pub p50_error: f64,
    /// Live 99th percentile, ms.
    pub live_p99_ms: f64,
    /// Simulated 99th percentile, ms.
    pub sim_p99_ms: f64,
    /// (sim − live) ÷ live of the 99th percentile.
    pub p99_error: f64,
}

/// One reported phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseVsSim {
    /// Phase name.
    pub phase: String,
    /// The cheapest class's share of a core measured in this phase and given to the
    /// simulator (1 when not measured).
    pub shared_speed: f64,
    /// Per class, most expensive first (classes with no call on either side left out).
    pub classes: Vec<ClassVsSim>,
}

/// The whole comparison, written as `vs_sim.json`.
#[derive(Debug, Clone, Serialize)]
pub struct VsSimReport {
    /// Cores per machine the paying classes had (`None`: the dispatchers ordered classes in
    /// user space, which the simulator's default model is).
    pub rt_cpus: Option<usize>,
    /// The measured dispatch overhead given to the simulator, ms.
    pub dispatch_overhead_ms: f64,
    /// Where it was measured: phase and class.
    pub calibrated_on: String,
    /// Whether the cheapest class's share of a core was measured and given to the simulator
    /// (real-time mode; per phase in [`PhaseVsSim::shared_speed`]).
    pub shared_speed_measured: bool,
    /// Per reported phase.
    pub phases: Vec<PhaseVsSim>,
}

impl VsSimReport {
    /// The largest |error| of any class's p50 or p99 in phases other than the calibration
    /// phase (the first), with where it is; `None` with fewer than two phases.
    pub fn worst_predicted(&self) -> Option<(f64, String)> {
        self.phases
            .iter()
            .skip(1)
            .flat_map(|p| {
                p.classes.iter().flat_map(move |c| {
                    [
                        (c.p50_error.abs(), format!("{} {} p50", p.phase, c.class)),
                        (c.p99_error.abs(), format!("{} {} p99", p.phase, c.class)),
                    ]
                })
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the comparison serialises")
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "\nlive vs simulated (tariff sim: {}; dispatch overhead {:.3} ms measured on {}{}):\n",
            match self.rt_cpus {
                Some(rt) => format!("live machine model, paying classes on {rt} core(s)"),
                None => "one run queue per machine".to_owned(),
            },
            self.dispatch_overhead_ms,
            self.calibrated_on,
            if self.shared_speed_measured {
                "; share: the cheapest class's measured share of a core in each phase"
            } else {
                ""
            },
        );
        out.push_str(&format!(
            "{:<12} {:>5} {:<10} {:>7} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}\n",
            "phase",
            "share",
            "class",
            "ok",
            "live p50",
            "sim p50",
            "err",
            "live p99",
            "sim p99",
            "err"
        ));
        for phase in &self.phases {
            for c in &phase.classes {
                out.push_str(&format!(
                    "{:<12} {:>5.2} {:<10} {:>7} {:>10.1} {:>10.1} {:>6.0}% {:>10.1} {:>10.1} {:>6.0}%\n",
                    phase.phase,
                    phase.shared_speed,
                    c.class,
                    c.live_ok,
                    c.live_p50_ms,
                    c.sim_p50_ms,
                    c.p50_error * 100.0,
                    c.live_p99_ms,
                    c.sim_p99_ms,
                    c.p99_error * 100.0,
                ));
            }
        }
        if let Some((error, at)) = self.worst_predicted() {
            out.push_str(&format!(
                "largest predicted error: {:.0} % ({at}); target ≤ {:.0} %\n",
                error * 100.0,
                TARGET_ERROR * 100.0
            ));
        }
        out
    }
}

/// The simulated cluster for `info`: its shape, and in real-time mode the cores the
/// dispatchers gave the paying classes (as they reported them; for a report without them, by
/// the dispatcher's rule without a budget, [`rt::function_cpus`]).
pub fn sim_config(info: &ClusterInfo, classes: usize) -> SimConfig {
    let machines = info.dispatchers.unwrap_or(1).max(1);
    let cores = info.cores.unwrap_or(1).max(1) as usize;
    let rt_cpus = info.rt.unwrap_or(false).then(|| {
        if info.real_time_cpus.is_empty() {
            let allowed: Vec<usize> = (0..info.host_cpus.max(1)).collect();
            rt::function_cpus(&allowed, cores, true).0.real_time.len()
        } else {
            info.real_time_cpus.len().min(cores)
        }
    });
    SimConfig {
        machines,
        cores,
        shards: info.shards.max(1),
        k: DEFAULT_K.min(machines),
        classes: classes.max(1),
        slots: cores as u32,
        schedulers: vec![SchedulerKind::TARIFF],
        rt_cpus,
        ..SimConfig::paper(1.0)
    }
}

/// The dispatch overhead measured in `phase`: its most expensive class with answers, p50 of
/// latency less p50 of its `run` stage, µs (never negative), and that class's name.
fn dispatch_overhead_us(phase: &PhaseReport) -> Option<(u64, &str)> {
    let class = phase.classes.iter().find(|c| c.ok > 0)?;
    let run = class.stages_us.get(RUN_STAGE)?.p50;
    Some((class.latency_us.p50.saturating_sub(run), &class.class))
}

/// The cheapest class's share of a core in `live` (the report of `phase`): its calls' mean
/// CPU time ÷ the mean of their `run` stage, at most 1; `None` without answers.
fn shared_speed(plan: &Plan, phase: &PhasePlan, live: &PhaseReport) -> Option<f64> {
    let cheapest = live.classes.len().checked_sub(1)?;
    let cpu_ms: Vec<f64> = phase
        .invocations
        .iter()
        .filter(|call| usize::from(call.class) == cheapest)
        .map(|call| plan.targets[call.target as usize].cpu.as_secs_f64() * US_PER_MS)
        .collect();
    let run_us = live.classes[cheapest].stages_us.get(RUN_STAGE)?.mean;
    if cpu_ms.is_empty() || run_us <= 0.0 {
        return None;
    }
    let mean_cpu_ms = cpu_ms.iter().sum::<f64>() / cpu_ms.len() as f64;
    Some((mean_cpu_ms * US_PER_MS / run_us).min(1.0))
}

/// Relative error of `sim` against `live` (0 when both are 0).
fn error(sim: f64, live: f64) -> f64 {
    if live > 0.0 {
        (sim - live) / live
    } else if sim > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// Replays every reported phase of `plan` through the simulator with the overhead measured
/// on `live` and compares per class.
pub fn compare(
    plan: &Plan,
    live: &PolicyReport,
    info: &ClusterInfo,
    classes: &[String],
) -> Result<VsSimReport, SimError> {
    let (overhead_us, calibrated_on) = live
        .phases
        .first()
        .and_then(|p| {
            dispatch_overhead_us(p).map(|(us, class)| (us, format!("{} {class}", p.name)))
        })
        .unwrap_or((0, "nothing (no answers)".to_owned()));
    let mut config = sim_config(info, classes.len());
    config.overheads = Overheads {
        dispatch: Some(from_secs(overhead_us as f64 / 1e6)),
        ..Overheads::default()
    };
    let reported = plan.phases.iter().filter(|p| !p.warmup);
    let mut phases = Vec::new();
    for (phase, live_phase) in reported.zip(&live.phases) {
        let invocations: Vec<Invocation> = phase
            .invocations
            .iter()
            .map(|call| Invocation {
                arrival: call.at.as_nanos() as u64,
                function: call.target,
                runtime: (plan.targets[call.target as usize].cpu.as_nanos() as u64).max(1),
                memory: 0,
                class: call.class,
            })
            .collect();
        let work_s: f64 = invocations.iter().map(|i| i.runtime as f64 / 1e9).sum();
        let last_s = invocations.last().map_or(0.0, |i| i.arrival as f64 / 1e9);
        let speed = match config.rt_cpus {
            Some(_) => shared_speed(plan, phase, live_phase).unwrap_or(1.0),
            None => 1.0,
        };
        let phase_config = SimConfig {
            duration_s: last_s + work_s / speed + DRAIN_MARGIN_S,
            shared_speed: speed,
            ..config.clone()
        };
        let experiment = tariff_sim::run_invocations(&phase_config, &invocations)?;
        let sim = &experiment.schedulers[0];
        let classes = live_phase
            .classes
            .iter()
            .zip(&sim.classes)
            .filter(|(l, s)| l.ok > 0 || s.completed > 0)
            .map(|(l, s)| {
                let live_p50 = l.latency_us.p50 as f64 / US_PER_MS;
                let live_p99 = l.latency_us.p99 as f64 / US_PER_MS;
                ClassVsSim {
                    class: l.class.clone(),
                    live_ok: l.ok,
                    sim_completed: s.completed,
                    live_p50_ms: live_p50,
                    sim_p50_ms: s.latency_ms.p50,
                    p50_error: error(s.latency_ms.p50, live_p50),
                    live_p99_ms: live_p99,
                    sim_p99_ms: s.latency_ms.p99,
                    p99_error: error(s.latency_ms.p99, live_p99),
                }
            })
            .collect();
        phases.push(PhaseVsSim {
            phase: phase.name.clone(),
            shared_speed: speed,
            classes,
        });
    }
    Ok(VsSimReport {
        rt_cpus: config.rt_cpus,
        shared_speed_measured: config.rt_cpus.is_some(),
        dispatch_overhead_ms: overhead_us as f64 / US_PER_MS,
        calibrated_on,
        phases,
    })
}
