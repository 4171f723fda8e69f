//! Tariff benchmarks and the simulator.
//!
//! [`sim`] is `tariff sim`: the discrete-event simulator of the paper's experiments, driving
//! the live policy code in virtual time.

pub mod harness;
pub mod local_cluster;
pub mod sim;
