//! The dispatcher: one per machine. It joins shards' idle lists when memory is free, answers
//! their polls, runs what they place on it and reports each result.
//!
//! Its decisions are pure and live in `tariff-policy` (`idle_advert`, `swap`); [`service`] is
//! the QUIC driver around them and [`executor`] runs the processes through the machine
//! scheduler; `metrics` holds its Prometheus series (`--metrics`).

pub mod executor;
pub mod machine_setup;
mod memory_report;
mod metrics;
pub mod service;

pub use service::{Dispatcher, DispatcherError, DispatcherOptions};
