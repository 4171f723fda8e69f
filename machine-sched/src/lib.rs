//! Tariff's machine scheduler: decides which function processes hold the machine's cores, and
//! runs those processes.
//!
//! The two halves are kept apart on purpose: [`run_queue`] is the pure run order (no I/O, no
//! clock), which the dispatcher and the simulator both drive; [`process`] is the thin I/O layer
//! that starts, feeds, measures and kills one process.

pub mod cgroup;
mod exec_run;
pub mod gate;
mod instance_pool;
pub mod isolation;
pub mod job;
pub mod launch;
pub mod machine;
pub mod memory;
pub mod persistent;
mod persistent_run;
mod priority;
pub mod process;
mod provision;
pub mod rt;
mod running;
mod stderr_tail;
mod turns;

pub use launch::LaunchSpec;
pub use process::{spawn, ProcessHandle, RunError, RunRequest, RunningProcess};
