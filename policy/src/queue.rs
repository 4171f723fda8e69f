//! The shard's multi-queue: one FIFO per price class, and the choice of which head goes next.
//!
//! The paper picks the next invocation by "comparing the ratio of price class to amount of
//! time spent in the queue" so that "high price class functions don't have to wait as long as
//! low price class functions to be chosen next, but low price class functions will get placed
//! if they have waited for a while". Read literally (price ÷ wait) that would favour whatever
//! arrived last, which contradicts both halves of the sentence. We read it as a price that
//! grows with waiting:
//!
//! ```text
//! score(head) = price × (1 + waited / τ)
//! ```
//!
//! With equal waits the dearer class always wins, so top classes go first; and a class of
//! price `p` overtakes a just-arrived class of price `q > p` once it has waited `τ·(q/p − 1)`,
//! so nothing starves. With the default classes and τ = 1 s, `batch` (0.5) goes ahead of a
//! fresh `critical` (2.0) after waiting 3 s. Only the heads are compared, so FIFO order holds
//! within a class and a decision costs O(classes).

use std::collections::VecDeque;
use std::time::Duration;

use tariff_types::ClassId;

/// Default τ: the wait that doubles an invocation's score.
pub const DEFAULT_AGING: Duration = Duration::from_secs(1);

struct Queued<T> {
    item: T,
    enqueued: Duration,
}

/// One FIFO queue per price class.
pub struct ClassQueues<T> {
    prices: Vec<f64>,
    queues: Vec<VecDeque<Queued<T>>>,
    aging_secs: f64,
    len: usize,
}

impl<T> ClassQueues<T> {
    /// Queues for classes with these prices (index = class id), aging with period `aging`.
    pub fn new(prices: Vec<f64>, aging: Duration) -> Self {
        let queues = prices.iter().map(|_| VecDeque::new()).collect();
        Self {
            prices,
            queues,
            aging_secs: aging.as_secs_f64().max(f64::MIN_POSITIVE),
            len: 0,
        }
    }

    /// Adds an invocation at the tail of its class queue; `now` is its arrival time.
    pub fn push(&mut self, class: ClassId, item: T, now: Duration) {
        self.queues[class.index()].push_back(Queued {
            item,
            enqueued: now,
        });
        self.len += 1;
    }

    /// Puts an invocation back at the head of its class queue, keeping its original arrival
    /// time (used when no machine had room for it).
    pub fn push_front(&mut self, class: ClassId, item: T, enqueued: Duration) {
        self.queues[class.index()].push_front(Queued { item, enqueued });
        self.len += 1;
    }

    /// The score of a head that arrived at `enqueued`, at time `now`.
    fn score(&self, class: usize, enqueued: Duration, now: Duration) -> f64 {
        let waited = now.saturating_sub(enqueued).as_secs_f64();
        self.prices[class] * (1.0 + waited / self.aging_secs)
    }

    /// The class whose head goes next among classes `0..eligible` (classes at and below a
    /// blocked class are excluded by the caller), or `None` if those queues are empty.
    pub fn next_class(&self, now: Duration, eligible: usize) -> Option<ClassId> {
        let mut best: Option<(usize, f64)> = None;
        for (class, queue) in self.queues.iter().enumerate().take(eligible) {
            if let Some(head) = queue.front() {
                let score = self.score(class, head.enqueued, now);
                // Strictly greater: on a tie the dearer class (lower index) keeps the slot.
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((class, score));
                }
            }
        }
        best.map(|(class, _)| ClassId(class as u8))
    }

    /// Removes the head of `class`, with its arrival time.
    pub fn pop(&mut self, class: ClassId) -> Option<(T, Duration)> {
        let queued = self.queues[class.index()].pop_front()?;
        self.len -= 1;
        Some((queued.item, queued.enqueued))
    }

    /// Invocations queued in all classes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Invocations queued in `class` and every dearer class: those placed before a new one of
    /// `class` (ignoring aging).
    pub fn through(&self, class: ClassId) -> usize {
        self.queues
            .iter()
            .take(class.index() + 1)
            .map(VecDeque::len)
            .sum()
    }

    /// Queued per class, most expensive first.
    pub fn per_class(&self) -> Vec<usize> {
        self.queues.iter().map(VecDeque::len).collect()
    }

    /// Removes every queued invocation (at shutdown, to answer each one).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.len = 0;
        self.queues
            .iter_mut()
            .flat_map(|q| q.drain(..).map(|queued| queued.item))
    }

    /// Removes and returns queued invocations for which `expired` is true, in no particular
    /// order (the driver answers them with a timeout).
    pub fn remove_where(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for queue in &mut self.queues {
            let mut kept = VecDeque::with_capacity(queue.len());
            for queued in queue.drain(..) {
                if expired(&queued.item) {
                    removed.push(queued.item);
                } else {
                    kept.push_back(queued);
                }
            }
            *queue = kept;
        }
        self.len -= removed.len();
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn queues() -> ClassQueues<&'static str> {
        ClassQueues::new(vec![2.0, 1.5, 1.0, 0.5], DEFAULT_AGING)
    }

    #[test]
    fn top_class_goes_first_when_waits_are_equal() {
        let mut q = queues();
        let t = 10 * MS;
        q.push(ClassId(3), "batch", t);
        q.push(ClassId(0), "critical", t);
        assert_eq!(q.next_class(t, 4), Some(ClassId(0)));
    }

    #[test]
    fn fifo_within_a_class() {
        let mut q = queues();
        q.push(ClassId(2), "a", MS);
        q.push(ClassId(2), "b", 2 * MS);
        assert_eq!(q.pop(ClassId(2)).unwrap().0, "a");
        assert_eq!(q.pop(ClassId(2)).unwrap().0, "b");
        assert!(q.is_empty());
    }

    #[test]
    fn a_fresh_critical_beats_a_batch_backlog_of_a_few_hundred_ms() {
        let mut q = queues();
        q.push(ClassId(3), "batch", Duration::ZERO);
        let now = 500 * MS;
        q.push(ClassId(0), "critical", now);
        assert_eq!(q.next_class(now, 4), Some(ClassId(0)));
    }

    #[test]
    fn a_low_class_that_waited_long_enough_still_goes() {
        let mut q = queues();
        q.push(ClassId(3), "batch", Duration::ZERO);
        // batch at 0.5 overtakes a fresh critical at 2.0 after 3 τ.
        let now = Duration::from_millis(3001);
        q.push(ClassId(0), "critical", now);
        assert_eq!(q.next_class(now, 4), Some(ClassId(3)));
        let earlier = Duration::from_millis(2999);
        assert_eq!(q.next_class(earlier, 4), Some(ClassId(0)));
    }

    #[test]
    fn ineligible_classes_are_skipped() {
        let mut q = queues();
        q.push(ClassId(3), "batch", Duration::ZERO);
        q.push(ClassId(1), "high", Duration::ZERO);
        assert_eq!(q.next_class(MS, 1), None);
        assert_eq!(q.next_class(MS, 3), Some(ClassId(1)));
    }

    #[test]
    fn push_front_keeps_the_original_arrival() {
        let mut q = queues();
        q.push(ClassId(3), "old", Duration::ZERO);
        q.push(ClassId(3), "new", 5 * MS);
        let (item, at) = q.pop(ClassId(3)).unwrap();
        q.push_front(ClassId(3), item, at);
        assert_eq!(q.pop(ClassId(3)).unwrap(), ("old", Duration::ZERO));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn remove_where_keeps_order_of_the_rest() {
        let mut q = queues();
        for (i, name) in ["a", "x", "b", "y"].into_iter().enumerate() {
            q.push(ClassId(1), name, i as u32 * MS);
        }
        let removed = q.remove_where(|n| n.starts_with(['x', 'y']));
        assert_eq!(removed.len(), 2);
        assert_eq!(q.per_class(), [0, 2, 0, 0]);
        assert_eq!(q.pop(ClassId(1)).unwrap().0, "a");
        assert_eq!(q.pop(ClassId(1)).unwrap().0, "b");
    }
}
