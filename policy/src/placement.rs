//! Power-of-k-choices placement, for when the idle list has no machine with room.
//!
//! The shard polls k machines chosen at random and places on the one with the fewest running
//! functions. Tariff counts only the functions an invocation cannot preempt: those of its own
//! class and dearer ones. A `critical` call sent to a machine full of `batch` work runs at once
//! (the machine scheduler preempts), so that machine is as good as an empty one for it, while a
//! `batch` call must wait behind everything. The same count decides whether a machine has room
//! at all: fewer such functions than the machine's slots.

use rand::Rng;
use tariff_types::ClassId;

use crate::MachineIdx;

/// Default k: the paper's simulator uses three choices.
pub const DEFAULT_K: usize = 3;

/// Unfinished invocations on a machine that a `class` invocation could not preempt.
pub fn competing(class: ClassId, per_class: &[u32]) -> u32 {
    per_class.iter().take(class.index() + 1).sum()
}

/// Whether a machine with these loads has room for a `class` invocation.
pub fn has_room(class: ClassId, per_class: &[u32], slots: u32) -> bool {
    competing(class, per_class) < slots
}

/// Picks up to `k` distinct machines uniformly at random from `machines`.
pub fn sample<R: Rng>(rng: &mut R, machines: &[MachineIdx], k: usize, out: &mut Vec<MachineIdx>) {
    out.clear();
    if machines.len() <= k {
        out.extend_from_slice(machines);
        return;
    }
    // Rejection sampling: k is tiny next to the machine count, so repeats are rare and this
    // beats shuffling an index array.
    while out.len() < k {
        let pick = machines[rng.gen_range(0..machines.len())];
        if !out.contains(&pick) {
            out.push(pick);
        }
    }
}

/// A polled machine's answer.
#[derive(Debug, Clone, Copy)]
pub struct PolledLoad<'a> {
    /// The machine.
    pub machine: MachineIdx,
    /// Its unfinished invocations per class.
    pub per_class: &'a [u32],
    /// Its slots.
    pub slots: u32,
    /// It holds an idle warm instance of the invocation's function.
    pub warm: bool,
}

/// The polled machine with room for `class` and the fewest competing functions; ties go to a
/// machine with a warm instance (no process to start), then to the fewest functions overall,
/// then to the earlier answer.
pub fn least_loaded(class: ClassId, polled: &[PolledLoad<'_>]) -> Option<MachineIdx> {
    polled
        .iter()
        .filter(|p| has_room(class, p.per_class, p.slots))
        .min_by_key(|p| {
            (
                competing(class, p.per_class),
                !p.warm,
                p.per_class.iter().sum::<u32>(),
            )
        })
        .map(|p| p.machine)
}

/// The polled machine with the fewest unfinished invocations of any class, room or not:
/// Hermod's least-loaded placement with early binding (ties: a warm instance, then the earlier
/// answer).
pub fn least_loaded_any(polled: &[PolledLoad<'_>]) -> Option<MachineIdx> {
    polled
        .iter()
        .min_by_key(|p| (p.per_class.iter().sum::<u32>(), !p.warm))
        .map(|p| p.machine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_machine_full_of_lower_classes_has_room_for_a_higher_one() {
        let batch_only = [0, 0, 0, 4];
        assert!(has_room(ClassId(0), &batch_only, 4));
        assert!(!has_room(ClassId(3), &batch_only, 4));
        assert_eq!(competing(ClassId(1), &[1, 2, 3, 4]), 3);
    }

    #[test]
    fn least_loaded_prefers_fewest_competitors_then_fewest_overall() {
        let a = [0, 0, 0, 3];
        let b = [1, 0, 0, 0];
        let c = [0, 0, 0, 1];
        let polled = [
            PolledLoad {
                machine: MachineIdx(0),
                per_class: &a,
                slots: 4,
                warm: false,
            },
            PolledLoad {
                machine: MachineIdx(1),
                per_class: &b,
                slots: 4,
                warm: false,
            },
            PolledLoad {
                machine: MachineIdx(2),
                per_class: &c,
                slots: 4,
                warm: false,
            },
        ];
        assert_eq!(least_loaded(ClassId(0), &polled), Some(MachineIdx(2)));
        assert_eq!(least_loaded(ClassId(3), &polled), Some(MachineIdx(1)));
        let full = [PolledLoad {
            machine: MachineIdx(0),
            per_class: &a,
            slots: 3,
            warm: false,
        }];
        assert_eq!(least_loaded(ClassId(3), &full), None);
        assert_eq!(least_loaded(ClassId(2), &full), Some(MachineIdx(0)));
    }

    #[test]
    fn a_warm_instance_breaks_ties() {
        let a = [0, 0, 1, 0];
        let b = [0, 0, 1, 0];
        let polled = [
            PolledLoad {
                machine: MachineIdx(0),
                per_class: &a,
                slots: 4,
                warm: false,
            },
            PolledLoad {
                machine: MachineIdx(1),
                per_class: &b,
                slots: 4,
                warm: true,
            },
        ];
        assert_eq!(least_loaded(ClassId(1), &polled), Some(MachineIdx(1)));
        let busier_warm = [1, 0, 1, 0];
        let polled = [
            PolledLoad {
                machine: MachineIdx(0),
                per_class: &a,
                slots: 4,
                warm: false,
            },
            PolledLoad {
                machine: MachineIdx(1),
                per_class: &busier_warm,
                slots: 4,
                warm: true,
            },
        ];
        assert_eq!(
            least_loaded(ClassId(1), &polled),
            Some(MachineIdx(0)),
            "a competitor costs more than a cold start"
        );
    }

    #[test]
    fn sample_is_distinct_and_bounded() {
        let machines: Vec<_> = (0..10).map(MachineIdx).collect();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        for _ in 0..100 {
            sample(&mut rng, &machines, 3, &mut out);
            assert_eq!(out.len(), 3);
            assert!(out[0] != out[1] && out[1] != out[2] && out[0] != out[2]);
        }
        sample(&mut rng, &machines[..2], 3, &mut out);
        assert_eq!(out.len(), 2);
    }
}
