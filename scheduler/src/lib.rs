//! The scheduler shard's service: takes invocations from clients over QUIC, queues and places
//! them through the pure shard core (`tariff_policy::ShardCore`), and answers each exactly once.
//!
//! Modules, by what each imports from this crate. The direction is one way: sessions →
//! service → state ← pump, with the server above wiring them together; no two modules import
//! each other and nothing imports `server`.
//!
//! ```text
//! server        ──► access, client, keys, machines, metrics, pump, service, spend, state, config
//! client        ──► access, chains, charge, keys, ledger, spend, service, state, config, metrics
//! access        ──► nothing                     (tokens and peer roles → what they may do)
//! chains        ──► nothing                     (running invocations' tokens: call chains)
//! crashes       ──► nothing                     (crash budgets: who crashes too often to run)
//! charge        ──► ledger, service             (billing one run)
//! keys          ──► charge, service, state      (idempotency keys in the cluster store)
//! machines      ──► keys, service, state, config      (dispatcher control streams and lanes)
//! pump          ──► state                       (the placement task)
//! service       ──► access, chains, crashes, ledger, spend, state, registry, config, metrics, trace
//! spend         ──► ledger, state               (spend and budgets; the state's admission)
//! ledger        ──► nothing                     (the durable record of what was billed)
//! metrics       ──► state                       (series; levels read at scrape time)
//! trace         ──► state                       (which invocations are logged)
//! state         ──► machine_table, throughput   (the one owner of mutable state)
//! registry, config, machine_table, throughput ──► nothing
//! ```
//!
//! All mutable state lives in `state::ShardState`; the session modules and the pump change
//! it only through its operations.
pub mod registry;
pub mod server;

mod access;
mod chains;
mod charge;
mod client;
mod config;
mod crashes;
mod keys;
pub mod ledger;
mod machine_table;
mod machines;
mod metrics;
mod pump;
mod service;
pub mod spend;
mod state;
mod throughput;
pub mod trace;

pub use server::{Shard, ShardError, ShardOptions};
