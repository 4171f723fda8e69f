//! Tariff's load harness (`tariff bench`, [`harness`]) and, in `benches/`, the criterion
//! benchmarks of the hot paths. Nothing in the service depends on this crate.

pub mod harness;
