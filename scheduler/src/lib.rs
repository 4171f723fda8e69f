//! The scheduler shard: takes invocations from clients, queues them per price class, and
//! places them on machines.
//!
//! The policy is a pure core with no I/O ([`queue`], [`idle_list`], [`placement`], and
//! [`shard`] which combines them); the QUIC service around it is in [`server`]. The simulator
//! drives the same core in virtual time.

pub mod idle_list;
pub mod placement;
pub mod queue;
pub mod shard;

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
pub mod registry;
pub mod server;

mod client;
mod machines;
mod pump;

pub use server::{Shard, ShardError, ShardOptions};
