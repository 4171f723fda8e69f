//! The open-loop schedule: every invocation's send time, function call and class, computed
//! from the seed before anything is sent.
//!
//! Precomputing the schedule is what makes the load open-loop and the baseline fair: the
//! generator only sleeps until each time, whatever the cluster does, and the Tariff run and the
//! FIFO run of `--compare` replay the very same list.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::Exp;

use super::workload::{
    ArrivalKind, ClassChoice, Workload, WorkloadError, MAX_INVOCATIONS_PER_PHASE, TRACE_FUNCTION,
    TRACE_PHASE,
};
use tariff_sim::workload::{summarize_trace, TraceReader};

/// Salt separating the random streams of successive phases.
const PHASE_SEED_SALT: u64 = 0x9E37_79B9_7F4A_7C15;
/// Nanoseconds per millisecond.
const NANOS_PER_MS: f64 = 1e6;

/// A distinct call: function and payload. Invocations refer to it by index so a schedule of
/// millions of calls does not hold millions of payloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Function name.
    pub function: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// The tenant making the call: an index into [`Plan::tenants`].
    pub tenant: u8,
    /// CPU time the call needs (the mix entry's `cpu_ms`, a trace row's spin), which is what
    /// the simulator is told it runs for (`--vs-sim`).
    pub cpu: Duration,
}

/// One scheduled invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Send time, from the start of its phase.
    pub at: Duration,
    /// Index into [`Plan::targets`].
    pub target: u32,
    /// Class index in the cluster's order (0 = most expensive).
    pub class: u8,
}

/// One phase's schedule.
#[derive(Debug, Clone)]
pub struct PhasePlan {
    /// Phase name.
    pub name: String,
    /// Warm-up phases are sent but not reported.
    pub warmup: bool,
    /// Target rate, invocations per second.
    pub rate: f64,
    /// Length of the arrival window.
    pub duration: Duration,
    /// Arrival process.
    pub arrival: ArrivalKind,
    /// The invocations, in send order.
    pub invocations: Vec<Planned>,
}

/// The whole run's schedule, identical for every policy of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Distinct calls.
    pub targets: Vec<Target>,
    /// Phases in order.
    pub phases: Vec<PhasePlan>,
    /// The tenants calls are made as ([`Workload::tenant_names`]).
    pub tenants: Vec<String>,
}

impl Plan {
    /// Invocations scheduled in reported (non-warm-up) phases.
    pub fn reported_invocations(&self) -> usize {
        self.phases
            .iter()
            .filter(|p| !p.warmup)
            .map(|p| p.invocations.len())
            .sum()
    }
}

/// Parameters of the bursty process.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    /// Cycle length.
    pub period: Duration,
    /// Share of the cycle that is on.
    pub duty: f64,
}

/// Send times of one phase: `rate` per second on average over `duration`.
pub fn arrivals<R: Rng>(
    kind: ArrivalKind,
    rate: f64,
    duration: Duration,
    burst: Burst,
    rng: &mut R,
) -> Vec<Duration> {
    let end = duration.as_secs_f64();
    let mut times = Vec::with_capacity((rate * end * 1.1) as usize + 16);
    match kind {
        ArrivalKind::Constant => {
            let gap = 1.0 / rate;
            let mut t = 0.0;
            while t < end {
                times.push(Duration::from_secs_f64(t));
                t += gap;
            }
        }
        ArrivalKind::Poisson => {
            let gaps = Exp::new(rate).expect("rate is positive");
            let mut t = gaps.sample(rng);
            while t < end {
                times.push(Duration::from_secs_f64(t));
                t += gaps.sample(rng);
            }
        }
        ArrivalKind::Bursty => {
            // Poisson at rate/duty in "on time", then mapped onto the on windows, so the
            // mean over whole periods is `rate` and nothing arrives in the off windows.
            let period = burst.period.as_secs_f64();
            let on = period * burst.duty;
            let gaps = Exp::new(rate / burst.duty).expect("rate is positive");
            let mut on_time = gaps.sample(rng);
            loop {
                let cycle = (on_time / on).floor();
                let t = cycle * period + (on_time - cycle * on);
                if t >= end {
                    break;
                }
                times.push(Duration::from_secs_f64(t));
                on_time += gaps.sample(rng);
            }
        }
    }
    times
}

/// Builds the schedule of a workload for a cluster with `function_cpus` CPUs for functions
/// and this way of choosing classes (from [`Workload::check_classes`]).
///
/// A call's class is its mix entry's fixed class, or else drawn from the class weights; the
/// draw is only made when needed, so a workload without fixed classes gets the very schedule
/// it got before classes could be fixed.
pub fn plan(
    workload: &Workload,
    choice: &ClassChoice,
    function_cpus: usize,
) -> Result<Plan, WorkloadError> {
    if let Some(trace) = &workload.trace {
        return plan_trace(workload, trace, choice.weights.len());
    }
    let invalid = |m: String| WorkloadError::Invalid(m);
    let classes =
        WeightedIndex::new(&choice.weights).map_err(|e| invalid(format!("class weights: {e}")))?;
    let mix = WeightedIndex::new(workload.mix.iter().map(|e| e.weight))
        .map_err(|e| invalid(format!("mix weights: {e}")))?;
    let tenants = workload.tenant_names();
    let targets: Vec<Target> = workload
        .mix
        .iter()
        .map(|e| Target {
            function: e.deployed_name(),
            payload: Workload::payload(e),
            tenant: workload.tenant_of(e, &tenants),
            cpu: Duration::from_secs_f64(e.cpu_ms / 1e3),
        })
        .collect();
    let capacity = function_cpus.max(1) as f64 * 1000.0 / workload.mean_cpu_ms().max(f64::EPSILON);
    let burst = Burst {
        period: Duration::from_millis(workload.burst_period_ms),
        duty: workload.burst_duty,
    };
    let mut phases = Vec::new();
    for (i, phase) in workload.phases.iter().enumerate() {
        let rate = match (phase.rate, phase.load) {
            (Some(rate), _) => rate,
            (None, Some(load)) => load * capacity,
            (None, None) => unreachable!("validated: every phase has a rate or a load"),
        };
        let arrival = phase.arrival.unwrap_or(workload.arrival);
        let duration = Duration::from_secs_f64(phase.duration_s);
        let expected = rate * phase.duration_s;
        if expected > MAX_INVOCATIONS_PER_PHASE as f64 {
            return Err(invalid(format!(
                "phase `{}` would send {expected:.0} invocations; the limit is {MAX_INVOCATIONS_PER_PHASE}",
                phase.name
            )));
        }
        let mut rng = SmallRng::seed_from_u64(
            workload
                .seed
                .wrapping_add((i as u64 + 1).wrapping_mul(PHASE_SEED_SALT)),
        );
        let times = arrivals(arrival, rate, duration, burst, &mut rng);
        let invocations = times
            .into_iter()
            .map(|at| {
                let target = mix.sample(&mut rng);
                let class = match choice.fixed.get(target).copied().flatten() {
                    Some(class) => class,
                    None => classes.sample(&mut rng) as u8,
                };
                Planned {
                    at,
                    target: target as u32,
                    class,
                }
            })
            .collect();
        phases.push(PhasePlan {
            name: phase.name.clone(),
            warmup: phase.warmup,
            rate,
            duration,
            arrival,
            invocations,
        });
    }
    Ok(Plan {
        targets,
        phases,
        tenants,
    })
}

/// A trace replay: every row becomes a `counter` call spinning the row's duration (capped),
/// in the row's class (ids past the cluster's cheapest class are clamped to it).
fn plan_trace(workload: &Workload, trace: &Path, classes: usize) -> Result<Plan, WorkloadError> {
    // Validate the whole file first: the streaming reader silently stops at a bad row.
    summarize_trace(trace).map_err(|e| WorkloadError::Invalid(format!("trace: {e}")))?;
    let reader = TraceReader::open(trace, workload.trace_time_scale, classes)
        .map_err(|e| WorkloadError::Invalid(format!("trace: {e}")))?;
    let limit = workload.trace_duration_s.map(Duration::from_secs_f64);
    let mut targets = Vec::new();
    let mut by_spin: HashMap<u64, u32> = HashMap::new();
    let mut invocations = Vec::new();
    let mut first = None;
    for row in reader {
        let arrival = Duration::from_nanos(row.arrival);
        // Times count from the first row, so a trace cut from the middle of a day starts now.
        let at = arrival - *first.get_or_insert(arrival);
        if limit.is_some_and(|l| at >= l) {
            break;
        }
        if invocations.len() >= MAX_INVOCATIONS_PER_PHASE {
            return Err(WorkloadError::Invalid(format!(
                "trace has more than {MAX_INVOCATIONS_PER_PHASE} rows in the replayed span; set trace_duration_s"
            )));
        }
        let spin_ms = ((row.runtime as f64 / NANOS_PER_MS).round() as u64)
            .clamp(1, workload.trace_max_spin_ms.max(1));
        let target = *by_spin.entry(spin_ms).or_insert_with(|| {
            targets.push(Target {
                function: TRACE_FUNCTION.into(),
                payload: format!("spin {spin_ms}").into_bytes(),
                tenant: 0,
                cpu: Duration::from_millis(spin_ms),
            });
            targets.len() as u32 - 1
        });
        invocations.push(Planned {
            at,
            target,
            class: row.class,
        });
    }
    let duration = invocations
        .last()
        .map_or(Duration::ZERO, |p: &Planned| p.at)
        .max(Duration::from_millis(1));
    let rate = invocations.len() as f64 / duration.as_secs_f64();
    Ok(Plan {
        targets,
        tenants: vec![workload.tenant.clone()],
        phases: vec![PhasePlan {
            name: TRACE_PHASE.into(),
            warmup: false,
            rate,
            duration,
            arrival: ArrivalKind::Poisson,
            invocations,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BURST: Burst = Burst {
        period: Duration::from_millis(100),
        duty: 0.25,
    };

    fn rate_of(kind: ArrivalKind, seed: u64) -> (Vec<Duration>, f64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let times = arrivals(kind, 2_000.0, Duration::from_secs(10), BURST, &mut rng);
        let rate = times.len() as f64 / 10.0;
        (times, rate)
    }

    #[test]
    fn every_process_hits_its_rate() {
        for kind in [
            ArrivalKind::Constant,
            ArrivalKind::Poisson,
            ArrivalKind::Bursty,
        ] {
            let (times, rate) = rate_of(kind, 7);
            assert!((rate - 2_000.0).abs() / 2_000.0 < 0.03, "{kind:?}: {rate}");
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "{kind:?} not sorted"
            );
            assert!(times.iter().all(|t| *t < Duration::from_secs(10)));
        }
    }

    #[test]
    fn bursty_arrivals_only_in_on_windows() {
        let (times, _) = rate_of(ArrivalKind::Bursty, 3);
        for t in times {
            let phase = t.as_secs_f64() % 0.1;
            assert!(phase < 0.025 + 1e-9, "arrival at {t:?} is in an off window");
        }
    }

    #[test]
    fn constant_is_evenly_spaced() {
        let (times, _) = rate_of(ArrivalKind::Constant, 1);
        assert_eq!(times.len(), 20_000);
        assert_eq!(times[1] - times[0], Duration::from_micros(500));
    }

    fn workload(seed: u64) -> Workload {
        Workload::parse(&format!(
            r#"
name = "t"
seed = {seed}
[classes]
critical = 1
batch = 4
[[mix]]
function = "counter"
payload = "spin 20"
cpu_ms = 20
[[mix]]
function = "echo"
weight = 3
[[phases]]
name = "a"
duration_s = 2
load = 2.0
"#
        ))
        .unwrap()
    }

    #[test]
    fn plans_are_deterministic_by_seed_and_follow_the_weights() {
        let choice = ClassChoice {
            weights: vec![1.0, 0.0, 0.0, 4.0],
            fixed: vec![None, None],
        };
        let a = plan(&workload(5), &choice, 1).unwrap();
        let b = plan(&workload(5), &choice, 1).unwrap();
        let c = plan(&workload(6), &choice, 1).unwrap();
        assert_eq!(a.phases[0].invocations, b.phases[0].invocations);
        assert_ne!(a.phases[0].invocations, c.phases[0].invocations);
        // load 2 on one CPU with a mean of 5 ms per call = 400/s.
        assert!((a.phases[0].rate - 400.0).abs() < 1e-6);
        let calls = &a.phases[0].invocations;
        assert!(calls.iter().all(|p| p.class == 0 || p.class == 3));
        let critical = calls.iter().filter(|p| p.class == 0).count() as f64 / calls.len() as f64;
        assert!((critical - 0.2).abs() < 0.05, "{critical}");
        let echo = calls.iter().filter(|p| p.target == 1).count() as f64 / calls.len() as f64;
        assert!((echo - 0.75).abs() < 0.05, "{echo}");
        assert_eq!(a.reported_invocations(), calls.len());
    }

    #[test]
    fn fixed_classes_follow_their_function() {
        let names: Vec<String> = ["critical", "high", "standard", "batch"]
            .map(String::from)
            .to_vec();
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/preempt-2x.toml"),
        )
        .unwrap();
        let w = Workload::parse(&text).unwrap();
        let choice = w.check_classes(&names).unwrap();
        let p = plan(&w, &choice, 2).unwrap();
        let overload = p.phases.iter().find(|ph| ph.name == "overload").unwrap();
        // 2× two CPUs of calls averaging 0.2 × 20 + 0.8 × 200 = 164 ms.
        assert!((overload.rate - 2.0 * 2.0 * 1000.0 / 164.0).abs() < 1e-9);
        let spin_of = |c: &Planned| p.targets[c.target as usize].payload.clone();
        for call in &overload.invocations {
            let expected = if call.class == 0 {
                "spin 20"
            } else {
                "spin 200"
            };
            assert_eq!(spin_of(call), expected.as_bytes(), "{call:?}");
            assert!(call.class == 0 || call.class == 3, "{call:?}");
        }
        let critical = overload.invocations.iter().filter(|c| c.class == 0).count() as f64
            / overload.invocations.len() as f64;
        assert!((critical - 0.2).abs() < 0.03, "{critical}");
    }

    #[test]
    fn trace_rows_become_capped_spins_in_their_class() {
        let dir = std::env::temp_dir().join(format!("tariff-bench-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.csv");
        std::fs::write(
            &path,
            "arrival_s,function,duration_ms,memory_mb,class\n\
             10.0,f,12.4,100,0\n10.5,g,5000,100,9\n11.0,f,12.4,100,1\n",
        )
        .unwrap();
        let w = Workload::parse(&format!(
            "name = \"t\"\ntrace = \"{}\"\ntrace_max_spin_ms = 100",
            path.display()
        ))
        .unwrap();
        let choice = ClassChoice {
            weights: vec![1.0; 4],
            fixed: Vec::new(),
        };
        let p = plan(&w, &choice, 1).unwrap();
        let calls = &p.phases[0].invocations;
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].at, Duration::ZERO);
        assert_eq!(calls[2].at, Duration::from_secs(1));
        assert_eq!(calls.iter().map(|c| c.class).collect::<Vec<_>>(), [0, 3, 1]);
        assert_eq!(p.targets[calls[0].target as usize].payload, b"spin 12");
        assert_eq!(p.targets[calls[1].target as usize].payload, b"spin 100");
        assert_eq!(p.targets.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
