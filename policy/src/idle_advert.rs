//! When a machine lists itself as idle, and where: the dispatcher's idle-list policy, pure.
//!
//! The paper's dispatcher "is in charge of adding itself to a shard's idle list when memory
//! utilization is low", choosing the shard by power-of-k on list lengths, and updating its
//! entry "if the amount of available memory has changed significantly". [`IdleAdvertiser`]
//! turns periodic observations of free memory and queue length into the few messages that
//! rule needs: join, update, leave, or nothing.

use rand::seq::SliceRandom;
use rand::Rng;
use tariff_types::wire::IdleEntry;

/// Default: a machine is idle while at least this share of its memory is free.
pub const DEFAULT_IDLE_THRESHOLD: f64 = 0.25;
/// Default: free memory must move by this share of the machine's memory to be worth an update.
pub const DEFAULT_SIGNIFICANT_CHANGE: f64 = 0.05;

/// Thresholds of the idle-list policy.
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// Memory functions may use on this machine, in bytes.
    pub memory_bytes: u64,
    /// Share of memory that must be free to be listed.
    pub threshold: f64,
    /// Share of memory a change must exceed to update the entry.
    pub significant: f64,
}

impl IdlePolicy {
    /// The default policy for a machine with this much memory.
    pub fn new(memory_bytes: u64) -> Self {
        Self {
            memory_bytes,
            threshold: DEFAULT_IDLE_THRESHOLD,
            significant: DEFAULT_SIGNIFICANT_CHANGE,
        }
    }

    fn is_idle(&self, free: u64) -> bool {
        free as f64 >= self.threshold * self.memory_bytes as f64
    }

    fn is_significant(&self, before: u64, now: u64) -> bool {
        before.abs_diff(now) as f64 >= self.significant * self.memory_bytes as f64
    }
}

/// What the dispatcher should do after an observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IdleAction {
    /// Not listed and idle: choose a shard (least-crowded of k) and join its list.
    Join(IdleEntry),
    /// Listed on this shard and something changed: send the new entry there.
    Update(usize, IdleEntry),
    /// Listed on this shard and no longer idle: leave its list.
    Leave(usize),
    /// Nothing worth a message.
    Nothing,
}

/// The machine's idle-list state.
#[derive(Debug)]
pub struct IdleAdvertiser {
    policy: IdlePolicy,
    listed_on: Option<usize>,
    last: IdleEntry,
}

impl IdleAdvertiser {
    /// A machine not yet on any list.
    pub fn new(policy: IdlePolicy) -> Self {
        Self {
            policy,
            listed_on: None,
            last: IdleEntry {
                listed: false,
                free_memory_bytes: 0,
                queue_length: 0,
            },
        }
    }

    /// Decides what to do now that the machine has `free` bytes and `queue` unfinished
    /// invocations.
    pub fn observe(&mut self, free: u64, queue: u32) -> IdleAction {
        let entry = IdleEntry {
            listed: true,
            free_memory_bytes: free,
            queue_length: queue,
        };
        match (self.listed_on, self.policy.is_idle(free)) {
            (None, true) => IdleAction::Join(entry),
            (None, false) => IdleAction::Nothing,
            (Some(shard), false) => {
                self.listed_on = None;
                IdleAction::Leave(shard)
            }
            (Some(shard), true) => {
                let changed = self
                    .policy
                    .is_significant(self.last.free_memory_bytes, free)
                    || self.last.queue_length != queue;
                if changed {
                    self.last = entry;
                    IdleAction::Update(shard, entry)
                } else {
                    IdleAction::Nothing
                }
            }
        }
    }

    /// Records that the machine joined `shard`'s list with `entry`.
    pub fn joined(&mut self, shard: usize, entry: IdleEntry) {
        self.listed_on = Some(shard);
        self.last = entry;
    }

    /// A shard's connection ended: if the machine was listed there, it is not any more.
    pub fn shard_lost(&mut self, shard: usize) {
        if self.listed_on == Some(shard) {
            self.listed_on = None;
        }
    }

    /// The shard whose list the machine is on.
    pub fn listed_on(&self) -> Option<usize> {
        self.listed_on
    }
}

/// The k shards to ask for their idle-list lengths: distinct shards drawn uniformly from
/// `candidates` without replacement (all of them when there are k or fewer). Sampling with
/// replacement would poll the same shard twice and so ask fewer than k on small clusters;
/// the live dispatcher and the simulator both call this, so they poll alike.
pub fn shards_to_poll<R: Rng + ?Sized>(candidates: &[usize], k: usize, rng: &mut R) -> Vec<usize> {
    candidates.choose_multiple(rng, k.max(1)).copied().collect()
}

/// Power-of-k on list lengths: the polled shard with the shortest idle list (ties go to the
/// first answer).
pub fn least_crowded(lengths: &[(usize, u32)]) -> Option<usize> {
    lengths
        .iter()
        .min_by_key(|&&(_, length)| length)
        .map(|&(shard, _)| shard)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    #[test]
    fn polls_k_distinct_shards() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let candidates: Vec<usize> = (0..10).collect();
        for _ in 0..100 {
            let mut polled = shards_to_poll(&candidates, 3, &mut rng);
            assert_eq!(polled.len(), 3);
            polled.sort_unstable();
            polled.dedup();
            assert_eq!(polled.len(), 3, "a shard was polled twice");
        }
        assert_eq!(shards_to_poll(&[4, 5], 3, &mut rng).len(), 2);
        assert_eq!(shards_to_poll(&[4, 5], 0, &mut rng).len(), 1);
        assert!(shards_to_poll(&[], 3, &mut rng).is_empty());
    }

    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn joins_when_free_updates_on_change_and_leaves_when_full() {
        let mut advert = IdleAdvertiser::new(IdlePolicy::new(8 * GIB));
        let IdleAction::Join(entry) = advert.observe(6 * GIB, 0) else {
            panic!("an empty machine joins")
        };
        advert.joined(2, entry);
        assert_eq!(advert.observe(6 * GIB, 0), IdleAction::Nothing);
        assert_eq!(
            advert.observe(6 * GIB + GIB / 100, 0),
            IdleAction::Nothing,
            "a 1 % change is not significant"
        );
        assert!(matches!(
            advert.observe(5 * GIB, 0),
            IdleAction::Update(2, _)
        ));
        assert!(
            matches!(advert.observe(5 * GIB, 3), IdleAction::Update(2, e) if e.queue_length == 3)
        );
        assert_eq!(advert.observe(GIB, 3), IdleAction::Leave(2));
        assert_eq!(advert.observe(GIB, 3), IdleAction::Nothing);
    }

    #[test]
    fn losing_the_shard_means_joining_again() {
        let mut advert = IdleAdvertiser::new(IdlePolicy::new(4 * GIB));
        let IdleAction::Join(entry) = advert.observe(4 * GIB, 0) else {
            panic!()
        };
        advert.joined(0, entry);
        advert.shard_lost(1);
        assert_eq!(advert.listed_on(), Some(0));
        advert.shard_lost(0);
        assert!(matches!(advert.observe(4 * GIB, 0), IdleAction::Join(_)));
    }

    #[test]
    fn least_crowded_shard() {
        assert_eq!(least_crowded(&[(0, 5), (1, 2), (2, 2)]), Some(1));
        assert_eq!(least_crowded(&[]), None);
    }
}
