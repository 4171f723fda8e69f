//! The vocabulary every Tariff process shares: price classes, function specs, the wire
//! protocol and its codec, cluster credentials and the cluster store.

pub mod class;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod function;
pub mod policy;
pub mod store;
pub mod units;
pub mod wire;

pub use class::{ClassId, PriceClass, PriceClasses};
pub use function::FunctionSpec;
pub use wire::{InvocationId, InvokeError};
