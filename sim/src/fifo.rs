//! Plain FIFO: the class-blind baseline without preemption.
//!
//! One global first-come-first-served queue; an invocation starts on a free core as soon as
//! one exists anywhere in the cluster (the least busy machine), and runs to completion. This
//! is a central, work-conserving FIFO rather than a distributed one, so it shows what ignoring
//! price classes costs with placement taken out of the picture: any gap to Tariff is the
//! price-class ordering, not luck in finding a free machine.

use std::collections::{BTreeSet, VecDeque};

use super::events::{Event, Nanos};
use super::stats::BusyTally;
use super::workload::Invocation;
use super::{Ctx, SimConfig, SimScheduler};

/// The FIFO model.
pub struct Fifo {
    /// Invocations waiting for a core, in arrival order.
    queue: VecDeque<Invocation>,
    /// Running invocations; ids are indices.
    running: Vec<Option<(Invocation, u32)>>,
    /// Free slots of `running`.
    free: Vec<u32>,
    /// Busy cores per machine.
    busy: Vec<u32>,
    /// Machines per number of busy cores, for utilisation samples.
    tally: BusyTally,
    /// Machines with a free core, least busy first: (busy, machine).
    open: BTreeSet<(u32, u32)>,
    /// Cores per machine.
    cores: u32,
}

impl Fifo {
    /// A cluster as `config` describes it.
    pub fn new(config: &SimConfig) -> Self {
        Self {
            queue: VecDeque::new(),
            running: Vec::new(),
            free: Vec::new(),
            busy: vec![0; config.machines],
            tally: BusyTally::new(config.machines, config.cores),
            open: (0..config.machines as u32).map(|m| (0, m)).collect(),
            cores: config.cores as u32,
        }
    }

    /// Runs `inv` on machine `m` to completion.
    fn start(&mut self, inv: Invocation, m: u32, now: Nanos, ctx: &mut Ctx) {
        let busy = &mut self.busy[m as usize];
        self.open.remove(&(*busy, m));
        self.tally.moved(*busy as usize, *busy as usize + 1);
        *busy += 1;
        if *busy < self.cores {
            self.open.insert((*busy, m));
        }
        let id = super::slots::store(
            &mut self.running,
            &mut self.free,
            Some((inv, m)),
            |_, new| new,
        );
        ctx.events
            .push(now + inv.runtime, Event::Completion { id, generation: 0 });
    }
}

impl SimScheduler for Fifo {
    fn arrive(&mut self, now: Nanos, inv: Invocation, ctx: &mut Ctx) {
        match self.open.first() {
            Some(&(_, m)) if self.queue.is_empty() => self.start(inv, m, now, ctx),
            _ => self.queue.push_back(inv),
        }
    }

    fn complete(&mut self, now: Nanos, id: u32, _generation: u32, ctx: &mut Ctx) {
        let Some((inv, m)) = self.running[id as usize].take() else {
            return;
        };
        self.free.push(id);
        ctx.stats
            .completed(inv.class, inv.arrival, inv.runtime, now);
        let busy = &mut self.busy[m as usize];
        if *busy < self.cores {
            self.open.remove(&(*busy, m));
        }
        self.tally.moved(*busy as usize, *busy as usize - 1);
        *busy -= 1;
        self.open.insert((*busy, m));
        if let Some(next) = self.queue.pop_front() {
            self.start(next, m, now, ctx);
        }
    }

    fn tick(&mut self, _now: Nanos, ctx: &mut Ctx) {
        ctx.stats.utilisation_tally(&self.tally);
    }
}
