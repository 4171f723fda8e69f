//! What memory pressure has cost each class on this machine, summed as runs end, for the
//! report of the machine's memory every heartbeat carries to the shards (issue 15), so that
//! `tariff status` shows per machine what its functions hold and what oversubscription is
//! costing each class. The metrics count the same runs (`DispatcherMetrics::ran`); this keeps
//! the sums the shards can be told, indexed by class rather than by label.

use std::sync::{Mutex, MutexGuard};

use tariff_types::wire::{ClassMemory, Completion};
use tariff_types::InvokeError;

/// Per-class totals since the dispatcher started, most expensive class first.
#[derive(Default)]
pub(crate) struct MemoryTotals {
    per_class: Mutex<Vec<ClassMemory>>,
}

impl MemoryTotals {
    fn per_class(&self) -> MutexGuard<'_, Vec<ClassMemory>> {
        self.per_class.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds what memory pressure cost one finished run of class `class` (an index).
    pub(crate) fn ran(&self, class: usize, completion: &Completion) {
        let mut per_class = self.per_class();
        if per_class.len() <= class {
            per_class.resize(class + 1, ClassMemory::default());
        }
        let total = &mut per_class[class];
        match &completion.result {
            Ok(report) => {
                let memory = report.memory;
                total.pressure.swapped_out_bytes += memory.swapped_out_bytes;
                total.pressure.swapped_in_bytes += memory.swapped_in_bytes;
                total.pressure.held_us += memory.held_us;
            }
            Err(InvokeError::KilledUnderMemoryPressure) => total.kills += 1,
            Err(_) => {}
        }
    }

    /// The totals for `classes` classes (zeros for those without a run yet).
    pub(crate) fn snapshot(&self, classes: usize) -> Vec<ClassMemory> {
        let mut totals = self.per_class().clone();
        totals.resize(classes.max(totals.len()), ClassMemory::default());
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tariff_types::wire::{InvocationId, MemoryPressure, RunReport};

    fn completion(result: Result<RunReport, InvokeError>) -> Completion {
        Completion {
            id: InvocationId(1),
            result,
        }
    }

    #[test]
    fn sums_by_class_and_counts_memory_kills_only() {
        let totals = MemoryTotals::default();
        let swapped = RunReport {
            memory: MemoryPressure {
                swapped_out_bytes: 10,
                swapped_in_bytes: 7,
                held_us: 100,
            },
            ..RunReport::default()
        };
        totals.ran(3, &completion(Ok(swapped.clone())));
        totals.ran(3, &completion(Ok(swapped)));
        totals.ran(3, &completion(Err(InvokeError::KilledUnderMemoryPressure)));
        totals.ran(0, &completion(Err(InvokeError::Cancelled)));
        let snapshot = totals.snapshot(4);
        assert_eq!(snapshot.len(), 4);
        assert_eq!(snapshot[0], ClassMemory::default());
        assert_eq!(snapshot[3].pressure.swapped_out_bytes, 20);
        assert_eq!(snapshot[3].pressure.swapped_in_bytes, 14);
        assert_eq!(snapshot[3].pressure.held_us, 200);
        assert_eq!(snapshot[3].kills, 1);
    }
}
