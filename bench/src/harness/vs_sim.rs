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
//!   the share errs on the slow side by up to the paying classes' share of a core;
//! * **the real-time budget** (real-time mode with a budget): the share of each CPU per
//!   100 ms period the dispatchers' real-time group got, which turns on the simulator's
//!   throttle (`SimConfig::rt_budget`): a CPU whose paying work has used its share waits for
//!   the next period, as the kernel makes it;
//! * **cold starts**: each call's function by name (the targets of one function share its
//!   instances), that function's keep-alive, and per phase the time a cold start adds and the
//!   instances the live machines had started before the phase (the warm-up's and earlier
//!   phases' cold starts, spread evenly over machines and functions: exact for the shipped
//!   workloads, one function on one machine), with which the simulator's instance pools
//!   begin. A cold start's cost is, in the most expensive class with cold starts, the median
//!   `start` stage of its cold starts less its median `start` (the warm path, which the
//!   dispatch overhead holds; and the same class, so that waiting for a turn on the machine,
//!   which the `start` stage also holds and the simulator models itself, is not counted
//!   twice); a phase without cold starts keeps the last phase's (or the warm-up's) figure. It
//!   is measured per phase, as the cheapest class's share is, because it is the host's:
//!   process creation waits on kernel threads that share the CPUs with the cheapest class,
//!   and it took about 1 ms in an idle warm-up but 10–16 ms in web-vs-batch's busy phase
//!   (2026-12-02).
//!
//! Latency itself is never fitted: the later phases' latencies (the overload) are predicted
//! from the first phase's path and each phase's CPU share.

use std::collections::HashMap;

use serde::Serialize;
use tariff_machine_sched::rt;
use tariff_sim::events::from_secs;
use tariff_sim::workload::Invocation;
use tariff_sim::{Overheads, SchedulerKind, SimConfig, SimError, DEFAULT_K};
use tariff_types::function::Runtime;
use tariff_types::FunctionSpec;

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
/// Name of the live cluster stage from the machine receiving a call to its function running.
const START_STAGE: &str = "start";

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
    /// Idle instances of each function per machine the simulator started the phase with: the
    /// live cold starts before the phase (0 without the cold-start model).
    pub prewarm: u32,
    /// The time a cold start added in this phase, ms, given to the simulator (`None`: no
    /// cold start seen yet, so none is modelled).
    pub cold_start_ms: Option<f64>,
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
    /// The real-time budget's share of each CPU given to the simulator (`None`: none).
    pub rt_budget: Option<f64>,
    /// The functions' keep-alive given to the simulator, s (the shortest of them).
    pub keep_alive_s: f64,
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
            "\nlive vs simulated (tariff sim: {}{}; dispatch overhead {:.3} ms measured on {}{}; keep-alive {:.0} s; cold: a cold start's cost in the phase, ms; warm: instances started before it):\n",
            match self.rt_cpus {
                Some(rt) => format!("live machine model, paying classes on {rt} core(s)"),
                None => "one run queue per machine".to_owned(),
            },
            match self.rt_budget {
                Some(share) => format!(" at most {share:.2} of each per 100 ms"),
                None => String::new(),
            },
            self.dispatch_overhead_ms,
            self.calibrated_on,
            if self.shared_speed_measured {
                "; share: the cheapest class's measured share of a core in each phase"
            } else {
                ""
            },
            self.keep_alive_s,
        );
        out.push_str(&format!(
            "{:<12} {:>5} {:>5} {:>4} {:<10} {:>7} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}\n",
            "phase",
            "share",
            "cold",
            "warm",
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
                    "{:<12} {:>5.2} {:>5} {:>4} {:<10} {:>7} {:>10.1} {:>10.1} {:>6.0}% {:>10.1} {:>10.1} {:>6.0}%\n",
                    phase.phase,
                    phase.shared_speed,
                    phase
                        .cold_start_ms
                        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
                    phase.prewarm,
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
        rt_budget: rt_cpus.and(info.rt_budget),
        rt_cpus,
        ..SimConfig::paper(1.0)
    }
}

/// Each target's function as a small number, the same for targets of one function (so they
/// share its instances in the simulator), and the number of functions.
fn function_ids(plan: &Plan) -> (Vec<u32>, usize) {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let per_target = plan
        .targets
        .iter()
        .map(|t| {
            let next = ids.len() as u32;
            *ids.entry(t.function.as_str()).or_insert(next)
        })
        .collect();
    (per_target, ids.len())
}

/// How long the targets' functions keep an idle instance: the shortest keep-alive among them
/// (an exec function keeps none: every call starts a process).
fn keep_alive_s(plan: &Plan, functions: &[FunctionSpec]) -> f64 {
    plan.targets
        .iter()
        .filter_map(|t| functions.iter().find(|f| f.name == t.function))
        .map(|f| match f.runtime {
            Runtime::Persistent { keep_alive_ms } => keep_alive_ms as f64 / 1e3,
            _ => 0.0,
        })
        .min_by(f64::total_cmp)
        .unwrap_or(0.0)
}

/// The time a cold start added to a call in `phase`, µs: in its most expensive class with
/// cold starts, their median `start` stage less the class's median `start` (the warm path,
/// already in the dispatch overhead; within one class, so that time waiting for a turn on
/// the machine is not counted as the cold start's). `None` without a cold start.
fn cold_start_us(phase: &PhaseReport) -> Option<u64> {
    let class = phase.classes.iter().find(|c| c.cold_starts > 0)?;
    let warm = class.stages_us.get(START_STAGE).map_or(0, |s| s.p50);
    Some(class.cold_start_us.p50.saturating_sub(warm))
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

/// Replays every reported phase of `plan` through the simulator with the overheads measured
/// on `live` and compares per class; `functions` are the deployed functions (for their
/// keep-alive).
pub fn compare(
    plan: &Plan,
    live: &PolicyReport,
    info: &ClusterInfo,
    classes: &[String],
    functions: &[FunctionSpec],
) -> Result<VsSimReport, SimError> {
    let (overhead_us, calibrated_on) = live
        .phases
        .first()
        .and_then(|p| {
            dispatch_overhead_us(p).map(|(us, class)| (us, format!("{} {class}", p.name)))
        })
        .unwrap_or((0, "nothing (no answers)".to_owned()));
    let mut config = sim_config(info, classes.len());
    let keep_alive = keep_alive_s(plan, functions);
    config.overheads = Overheads {
        dispatch: Some(from_secs(overhead_us as f64 / 1e6)),
        keep_alive: from_secs(keep_alive),
        ..Overheads::default()
    };
    let mut cold_us = live.warmup.as_ref().and_then(cold_start_us);
    let (function_of, function_count) = function_ids(plan);
    // Instances per function and machine the live cluster had started before each phase.
    let mut started_before = live.warmup.as_ref().map_or(0, |w| w.cold_starts);
    let reported = plan.phases.iter().filter(|p| !p.warmup);
    let mut phases = Vec::new();
    for (phase, live_phase) in reported.zip(&live.phases) {
        cold_us = cold_start_us(live_phase).or(cold_us);
        let pools = (config.machines * function_count).max(1) as u64;
        let prewarm = match cold_us {
            Some(_) => started_before.div_ceil(pools) as u32,
            None => 0,
        };
        started_before += live_phase.cold_starts;
        let invocations: Vec<Invocation> = phase
            .invocations
            .iter()
            .map(|call| Invocation {
                arrival: call.at.as_nanos() as u64,
                function: function_of[call.target as usize],
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
        // Every call has finished by then: all the work on one core at the slowest rate any
        // class gets (the cheapest class's share, the paying classes' budget), plus a cold
        // start for every call.
        let slowest = speed.min(config.rt_budget.unwrap_or(1.0));
        let cold_s = cold_us.map_or(0.0, |us| us as f64 / 1e6) * invocations.len() as f64;
        let mut phase_config = SimConfig {
            duration_s: last_s + work_s / slowest + cold_s + DRAIN_MARGIN_S,
            shared_speed: speed,
            ..config.clone()
        };
        phase_config.overheads.prewarm = prewarm;
        phase_config.overheads.cold_start = cold_us.map(|us| from_secs(us as f64 / 1e6));
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
            prewarm,
            cold_start_ms: cold_us.map(|us| us as f64 / US_PER_MS),
            classes,
        });
    }
    Ok(VsSimReport {
        rt_cpus: config.rt_cpus,
        rt_budget: config.rt_budget,
        keep_alive_s: keep_alive,
        shared_speed_measured: config.rt_cpus.is_some(),
        dispatch_overhead_ms: overhead_us as f64 / US_PER_MS,
        calibrated_on,
        phases,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::harness::schedule::Target;

    fn target(function: &str) -> Target {
        Target {
            function: function.into(),
            payload: Vec::new(),
            tenant: 0,
            cpu: Duration::from_millis(10),
        }
    }

    fn spec(name: &str, runtime: Runtime) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            command: vec![format!("/bin/{name}")],
            runtime,
            ..Default::default()
        }
    }

    #[test]
    fn targets_of_one_function_share_its_instances_and_the_shortest_keep_alive_counts() {
        let plan = Plan {
            targets: vec![target("counter"), target("echo"), target("counter")],
            phases: Vec::new(),
            tenants: vec!["t".into()],
        };
        assert_eq!(function_ids(&plan), (vec![0, 1, 0], 2));
        let persistent = Runtime::Persistent {
            keep_alive_ms: 60_000,
        };
        let functions = [spec("counter", persistent), spec("echo", Runtime::Exec)];
        assert_eq!(
            keep_alive_s(&plan, &functions),
            0.0,
            "an exec function keeps none"
        );
        assert_eq!(keep_alive_s(&plan, &functions[..1]), 60.0);
    }
}
