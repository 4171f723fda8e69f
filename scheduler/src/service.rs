//! What every session of one shard is handed: its configuration, the function registry, its
//! QUIC endpoint (for talking to peer shards) and the owner of its mutable state.
//!
//! Everything here but the state is fixed once the shard is bound or synchronises itself (the
//! registry's cache), so it needs no lock; everything that changes goes through
//! [`ShardState`]'s operations. This module exists so that the session modules can share
//! these without importing the server, which imports them.

use std::sync::Arc;

use crate::config::ShardOptions;
use crate::registry::Registry;
use crate::state::ShardState;

/// A shard's configuration, registry, endpoint and state, shared behind an `Arc`.
pub(crate) struct Service {
    /// How the shard was configured.
    options: ShardOptions,
    /// Function specs, read through to the cluster store.
    registry: Registry,
    /// The shard's endpoint; also used to connect to peer shards.
    endpoint: quinn::Endpoint,
    /// The owner of everything that changes.
    state: Arc<ShardState>,
}

impl Service {
    /// A service around a bound endpoint and a fresh state.
    pub(crate) fn new(
        options: ShardOptions,
        registry: Registry,
        endpoint: quinn::Endpoint,
        state: Arc<ShardState>,
    ) -> Self {
        Self {
            options,
            registry,
            endpoint,
            state,
        }
    }

    /// How the shard was configured.
    pub(crate) fn options(&self) -> &ShardOptions {
        &self.options
    }

    /// The function registry.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The shard's endpoint.
    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The owner of the shard's mutable state.
    pub(crate) fn state(&self) -> &Arc<ShardState> {
        &self.state
    }
}
