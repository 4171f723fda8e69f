//! The shard's decisions as a pure state machine: what to place next, and where.
//!
//! [`ShardCore`] owns the class queues, the idle list and the table of known machines. It does
//! no I/O and reads no clock: callers pass `now` and feed it events (a submission, a poll's
//! answers, a completion, an idle-list update). The live shard drives it from QUIC tasks; the
//! simulator drives the very same code in virtual time.
//!
//! A placement round is [`ShardCore::next`]: take the best queue head among eligible classes;
//! place it on the idle list's best machine if that has room, else ask the caller to poll k
//! machines and hand the answers to [`ShardCore::polled`]. When no polled machine has room the
//! invocation goes back to the head of its queue and its class, and every cheaper class, is
//! *blocked*: they need at least as much room, so trying them now would only poll in vain.
//! Dearer classes still go (they may preempt). Any sign of freed capacity lifts the block.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tariff_types::policy::Policy;
use tariff_types::wire::IdleEntry;
use tariff_types::ClassId;

use crate::idle_list::{IdleList, IdleMachine};
use crate::placement::{self, PolledLoad};
use crate::queue::{ClassQueues, DEFAULT_AGING};
use crate::{FunctionKey, MachineIdx};

/// Default cap on queued invocations per shard before new ones are refused as overloaded.
pub const DEFAULT_MAX_QUEUED: usize = 100_000;

/// Tunables of a shard's policy.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Machines polled when the idle list has none with room.
    pub k: usize,
    /// τ of the queue's score; see [`crate::queue`].
    pub aging: Duration,
    /// Queued invocations beyond which submissions of the top class are refused; cheaper
    /// classes are refused earlier (`crate::shedding`).
    pub max_queued: usize,
    /// Longest expected wait a new top-class invocation may face before it is refused
    /// (cheaper classes: less); `None`: no bound on the wait, only on the backlog.
    pub max_wait: Option<Duration>,
    /// Place from the idle list first (the paper's latency experiment turns it off).
    pub use_idle_list: bool,
    /// Ignore price classes: one FIFO queue, class-blind room. This is the baseline Tariff is
    /// measured against (`--policy fifo`), run by the same code.
    pub class_blind: bool,
    /// Place every invocation on the least-loaded polled machine whether or not it has room
    /// (Hermod's early binding), instead of queueing it at the shard.
    pub early_binding: bool,
}

impl ShardConfig {
    /// The default tunables for a cluster running `policy`.
    pub fn for_policy(policy: Policy) -> Self {
        Self {
            class_blind: policy.is_class_blind(),
            early_binding: policy == Policy::Hermod,
            // Hermod finds machines by polling only.
            use_idle_list: policy != Policy::Hermod,
            ..Self::default()
        }
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            k: placement::DEFAULT_K,
            aging: DEFAULT_AGING,
            max_queued: DEFAULT_MAX_QUEUED,
            max_wait: None,
            use_idle_list: true,
            class_blind: false,
            early_binding: false,
        }
    }
}

/// A submission refused because the backlog is too long for its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "shard overloaded: {queued} invocations queued, limit {limit}; retry after {retry_after:?}"
)]
pub struct Overloaded {
    /// Invocations queued.
    pub queued: usize,
    /// The class's limit.
    pub limit: usize,
    /// When the shard expects to take it.
    pub retry_after: Duration,
}

/// How fast invocations have lately been finishing, for the shedding's wait estimate: counts
/// completions and turns them into a rate once a window of [`DRAIN_WINDOW`] has passed.
#[derive(Debug, Default)]
struct DrainRate {
    window_start: Duration,
    completions: u64,
    per_s: f64,
}

/// The window the drain rate is measured over.
const DRAIN_WINDOW: Duration = Duration::from_secs(1);

impl DrainRate {
    fn completed(&mut self) {
        self.completions += 1;
    }

    /// The rate, updated when a window has passed (half the old estimate, half the window's).
    fn per_s(&mut self, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed >= DRAIN_WINDOW {
            let fresh = self.completions as f64 / elapsed.as_secs_f64();
            self.per_s = if self.per_s > 0.0 {
                0.5 * self.per_s + 0.5 * fresh
            } else {
                fresh
            };
            self.completions = 0;
            self.window_start = now;
        }
        self.per_s
    }
}

/// An invocation taken off its queue, on its way to a machine.
#[derive(Debug)]
pub struct Taken<T> {
    /// The caller's invocation.
    pub item: T,
    /// Its function, for warm-instance preference.
    pub function: FunctionKey,
    /// Its class.
    pub class: ClassId,
    /// When it was queued.
    pub enqueued: Duration,
}

/// The answer to a poll found no room: the invocation went back to the head of its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeued;

/// Which way the core chose a machine without polling, so the shard's metrics can count
/// placements by path (a placement after a poll is the power-of-k path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacePath {
    /// A listed machine that already has an idle warm instance of the function.
    Warm,
    /// The idle list's best machine.
    IdleList,
}

/// What the caller must do next.
#[derive(Debug)]
pub enum Step<T> {
    /// Send the invocation to this machine, found by the given path.
    Place(Taken<T>, MachineIdx, PlacePath),
    /// Poll these machines for their load, then call [`ShardCore::polled`].
    Poll(Taken<T>, Vec<MachineIdx>),
}

struct Machine {
    slots: u32,
    /// Functions with an idle warm instance on this machine, as it last reported.
    warm: Vec<FunctionKey>,
}

/// A queued invocation with its class and the function it calls.
struct Keyed<T> {
    class: ClassId,
    function: FunctionKey,
    item: T,
}

/// Most warm machines put among a poll's candidates, so a poll still samples the cluster.
const MAX_WARM_CANDIDATES: usize = 2;

/// The shard's pure core. `T` is whatever the driver keeps per invocation.
pub struct ShardCore<T> {
    config: ShardConfig,
    queues: ClassQueues<Keyed<T>>,
    idle: IdleList,
    /// Machines holding an idle warm instance, by function.
    warm: HashMap<FunctionKey, Vec<MachineIdx>>,
    machines: Vec<Option<Machine>>,
    known: Vec<MachineIdx>,
    classes: usize,
    /// Classes from this index down are blocked until capacity frees up.
    blocked_from: usize,
    rng: SmallRng,
    sample: Vec<MachineIdx>,
    drain: DrainRate,
}

impl<T> ShardCore<T> {
    /// A core for classes with these prices (index = class id); `seed` fixes its random
    /// choices, so a simulation is repeatable.
    pub fn new(prices: Vec<f64>, config: ShardConfig, seed: u64) -> Self {
        let classes = prices.len();
        Self {
            queues: ClassQueues::new(prices, config.aging),
            config,
            idle: IdleList::new(),
            warm: HashMap::new(),
            machines: Vec::new(),
            known: Vec::new(),
            classes,
            blocked_from: classes,
            rng: SmallRng::seed_from_u64(seed),
            sample: Vec::new(),
            drain: DrainRate::default(),
        }
    }

    /// A machine connected; it can now be polled.
    pub fn add_machine(&mut self, machine: MachineIdx, slots: u32) {
        let i = machine.0 as usize;
        if self.machines.len() <= i {
            self.machines.resize_with(i + 1, || None);
        }
        let fresh = Machine {
            slots,
            warm: Vec::new(),
        };
        if self.machines[i].replace(fresh).is_none() {
            self.known.push(machine);
        }
        self.unblock();
    }

    /// A machine disconnected; it is forgotten, on the idle list too.
    pub fn remove_machine(&mut self, machine: MachineIdx) {
        self.warm_update(machine, Vec::new());
        if let Some(slot) = self.machines.get_mut(machine.0 as usize) {
            if slot.take().is_some() {
                self.known.retain(|&m| m != machine);
            }
        }
        self.idle.remove(machine);
    }

    /// A machine reported which functions have an idle warm instance on it.
    pub fn warm_update(&mut self, machine: MachineIdx, functions: Vec<FunctionKey>) {
        let Some(Some(known)) = self.machines.get_mut(machine.0 as usize) else {
            return;
        };
        for old in known.warm.drain(..) {
            if let Some(list) = self.warm.get_mut(&old) {
                list.retain(|&m| m != machine);
                if list.is_empty() {
                    self.warm.remove(&old);
                }
            }
        }
        for &function in &functions {
            self.warm.entry(function).or_default().push(machine);
        }
        known.warm = functions;
    }

    /// Queues an invocation, or gives it back if the queues are full.
    pub fn submit(
        &mut self,
        class: ClassId,
        function: FunctionKey,
        item: T,
        now: Duration,
    ) -> Result<(), (T, Overloaded)> {
        // Class-blind, every invocation is shed alike, like the cheapest.
        let share = if self.config.class_blind {
            1.0
        } else {
            crate::shedding::class_share(class, self.classes)
        };
        let queue = self.queue_of(class);
        let backlog = crate::shedding::Backlog {
            queued: self.queues.len(),
            ahead: self.queues.through(queue),
            drain_per_s: self.drain.per_s(now),
        };
        if let Some(shed) =
            crate::shedding::shed(backlog, share, self.config.max_queued, self.config.max_wait)
        {
            let overloaded = Overloaded {
                queued: shed.queued,
                limit: shed.limit,
                retry_after: shed.retry_after,
            };
            return Err((item, overloaded));
        }
        let keyed = Keyed {
            class,
            function,
            item,
        };
        self.queues.push(self.queue_of(class), keyed, now);
        Ok(())
    }

    /// The queue a class waits in: its own, or the one shared queue when class-blind.
    fn queue_of(&self, class: ClassId) -> ClassId {
        if self.config.class_blind {
            ClassId((self.classes - 1) as u8)
        } else {
            class
        }
    }

    /// The next thing to do, or `None` when nothing eligible is queued or no machine is known.
    pub fn next(&mut self, now: Duration) -> Option<Step<T>> {
        if self.known.is_empty() {
            return None;
        }
        let queue = self.queues.next_class(now, self.blocked_from)?;
        let (
            Keyed {
                class,
                function,
                item,
            },
            enqueued,
        ) = self.queues.pop(queue)?;
        let warm = self
            .warm
            .get(&function)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let machine = if self.config.use_idle_list {
            // A listed warm machine with room beats the list's best: no process to start.
            warm.iter()
                .copied()
                .find(|&m| self.idle.has_room(m))
                .map(|m| (m, PlacePath::Warm))
                .or_else(|| self.idle.best().map(|m| (m, PlacePath::IdleList)))
        } else {
            None
        };
        let taken = Taken {
            item,
            function,
            class,
            enqueued,
        };
        match machine {
            Some((machine, path)) => {
                self.idle.placed(machine);
                Some(Step::Place(taken, machine, path))
            }
            None => {
                let mut sample = std::mem::take(&mut self.sample);
                placement::sample(&mut self.rng, &self.known, self.config.k, &mut sample);
                let mut candidates: Vec<MachineIdx> =
                    warm.iter().copied().take(MAX_WARM_CANDIDATES).collect();
                let wanted = self.config.k.max(candidates.len());
                for &m in &sample {
                    if candidates.len() >= wanted {
                        break;
                    }
                    if !candidates.contains(&m) {
                        candidates.push(m);
                    }
                }
                self.sample = sample;
                Some(Step::Poll(taken, candidates))
            }
        }
    }

    /// Hands in the answers to a poll (machines that did not answer are simply absent).
    /// Returns the placement, or [`Requeued`] when the invocation went back to its queue.
    pub fn polled(
        &mut self,
        taken: Taken<T>,
        answers: &[PolledLoad<'_>],
    ) -> Result<(Taken<T>, MachineIdx), Requeued> {
        // Class-blind, every invocation counts everything as competition, like the cheapest.
        let queue = self.queue_of(taken.class);
        let chosen = if self.config.early_binding {
            placement::least_loaded_any(answers)
        } else {
            placement::least_loaded(queue, answers)
        };
        match chosen {
            Some(machine) => {
                self.idle.placed(machine);
                Ok((taken, machine))
            }
            None => {
                self.blocked_from = self.blocked_from.min(queue.index());
                self.requeue(taken);
                Err(Requeued)
            }
        }
    }

    /// Returns a taken invocation to the head of its queue without blocking anything (its
    /// machine vanished before it could be sent).
    pub fn requeue(&mut self, taken: Taken<T>) {
        let queue = self.queue_of(taken.class);
        let keyed = Keyed {
            class: taken.class,
            function: taken.function,
            item: taken.item,
        };
        self.queues.push_front(queue, keyed, taken.enqueued);
    }

    /// An invocation was sent to `machine` without passing the queues: a call made by a
    /// function running there, which must not wait for the slot its caller holds (a chain
    /// would deadlock on its own slots). Counted like any placement until it completes.
    pub fn placed_nested(&mut self, machine: MachineIdx) {
        self.idle.placed(machine);
    }

    /// An invocation this shard placed on `machine` finished there.
    pub fn completed(&mut self, machine: MachineIdx) {
        self.drain.completed();
        self.idle.finished(machine);
        self.unblock();
    }

    /// A machine joined, updated or left this shard's idle list.
    pub fn idle_update(&mut self, machine: MachineIdx, entry: IdleEntry) {
        let Some(Some(known)) = self.machines.get(machine.0 as usize) else {
            return;
        };
        if entry.listed {
            self.idle.upsert(
                machine,
                IdleMachine {
                    free_memory_bytes: entry.free_memory_bytes,
                    queue_length: entry.queue_length,
                    slots: known.slots,
                },
            );
            self.unblock();
        } else {
            self.idle.remove(machine);
        }
    }

    /// Lifts the block on cheaper classes: capacity may have freed up somewhere.
    pub fn unblock(&mut self) {
        self.blocked_from = self.classes;
    }

    /// True when some class is waiting for capacity.
    pub fn is_blocked(&self) -> bool {
        self.blocked_from < self.classes && !self.queues.is_empty()
    }

    /// Removes queued invocations for which `expired` is true.
    pub fn expire(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<T> {
        self.queues
            .remove_where(|keyed| expired(&keyed.item))
            .into_iter()
            .map(|keyed| keyed.item)
            .collect()
    }

    /// Removes everything queued.
    pub fn drain(&mut self) -> Vec<T> {
        self.queues.drain().map(|keyed| keyed.item).collect()
    }

    /// Invocations queued per class.
    pub fn queued_per_class(&self) -> Vec<usize> {
        self.queues.per_class()
    }

    /// Invocations queued.
    pub fn queued(&self) -> usize {
        self.queues.len()
    }

    /// Machines on the idle list, smallest queue first.
    pub fn idle_machines(&self) -> impl Iterator<Item = MachineIdx> + '_ {
        self.idle.machines()
    }

    /// Length of the idle list (what dispatchers compare when choosing a shard).
    pub fn idle_list_len(&self) -> usize {
        self.idle.len()
    }

    /// Machines known to this shard.
    pub fn machines(&self) -> &[MachineIdx] {
        &self.known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const F: FunctionKey = FunctionKey(7);

    fn core() -> ShardCore<u32> {
        ShardCore::new(vec![2.0, 1.5, 1.0, 0.5], ShardConfig::default(), 7)
    }

    fn listed(queue_length: u32) -> IdleEntry {
        IdleEntry {
            listed: true,
            free_memory_bytes: 1 << 30,
            queue_length,
        }
    }

    #[test]
    fn nothing_happens_without_machines() {
        let mut core = core();
        core.submit(ClassId(0), F, 1, MS).unwrap();
        assert!(core.next(MS).is_none());
        assert_eq!(core.queued(), 1);
    }

    #[test]
    fn idle_list_is_used_first_then_polling() {
        let mut core = core();
        core.add_machine(MachineIdx(0), 1);
        core.add_machine(MachineIdx(1), 1);
        core.idle_update(MachineIdx(1), listed(0));
        core.submit(ClassId(2), F, 10, MS).unwrap();
        core.submit(ClassId(2), F, 11, MS).unwrap();
        match core.next(MS) {
            Some(Step::Place(t, m, path)) => {
                assert_eq!((t.item, m, path), (10, MachineIdx(1), PlacePath::IdleList))
            }
            other => panic!("expected an idle-list placement, got {other:?}"),
        }
        match core.next(MS) {
            Some(Step::Poll(t, candidates)) => {
                assert_eq!(t.item, 11);
                assert_eq!(candidates.len(), 2);
            }
            other => panic!("expected a poll once the listed machine is full, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_poll_blocks_cheaper_classes_but_not_dearer_ones() {
        let mut core = core();
        core.add_machine(MachineIdx(0), 1);
        for item in 0..3 {
            core.submit(ClassId(3), F, item, MS).unwrap();
        }
        let busy = [0, 0, 0, 1];
        let answers = [PolledLoad {
            machine: MachineIdx(0),
            per_class: &busy,
            slots: 1,
            warm: false,
        }];
        let Some(Step::Poll(taken, _)) = core.next(MS) else {
            panic!("expected a poll")
        };
        assert!(core.polled(taken, &answers).is_err());
        assert!(core.is_blocked());
        assert!(core.next(2 * MS).is_none(), "batch stays blocked");
        core.submit(ClassId(0), F, 99, 3 * MS).unwrap();
        let Some(Step::Poll(taken, _)) = core.next(3 * MS) else {
            panic!("critical is still tried")
        };
        assert_eq!(taken.item, 99);
        let (placed, machine) = core.polled(taken, &answers).expect("critical has room");
        assert_eq!((placed.item, machine), (99, MachineIdx(0)));
        core.completed(MachineIdx(0));
        let Some(Step::Poll(taken, _)) = core.next(4 * MS) else {
            panic!("batch unblocked by a completion")
        };
        assert_eq!(taken.item, 0, "the requeued head keeps its place");
    }

    #[test]
    fn warm_machines_are_preferred_on_the_idle_list_and_in_polls() {
        let mut core = core();
        for m in 0..10 {
            core.add_machine(MachineIdx(m), 4);
        }
        core.idle_update(MachineIdx(1), listed(0));
        core.idle_update(MachineIdx(8), listed(2));
        core.warm_update(MachineIdx(8), vec![F]);
        core.submit(ClassId(2), F, 1, MS).unwrap();
        match core.next(MS) {
            Some(Step::Place(t, m, path)) => {
                assert_eq!((t.item, m, path), (1, MachineIdx(8), PlacePath::Warm))
            }
            other => panic!("expected the warm listed machine, got {other:?}"),
        }
        let unlisted = IdleEntry {
            listed: false,
            ..listed(0)
        };
        core.idle_update(MachineIdx(1), unlisted);
        core.idle_update(MachineIdx(8), unlisted);
        core.warm_update(MachineIdx(5), vec![F]);
        core.submit(ClassId(2), F, 2, MS).unwrap();
        match core.next(MS) {
            Some(Step::Poll(_, candidates)) => {
                assert!(candidates.contains(&MachineIdx(5)));
                assert!(candidates.contains(&MachineIdx(8)));
                assert_eq!(candidates.len(), 3);
            }
            other => panic!("expected a poll, got {other:?}"),
        }
        core.remove_machine(MachineIdx(5));
        core.warm_update(MachineIdx(8), vec![]);
        core.submit(ClassId(2), F, 3, MS).unwrap();
        match core.next(MS) {
            Some(Step::Poll(_, candidates)) => assert!(!candidates.contains(&MachineIdx(5))),
            other => panic!("expected a poll, got {other:?}"),
        }
    }

    #[test]
    fn class_blind_is_first_come_first_served_and_keeps_the_class() {
        let config = ShardConfig {
            class_blind: true,
            ..ShardConfig::default()
        };
        let mut core: ShardCore<u32> = ShardCore::new(vec![2.0, 1.5, 1.0, 0.5], config, 3);
        core.add_machine(MachineIdx(0), 1);
        core.submit(ClassId(3), F, 1, MS).unwrap();
        core.submit(ClassId(0), F, 2, 2 * MS).unwrap();
        let Some(Step::Poll(first, _)) = core.next(3 * MS) else {
            panic!("expected a poll")
        };
        assert_eq!((first.item, first.class), (1, ClassId(3)));
        let busy = [0, 0, 0, 1];
        let answers = [PolledLoad {
            machine: MachineIdx(0),
            per_class: &busy,
            slots: 1,
            warm: false,
        }];
        assert!(core.polled(first, &answers).is_err());
        assert!(
            core.next(4 * MS).is_none(),
            "class-blind: the critical call waits behind the batch one"
        );
    }

    #[test]
    fn early_binding_places_on_a_full_machine_rather_than_queueing() {
        let mut core: ShardCore<u32> = ShardCore::new(
            vec![2.0, 1.5, 1.0, 0.5],
            ShardConfig::for_policy(Policy::Hermod),
            5,
        );
        core.add_machine(MachineIdx(0), 1);
        core.add_machine(MachineIdx(1), 1);
        core.submit(ClassId(3), F, 1, MS).unwrap();
        let Some(Step::Poll(taken, _)) = core.next(MS) else {
            panic!("Hermod polls")
        };
        let full = [0, 0, 0, 3];
        let fuller = [0, 0, 0, 5];
        let answers = [
            PolledLoad {
                machine: MachineIdx(0),
                per_class: &fuller,
                slots: 1,
                warm: false,
            },
            PolledLoad {
                machine: MachineIdx(1),
                per_class: &full,
                slots: 1,
                warm: false,
            },
        ];
        let (_, machine) = core
            .polled(taken, &answers)
            .expect("early binding always places");
        assert_eq!(machine, MachineIdx(1), "the least loaded, room or not");
    }

    #[test]
    fn overload_gives_the_item_back() {
        let config = ShardConfig {
            max_queued: 1,
            ..ShardConfig::default()
        };
        let mut core: ShardCore<u32> = ShardCore::new(vec![1.0], config, 1);
        core.submit(ClassId(0), F, 1, MS).unwrap();
        let (item, err) = core.submit(ClassId(0), F, 2, MS).unwrap_err();
        assert_eq!((item, err.queued, err.limit), (2, 1, 1));
    }

    #[test]
    fn removed_machines_leave_the_idle_list() {
        let mut core = core();
        core.add_machine(MachineIdx(3), 4);
        core.idle_update(MachineIdx(3), listed(0));
        assert_eq!(core.idle_list_len(), 1);
        core.remove_machine(MachineIdx(3));
        assert_eq!(core.idle_list_len(), 0);
        assert!(core.machines().is_empty());
        core.idle_update(MachineIdx(3), listed(0));
        assert_eq!(
            core.idle_list_len(),
            0,
            "unknown machines cannot list themselves"
        );
    }

    #[test]
    fn same_seed_same_choices() {
        let run = || {
            let mut core = core();
            for m in 0..50 {
                core.add_machine(MachineIdx(m), 4);
            }
            core.submit(ClassId(1), F, 0, MS).unwrap();
            match core.next(MS) {
                Some(Step::Poll(_, c)) => c,
                _ => unreachable!(),
            }
        };
        assert_eq!(run(), run());
    }
}
