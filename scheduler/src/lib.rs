//! The scheduler shard's service: takes invocations from clients over QUIC, queues and places
//! them through the pure shard core (`tariff_policy::ShardCore`), and answers each exactly once.
pub mod registry;
pub mod server;

mod client;
mod machines;
mod pump;

pub use server::{Shard, ShardError, ShardOptions};
