//! Tariff's machine scheduler: decides which function processes hold the machine's cores, and
//! runs those processes.
//!
//! The two halves are kept apart on purpose: [`tariff_policy::run_queue`] is the pure run order
//! (no I/O, no clock), which the dispatcher and the simulator both drive; this crate is the thin
//! I/O around it. [`machine::MachineScheduler`] is the facade; `docs/machine-scheduler.md` maps
//! the modules behind it, one concern each.

pub mod cgroup;
pub mod context_file;
mod exec_run;
pub mod gate;
mod instance_pool;
pub mod isolation;
pub mod job;
pub mod launch;
pub mod machine;
pub mod memory;
pub mod memory_guard;
pub mod meter;
pub mod page_out;
mod parts;
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
