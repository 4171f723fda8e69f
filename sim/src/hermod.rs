//! Hermod, as the paper simulates it: least-loaded placement over k random machines, early
//! binding (every arrival is placed at once), and processor sharing on each machine. It is
//! class-blind: the price class is only used to sort the measurements.
//!
//! Processor sharing with n tasks on c cores gives each task min(1, c/n) of a core. Rather than
//! touching every task at every change, each machine keeps the service `v` a task present
//! since the start would have received; a task that arrived when it was `v₀` is done when it
//! reaches `v₀ + runtime`. Tasks sit in a min-heap by that finishing point, so each event costs
//! O(log n) and only the machine's earliest finisher is scheduled (a generation counter
//! retires the stale event when the machine's load changes).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tariff_policy::placement;
use tariff_policy::MachineIdx;

use super::events::{Event, Nanos};
use super::stats::BusyTally;
use super::workload::Invocation;
use super::{Ctx, SimConfig, SimScheduler};

/// Slack when deciding that a task's service is complete, in ns of service: completions are
/// scheduled at a rounded-up nanosecond, so float error can leave a sliver of work.
const SERVICE_EPSILON: f64 = 1.0;
/// Salt for Hermod's placement random stream.
const HERMOD_SALT: u64 = 0x4E7_30D;

/// A task on a processor-sharing machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    /// Machine service level at which it is done (bits of a positive f64, which order like
    /// the float).
    finish_bits: u64,
    /// Arrival time.
    arrival: Nanos,
    /// Runtime.
    runtime: Nanos,
    /// Class, for the measurements.
    class: u8,
}

/// One processor-sharing machine.
#[derive(Debug, Default)]
struct PsMachine {
    /// Unfinished tasks by finishing point.
    jobs: BinaryHeap<Reverse<Job>>,
    /// Service each present task has received since the machine started, in ns.
    service: f64,
    /// When `service` was last brought up to date.
    updated: Nanos,
    /// Retires stale completion events.
    generation: u32,
}

impl PsMachine {
    /// Service rate per task with this many tasks.
    fn rate(&self, cores: usize) -> f64 {
        let n = self.jobs.len();
        if n == 0 {
            0.0
        } else {
            (cores as f64 / n as f64).min(1.0)
        }
    }

    /// Brings `service` up to `now`.
    fn advance(&mut self, now: Nanos, cores: usize) {
        self.service += self.rate(cores) * now.saturating_sub(self.updated) as f64;
        self.updated = now;
    }

    /// Schedules the earliest finisher's completion (after the load changed).
    fn reschedule(&mut self, m: u32, now: Nanos, cores: usize, ctx: &mut Ctx) {
        self.generation = self.generation.wrapping_add(1);
        let Some(Reverse(first)) = self.jobs.peek() else {
            return;
        };
        let left = (f64::from_bits(first.finish_bits) - self.service).max(0.0);
        let at = now + (left / self.rate(cores)).ceil() as Nanos;
        ctx.events.push(
            at,
            Event::Completion {
                id: m,
                generation: self.generation,
            },
        );
    }
}

/// The Hermod model.
pub struct Hermod {
    /// The machines.
    machines: Vec<PsMachine>,
    /// Machine handles to sample from.
    all: Vec<MachineIdx>,
    /// Scratch for the sample.
    sample: Vec<MachineIdx>,
    /// Cores per machine.
    cores: usize,
    /// k of power-of-k.
    k: usize,
    /// Placement randomness.
    rng: SmallRng,
    /// Machines per number of busy cores, for utilisation samples.
    tally: BusyTally,
}

impl Hermod {
    /// A cluster as `config` describes it.
    pub fn new(config: &SimConfig) -> Self {
        Self {
            machines: (0..config.machines).map(|_| PsMachine::default()).collect(),
            all: (0..config.machines as u32).map(MachineIdx).collect(),
            sample: Vec::new(),
            cores: config.cores,
            k: config.k,
            rng: SmallRng::seed_from_u64(config.seed ^ HERMOD_SALT),
            tally: BusyTally::new(config.machines, config.cores),
        }
    }
}

impl SimScheduler for Hermod {
    fn arrive(&mut self, now: Nanos, inv: Invocation, ctx: &mut Ctx) {
        placement::sample(&mut self.rng, &self.all, self.k, &mut self.sample);
        let Some(m) = self
            .sample
            .iter()
            .min_by_key(|m| self.machines[m.0 as usize].jobs.len())
            .map(|m| m.0)
        else {
            return;
        };
        let machine = &mut self.machines[m as usize];
        self.tally.moved(machine.jobs.len(), machine.jobs.len() + 1);
        machine.advance(now, self.cores);
        let finish = machine.service + inv.runtime as f64;
        machine.jobs.push(Reverse(Job {
            finish_bits: finish.to_bits(),
            arrival: inv.arrival,
            runtime: inv.runtime,
            class: inv.class,
        }));
        machine.reschedule(m, now, self.cores, ctx);
    }

    fn complete(&mut self, now: Nanos, id: u32, generation: u32, ctx: &mut Ctx) {
        let machine = &mut self.machines[id as usize];
        if machine.generation != generation {
            return;
        }
        machine.advance(now, self.cores);
        let before = machine.jobs.len();
        while let Some(Reverse(first)) = machine.jobs.peek() {
            if f64::from_bits(first.finish_bits) > machine.service + SERVICE_EPSILON {
                break;
            }
            let job = *first;
            machine.jobs.pop();
            ctx.stats
                .completed(job.class, job.arrival, job.runtime, now);
        }
        self.tally.moved(before, machine.jobs.len());
        machine.reschedule(id, now, self.cores, ctx);
    }

    fn tick(&mut self, _now: Nanos, ctx: &mut Ctx) {
        ctx.stats.utilisation_tally(&self.tally);
    }
}
