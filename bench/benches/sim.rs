//! Simulator speed: events per second for each scheduler on the paper's cluster (100 × 8
//! cores) at full load. The issue asks for at least 2 million events per second per run.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tariff_sim::{run_experiment, SchedulerKind, SimConfig};

/// Simulated seconds per iteration: long enough to reach steady state, short enough for
/// criterion's sampling.
const SIMULATED_S: f64 = 5.0;
/// Offered load: at capacity, where queues are longest.
const LOAD: f64 = 1.0;

fn config(kind: SchedulerKind) -> SimConfig {
    SimConfig {
        duration_s: SIMULATED_S,
        schedulers: vec![kind],
        ..SimConfig::paper(LOAD)
    }
}

fn events_per_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim_events");
    group.sample_size(10);
    for kind in SchedulerKind::ALL {
        let config = config(kind);
        let events = run_experiment(&config).expect("synthetic").schedulers[0].events;
        group.throughput(Throughput::Elements(events));
        group.bench_function(kind.name(), |b| {
            b.iter(|| run_experiment(&config).expect("synthetic"))
        });
    }
    group.finish();
}

criterion_group!(benches, events_per_second);
criterion_main!(benches);
