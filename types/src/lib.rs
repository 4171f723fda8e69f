//! Tariff's vocabulary: the words every part of Tariff shares and nothing more. Price classes,
//! function specs, tenants and tokens, the wire messages, the scheduling policies and size units.
//!
//! No I/O lives here (serde derives only), so the pure policy crate and the simulator can use
//! these types without pulling in a network stack or a runtime. How messages are framed on a
//! QUIC stream is `tariff-cluster`'s `codec`.

pub mod billing;
pub mod class;
pub mod function;
pub mod policy;
pub mod recovery;
pub mod tenant;
pub mod units;
pub mod wire;

pub use class::{ClassId, PriceClass, PriceClasses};
pub use function::FunctionSpec;
pub use policy::Policy;
pub use recovery::{Stage, StageLimits};
pub use tenant::{AccessError, Principal, Token};
pub use wire::{InvocationId, InvokeError};
