//! Virtual time and the event queue of the discrete-event simulator.
//!
//! Time is integer nanoseconds so ordering is exact and runs are bit-for-bit repeatable. Ties
//! are broken by insertion order (a sequence number), never by anything that depends on
//! memory addresses or hashing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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

/// A min-heap of events ordered by time, then by insertion.
#[derive(Debug, Default)]
pub struct EventQueue {
    /// Pending events.
    heap: BinaryHeap<Reverse<(Nanos, u64, Event)>>,
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
        self.heap.push(Reverse((at, self.seq, event)));
        self.seq += 1;
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<(Nanos, Event)> {
        let Reverse((at, _, event)) = self.heap.pop()?;
        self.popped += 1;
        Some((at, event))
    }

    /// Events popped so far.
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
