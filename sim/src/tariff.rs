//! Tariff in the simulator: the live shard core, run queue and swap choice, driven in virtual
//! time.
//!
//! Nothing here decides policy. Arrivals go round-robin to [`ShardCore`]s, which choose what to
//! place next and where (idle list or power-of-k); polls are answered at once with each
//! machine's true unfinished count per class. Each machine is a [`RunQueue`] whose
//! start/preempt/resume decisions are carried out by tracking each task's remaining work.
//! Memory pressure is resolved by [`tariff_policy::swap`], and each machine's idle-list
//! announcements (join the least crowded of k shards' lists when free memory is above a
//! threshold, update on significant change, leave below it) by the dispatcher's
//! [`IdleAdvertiser`].
//!
//! Memory per the paper: an invocation holds 100 MB when placed and grows linearly to its
//! total as it runs. Memory is sampled at every event on the machine and at every tick, so
//! growth between events is seen within one tick.
//!
//! Pressure is resolved in three steps, each only when the previous cannot: swap out waiting
//! instances ([`swap::choose_swap_out`]); suspend running ones and swap them out
//! ([`swap::choose_suspensions`]) — eight cores of instances growing to up to 10 GB each
//! outgrow 32 GB on their own a few per cent of the time, which used to end in kills; kill
//! ([`swap::choose_kills`]) only when memory and swap space together are full. A suspended
//! instance leaves the run queue and its core; when it is swapped back in it rejoins the run
//! queue (behind the instances of its class already there).

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tariff_policy::idle_advert::{
    self, IdleAction, IdleAdvertiser, IdlePolicy, DEFAULT_IDLE_THRESHOLD,
};
use tariff_policy::placement::PolledLoad;
use tariff_policy::run_queue::{Decision, RunQueue};
use tariff_policy::swap::{self, Instance};
use tariff_policy::{FunctionKey, MachineIdx, ShardConfig, ShardCore, Step};
use tariff_types::wire::IdleEntry;
use tariff_types::ClassId;

use std::collections::HashMap;

use super::events::{from_secs, to_duration, Event, Nanos};
use super::stats::BusyTally;
use super::workload::{Invocation, INITIAL_MEMORY_MB, MB};
use super::{Ctx, Overheads, SimConfig, SimScheduler, RT_BUDGET_PERIOD};

/// Memory a machine reports on the idle list when the memory model is off ("absurdly high").
const UNLIMITED_MEMORY: u64 = u64::MAX / 2;
/// Swapped instances come back in before they run only while this fraction of memory stays
/// free ("when the memory pressure is gone"), so a machine does not swap something in only to
/// swap it out at the next growth step. The same fraction as the idle-list threshold: a
/// machine with that much free memory counts as unpressured.
pub const SWAP_IN_HEADROOM_FRACTION: f64 = DEFAULT_IDLE_THRESHOLD;
/// Salt separating the dispatchers' random stream from the shards'.
const DISPATCHER_SALT: u64 = 0xD15_BA7C;
/// Poll answers kept on the stack (more candidates than this are collected in a `Vec`): the
/// paper's k is 3, and a poll adds at most two warm machines.
const INLINE_POLL: usize = 8;
/// Filler for the unused part of the stack's poll answers.
const NO_ANSWER: PolledLoad<'static> = PolledLoad {
    machine: MachineIdx(0),
    per_class: &[],
    slots: 0,
    warm: false,
};
/// Rounds of swap/kill per memory check; a kill can start a swapped task which needs room in
/// turn, but each round removes an instance, so a handful always suffices in practice.
const MAX_MEMORY_ROUNDS: usize = 8;

/// One invocation's state.
#[derive(Debug, Clone, Copy)]
struct Task {
    /// The invocation.
    inv: Invocation,
    /// Its machine, once placed.
    machine: u32,
    /// The shard that queued it.
    shard: u16,
    /// Work left at `since` (or now, when not running).
    remaining: Nanos,
    /// When it last got a core.
    since: Nanos,
    /// Bumped on every start/preempt so stale completions are ignored.
    generation: u32,
    /// Whether it holds a core.
    running: bool,
    /// Arrival order on its machine.
    seq: u64,
    /// Bytes swapped out (0 = resident).
    swapped: u64,
    /// Suspended for memory: out of the run queue until swapped back in.
    parked: bool,
    /// Whether it has had a core yet (a cold start is charged once).
    started: bool,
    /// Share of a core it gets while running: 1 except for the cheapest class under the
    /// live machine model ([`SimConfig::rt_cpus`]), which shares what the paying classes
    /// leave, and for a paying task on a throttled core (0); 0 until that share is first set.
    rate: f64,
    /// Real-time budget only: the core it holds while running.
    core: u16,
}

impl Task {
    /// Bytes resident at `now`: 100 MB growing linearly to the total with work done.
    fn resident(&self, now: Nanos) -> u64 {
        if self.swapped > 0 {
            return 0;
        }
        let base = (INITIAL_MEMORY_MB * MB).min(self.inv.memory);
        let remaining = self.remaining_at(now);
        let done = self.inv.runtime.saturating_sub(remaining) as f64 / self.inv.runtime as f64;
        base + ((self.inv.memory - base) as f64 * done) as u64
    }

    /// Work left at `now`: what it had when it last got a core or a new share of one, less
    /// the work done since at its share.
    fn remaining_at(&self, now: Nanos) -> Nanos {
        if !self.running {
            return self.remaining;
        }
        let done = (now.saturating_sub(self.since) as f64 * self.rate).round() as Nanos;
        self.remaining.saturating_sub(done)
    }
}

/// One simulated machine.
struct Machine {
    /// The machine scheduler's run order.
    rq: RunQueue,
    /// Unfinished invocations per class (what a poll answers).
    counts: Vec<u32>,
    /// Tasks holding a core.
    running: u32,
    /// Unfinished tasks (for the memory model).
    tasks: Vec<u32>,
    /// Bytes resident at the last memory check.
    resident: u64,
    /// Its dispatcher's idle-list state.
    advert: IdleAdvertiser,
    /// Cold-start model only: per function, when each idle instance went idle, the most
    /// recently idled last (the live machine scheduler's pool takes from that end too).
    idle: HashMap<u32, Vec<Nanos>>,
    /// Real-time budget only: the real-time cores, each with its use of the current period.
    rt_cores: Vec<RtCore>,
    /// Live machine model only: the cheapest class's own queue, FCFS with one turn per core
    /// (the dispatcher's `hold_cpu`); `rq` then orders the paying classes on the real-time
    /// CPUs alone.
    cheap: Option<RunQueue>,
    /// Live machine model only: cheapest-class tasks holding a turn, sharing what the
    /// running paying tasks leave of the cores.
    cheap_running: Vec<u32>,
    /// Live machine model only: paying tasks running on the real-time CPUs.
    paid_running: u32,
    /// Real-time budget only: the budget's period timer.
    period: PeriodTimer,
}

/// A machine's real-time budget period timer, as the kernel keeps one per group
/// (`kernel/sched/rt.c`): started by the first paying task to run after a quiet spell, which
/// begins a period there and then; every period after that renews the budget; stopped at a
/// period's end that finds no paying task on the machine. So periods begin where activity
/// does, not on a fixed grid.
#[derive(Debug, Clone, Copy, Default)]
struct PeriodTimer {
    /// Whether it runs.
    active: bool,
    /// Bumped at every start, so a stopped timer's pending event is ignored.
    generation: u32,
}

/// One real-time core of a machine under the real-time budget ([`SimConfig::rt_budget`]):
/// what its paying work has used of the current period, and who holds it.
#[derive(Debug, Clone, Copy, Default)]
struct RtCore {
    /// The paying task holding it.
    task: Option<u32>,
    /// Paying work run on it this period, up to when its holder got it (or the period began).
    used: Nanos,
    /// Since when its holder has been running on its budget.
    since: Nanos,
    /// Out of budget until the next period.
    throttled: bool,
}

/// Tariff's policy code wired to the event loop.
pub struct Tariff {
    /// The shards.
    shards: Vec<ShardCore<u32>>,
    /// Every shard's index, which is what a dispatcher chooses k from.
    shard_ids: Vec<usize>,
    /// Shards whose block may have lifted and that should try to place again.
    dirty: Vec<bool>,
    /// Round-robin cursor for arrivals.
    next_shard: usize,
    /// The machines.
    machines: Vec<Machine>,
    /// Task slab; ids are indices, reused after completion.
    tasks: Vec<Task>,
    /// Free slab slots.
    free: Vec<u32>,
    /// Slots of a machine.
    slots: u32,
    /// Memory per machine; `None` disables the memory model.
    capacity: Option<u64>,
    /// Swap space per machine (`u64::MAX` when unlimited).
    swap_capacity: u64,
    /// Whether machines announce themselves on idle lists.
    idle_list: bool,
    /// k for the dispatcher's choice of shard.
    k: usize,
    /// The dispatchers' random choices.
    rng: SmallRng,
    /// Arrival counter on machines.
    seq: u64,
    /// Scratch for swap choices.
    instances: Vec<Instance>,
    /// Machines per number of busy cores, for utilisation samples.
    busy: BusyTally,
    /// Overheads charged to invocations.
    overheads: Overheads,
    /// Cores per machine.
    cores: usize,
    /// Live machine model only: the cheapest class, which runs outside real time.
    cheapest: Option<u8>,
    /// Live machine model only: the share of its fair share the cheapest class gets.
    shared_speed: f64,
    /// Real-time budget only: paying work each real-time core may run per period.
    budget: Option<Nanos>,
}

impl Tariff {
    /// A cluster as `config` describes it.
    pub fn new(config: &SimConfig) -> Self {
        let shard_config = ShardConfig {
            k: config.k,
            use_idle_list: config.idle_list,
            // The simulator models an unbounded queue, as for the other schedulers, so that
            // overload shows up as latency rather than as refusals.
            max_queued: usize::MAX,
            ..ShardConfig::default()
        };
        let mut shards: Vec<ShardCore<u32>> = (0..config.shards.max(1))
            .map(|s| {
                ShardCore::new(
                    config.prices(),
                    shard_config.clone(),
                    config.seed.wrapping_add(s as u64),
                )
            })
            .collect();
        for shard in &mut shards {
            for m in 0..config.machines {
                shard.add_machine(MachineIdx(m as u32), config.slots);
            }
        }
        let live = config.rt_cpus.map(|rt| rt.clamp(1, config.cores));
        let machines = (0..config.machines)
            .map(|_| Machine {
                rq: RunQueue::new(live.unwrap_or(config.cores), config.classes),
                cheap: live.map(|_| RunQueue::new(config.cores, config.classes)),
                cheap_running: Vec::new(),
                paid_running: 0,
                counts: vec![0; config.classes],
                running: 0,
                tasks: Vec::new(),
                resident: 0,
                advert: IdleAdvertiser::new(IdlePolicy::new(
                    config.memory_bytes.unwrap_or(UNLIMITED_MEMORY),
                )),
                idle: HashMap::new(),
                rt_cores: match (live, config.rt_budget) {
                    (Some(rt), Some(_)) => vec![RtCore::default(); rt],
                    _ => Vec::new(),
                },
                period: PeriodTimer::default(),
            })
            .collect();
        Self {
            dirty: vec![false; shards.len()],
            shard_ids: (0..shards.len()).collect(),
            shards,
            next_shard: 0,
            machines,
            tasks: Vec::new(),
            free: Vec::new(),
            slots: config.slots,
            capacity: config.memory_bytes,
            swap_capacity: config.swap_bytes.unwrap_or(u64::MAX),
            idle_list: config.idle_list,
            k: config.k,
            rng: SmallRng::seed_from_u64(config.seed ^ DISPATCHER_SALT),
            seq: 0,
            instances: Vec::new(),
            busy: BusyTally::new(config.machines, config.cores),
            overheads: config.overheads,
            cores: config.cores,
            cheapest: live.map(|_| (config.classes - 1) as u8),
            shared_speed: config.shared_speed,
            budget: live
                .and(config.rt_budget)
                .map(|share| (RT_BUDGET_PERIOD as f64 * share).round() as Nanos),
        }
    }

    /// The run queue that orders `class` on machine `m`: its own for the cheapest class
    /// under the live machine model, else the machine's.
    fn queue(&mut self, m: usize, class: u8) -> &mut RunQueue {
        let machine = &mut self.machines[m];
        match (&mut machine.cheap, self.cheapest == Some(class)) {
            (Some(cheap), true) => cheap,
            _ => &mut machine.rq,
        }
    }

    /// Whether task `id` runs outside real time, sharing cores (live machine model only).
    fn is_shared(&self, id: u32) -> bool {
        self.cheapest == Some(self.tasks[id as usize].inv.class)
    }

    /// Live machine model: gives every cheapest-class task holding a turn on machine `m` its
    /// share of the cores the running paying tasks leave (the kernel's fair share among
    /// `SCHED_BATCH` tasks), and moves its completion to match.
    fn reshare(&mut self, m: usize, now: Nanos, ctx: &mut Ctx) {
        let machine = &self.machines[m];
        if machine.cheap_running.is_empty() {
            return;
        }
        // A paying task on a throttled core holds it but does not run: the cheapest class
        // shares that core.
        let held = machine
            .rt_cores
            .iter()
            .filter(|c| c.throttled && c.task.is_some())
            .count() as u32;
        let paying = machine.paid_running - held;
        let free = self.cores.saturating_sub(paying as usize) as f64;
        let rate = (free / machine.cheap_running.len() as f64).min(1.0) * self.shared_speed;
        for &id in &machine.cheap_running {
            let task = &mut self.tasks[id as usize];
            if task.rate == rate {
                continue;
            }
            task.remaining = task.remaining_at(now);
            task.since = now;
            task.rate = rate;
            task.generation = task.generation.wrapping_add(1);
            // A task whose work is done finishes now, even with no share left (its completion,
            // due at this very instant, may just have been made stale here).
            if rate > 0.0 || task.remaining == 0 {
                let left = match task.remaining {
                    0 => 0,
                    remaining => (remaining as f64 / rate).ceil() as Nanos,
                };
                ctx.events.push(
                    now + left,
                    Event::Completion {
                        id,
                        generation: task.generation,
                    },
                );
            }
        }
    }

    /// Lets shard `s` place until it has nothing eligible.
    fn drive(&mut self, s: usize, now: Nanos, ctx: &mut Ctx) {
        self.dirty[s] = false;
        let d = to_duration(now);
        while let Some(step) = self.shards[s].next(d) {
            let placed = match step {
                Step::Place(taken, machine, _) => Some((taken.item, machine)),
                Step::Poll(taken, candidates) => {
                    let answer = |&machine: &MachineIdx| PolledLoad {
                        machine,
                        per_class: &self.machines[machine.0 as usize].counts,
                        slots: self.slots,
                        warm: false,
                    };
                    // A poll per placement: answered on the stack, not the heap, for a usual k.
                    let mut inline = [NO_ANSWER; INLINE_POLL];
                    let collected: Vec<PolledLoad<'_>>;
                    let answers: &[PolledLoad<'_>] = if candidates.len() <= INLINE_POLL {
                        for (slot, machine) in inline.iter_mut().zip(&candidates) {
                            *slot = answer(machine);
                        }
                        &inline[..candidates.len()]
                    } else {
                        collected = candidates.iter().map(answer).collect();
                        &collected
                    };
                    self.shards[s]
                        .polled(taken, answers)
                        .ok()
                        .map(|(taken, machine)| (taken.item, machine))
                }
            };
            if let Some((task, machine)) = placed {
                self.place(task, machine.0 as usize, now, ctx);
            }
        }
    }

    /// Drives every shard marked dirty.
    fn drive_dirty(&mut self, now: Nanos, ctx: &mut Ctx) {
        for s in 0..self.shards.len() {
            if self.dirty[s] {
                self.drive(s, now, ctx);
            }
        }
    }

    /// Sends a task to machine `m`.
    fn place(&mut self, id: u32, m: usize, now: Nanos, ctx: &mut Ctx) {
        let task = &mut self.tasks[id as usize];
        task.machine = m as u32;
        task.seq = self.seq;
        self.seq += 1;
        let class = task.inv.class;
        let machine = &mut self.machines[m];
        machine.counts[usize::from(class)] += 1;
        if self.capacity.is_some() {
            machine.tasks.push(id);
        }
        let decisions = self.queue(m, class).arrive(u64::from(id), class);
        self.apply(m, &decisions, now, ctx);
        self.after_machine_event(m, now, ctx);
    }

    /// Carries out a run queue's decisions on machine `m`.
    fn apply(&mut self, m: usize, decisions: &[Decision], now: Nanos, ctx: &mut Ctx) {
        for decision in decisions {
            match *decision {
                Decision::Start(id) | Decision::Resume(id) => {
                    let task = &mut self.tasks[id as usize];
                    task.running = true;
                    task.since = now;
                    task.generation = task.generation.wrapping_add(1);
                    if let Some(rate) = self.overheads.swap_in_bytes_per_s {
                        task.remaining += from_secs(task.swapped as f64 / rate);
                    }
                    // Without a swap-in rate, paper assumption 3: swapping back in is free.
                    task.swapped = 0;
                    if !task.started {
                        task.started = true;
                        if let Some(cold) = self.overheads.cold_start {
                            let function = task.inv.function;
                            if !self.take_instance(m, function, now) {
                                self.tasks[id as usize].remaining += cold;
                            }
                        }
                    }
                    let (id, shared) = (id as u32, self.is_shared(id as u32));
                    let live = self.cheapest.is_some();
                    let task = &mut self.tasks[id as usize];
                    if shared {
                        // Its share, and so its completion, is set by `reshare` below.
                        task.rate = 0.0;
                        self.machines[m].cheap_running.push(id);
                    } else {
                        task.rate = 1.0;
                        self.machines[m].paid_running += u32::from(live);
                        match self.budget {
                            Some(budget) => self.take_core(m, id, budget, now, ctx),
                            None => ctx.events.push(
                                now + task.remaining,
                                Event::Completion {
                                    id,
                                    generation: task.generation,
                                },
                            ),
                        }
                    }
                    let machine = &mut self.machines[m];
                    self.busy
                        .moved(machine.running as usize, machine.running as usize + 1);
                    machine.running += 1;
                }
                Decision::Preempt(id) => self.off_core(m, id as u32, now),
            }
        }
        if self.cheapest.is_some() {
            self.reshare(m, now, ctx);
        }
    }

    /// Cold-start model: takes an idle instance of `function` on machine `m` for a start at
    /// `now`, the most recently idled one, and says whether there was one still within its
    /// keep-alive (else the start is cold). The pool holds [`Overheads::prewarm`] instances,
    /// idle since the run began, until the function is first started there.
    fn take_instance(&mut self, m: usize, function: u32, now: Nanos) -> bool {
        let prewarm = self.overheads.prewarm as usize;
        let idle = self.machines[m]
            .idle
            .entry(function)
            .or_insert_with(|| vec![0; prewarm]);
        match idle.pop() {
            Some(since) if since >= now.saturating_sub(self.overheads.keep_alive) => true,
            Some(_) => {
                // The most recently idled has expired, so every older one has too.
                idle.clear();
                false
            }
            None => false,
        }
    }

    /// Real-time budget: gives paying task `id`, just started or resumed on machine `m`, a free
    /// real-time core — the one with the most budget left in this period — and schedules
    /// its next event: its completion, or the moment the core's budget runs out. On a
    /// throttled core (every free core is) it waits for the next period.
    fn take_core(&mut self, m: usize, id: u32, budget: Nanos, now: Nanos, ctx: &mut Ctx) {
        let machine = &mut self.machines[m];
        if !machine.period.active {
            // The first paying task after a quiet spell: a period begins now. Every core's
            // budget is whole (the timer stops only at a period's end, which renews it).
            machine.period.active = true;
            machine.period.generation = machine.period.generation.wrapping_add(1);
            ctx.events.push(
                now + RT_BUDGET_PERIOD,
                Event::Timer {
                    id: m as u32,
                    generation: machine.period.generation,
                },
            );
        }
        let c = machine
            .rt_cores
            .iter()
            .enumerate()
            .filter(|(_, core)| core.task.is_none())
            .min_by_key(|&(i, core)| (core.used, i))
            .map(|(i, _)| i)
            .expect("a run queue over the real-time cores runs at most one task per core");
        let core = &mut machine.rt_cores[c];
        core.task = Some(id);
        core.since = now;
        let task = &mut self.tasks[id as usize];
        task.core = c as u16;
        if core.throttled {
            task.rate = 0.0;
            return;
        }
        let left = budget.saturating_sub(core.used);
        ctx.events.push(
            now + task.remaining.min(left),
            Event::Completion {
                id,
                generation: task.generation,
            },
        );
    }

    /// Real-time budget: paying task `id` has used up its core's budget for this period;
    /// it stops where it is, holding the core, until [`Self::replenish`].
    fn throttle(&mut self, m: usize, id: u32, now: Nanos, ctx: &mut Ctx) {
        let budget = self.budget.unwrap_or(0);
        let task = &mut self.tasks[id as usize];
        task.remaining = task.remaining_at(now);
        task.since = now;
        task.rate = 0.0;
        task.generation = task.generation.wrapping_add(1);
        let machine = &mut self.machines[m];
        let core = &mut machine.rt_cores[usize::from(task.core)];
        core.used = budget;
        core.throttled = true;
        self.reshare(m, now, ctx);
    }

    /// Real-time budget: a new period on machine `m` ([`PeriodTimer`]). Every core's budget is whole again, and
    /// each paying task holding one runs on (to its completion or the budget's end).
    fn replenish(&mut self, m: usize, budget: Nanos, now: Nanos, ctx: &mut Ctx) {
        let mut unthrottled = false;
        for c in 0..self.machines[m].rt_cores.len() {
            let core = &mut self.machines[m].rt_cores[c];
            let was_throttled = core.throttled;
            if core.used == 0 && !was_throttled && core.task.is_none() {
                continue;
            }
            core.used = 0;
            core.throttled = false;
            core.since = now;
            let Some(id) = core.task else { continue };
            unthrottled |= was_throttled;
            let task = &mut self.tasks[id as usize];
            task.remaining = task.remaining_at(now);
            task.since = now;
            task.rate = 1.0;
            task.generation = task.generation.wrapping_add(1);
            ctx.events.push(
                now + task.remaining.min(budget),
                Event::Completion {
                    id,
                    generation: task.generation,
                },
            );
        }
        if unthrottled {
            self.reshare(m, now, ctx);
        }
    }

    /// Removes a finished or killed task from its machine and shard.
    fn remove(&mut self, id: u32, now: Nanos, ctx: &mut Ctx) {
        let task = self.tasks[id as usize];
        let m = task.machine as usize;
        let machine = &mut self.machines[m];
        machine.counts[usize::from(task.inv.class)] -= 1;
        if let Some(pos) = machine.tasks.iter().position(|&t| t == id) {
            machine.tasks.swap_remove(pos);
        }
        if task.running {
            self.off_core(m, id, now);
        }
        let decisions = self.queue(m, task.inv.class).finish(u64::from(id));
        let slot = &mut self.tasks[id as usize];
        slot.running = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id);
        self.apply(m, &decisions, now, ctx);
        let s = usize::from(task.shard);
        self.shards[s].completed(MachineIdx(m as u32));
        self.dirty[s] = true;
    }

    /// Memory and idle-list bookkeeping after anything changed on machine `m`.
    fn after_machine_event(&mut self, m: usize, now: Nanos, ctx: &mut Ctx) {
        if let Some(capacity) = self.capacity {
            self.check_memory(m, capacity, now, ctx);
        }
        if self.idle_list {
            self.check_idle(m);
        }
    }

    /// Fills the scratch list with machine `m`'s instances as the swap policy sees them, and
    /// returns the bytes resident.
    fn collect_instances(&mut self, m: usize, now: Nanos) -> (u64, u64) {
        self.instances.clear();
        let mut resident = 0;
        let mut swapped = 0;
        for &id in &self.machines[m].tasks {
            let task = &self.tasks[id as usize];
            let bytes = task.resident(now);
            resident += bytes;
            swapped += task.swapped;
            self.instances.push(Instance {
                id: u64::from(id),
                class: task.inv.class,
                arrival: task.seq,
                resident_bytes: bytes,
                swapped_bytes: task.swapped,
                running: task.running,
            });
        }
        (resident, swapped)
    }

    /// Swaps (then suspends, and as a last resort kills) until machine `m` fits in
    /// `capacity`; swaps back in when there is room to spare.
    fn check_memory(&mut self, m: usize, capacity: u64, now: Nanos, ctx: &mut Ctx) {
        for _ in 0..MAX_MEMORY_ROUNDS {
            let (resident, swapped) = self.collect_instances(m, now);
            self.machines[m].resident = resident;
            ctx.stats.swap_occupancy(m, swapped);
            let held = resident + swapped;
            let room = capacity.saturating_add(self.swap_capacity);
            if held > room {
                self.kill(held - room, now, ctx);
                continue;
            }
            if resident <= capacity {
                self.swap_in(m, capacity, resident, now, ctx);
                return;
            }
            let plan = swap::choose_swap_out(&self.instances, resident - capacity);
            for &id in &plan.victims {
                let task = &mut self.tasks[id as usize];
                let bytes = task.resident(now);
                task.swapped = bytes.max(1);
                ctx.stats.swapped(task.inv.class, m, bytes);
            }
            if plan.shortfall_bytes == 0 {
                self.machines[m].resident = resident - plan.freed_bytes;
                return;
            }
            let swapped_out = plan.victims;
            self.instances.retain(|i| !swapped_out.contains(&i.id));
            let suspend = swap::choose_suspensions(&self.instances, plan.shortfall_bytes);
            for id in suspend.victims {
                self.suspend(m, id as u32, now, ctx);
            }
        }
    }

    /// Kills instances holding at least `need` bytes, as the swap policy
    /// chooses (the scratch list must be fresh), and counts any kill that spared a cheaper
    /// instance holding memory.
    fn kill(&mut self, need: u64, now: Nanos, ctx: &mut Ctx) {
        let kills = swap::choose_kills(&self.instances, need);
        for &id in &kills.victims {
            let class = self.tasks[id as usize].inv.class;
            let spared_cheaper = self.instances.iter().any(|i| {
                i.class > class && swap::held_bytes(i) > 0 && !kills.victims.contains(&i.id)
            });
            if spared_cheaper {
                ctx.stats.kills_over_cheaper += 1;
            }
        }
        for id in kills.victims {
            let class = self.tasks[id as usize].inv.class;
            ctx.stats.killed(class);
            self.remove(id as u32, now, ctx);
        }
    }

    /// Takes running task `id` off its core and swaps it out: the run queue forgets it and
    /// gives the core to the next task; it comes back through [`Self::swap_in`].
    fn suspend(&mut self, m: usize, id: u32, now: Nanos, ctx: &mut Ctx) {
        let bytes = self.tasks[id as usize].resident(now);
        let class = self.tasks[id as usize].inv.class;
        let decisions = self.queue(m, class).finish(u64::from(id));
        self.off_core(m, id, now);
        let task = &mut self.tasks[id as usize];
        task.parked = true;
        task.swapped = bytes.max(1);
        ctx.stats.swapped(task.inv.class, m, bytes);
        self.apply(m, &decisions, now, ctx);
    }

    /// Takes running task `id` off its core on machine `m` (preempted or suspended): it keeps
    /// the work it has left, and its pending completion event goes stale.
    fn off_core(&mut self, m: usize, id: u32, now: Nanos) {
        let shared = self.is_shared(id);
        let live = self.cheapest.is_some();
        let task = &mut self.tasks[id as usize];
        task.remaining = task.remaining_at(now);
        task.running = false;
        task.generation = task.generation.wrapping_add(1);
        let machine = &mut self.machines[m];
        if shared {
            machine.cheap_running.retain(|&t| t != id);
        } else if live {
            machine.paid_running -= 1;
            if let Some(budget) = self.budget {
                let core = &mut machine.rt_cores[usize::from(task.core)];
                if !core.throttled {
                    core.used = (core.used + now.saturating_sub(core.since)).min(budget);
                }
                core.task = None;
            }
        }
        self.busy
            .moved(machine.running as usize, machine.running as usize - 1);
        machine.running -= 1;
    }

    /// Brings swapped instances of machine `m` back in while more than the headroom is free;
    /// a suspended one rejoins the run queue.
    fn swap_in(&mut self, m: usize, capacity: u64, resident: u64, now: Nanos, ctx: &mut Ctx) {
        let headroom = (capacity as f64 * SWAP_IN_HEADROOM_FRACTION) as u64;
        let room = capacity.saturating_sub(resident + headroom);
        if room == 0 || !self.instances.iter().any(|i| i.swapped_bytes > 0) {
            return;
        }
        for id in swap::choose_swap_in(&self.instances, room) {
            let task = &mut self.tasks[id as usize];
            self.machines[m].resident += task.swapped;
            task.swapped = 0;
            if task.parked {
                task.parked = false;
                let class = task.inv.class;
                let decisions = self.queue(m, class).arrive(id, class);
                self.apply(m, &decisions, now, ctx);
            }
        }
    }

    /// The dispatcher's idle-list announcements for machine `m`, decided by the live
    /// [`IdleAdvertiser`].
    fn check_idle(&mut self, m: usize) {
        let capacity = self.capacity.unwrap_or(UNLIMITED_MEMORY);
        let machine = &mut self.machines[m];
        let free = capacity.saturating_sub(machine.resident);
        let len = (machine.rq.len() + machine.cheap.as_ref().map_or(0, RunQueue::len)) as u32;
        let machine_idx = MachineIdx(m as u32);
        match machine.advert.observe(free, len) {
            IdleAction::Nothing => {}
            IdleAction::Leave(s) => {
                let entry = IdleEntry {
                    listed: false,
                    free_memory_bytes: free,
                    queue_length: len,
                };
                self.shards[s].idle_update(machine_idx, entry);
            }
            IdleAction::Update(s, entry) => {
                self.shards[s].idle_update(machine_idx, entry);
                self.dirty[s] = true;
            }
            IdleAction::Join(entry) => {
                let s = self.least_crowded_shard();
                self.shards[s].idle_update(machine_idx, entry);
                self.machines[m].advert.joined(s, entry);
                self.dirty[s] = true;
            }
        }
    }

    /// Power-of-k over shards, exactly as the live dispatcher does it: k distinct shards
    /// ([`idle_advert::shards_to_poll`]), the shortest idle list among them
    /// ([`idle_advert::least_crowded`]).
    fn least_crowded_shard(&mut self) -> usize {
        let polled: Vec<(usize, u32)> =
            idle_advert::shards_to_poll(&self.shard_ids, self.k, &mut self.rng)
                .into_iter()
                .map(|s| (s, self.shards[s].idle_list_len() as u32))
                .collect();
        idle_advert::least_crowded(&polled).unwrap_or(0)
    }
}

impl SimScheduler for Tariff {
    fn arrive(&mut self, now: Nanos, inv: Invocation, ctx: &mut Ctx) {
        let s = self.next_shard;
        self.next_shard = (self.next_shard + 1) % self.shards.len();
        let task = Task {
            inv,
            machine: 0,
            shard: s as u16,
            remaining: inv.runtime,
            since: now,
            generation: 0,
            running: false,
            seq: 0,
            swapped: 0,
            parked: false,
            started: false,
            rate: 1.0,
            core: 0,
        };
        let id = super::slots::store(&mut self.tasks, &mut self.free, task, |old, new| Task {
            generation: old.generation,
            ..new
        });
        if self.shards[s]
            .submit(
                ClassId(inv.class),
                FunctionKey(u64::from(inv.function)),
                id,
                to_duration(now),
            )
            .is_err()
        {
            // Unreachable with an unbounded queue; count it as lost rather than panic.
            ctx.stats.killed(inv.class);
            self.free.push(id);
            return;
        }
        self.drive(s, now, ctx);
    }

    fn complete(&mut self, now: Nanos, id: u32, generation: u32, ctx: &mut Ctx) {
        let task = self.tasks[id as usize];
        if task.generation != generation || !task.running {
            return;
        }
        let m = task.machine as usize;
        if self.budget.is_some() && !self.is_shared(id) && task.remaining_at(now) > 0 {
            // Not done: its core's budget ran out.
            self.throttle(m, id, now, ctx);
            return;
        }
        let answered = now + self.overheads.dispatch.unwrap_or(0);
        ctx.stats
            .completed(task.inv.class, task.inv.arrival, task.inv.runtime, answered);
        if self.overheads.cold_start.is_some() {
            // Its instance goes back to the pool, idle from now.
            self.machines[m]
                .idle
                .entry(task.inv.function)
                .or_default()
                .push(now);
        }
        self.remove(id, now, ctx);
        self.after_machine_event(task.machine as usize, now, ctx);
        self.drive_dirty(now, ctx);
    }

    fn timer(&mut self, now: Nanos, id: u32, generation: u32, ctx: &mut Ctx) {
        let (m, Some(budget)) = (id as usize, self.budget) else {
            return;
        };
        let timer = self.machines[m].period;
        if !timer.active || timer.generation != generation {
            return;
        }
        self.replenish(m, budget, now, ctx);
        let machine = &mut self.machines[m];
        if machine.rq.is_empty() {
            machine.period.active = false;
        } else {
            ctx.events
                .push(now + RT_BUDGET_PERIOD, Event::Timer { id, generation });
        }
    }

    fn tick(&mut self, now: Nanos, ctx: &mut Ctx) {
        ctx.stats.utilisation_tally(&self.busy);
        if let Some(capacity) = self.capacity {
            // Memory grows between events, so every machine is checked; only the memory model
            // pays for this.
            for m in 0..self.machines.len() {
                self.after_machine_event(m, now, ctx);
                ctx.stats
                    .memory_sample(self.machines[m].resident as f64 / capacity as f64);
            }
        }
        // A shard blocked on full machines learns of freed room from its own completions;
        // retrying once per tick covers room freed by another shard's invocations.
        for s in 0..self.shards.len() {
            if self.shards[s].is_blocked() {
                self.shards[s].unblock();
                self.dirty[s] = true;
            }
        }
        self.drive_dirty(now, ctx);
    }
}
