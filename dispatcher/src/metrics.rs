//! The dispatcher's Prometheus metrics, served on `--metrics ADDR` (endpoint in
//! `tariff_cluster::metrics`, every series in `docs/operations.md`).
//!
//! Runs are counted where they end (`service::serve_lane` calls [`DispatcherMetrics::ran`]);
//! the machine's levels — free memory, running per class, instances by state, idle-list
//! membership — are read at scrape time from the same sources the idle tick and the polls
//! use, so a scrape never disagrees with what the shards are told. Labels are bounded: the
//! class, the outcome (`ok` or an error kind), the start kind and the instance state.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tariff_cluster::metrics::{
    latency_family, ClassLabel, Exposition, LatencyFamily, OutcomeLabels, StartLabels,
};
use tariff_types::wire::Completion;

/// Labels of the instance gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    /// `idle` (a warm instance waiting) or `running` (a function process at work).
    state: String,
}

/// A snapshot of the machine's levels, taken at scrape time.
pub(crate) struct Levels {
    /// Free memory as the idle tick last measured it, bytes.
    pub(crate) free_memory_bytes: u64,
    /// Unfinished invocations per class, most expensive first.
    pub(crate) running: Vec<u32>,
    /// Idle warm instances.
    pub(crate) idle_instances: usize,
    /// Function processes running.
    pub(crate) running_processes: usize,
    /// Whether the machine is on some shard's idle list.
    pub(crate) listed: bool,
    /// Shards with a live session.
    pub(crate) shards: usize,
}

/// Where [`DispatcherMetrics`] reads the levels from (the dispatcher's shared state).
pub(crate) trait LevelSource: Send + Sync + 'static {
    /// The levels now.
    fn levels(&self) -> Levels;
    /// The name of class `index` (its index when the classes are not yet known).
    fn class_name(&self, index: usize) -> String;
}

/// Every series a dispatcher exposes.
pub(crate) struct DispatcherMetrics {
    registry: Registry,
    runs: Family<OutcomeLabels, Counter>,
    run_seconds: LatencyFamily<ClassLabel>,
    starts: Family<StartLabels, Counter>,
    free_memory: Gauge,
    running: Family<ClassLabel, Gauge>,
    instances: Family<StateLabel, Gauge>,
    idle_listed: Gauge,
    shards: Gauge,
    /// Memory pressure's cost by class (kills are `runs{outcome="killed_memory_pressure"}`).
    swapped_out: Family<ClassLabel, Counter>,
    swapped_in: Family<ClassLabel, Counter>,
    held_for_memory: Family<ClassLabel, Counter<f64, AtomicU64>>,
}

impl DispatcherMetrics {
    /// Registers every series; `cores` and `memory_bytes` are exposed as constant gauges so
    /// dashboards can show utilisation.
    pub(crate) fn new(cores: u32, memory_bytes: u64) -> Self {
        let mut registry = Registry::default();
        let runs = Family::<OutcomeLabels, Counter>::default();
        let run_seconds = latency_family();
        let starts = Family::<StartLabels, Counter>::default();
        let free_memory = Gauge::default();
        let running = Family::<ClassLabel, Gauge>::default();
        let instances = Family::<StateLabel, Gauge>::default();
        let idle_listed = Gauge::default();
        let shards = Gauge::default();
        let swapped_out = Family::<ClassLabel, Counter>::default();
        let swapped_in = Family::<ClassLabel, Counter>::default();
        let held_for_memory = Family::<ClassLabel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "tariff_dispatcher_swapped_out_bytes",
            "Bytes of finished runs' memory paged out to swap under memory pressure, by class",
            swapped_out.clone(),
        );
        registry.register(
            "tariff_dispatcher_swapped_in_bytes",
            "Bytes of finished runs' memory brought back from swap, by class",
            swapped_in.clone(),
        );
        registry.register(
            "tariff_dispatcher_held_for_memory_seconds",
            "Time finished runs were held stopped waiting for memory, by class",
            held_for_memory.clone(),
        );
        let cores_gauge = Gauge::<i64>::default();
        cores_gauge.set(i64::from(cores));
        let memory_gauge = Gauge::<i64>::default();
        memory_gauge.set(memory_bytes as i64);
        registry.register(
            "tariff_dispatcher_runs",
            "Invocations run on this machine, by class and outcome (ok or the error kind)",
            runs.clone(),
        );
        registry.register(
            "tariff_dispatcher_run_seconds",
            "Time successful invocations ran on this machine, start to finish",
            run_seconds.clone(),
        );
        registry.register(
            "tariff_dispatcher_starts",
            "Successful runs by whether a process was started (cold) or a warm instance served it",
            starts.clone(),
        );
        registry.register(
            "tariff_dispatcher_cores",
            "CPUs functions may use on this machine",
            cores_gauge,
        );
        registry.register(
            "tariff_dispatcher_memory_bytes",
            "Memory functions may use on this machine",
            memory_gauge,
        );
        registry.register(
            "tariff_dispatcher_free_memory_bytes",
            "Free function memory as last measured by the idle tick",
            free_memory.clone(),
        );
        registry.register(
            "tariff_dispatcher_running",
            "Unfinished invocations on this machine, by class",
            running.clone(),
        );
        registry.register(
            "tariff_dispatcher_instances",
            "Function processes on this machine by state: idle (warm, waiting) or running",
            instances.clone(),
        );
        registry.register(
            "tariff_dispatcher_idle_listed",
            "1 while this machine is on a shard's idle list, else 0",
            idle_listed.clone(),
        );
        registry.register(
            "tariff_dispatcher_shards",
            "Shards this dispatcher has a live session with",
            shards.clone(),
        );
        Self {
            registry,
            runs,
            run_seconds,
            starts,
            free_memory,
            running,
            instances,
            idle_listed,
            shards,
            swapped_out,
            swapped_in,
            held_for_memory,
        }
    }

    /// Counts one finished run of class `class` (named `class_name`).
    pub(crate) fn ran(&self, class_name: String, completion: &Completion) {
        let outcome = match &completion.result {
            Ok(_) => "ok",
            Err(error) => error.kind(),
        };
        self.runs
            .get_or_create(&OutcomeLabels {
                class: class_name.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
        let Ok(report) = &completion.result else {
            return;
        };
        let label = ClassLabel {
            class: class_name.clone(),
        };
        let memory = report.memory;
        if memory != Default::default() {
            self.swapped_out
                .get_or_create(&label)
                .inc_by(memory.swapped_out_bytes);
            self.swapped_in
                .get_or_create(&label)
                .inc_by(memory.swapped_in_bytes);
            self.held_for_memory
                .get_or_create(&label)
                .inc_by(memory.held_us as f64 / 1e6);
        }
        let run_us = report.finished_at_us.saturating_sub(report.started_at_us);
        self.run_seconds
            .get_or_create(&ClassLabel {
                class: class_name.clone(),
            })
            .observe(run_us as f64 / 1e6);
        let start = if report.cold_start { "cold" } else { "warm" };
        self.starts
            .get_or_create(&StartLabels {
                class: class_name,
                start: start.to_owned(),
            })
            .inc();
    }

    fn refresh(&self, source: &dyn LevelSource) {
        let levels = source.levels();
        self.free_memory.set(levels.free_memory_bytes as i64);
        for (index, running) in levels.running.iter().enumerate() {
            self.running
                .get_or_create(&ClassLabel {
                    class: source.class_name(index),
                })
                .set(i64::from(*running));
        }
        for (state, count) in [
            ("idle", levels.idle_instances),
            ("running", levels.running_processes),
        ] {
            self.instances
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(count as i64);
        }
        self.idle_listed.set(i64::from(levels.listed));
        self.shards.set(levels.shards as i64);
    }
}

/// What the dispatcher's `--metrics` endpoint serves.
pub(crate) struct DispatcherExposition {
    /// The series.
    pub(crate) metrics: Arc<DispatcherMetrics>,
    /// Where the levels come from.
    pub(crate) source: Arc<dyn LevelSource>,
}

impl Exposition for DispatcherExposition {
    fn encode(&self) -> String {
        self.metrics.refresh(&*self.source);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
