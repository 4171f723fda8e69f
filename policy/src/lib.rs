//! Every scheduling decision Tariff makes, as pure state machines: they take `now` and events
//! and return decisions, and never touch a socket, a process, a file or the clock. The live
//! shard, dispatcher and machine scheduler drive them over QUIC and syscalls; the simulator
//! (`tariff-sim`) drives the very same code in virtual time. This crate's dependencies are the
//! vocabulary and a random-number generator, which is what lets the compiler keep it pure.
//!
//! * the shard: [`queue`] (which class goes next), [`idle_list`], [`placement`]
//!   (power-of-k with class-aware room), combined in [`shard`]; [`crash_budget`] (which
//!   functions crash too often to run);
//! * the dispatcher: [`idle_advert`] (when to join, update and leave an idle list, and which of
//!   k shards to join) and [`swap`] (whose memory to swap out, whom to kill last);
//! * the machine scheduler: [`run_queue`] (preemptive priority by class, FCFS within one).

pub mod budget;
pub mod crash_budget;
pub mod idle_advert;
pub mod idle_list;
pub mod placement;
pub mod queue;
pub mod run_queue;
pub mod shard;
pub mod shedding;
pub mod swap;

pub use shard::{Requeued, ShardConfig, ShardCore, Step, Taken};

/// Identifies a function inside the policy core (a hash of its name), so the core can prefer
/// machines holding a warm instance of it without knowing names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey(pub u64);

impl FunctionKey {
    /// The key of the function called `name`.
    pub fn of(name: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// A shard's handle on a machine it knows: an index into its machine table, cheap to copy and
/// compare in the hot path. The driver maps connections to indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineIdx(pub u32);
