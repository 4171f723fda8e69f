//! How the processes of one Tariff cluster reach each other: the cluster's authority and role
//! certificates ([`cluster`]), tenant tokens ([`tenancy`]), the length-prefixed frame codec on QUIC streams ([`codec`]), the client every
//! command and the harness use ([`client`]), where the running shards are recorded
//! ([`directory`]), the `--metrics` endpoint ([`metrics`]), and the store for state several shards must agree
//! on ([`store`]).
//!
//! The messages themselves are `tariff-types`'s `wire` module; this crate moves them.

pub mod client;
pub mod cluster;
pub mod codec;
pub mod directory;
pub mod metrics;
pub mod store;
pub mod tenancy;
