//! Virtual time and the event queue of the discrete-event simulator.
//!
//! Time is integer nanoseconds so ordering is exact and runs are bit-for-bit repeatable. Ties
//! are broken by insertion order (a sequence number), never by anything that depends on
//! memory addresses or hashing.
//!
//! Only completions need a heap. The event loop keeps exactly one arrival (the workload's
//! next invocation) and one tick pending at a time, so each waits in its own slot beside the
//! heap and `pop` compares the three candidates. On the full-day trace of docs/simulator.md
//! that keeps 8.6 M of its 14 M events (every arrival and tick) out of the heap, which was
//! the run's largest cost. The order is unchanged: every event still carries its sequence
//! number, and the earliest `(time, sequence)` of the heap's head and the two slots goes next.

use std::time::Duration;

/// Virtual time in nanoseconds since the start of the run.
pub type Nanos = u64;

/// Nanoseconds per second.
pub const NANOS_PER_SEC: f64 = 1e9;

/// Converts virtual time to the `Duration` the policy cores take as `now`.
pub fn to_duration(t: Nanos) -> Duration {
    Duration::from_nanos(t)
}

/// Converts seconds to virtual time.
pub fn from_secs(s: f64) -> Nanos {
    (s * NANOS_PER_SEC).round().max(0.0) as Nanos
}

/// Something that happens at an instant of virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// The next invocation of the workload arrives.
    Arrival,
    /// A scheduled completion: `id` is a task (or a machine, for processor sharing) and
    /// `generation` must still match for the event to count; preemption bumps it, which is
    /// how stale completions are dropped without searching the heap.
    Completion {
        /// Task or machine the completion belongs to.
        id: u32,
        /// Generation it was scheduled in.
        generation: u32,
    },
    /// Periodic housekeeping: utilisation and memory samples, retries.
    Tick,
}

/// An event with its time and its place in insertion order, which together order it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    /// When it happens.
    at: Nanos,
    /// Insertion number: earlier first among events at one time.
    seq: u64,
    /// What happens.
    event: Event,
}

/// Children per node of [`Heap`].
const ARITY: usize = 4;

/// A 4-ary min-heap: half the levels of a binary heap, and a node's children side by side in
/// memory, so a pop through the thousands of pending completions of a large cluster waits on
/// fewer cache misses.
#[derive(Debug, Default)]
struct Heap {
    /// The tree in breadth-first order: the children of `i` are `ARITY·i + 1 ..= ARITY·i + ARITY`.
    items: Vec<Scheduled>,
}

impl Heap {
    /// The earliest event.
    fn peek(&self) -> Option<&Scheduled> {
        self.items.first()
    }

    /// Events held.
    fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds `item`.
    fn push(&mut self, item: Scheduled) {
        let mut hole = self.items.len();
        self.items.push(item);
        while hole > 0 {
            let parent = (hole - 1) / ARITY;
            if self.items[parent] <= item {
                break;
            }
            self.items[hole] = self.items[parent];
            hole = parent;
        }
        self.items[hole] = item;
    }

    /// Removes the earliest event.
    fn pop(&mut self) -> Option<Scheduled> {
        let last = self.items.pop()?;
        let Some(&earliest) = self.items.first() else {
            return Some(last);
        };
        // The last leaf fills the root's hole, which moves down to where it fits.
        let len = self.items.len();
        let mut hole = 0;
        loop {
            let first = hole * ARITY + 1;
            if first >= len {
                break;
            }
            let mut child = first;
            for c in first + 1..(first + ARITY).min(len) {
                if self.items[c] < self.items[child] {
                    child = c;
                }
            }
            if last <= self.items[child] {
                break;
            }
            self.items[hole] = self.items[child];
            hole = child;
        }
        self.items[hole] = last;
        Some(earliest)
    }
}

/// A min-queue of events ordered by time, then by insertion.
#[derive(Debug, Default)]
pub struct EventQueue {
    /// Pending completions, and any arrival or tick pushed while its slot was taken.
    heap: Heap,
    /// The pending arrival, outside the heap.
    arrival: Option<Scheduled>,
    /// The pending tick, outside the heap.
    tick: Option<Scheduled>,
    /// Insertion counter for tie-breaking.
    seq: u64,
    /// Events handed out so far (the speed figure counts these).
    popped: u64,
}

impl EventQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Nanos, event: Event) {
        let scheduled = Scheduled {
            at,
            seq: self.seq,
            event,
        };
        self.seq += 1;
        let slot = match event {
            Event::Arrival => &mut self.arrival,
            Event::Tick => &mut self.tick,
            Event::Completion { .. } => {
                self.heap.push(scheduled);
                return;
            }
        };
        match slot {
            None => *slot = Some(scheduled),
            Some(_) => self.heap.push(scheduled),
        }
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<(Nanos, Event)> {
        let head = self.heap.peek().copied();
        let earliest = [head, self.arrival, self.tick]
            .into_iter()
            .flatten()
            .min()?;
        if Some(earliest) == self.arrival {
            self.arrival = None;
        } else if Some(earliest) == self.tick {
            self.tick = None;
        } else {
            self.heap.pop();
        }
        self.popped += 1;
        Some((earliest.at, earliest.event))
    }

    /// Events popped so far.
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.heap.len() + usize::from(self.arrival.is_some()) + usize::from(self.tick.is_some())
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn earliest_first_then_insertion_order() {
        let mut q = EventQueue::new();
        q.push(5, Event::Tick);
        q.push(
            1,
            Event::Completion {
                id: 2,
                generation: 0,
            },
        );
        q.push(1, Event::Arrival);
        assert_eq!(
            q.pop(),
            Some((
                1,
                Event::Completion {
                    id: 2,
                    generation: 0
                }
            ))
        );
        assert_eq!(q.pop(), Some((1, Event::Arrival)));
        assert_eq!(q.pop(), Some((5, Event::Tick)));
        assert_eq!(q.popped(), 3);
        assert!(q.is_empty());
    }

    /// The slots beside the heap change nothing: any mix of pushes and pops, with several
    /// arrivals or ticks pending at once, comes out as from one heap ordered by (time, insertion).
    #[test]
    fn same_order_as_one_heap() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(14);
        let mut q = EventQueue::new();
        let mut model: BinaryHeap<Reverse<(Nanos, u64, Event)>> = BinaryHeap::new();
        let mut seq = 0;
        let mut now = 0;
        for _ in 0..10_000 {
            if rng.gen_bool(0.55) {
                let at = now + rng.gen_range(0..5);
                let event = match rng.gen_range(0..3) {
                    0 => Event::Arrival,
                    1 => Event::Tick,
                    _ => Event::Completion {
                        id: rng.gen_range(0..10),
                        generation: 0,
                    },
                };
                q.push(at, event);
                model.push(Reverse((at, seq, event)));
                seq += 1;
            } else {
                let expected = model.pop().map(|Reverse((at, _, event))| (at, event));
                assert_eq!(q.pop(), expected);
                if let Some((at, _)) = expected {
                    now = at;
                }
            }
            assert_eq!(q.len(), model.len());
        }
    }
}
