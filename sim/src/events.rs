//! Virtual time and the event queue of the discrete-event simulator.
//!
//! Time is integer nanoseconds so ordering is exact and runs are bit-for-bit repeatable. Ties
//! are broken by insertion order (a sequence number), never by anything that depends on
//! memory addresses or hashing.
//!
//! The queue is a radix heap (Ahuja, Mehlhorn, Orlin and Tarjan, 1990), which fits a
//! simulator's clock: an event is never scheduled before the one being handled, so every key
//! pushed is at least the last key popped. Keys are `(time, sequence)` as one 128-bit number;
//! an event waits in the bucket named by the highest bit in which its key differs from the
//! last key popped, and a pop empties only the lowest bucket, spreading its few events into
//! lower ones. Pushes are appends and a pop scans a short vector, where the 4-ary heap it
//! replaced chased a cache miss per level through thousands of pending completions (on the
//! full-day trace of docs/simulator.md, a fifth of the run). Arrivals and ticks go in the
//! same queue: their keys are near the front, where buckets are small.

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
    /// A timer of the policy's own (Tariff's real-time budget period, one per machine): `id`
    /// says whose, and `generation` must still match, as for a completion.
    Timer {
        /// Whose timer (a machine).
        id: u32,
        /// Generation it was set in.
        generation: u32,
    },
}

/// An event with its time and its place in insertion order, which together order it.
#[derive(Debug, Clone, Copy)]
struct Scheduled {
    /// `(time, insertion number)` as one number, time in the high half: earlier first, and
    /// among events at one time, the one pushed first.
    key: u128,
    /// What happens.
    event: Event,
}

impl Scheduled {
    /// When it happens.
    fn at(&self) -> Nanos {
        (self.key >> u64::BITS) as Nanos
    }
}

/// Buckets of [`RadixHeap`]: one for the last key popped, and one per bit of a key.
const BUCKETS: usize = u128::BITS as usize + 1;

/// A monotone min-queue on 128-bit keys: every key pushed is at least the last key popped.
#[derive(Debug)]
struct RadixHeap {
    /// Bucket 0 holds events whose key equals `last`; bucket `b` > 0 those whose key differs
    /// from `last` first (counting from the top) in bit `b − 1`. Every key in a bucket is
    /// smaller than every key in a higher one.
    buckets: Vec<Vec<Scheduled>>,
    /// Which buckets above 0 hold events: bit `b − 1` for bucket `b`.
    nonempty: u128,
    /// The last key popped (0 before the first pop).
    last: u128,
    /// Events held.
    len: usize,
}

impl Default for RadixHeap {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            nonempty: 0,
            last: 0,
            len: 0,
        }
    }
}

impl RadixHeap {
    /// The bucket of `key`, given the last key popped.
    fn bucket(key: u128, last: u128) -> usize {
        (u128::BITS - (key ^ last).leading_zeros()) as usize
    }

    /// Adds `item`, which must not be earlier than the last event popped.
    fn push(&mut self, item: Scheduled) {
        assert!(
            item.key >= self.last,
            "event scheduled at {} ns, before the one being handled ({} ns)",
            item.at(),
            (self.last >> u64::BITS) as Nanos
        );
        let b = Self::bucket(item.key, self.last);
        self.buckets[b].push(item);
        if b > 0 {
            self.nonempty |= 1 << (b - 1);
        }
        self.len += 1;
    }

    /// Removes the earliest event.
    fn pop(&mut self) -> Option<Scheduled> {
        if self.buckets[0].is_empty() {
            if self.nonempty == 0 {
                return None;
            }
            // The lowest non-empty bucket holds the earliest key. Once it is the last key
            // popped, every other event of that bucket differs from it in a lower bit, so
            // each moves to a lower bucket.
            let b = self.nonempty.trailing_zeros() as usize + 1;
            self.nonempty &= !(1 << (b - 1));
            let mut spread = std::mem::take(&mut self.buckets[b]);
            self.last = spread.iter().map(|s| s.key).min().unwrap_or(self.last);
            for item in spread.drain(..) {
                let to = Self::bucket(item.key, self.last);
                self.buckets[to].push(item);
                if to > 0 {
                    self.nonempty |= 1 << (to - 1);
                }
            }
            // Keep the vector's capacity for the bucket's next events.
            self.buckets[b] = spread;
        }
        let earliest = self.buckets[0].pop()?;
        self.len -= 1;
        Some(earliest)
    }
}

/// A min-queue of events ordered by time, then by insertion.
#[derive(Debug, Default)]
pub struct EventQueue {
    /// Pending events.
    heap: RadixHeap,
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
    ///
    /// # Panics
    /// If `at` is before the last event popped: virtual time never runs backwards.
    pub fn push(&mut self, at: Nanos, event: Event) {
        let key = (u128::from(at) << u64::BITS) | u128::from(self.seq);
        self.seq += 1;
        self.heap.push(Scheduled { key, event });
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<(Nanos, Event)> {
        let earliest = self.heap.pop()?;
        self.popped += 1;
        Some((earliest.at(), earliest.event))
    }

    /// Events popped so far.
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.heap.len
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

    /// Any mix of pushes and pops, with several events at one time, comes out as from a
    /// binary heap ordered by (time, insertion).
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
                // Ties, near events and far ones: keys that differ in low and high bits.
                let spread = [5, 10_000, 1 << 40][rng.gen_range(0..3)];
                let at = now + rng.gen_range(0..spread);
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

    #[test]
    #[should_panic(expected = "before the one being handled")]
    fn time_never_runs_backwards() {
        let mut q = EventQueue::new();
        q.push(10, Event::Tick);
        q.pop();
        q.push(9, Event::Tick);
    }
}
