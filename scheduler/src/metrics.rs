//! The shard's Prometheus metrics, served on `--metrics ADDR` (see
//! `tariff_cluster::metrics` for the endpoint and `docs/operations.md` for every series).
//!
//! Two kinds of series, by where their numbers come from:
//!
//! * events counted where they happen, once per invocation: `client::invoke` is the one place
//!   every invocation passes through with its answer (refusals included), so it calls
//!   [`ShardMetrics::answered`];
//! * levels read from [`ShardState`] at scrape time ([`ShardMetrics::refresh`]): queue
//!   lengths, machines, the idle list, and the placement counts the state keeps by path. So
//!   the state stays the one owner of what changes, and a scrape sees its present values
//!   rather than whatever the last event left behind.
//!
//! Latencies are real histograms, not summaries: a summary's quantiles are computed in each
//! process and cannot be added up across shards, while histogram buckets can
//! (`histogram_quantile(0.99, sum by (le, class) (rate(..._bucket[5m])))` gives the
//! cluster's p99 per class). Labels are bounded: the class (a handful, fixed at start), the
//! outcome (`ok` or one of `InvokeError`'s kinds) and the placement path; never a function,
//! tenant or machine name, whose number has no bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tariff_cluster::metrics::{
    latency_family, ClassLabel, Exposition, LatencyFamily, OutcomeLabels, StartLabels,
};
use tariff_types::{ClassId, PriceClasses};

use crate::state::{Answer, PlacementCounts, ShardState};

/// The class label of a request whose class did not resolve (a bad `--class`).
const UNKNOWN_CLASS: &str = "unknown";
/// The outcome label of a successful invocation.
const OK_OUTCOME: &str = "ok";

/// Labels of the placement counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PathLabel {
    /// `warm`, `idle_list` or `power_of_k`.
    path: String,
}

/// One class's series that every successful invocation touches, resolved once when the
/// shard starts: a family lookup costs a label `String`, a hash and a lock, and the
/// per-invocation path would otherwise pay that seven times.
struct ClassSeries {
    ok: Counter,
    latency: Histogram,
    queue_wait: Histogram,
    run: Histogram,
    cold: Counter,
    warm: Counter,
    preempted: Counter,
    preempted_seconds: Counter<f64, AtomicU64>,
}

/// Every series a shard exposes, and the registry that encodes them.
pub(crate) struct ShardMetrics {
    registry: Registry,
    /// Class names by class id, for labels.
    classes: Vec<String>,
    /// The success path's series per class, by class id.
    by_class: Vec<ClassSeries>,
    invocations: Family<OutcomeLabels, Counter>,
    latency: LatencyFamily<ClassLabel>,
    queue_wait: LatencyFamily<ClassLabel>,
    run: LatencyFamily<ClassLabel>,
    starts: Family<StartLabels, Counter>,
    preempted: Family<ClassLabel, Counter>,
    preempted_seconds: Family<ClassLabel, Counter<f64, AtomicU64>>,
    placements: Family<PathLabel, Counter>,
    retries: Counter,
    queue_length: Family<ClassLabel, Gauge>,
    machines: Gauge,
    idle_list: Gauge,
    in_flight: Gauge,
}

impl ShardMetrics {
    /// Registers every series for a shard with these classes.
    pub(crate) fn new(classes: &PriceClasses) -> Self {
        let mut m = Self {
            registry: Registry::default(),
            classes: classes.names().map(str::to_owned).collect(),
            by_class: Vec::new(),
            invocations: Family::default(),
            latency: latency_family(),
            queue_wait: latency_family(),
            run: latency_family(),
            starts: Family::default(),
            preempted: Family::default(),
            preempted_seconds: Family::default(),
            placements: Family::default(),
            retries: Counter::default(),
            queue_length: Family::default(),
            machines: Gauge::default(),
            idle_list: Gauge::default(),
            in_flight: Gauge::default(),
        };
        m.registry.register(
            "tariff_shard_invocations",
            "Invocations answered by this shard, by class and outcome (ok or the error kind)",
            m.invocations.clone(),
        );
        m.registry.register(
            "tariff_shard_latency_seconds",
            "End-to-end time of successful invocations on the shard, request in to answer out",
            m.latency.clone(),
        );
        m.registry.register(
            "tariff_shard_queue_wait_seconds",
            "Time successful invocations waited in the shard's queue before a machine was chosen",
            m.queue_wait.clone(),
        );
        m.registry.register(
            "tariff_shard_run_seconds",
            "Time successful invocations ran on their machine, start to finish",
            m.run.clone(),
        );
        m.registry.register(
            "tariff_shard_starts",
            "Successful invocations by whether a process was started (cold) or a warm instance served it",
            m.starts.clone(),
        );
        m.registry.register(
            "tariff_shard_preempted_invocations",
            "Successful invocations that were held back by dearer work at least once",
            m.preempted.clone(),
        );
        m.registry.register(
            "tariff_shard_preempted_seconds",
            "Time successful invocations were runnable but held back by dearer work",
            m.preempted_seconds.clone(),
        );
        m.registry.register(
            "tariff_shard_placements",
            "Placements by how the machine was found: warm (a listed machine with a warm instance), idle_list, or power_of_k (after polling k machines)",
            m.placements.clone(),
        );
        m.registry.register(
            "tariff_shard_retries",
            "Invocations placed again after the machine running them was lost (functions deployed with --retries)",
            m.retries.clone(),
        );
        m.registry.register(
            "tariff_shard_queue_length",
            "Invocations queued on this shard, by class",
            m.queue_length.clone(),
        );
        m.registry.register(
            "tariff_shard_machines",
            "Machines (dispatchers) registered with this shard",
            m.machines.clone(),
        );
        m.registry.register(
            "tariff_shard_idle_list_machines",
            "Machines on this shard's idle list",
            m.idle_list.clone(),
        );
        m.registry.register(
            "tariff_shard_in_flight",
            "Invocations this shard has sent to machines and not yet seen answered",
            m.in_flight.clone(),
        );
        m.by_class = m
            .classes
            .iter()
            .map(|class| m.class_series(class))
            .collect();
        m
    }

    /// Resolves (and so creates, at zero) `class`'s success-path series.
    fn class_series(&self, class: &str) -> ClassSeries {
        let label = ClassLabel {
            class: class.to_owned(),
        };
        let start = |start: &str| {
            self.starts
                .get_or_create(&StartLabels {
                    class: class.to_owned(),
                    start: start.to_owned(),
                })
                .clone()
        };
        ClassSeries {
            ok: self
                .invocations
                .get_or_create(&OutcomeLabels {
                    class: class.to_owned(),
                    outcome: OK_OUTCOME.to_owned(),
                })
                .clone(),
            latency: self.latency.get_or_create(&label).clone(),
            queue_wait: self.queue_wait.get_or_create(&label).clone(),
            run: self.run.get_or_create(&label).clone(),
            cold: start("cold"),
            warm: start("warm"),
            preempted: self.preempted.get_or_create(&label).clone(),
            preempted_seconds: self.preempted_seconds.get_or_create(&label).clone(),
        }
    }

    fn class_name(&self, class: Option<ClassId>) -> String {
        class
            .and_then(|c| self.classes.get(usize::from(c.0)))
            .map_or_else(|| UNKNOWN_CLASS.to_owned(), Clone::clone)
    }

    /// Counts one answered invocation; `class` is `None` when its class did not resolve,
    /// `elapsed` is the time from its request arriving to its answer.
    pub(crate) fn answered(&self, class: Option<ClassId>, answer: &Answer, elapsed: Duration) {
        let series = class.and_then(|c| self.by_class.get(usize::from(c.0)));
        let (Ok(outcome), Some(series)) = (answer, series) else {
            // Errors (and a class that did not resolve, which is always one) are the rare
            // path: their outcome label is the error's kind.
            let outcome = match answer {
                Ok(_) => OK_OUTCOME,
                Err(error) => error.kind(),
            };
            self.invocations
                .get_or_create(&OutcomeLabels {
                    class: self.class_name(class),
                    outcome: outcome.to_owned(),
                })
                .inc();
            return;
        };
        let timings = outcome.timings();
        series.ok.inc();
        series.latency.observe(elapsed.as_secs_f64());
        series.queue_wait.observe(micros(timings.queued_us()));
        series.run.observe(micros(timings.run_us()));
        if outcome.run.cold_start {
            series.cold.inc();
        } else {
            series.warm.inc();
        }
        if outcome.run.preempted_us > 0 {
            series.preempted.inc();
            series
                .preempted_seconds
                .inc_by(micros(outcome.run.preempted_us));
        }
    }

    /// Sets the levels read from the state to their present values.
    fn refresh(&self, state: &ShardState) {
        let status = state.status();
        for (class, queued) in status.classes.iter().zip(&status.queued) {
            self.queue_length
                .get_or_create(&ClassLabel {
                    class: class.clone(),
                })
                .set(*queued as i64);
        }
        self.machines.set(status.machines.len() as i64);
        self.idle_list.set(status.idle_list.len() as i64);
        self.in_flight.set(status.in_flight as i64);
        let PlacementCounts {
            warm,
            idle_list,
            power_of_k,
            nested,
        } = state.placements();
        for (path, count) in [
            ("warm", warm),
            ("idle_list", idle_list),
            ("power_of_k", power_of_k),
            ("nested", nested),
        ] {
            self.placements
                .get_or_create(&PathLabel {
                    path: path.to_owned(),
                })
                .inner()
                .store(count, Ordering::Relaxed);
        }
        self.retries
            .inner()
            .store(state.retried(), Ordering::Relaxed);
    }
}

fn micros(us: u64) -> f64 {
    us as f64 / 1e6
}

/// What the shard's `--metrics` endpoint serves: its metrics, refreshed from its state.
pub(crate) struct ShardExposition {
    /// The series.
    pub(crate) metrics: Arc<ShardMetrics>,
    /// Where the levels are read from.
    pub(crate) state: Arc<ShardState>,
}

impl Exposition for ShardExposition {
    fn encode(&self) -> String {
        self.metrics.refresh(&self.state);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
