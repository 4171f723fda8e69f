//! The idle list: machines that have announced much free memory, so a shard can place on them
//! without polling.
//!
//! Polling k random machines finds a free one easily when most are free, but not when idle
//! machines are rare; letting idle machines announce themselves (join-idle-queue, defined by
//! free memory rather than an empty queue) makes them visible. The shard places on the listed
//! machine with the smallest queue, and counts its own placements into that queue until the
//! machine's next update, so a burst spreads over the list instead of piling onto one entry.

use std::collections::{BTreeSet, HashMap};

use crate::MachineIdx;

/// What the shard knows of a listed machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleMachine {
    /// Free memory the machine reported, in bytes.
    pub free_memory_bytes: u64,
    /// Unfinished invocations: the machine's last report plus placements made since.
    pub queue_length: u32,
    /// Invocations the machine takes at once.
    pub slots: u32,
}

/// A shard's idle list.
#[derive(Debug, Default)]
pub struct IdleList {
    entries: HashMap<MachineIdx, IdleMachine>,
    by_queue: BTreeSet<(u32, MachineIdx)>,
}

impl IdleList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a machine or replaces its entry with a fresh report.
    pub fn upsert(&mut self, machine: MachineIdx, entry: IdleMachine) {
        self.remove(machine);
        self.by_queue.insert((entry.queue_length, machine));
        self.entries.insert(machine, entry);
    }

    /// Takes a machine off the list (it left, filled its memory or disconnected).
    pub fn remove(&mut self, machine: MachineIdx) -> Option<IdleMachine> {
        let old = self.entries.remove(&machine)?;
        self.by_queue.remove(&(old.queue_length, machine));
        Some(old)
    }

    /// The listed machine with the smallest queue, if that queue still has a free slot.
    pub fn best(&self) -> Option<MachineIdx> {
        let &(queue, machine) = self.by_queue.first()?;
        let entry = &self.entries[&machine];
        (queue < entry.slots).then_some(machine)
    }

    /// Whether `machine` is listed with a free slot.
    pub fn has_room(&self, machine: MachineIdx) -> bool {
        self.entries
            .get(&machine)
            .is_some_and(|e| e.queue_length < e.slots)
    }

    /// Records a placement on `machine` so the next choice sees its longer queue.
    pub fn placed(&mut self, machine: MachineIdx) {
        self.adjust(machine, |q| q.saturating_add(1));
    }

    /// Records that an invocation this shard placed on `machine` finished.
    pub fn finished(&mut self, machine: MachineIdx) {
        self.adjust(machine, |q| q.saturating_sub(1));
    }

    fn adjust(&mut self, machine: MachineIdx, change: impl FnOnce(u32) -> u32) {
        if let Some(entry) = self.entries.get_mut(&machine) {
            self.by_queue.remove(&(entry.queue_length, machine));
            entry.queue_length = change(entry.queue_length);
            self.by_queue.insert((entry.queue_length, machine));
        }
    }

    /// Machines on the list.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no machine is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `machine` is listed.
    pub fn contains(&self, machine: MachineIdx) -> bool {
        self.entries.contains_key(&machine)
    }

    /// Listed machines, smallest queue first.
    pub fn machines(&self) -> impl Iterator<Item = MachineIdx> + '_ {
        self.by_queue.iter().map(|&(_, m)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(queue_length: u32) -> IdleMachine {
        IdleMachine {
            free_memory_bytes: 1 << 30,
            queue_length,
            slots: 2,
        }
    }

    #[test]
    fn smallest_queue_wins_and_placements_count() {
        let mut list = IdleList::new();
        list.upsert(MachineIdx(1), entry(1));
        list.upsert(MachineIdx(2), entry(0));
        assert_eq!(list.best(), Some(MachineIdx(2)));
        list.placed(MachineIdx(2));
        list.placed(MachineIdx(2));
        assert_eq!(list.best(), Some(MachineIdx(1)));
        list.placed(MachineIdx(1));
        assert_eq!(list.best(), None, "every listed machine is full");
        list.finished(MachineIdx(2));
        assert_eq!(list.best(), Some(MachineIdx(2)));
    }

    #[test]
    fn updates_replace_and_removal_forgets() {
        let mut list = IdleList::new();
        list.upsert(MachineIdx(7), entry(1));
        list.upsert(MachineIdx(7), entry(0));
        assert_eq!(list.len(), 1);
        assert_eq!(list.machines().collect::<Vec<_>>(), [MachineIdx(7)]);
        assert!(list.remove(MachineIdx(7)).is_some());
        assert!(list.is_empty());
        assert_eq!(list.best(), None);
        list.placed(MachineIdx(7));
        assert!(
            list.is_empty(),
            "placing on an unlisted machine does not list it"
        );
    }
}
