//! The dispatcher: one per machine. It joins shards' idle lists when memory is free, answers
//! their polls, runs what they place on it and reports each result.
//!
//! Policy is pure ([`idle_advert`], [`swap`]); [`service`] is the QUIC driver around it and
//! [`executor`] runs the processes through the machine scheduler.

pub mod executor;
pub mod idle_advert;
pub mod machine_setup;
pub mod service;
pub mod swap;

pub use service::{Dispatcher, DispatcherError, DispatcherOptions};
