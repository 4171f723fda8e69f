//! Tariff's machine scheduler: decides which function processes hold the machine's cores, and
//! runs those processes.
//!
//! The two halves are kept apart on purpose: [`run_queue`] is the pure run order (no I/O, no
//! clock), which the dispatcher and the simulator both drive; [`process`] is the thin I/O layer
//! that starts, feeds, measures and kills one process.

pub mod cgroup;
pub mod gate;
pub mod isolation;
pub mod launch;
pub mod machine;
pub mod memory;
pub mod persistent;
pub mod process;
pub mod rt;

pub use launch::LaunchSpec;
pub use process::{spawn, ProcessHandle, RunError, RunOutput, RunRequest, RunningProcess};
