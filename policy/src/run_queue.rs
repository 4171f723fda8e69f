//! The machine's run order as a pure state machine: which tasks hold a core and which wait.
//!
//! The rule is the paper's: preemptive priority by price class, first-come-first-served within
//! a class, at most `cores` tasks running. There is no I/O, no clock and no async here, so the
//! dispatcher (user-space fallback mode) and the discrete-event simulator drive exactly the
//! same code: they report events (`arrive`, `finish`) and carry out the returned [`Decision`]s.
//!
//! Every task is ordered by the key `(class, seq)`, where `seq` is its arrival number. The
//! invariant kept after every event is that the running set is exactly the `cores` smallest
//! keys: every running key is smaller than every waiting key. The waiting set is an ordered
//! map, so each event costs O(log n) in it; the running set holds at most `cores` keys, kept
//! sorted in a vector, where a binary search and a shift of a few entries cost less than a
//! tree's nodes (the simulator calls this millions of times).
//!
//! The same invariant bounds what one event decides: an arrival preempts at most one task and
//! starts itself, and a finish frees one core for one task. So [`Decisions`] hold two inline
//! instead of a `Vec` allocated per event. Tasks are found by id in a map with the Fx hash:
//! ids are the driver's own numbers (slab indices in the simulator, invocation ids in the
//! machine scheduler), not input an adversary chooses, and SipHash and its map were about
//! 5 % of a long simulator run.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

/// Identifies a task for the run queue; the driver chooses it (an invocation or a simulated job).
pub type TaskId = u64;

/// What the driver must do after an event, in the order returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Give a core to a task that has never run.
    Start(TaskId),
    /// Take the core away from a running task; it keeps its place in line.
    Preempt(TaskId),
    /// Give a core back to a task that was preempted earlier.
    Resume(TaskId),
}

/// The decisions of one event, in order; at most two, held inline.
pub type Decisions = SmallVec<[Decision; 2]>;

/// Ordering key of a task: class first (0 is the most expensive), then arrival order.
type Key = (u8, u64);

/// Where a known task currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Holds a core.
    Running,
    /// Waits for a core; `started` tells a preempted task (resume it) from a new one (start it).
    Waiting {
        /// Whether the task has held a core before.
        started: bool,
    },
}

/// Bookkeeping for one unfinished task.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its position in the run order.
    key: Key,
    /// Whether it runs or waits.
    state: State,
}

/// Preemptive priority-by-class run queue for one machine.
#[derive(Debug, Clone)]
pub struct RunQueue {
    /// How many tasks may run at once.
    cores: usize,
    /// Every unfinished task, by id.
    tasks: FxHashMap<TaskId, Entry>,
    /// Tasks holding a core, best first; the last entry is the next preemption victim.
    running: Vec<(Key, TaskId)>,
    /// Tasks without a core (never started or preempted), best first.
    waiting: BTreeMap<Key, TaskId>,
    /// Unfinished tasks per class, kept incrementally so `per_class` is cheap.
    per_class: Vec<u32>,
    /// Arrival number handed to the next new task.
    next_seq: u64,
}

impl RunQueue {
    /// An empty queue for a machine with `cores` cores and `classes` price classes.
    ///
    /// Class 0 is the highest priority (the most expensive class).
    ///
    /// # Panics
    /// If `cores` or `classes` is zero: such a machine could never run anything, which is a
    /// configuration bug rather than a runtime condition.
    pub fn new(cores: usize, classes: usize) -> Self {
        assert!(cores > 0, "a run queue needs at least one core");
        assert!(classes > 0, "a run queue needs at least one class");
        Self {
            cores,
            tasks: FxHashMap::default(),
            running: Vec::with_capacity(cores),
            waiting: BTreeMap::new(),
            per_class: vec![0; classes],
            next_seq: 0,
        }
    }

    /// A task of `class` arrived; returns what to start and preempt.
    ///
    /// A class beyond the configured ones is treated as the lowest class, so a stale class
    /// table can only lower a task's priority, never raise it. A task id that is already
    /// known is ignored (no decisions): arrival is not idempotent otherwise.
    pub fn arrive(&mut self, task: TaskId, class: u8) -> Decisions {
        if self.tasks.contains_key(&task) {
            return Decisions::new();
        }
        let class = class.min(self.lowest_class());
        let key = (class, self.next_seq);
        self.next_seq += 1;
        self.per_class[usize::from(class)] += 1;

        if self.running.len() < self.cores {
            self.insert_running(task, key);
            return smallvec::smallvec![Decision::Start(task)];
        }
        match self.running.last().copied() {
            // Strictly higher priority only: within a class, arrival order decides, and the
            // arrival is the newest task of all.
            Some((victim_key, victim)) if class < victim_key.0 => {
                self.running.pop();
                self.insert_waiting(victim, victim_key, true);
                self.insert_running(task, key);
                smallvec::smallvec![Decision::Preempt(victim), Decision::Start(task)]
            }
            _ => {
                self.insert_waiting(task, key, false);
                Decisions::new()
            }
        }
    }

    /// A task ended or was cancelled, whether running, waiting or preempted; returns which
    /// tasks get the freed core. Unknown ids are ignored.
    pub fn finish(&mut self, task: TaskId) -> Decisions {
        let Some(entry) = self.tasks.remove(&task) else {
            return Decisions::new();
        };
        self.per_class[usize::from(entry.key.0)] -= 1;
        match entry.state {
            State::Running => {
                if let Ok(i) = self
                    .running
                    .binary_search_by(|(key, _)| key.cmp(&entry.key))
                {
                    self.running.remove(i);
                }
            }
            State::Waiting { .. } => {
                // No core was freed, so nothing else changes.
                self.waiting.remove(&entry.key);
                return Decisions::new();
            }
        }
        let mut decisions = Decisions::new();
        while self.running.len() < self.cores {
            let Some((key, next)) = self.waiting.pop_first() else {
                break;
            };
            let started = matches!(
                self.tasks.get(&next).map(|e| e.state),
                Some(State::Waiting { started: true })
            );
            self.insert_running(next, key);
            decisions.push(if started {
                Decision::Resume(next)
            } else {
                Decision::Start(next)
            });
        }
        decisions
    }

    /// Tasks holding a core, highest priority first.
    pub fn running(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.running.iter().map(|&(_, task)| task)
    }

    /// Whether `task` holds a core now.
    pub fn is_running(&self, task: TaskId) -> bool {
        matches!(self.tasks.get(&task).map(|e| e.state), Some(State::Running))
    }

    /// Tasks without a core: never started or preempted.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Unfinished tasks, running or not.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there are no unfinished tasks.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Unfinished tasks (running, waiting or preempted) per class, indexed by class.
    pub fn per_class(&self) -> Vec<u32> {
        self.per_class.clone()
    }

    /// The largest class number configured (the lowest priority).
    fn lowest_class(&self) -> u8 {
        u8::try_from(self.per_class.len() - 1).unwrap_or(u8::MAX)
    }

    /// Records `task` as holding a core.
    fn insert_running(&mut self, task: TaskId, key: Key) {
        let i = self.running.partition_point(|(running, _)| *running < key);
        self.running.insert(i, (key, task));
        self.tasks.insert(
            task,
            Entry {
                key,
                state: State::Running,
            },
        );
    }

    /// Records `task` as waiting for a core.
    fn insert_waiting(&mut self, task: TaskId, key: Key, started: bool) {
        self.waiting.insert(key, task);
        self.tasks.insert(
            task,
            Entry {
                key,
                state: State::Waiting { started },
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Decision::{Preempt, Resume, Start};
    use super::*;

    /// Classes in most tests: 0 (top), 1, 2.
    const CLASSES: usize = 3;

    fn running(q: &RunQueue) -> Vec<TaskId> {
        q.running().collect()
    }

    #[test]
    fn starts_until_cores_are_full_then_waits() {
        let mut q = RunQueue::new(2, CLASSES);
        assert_eq!(q.arrive(1, 1).to_vec(), vec![Start(1)]);
        assert_eq!(q.arrive(2, 1).to_vec(), vec![Start(2)]);
        assert_eq!(q.arrive(3, 1).to_vec(), vec![]);
        assert_eq!(q.waiting_len(), 1);
        assert_eq!(q.len(), 3);
        assert!(q.is_running(1) && q.is_running(2) && !q.is_running(3));
    }

    #[test]
    fn fcfs_within_a_class() {
        let mut q = RunQueue::new(1, CLASSES);
        q.arrive(1, 2);
        q.arrive(2, 2);
        q.arrive(3, 2);
        assert_eq!(q.finish(1).to_vec(), vec![Start(2)]);
        assert_eq!(q.finish(2).to_vec(), vec![Start(3)]);
        assert_eq!(q.finish(3).to_vec(), vec![]);
        assert!(q.is_empty());
    }

    #[test]
    fn equal_class_does_not_preempt() {
        let mut q = RunQueue::new(1, CLASSES);
        q.arrive(1, 1);
        assert_eq!(q.arrive(2, 1).to_vec(), vec![]);
        assert_eq!(q.arrive(3, 2).to_vec(), vec![]);
    }

    #[test]
    fn preempts_the_newest_task_of_the_lowest_running_class() {
        let mut q = RunQueue::new(3, CLASSES);
        q.arrive(1, 2);
        q.arrive(2, 2);
        q.arrive(3, 1);
        assert_eq!(q.arrive(4, 0).to_vec(), vec![Preempt(2), Start(4)]);
        assert_eq!(running(&q), vec![4, 3, 1]);
        assert_eq!(q.arrive(5, 0).to_vec(), vec![Preempt(1), Start(5)]);
        assert_eq!(q.arrive(6, 1).to_vec(), vec![]);
        assert_eq!(running(&q), vec![4, 5, 3]);
    }

    #[test]
    fn lower_priority_arrival_waits_behind_higher() {
        let mut q = RunQueue::new(1, CLASSES);
        q.arrive(1, 0);
        assert_eq!(q.arrive(2, 2).to_vec(), vec![]);
        assert_eq!(q.arrive(3, 1).to_vec(), vec![]);
        assert_eq!(q.finish(1).to_vec(), vec![Start(3)]);
        assert_eq!(q.finish(3).to_vec(), vec![Start(2)]);
    }

    #[test]
    fn preempted_task_resumes_before_newer_task_of_its_class() {
        let mut q = RunQueue::new(1, CLASSES);
        q.arrive(1, 1);
        assert_eq!(q.arrive(2, 0).to_vec(), vec![Preempt(1), Start(2)]);
        q.arrive(3, 1);
        assert_eq!(q.finish(2).to_vec(), vec![Resume(1)]);
        assert_eq!(q.finish(1).to_vec(), vec![Start(3)]);
    }

    #[test]
    fn resume_order_follows_class_then_arrival() {
        let mut q = RunQueue::new(2, CLASSES);
        q.arrive(1, 2);
        q.arrive(2, 1);
        assert_eq!(q.arrive(3, 0).to_vec(), vec![Preempt(1), Start(3)]);
        assert_eq!(q.arrive(4, 0).to_vec(), vec![Preempt(2), Start(4)]);
        q.arrive(5, 2);
        assert_eq!(q.finish(3).to_vec(), vec![Resume(2)]);
        assert_eq!(q.finish(4).to_vec(), vec![Resume(1)]);
        assert_eq!(q.finish(2).to_vec(), vec![Start(5)]);
    }

    #[test]
    fn finishing_a_waiting_or_preempted_task_changes_no_core() {
        let mut q = RunQueue::new(1, CLASSES);
        q.arrive(1, 1);
        q.arrive(2, 0);
        q.arrive(3, 2);
        assert_eq!(q.finish(1).to_vec(), vec![], "preempted task cancelled");
        assert_eq!(q.finish(3).to_vec(), vec![], "waiting task cancelled");
        assert_eq!(running(&q), vec![2]);
        assert_eq!(q.waiting_len(), 0);
        assert_eq!(q.finish(2).to_vec(), vec![]);
        assert!(q.is_empty());
    }

    #[test]
    fn unknown_and_repeated_ids_are_ignored() {
        let mut q = RunQueue::new(1, CLASSES);
        assert_eq!(q.finish(42).to_vec(), vec![]);
        q.arrive(1, 1);
        assert_eq!(q.arrive(1, 0).to_vec(), vec![], "duplicate arrival");
        assert_eq!(q.finish(1).to_vec(), vec![]);
        assert_eq!(q.finish(1).to_vec(), vec![]);
    }

    #[test]
    fn out_of_range_class_counts_as_lowest() {
        let mut q = RunQueue::new(1, CLASSES);
        q.arrive(1, 200);
        assert_eq!(q.per_class(), vec![0, 0, 1]);
        assert_eq!(q.arrive(2, 1).to_vec(), vec![Preempt(1), Start(2)]);
    }

    #[test]
    fn many_cores_fill_several_at_once() {
        let mut q = RunQueue::new(4, CLASSES);
        for t in 0..4 {
            q.arrive(t, 2);
        }
        for t in 4..8 {
            q.arrive(t, 0);
        }
        assert_eq!(running(&q), vec![4, 5, 6, 7]);
        assert_eq!(q.finish(4).to_vec(), vec![Resume(0)]);
        assert_eq!(q.finish(5).to_vec(), vec![Resume(1)]);
    }

    #[test]
    fn per_class_counts_every_unfinished_task() {
        let mut q = RunQueue::new(1, CLASSES);
        q.arrive(1, 2);
        q.arrive(2, 0);
        q.arrive(3, 2);
        q.arrive(4, 1);
        assert_eq!(q.per_class(), vec![1, 1, 2]);
        q.finish(2);
        q.finish(3);
        assert_eq!(q.per_class(), vec![0, 1, 1]);
    }

    /// Tiny deterministic generator so the property test needs no new dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Checks the queue's invariant and that the decisions seen so far agree with it.
    fn check(q: &RunQueue, cores: usize, model_running: &std::collections::HashSet<TaskId>) {
        assert_eq!(q.running.len(), cores.min(q.len()));
        assert_eq!(q.running.len() + q.waiting.len(), q.len());
        assert!(
            q.running.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "running set out of order"
        );
        if let (Some((worst_running, _)), Some((best_waiting, _))) =
            (q.running.last(), q.waiting.first_key_value())
        {
            assert!(
                worst_running.0 <= best_waiting.0,
                "waiting task outranks a running one"
            );
            assert!(worst_running < best_waiting, "FCFS within class broken");
        }
        let actual: std::collections::HashSet<TaskId> = q.running().collect();
        assert_eq!(&actual, model_running, "decisions disagree with the queue");
        let total: u32 = q.per_class().iter().sum();
        assert_eq!(usize::try_from(total).unwrap(), q.len());
    }

    #[test]
    fn random_events_keep_the_invariant() {
        const SEEDS: u64 = 20;
        const EVENTS: usize = 2_000;
        for seed in 1..=SEEDS {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let cores = usize::try_from(1 + rng.below(4)).unwrap();
            let mut q = RunQueue::new(cores, CLASSES);
            let mut live: Vec<TaskId> = Vec::new();
            let mut started = std::collections::HashSet::new();
            let mut model = std::collections::HashSet::new();
            let mut next_id: TaskId = 0;
            for _ in 0..EVENTS {
                let decisions = if live.is_empty() || rng.below(3) != 0 {
                    next_id += 1;
                    live.push(next_id);
                    let class = u8::try_from(rng.below(CLASSES as u64)).unwrap();
                    q.arrive(next_id, class)
                } else if rng.below(10) == 0 {
                    q.finish(TaskId::MAX)
                } else {
                    let i = usize::try_from(rng.below(live.len() as u64)).unwrap();
                    let task = live.swap_remove(i);
                    model.remove(&task);
                    q.finish(task)
                };
                assert!(!decisions.spilled(), "one event decided {decisions:?}");
                for d in decisions {
                    match d {
                        Start(t) => {
                            assert!(started.insert(t), "task {t} started twice");
                            assert!(model.insert(t));
                        }
                        Resume(t) => {
                            assert!(started.contains(&t), "task {t} resumed before start");
                            assert!(model.insert(t));
                        }
                        Preempt(t) => assert!(model.remove(&t), "preempted idle task {t}"),
                    }
                }
                check(&q, cores, &model);
            }
        }
    }
}
