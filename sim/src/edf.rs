//! The paper's ideal scheduler: preemptive earliest-deadline-first on one machine holding every
//! core of the cluster (100 × 8 = 800), with perfect knowledge of runtimes.
//!
//! The paper defines the deadline as `runtime × max_price / price`: the top class's deadline is
//! its runtime, cheaper classes get proportionally more slack. Read literally, as here by
//! default, that is a deadline *relative* to arrival used directly as the priority key, which
//! makes the scheduler a price-weighted shortest-job-first: under overload it runs short work
//! and starves long, cheap invocations, which never finish and so do not appear in the latency
//! figures — exactly what the paper observes of its EDF in section 4.2. With
//! [`SimConfig::edf_absolute_deadlines`] the key is `arrival + runtime × max_price / price`,
//! textbook EDF, which is optimal while the load is feasible but under sustained overload
//! suffers the domino effect: old invocations' deadlines come first and every class is late.
//!
//! The running set is always the `cores` smallest keys; a new arrival with a smaller key than
//! the largest running one preempts it.

use std::collections::BTreeSet;

use super::events::{Event, Nanos};
use super::workload::Invocation;
use super::{Ctx, SimConfig, SimScheduler};

/// One invocation's state.
#[derive(Debug, Clone, Copy)]
struct Task {
    /// The invocation.
    inv: Invocation,
    /// Its deadline.
    deadline: Nanos,
    /// Work left at `since` (or now, when waiting).
    remaining: Nanos,
    /// When it last got a core.
    since: Nanos,
    /// Retires stale completions.
    generation: u32,
}

/// The EDF model.
pub struct Edf {
    /// Task slab; ids are indices.
    tasks: Vec<Task>,
    /// Free slab slots.
    free: Vec<u32>,
    /// Running tasks by (deadline, id).
    running: BTreeSet<(Nanos, u32)>,
    /// Waiting tasks by (deadline, id).
    waiting: BTreeSet<(Nanos, u32)>,
    /// Cores of the one machine.
    cores: usize,
    /// Deadline stretch per class: max price ÷ price.
    stretch: Vec<f64>,
    /// Whether deadlines count from arrival (textbook EDF) or are the paper's relative ones.
    absolute: bool,
}

impl Edf {
    /// One machine with every core of `config`'s cluster.
    pub fn new(config: &SimConfig) -> Self {
        let prices = config.prices();
        let max = prices.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
        Self {
            tasks: Vec::new(),
            free: Vec::new(),
            running: BTreeSet::new(),
            waiting: BTreeSet::new(),
            cores: config.capacity().max(1),
            stretch: prices
                .iter()
                .map(|p| max / p.max(f64::MIN_POSITIVE))
                .collect(),
            absolute: config.edf_absolute_deadlines,
        }
    }

    /// Gives task `id` a core.
    fn start(&mut self, id: u32, now: Nanos, ctx: &mut Ctx) {
        let task = &mut self.tasks[id as usize];
        task.since = now;
        task.generation = task.generation.wrapping_add(1);
        self.running.insert((task.deadline, id));
        ctx.events.push(
            now + task.remaining,
            Event::Completion {
                id,
                generation: task.generation,
            },
        );
    }
}

impl SimScheduler for Edf {
    fn arrive(&mut self, now: Nanos, inv: Invocation, ctx: &mut Ctx) {
        let stretch = self.stretch[usize::from(inv.class)];
        let relative = (inv.runtime as f64 * stretch) as Nanos;
        let deadline = if self.absolute {
            inv.arrival + relative
        } else {
            relative
        };
        let task = Task {
            inv,
            deadline,
            remaining: inv.runtime,
            since: now,
            generation: 0,
        };
        let id = super::slots::store(&mut self.tasks, &mut self.free, task, |old, new| Task {
            generation: old.generation,
            ..new
        });
        if self.running.len() < self.cores {
            self.start(id, now, ctx);
            return;
        }
        let latest = *self.running.last().expect("cores > 0 and all busy");
        if (deadline, id) < latest {
            self.running.remove(&latest);
            let victim = &mut self.tasks[latest.1 as usize];
            victim.remaining = victim
                .remaining
                .saturating_sub(now.saturating_sub(victim.since));
            victim.generation = victim.generation.wrapping_add(1);
            self.waiting.insert(latest);
            self.start(id, now, ctx);
        } else {
            self.waiting.insert((deadline, id));
        }
    }

    fn complete(&mut self, now: Nanos, id: u32, generation: u32, ctx: &mut Ctx) {
        let task = self.tasks[id as usize];
        if task.generation != generation || !self.running.remove(&(task.deadline, id)) {
            return;
        }
        ctx.stats
            .completed(task.inv.class, task.inv.arrival, task.inv.runtime, now);
        self.tasks[id as usize].generation = generation.wrapping_add(1);
        self.free.push(id);
        if let Some((_, next)) = self.waiting.pop_first() {
            self.start(next, now, ctx);
        }
    }

    fn tick(&mut self, _now: Nanos, ctx: &mut Ctx) {
        ctx.stats
            .utilisation_sample(self.running.len() as f64 / self.cores as f64);
    }
}
