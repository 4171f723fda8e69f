//! Which scheduling policy a cluster runs: Tariff's, or one of the class-blind baselines it is
//! measured against in the same run. The baselines are configurations of the same code, so a
//! comparison measures the policy and nothing else.

use serde::{Deserialize, Serialize};

/// A cluster's scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Policy {
    /// Price classes everywhere: queue order, placement room, machine priority.
    #[default]
    Tariff,
    /// Class-blind: one FIFO queue at the shard, class-blind room, every function at the same
    /// priority on the machine (first come, first served, no preemption).
    Fifo,
    /// Class-blind after Hermod (SoCC '22), as in the paper's comparison: early binding (every
    /// invocation placed at once on the least-loaded of k polled machines, no shard queue
    /// while any machine answers) and processor sharing on the machine (every function runs
    /// at once, time-shared by the kernel).
    Hermod,
}

impl Policy {
    /// Whether price classes are ignored.
    pub fn is_class_blind(self) -> bool {
        self != Policy::Tariff
    }
}
