//! `tariff bench`: open-loop load against a live cluster, with a class-blind baseline in the
//! same run (docs/bench.md).
//!
//! The pieces, one concept each: [`workload`] (the TOML file), [`schedule`] (every send time
//! and call, from the seed), [`driver`] (the open-loop generator), [`record`] (HDR histograms
//! and the report), [`plot`] (SVG figures), [`output`] (the terminal), [`chaos`] and
//! [`processes`] (failures injected into a cluster of separate processes), [`vs_sim`] (the
//! same schedule through the simulator) and [`cli`] (the command).

pub mod chaos;
pub mod cli;
pub mod driver;
pub mod output;
pub mod plot;
pub mod processes;
pub mod record;
pub mod schedule;
pub mod vs_sim;
pub mod workload;

pub use cli::{run, BenchArgs};
