//! What a run measures: per-class latency and slowdown histograms, utilisation samples, and
//! swapping per class and per machine.
//!
//! HDR histograms keep memory constant however long the run (three significant digits), which
//! is what lets a run's footprint stay flat as simulated time grows.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::events::Nanos;

/// Significant digits of every histogram.
const SIGFIG: u8 = 3;
/// Slowdowns are recorded in thousandths so that 1.001 and 1.0 differ.
const SLOWDOWN_SCALE: f64 = 1000.0;
/// Utilisation samples are recorded in tenths of a percent.
const UTIL_SCALE: f64 = 1000.0;
/// Nanoseconds per microsecond (latencies are recorded in µs).
const NANOS_PER_MICRO: u64 = 1000;
/// Microseconds per millisecond (latencies are reported in ms).
const MICROS_PER_MS: f64 = 1000.0;
/// Quantiles reported: p50, p99, p99.9.
pub const QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

/// Largest value a histogram tracks: 2⁴⁰ µs is 12 days of latency, 2⁴⁰ thousandths a
/// slowdown of a billion; anything larger saturates rather than resizing mid-run.
const HIGHEST_TRACKABLE: u64 = 1 << 40;

/// A fresh fixed-range histogram.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE, SIGFIG).expect("valid histogram bounds")
}

/// Measurements of one class.
#[derive(Debug, Clone)]
pub struct ClassStats {
    /// End-to-end latency (arrival to completion), µs.
    pub latency: Histogram<u64>,
    /// Latency ÷ runtime, in thousandths.
    pub slowdown: Histogram<u64>,
    /// Invocations that arrived.
    pub arrived: u64,
    /// Invocations that completed within the run.
    pub completed: u64,
    /// Invocations killed because swapping could not free enough memory.
    pub killed: u64,
    /// Bytes swapped out.
    pub swapped_bytes: u64,
}

impl ClassStats {
    /// Empty statistics.
    fn new() -> Self {
        Self {
            latency: histogram(),
            slowdown: histogram(),
            arrived: 0,
            completed: 0,
            killed: 0,
            swapped_bytes: 0,
        }
    }
}

/// Everything one scheduler's run measures.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Per class.
    pub classes: Vec<ClassStats>,
    /// Busy cores ÷ cores, one sample per machine per tick, in tenths of a percent (complete
    /// once [`Self::close`] has run).
    pub utilisation: Histogram<u64>,
    /// Tallied utilisation samples not yet in `utilisation`, by busy cores out of
    /// `tallied_cores`.
    tallied: Vec<u64>,
    /// Cores per machine of the tallied samples.
    tallied_cores: usize,
    /// Resident memory ÷ capacity, one sample per machine per tick (memory model only).
    pub memory_utilisation: Histogram<u64>,
    /// Bytes swapped out per machine over the run (memory model only).
    pub swapped_per_machine: Vec<u64>,
    /// Most bytes held in swap at once per machine: the swap space it needs.
    pub peak_swap_per_machine: Vec<u64>,
    /// Kills of an instance while a cheaper class's instance on its machine held memory
    /// (resident or swapped) and was spared: the kill rule forbids it, so this stays 0.
    pub kills_over_cheaper: u64,
}

impl Stats {
    /// Empty statistics for `classes` classes on `machines` machines.
    pub fn new(classes: usize, machines: usize) -> Self {
        Self {
            classes: (0..classes).map(|_| ClassStats::new()).collect(),
            utilisation: histogram(),
            tallied: Vec::new(),
            tallied_cores: 0,
            memory_utilisation: histogram(),
            swapped_per_machine: vec![0; machines],
            peak_swap_per_machine: vec![0; machines],
            kills_over_cheaper: 0,
        }
    }

    /// An invocation of `class` arrived.
    pub fn arrived(&mut self, class: u8) {
        self.classes[usize::from(class)].arrived += 1;
    }

    /// An invocation of `class` that arrived at `arrival` and needed `runtime` finished at
    /// `now`.
    pub fn completed(&mut self, class: u8, arrival: Nanos, runtime: Nanos, now: Nanos) {
        let c = &mut self.classes[usize::from(class)];
        let latency = now.saturating_sub(arrival);
        c.completed += 1;
        c.latency
            .saturating_record((latency / NANOS_PER_MICRO).max(1));
        let slowdown = latency as f64 / runtime.max(1) as f64;
        c.slowdown
            .saturating_record((slowdown * SLOWDOWN_SCALE).round().max(1.0) as u64);
    }

    /// An invocation of `class` was killed.
    pub fn killed(&mut self, class: u8) {
        self.classes[usize::from(class)].killed += 1;
    }

    /// `bytes` of a `class` invocation on `machine` were swapped out.
    pub fn swapped(&mut self, class: u8, machine: usize, bytes: u64) {
        self.classes[usize::from(class)].swapped_bytes += bytes;
        self.swapped_per_machine[machine] += bytes;
    }

    /// Machine `machine` holds `bytes` in swap now.
    pub fn swap_occupancy(&mut self, machine: usize, bytes: u64) {
        let peak = &mut self.peak_swap_per_machine[machine];
        *peak = (*peak).max(bytes);
    }

    /// One utilisation sample (a fraction in [0, 1]).
    pub fn utilisation_sample(&mut self, fraction: f64) {
        self.utilisation
            .saturating_record((fraction * UTIL_SCALE).round() as u64);
    }

    /// One utilisation sample per machine, from the tally of busy cores: the same samples as
    /// calling [`Self::utilisation_sample`] for every machine, in O(cores) rather than
    /// O(machines) (on 1,000 machines the per-machine loop every 10 ms was most of the run).
    /// They are summed per busy-core count and enter the histogram at [`Self::close`]: its
    /// counts add up alike, and a tick then costs additions instead of a histogram record per
    /// count (up to nine every 10 ms, more than the completions on a long trace).
    pub fn utilisation_tally(&mut self, tally: &BusyTally) {
        if self.tallied.len() < tally.machines_at.len() {
            self.tallied.resize(tally.machines_at.len(), 0);
        }
        self.tallied_cores = tally.cores;
        for (sum, &machines) in self.tallied.iter_mut().zip(&tally.machines_at) {
            *sum += machines;
        }
    }

    /// Records what the run's ticks tallied into `utilisation`; call once the run is over.
    pub fn close(&mut self) {
        for (busy, samples) in self.tallied.iter_mut().enumerate() {
            if *samples > 0 {
                let fraction = busy as f64 / self.tallied_cores as f64;
                self.utilisation
                    .saturating_record_n((fraction * UTIL_SCALE).round() as u64, *samples);
                *samples = 0;
            }
        }
    }

    /// One memory utilisation sample (a fraction; above 1 before swapping catches up).
    pub fn memory_sample(&mut self, fraction: f64) {
        self.memory_utilisation
            .saturating_record((fraction * UTIL_SCALE).round() as u64);
    }
}

/// How many machines have each number of busy cores, kept up to date as cores are taken and
/// freed, so a tick samples the whole cluster's utilisation without visiting every machine.
#[derive(Debug, Clone)]
pub struct BusyTally {
    /// Machines with `i` busy cores at index `i` (0..=cores).
    machines_at: Vec<u64>,
    /// Cores per machine.
    cores: usize,
}

impl BusyTally {
    /// `machines` idle machines of `cores` cores.
    pub fn new(machines: usize, cores: usize) -> Self {
        let mut machines_at = vec![0; cores + 1];
        machines_at[0] = machines as u64;
        Self { machines_at, cores }
    }

    /// A machine went from `from` to `to` busy cores (each at most `cores`).
    pub fn moved(&mut self, from: usize, to: usize) {
        let (from, to) = (from.min(self.cores), to.min(self.cores));
        if from != to {
            self.machines_at[from] -= 1;
            self.machines_at[to] += 1;
        }
    }
}

/// Three quantiles of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

impl Percentiles {
    /// The reported quantiles of `h`, divided by `scale`.
    fn of(h: &Histogram<u64>, scale: f64) -> Self {
        let [p50, p99, p999] = QUANTILES.map(|q| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / scale
            }
        });
        Self { p50, p99, p999 }
    }

    /// Latency percentiles in ms.
    pub fn latency_ms(h: &Histogram<u64>) -> Self {
        Self::of(h, MICROS_PER_MS)
    }

    /// Slowdown percentiles.
    pub fn slowdown(h: &Histogram<u64>) -> Self {
        Self::of(h, SLOWDOWN_SCALE)
    }
}

/// A spread of fractions in [0, 1]: p5, p25, p50, p75, p95 and the mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// 5th percentile.
    pub p5: f64,
    /// 25th percentile.
    pub p25: f64,
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Mean.
    pub mean: f64,
}

/// Quantiles of the spread, in order.
const SPREAD_QUANTILES: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];

impl Spread {
    /// The spread of a utilisation histogram, as fractions.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                p5: 0.0,
                p25: 0.0,
                p50: 0.0,
                p75: 0.0,
                p95: 0.0,
                mean: 0.0,
            };
        }
        let [p5, p25, p50, p75, p95] =
            SPREAD_QUANTILES.map(|q| h.value_at_quantile(q) as f64 / UTIL_SCALE);
        Self {
            p5,
            p25,
            p50,
            p75,
            p95,
            mean: h.mean() / UTIL_SCALE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_records_latency_and_slowdown() {
        let mut s = Stats::new(2, 1);
        s.completed(1, 1_000_000, 2_000_000, 5_000_000);
        let c = &s.classes[1];
        assert_eq!(c.completed, 1);
        let lat = Percentiles::latency_ms(&c.latency);
        assert!((lat.p50 - 4.0).abs() < 0.01, "{lat:?}");
        let sd = Percentiles::slowdown(&c.slowdown);
        assert!((sd.p50 - 2.0).abs() < 0.01, "{sd:?}");
    }

    #[test]
    fn tallied_utilisation_is_the_per_machine_samples() {
        let mut tallied = Stats::new(1, 3);
        let mut sampled = Stats::new(1, 3);
        let mut tally = BusyTally::new(3, 4);
        let mut was = [0; 3];
        for busy in [[0, 0, 0], [1, 0, 4], [2, 3, 4]] {
            for (was, b) in was.iter_mut().zip(busy) {
                tally.moved(*was, b);
                *was = b;
                sampled.utilisation_sample(b as f64 / 4.0);
            }
            tallied.utilisation_tally(&tally);
        }
        tallied.close();
        assert_eq!(tallied.utilisation, sampled.utilisation);
    }

    #[test]
    fn swapping_is_counted_per_class_and_machine() {
        let mut s = Stats::new(3, 2);
        s.swapped(2, 1, 10);
        s.swapped(2, 1, 5);
        assert_eq!(s.classes[2].swapped_bytes, 15);
        assert_eq!(s.swapped_per_machine, vec![0, 15]);
    }
}
