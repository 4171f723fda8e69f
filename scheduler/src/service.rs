//! What every session of one shard is handed: its configuration, the function registry, who
//! holds which token, its
//! QUIC endpoint (for talking to peer shards) and the owner of its mutable state.
//!
//! Everything here but the state is fixed once the shard is bound or synchronises itself (the
//! registry's cache), so it needs no lock; everything that changes goes through
//! [`ShardState`]'s operations. This module exists so that the session modules can share
//! these without importing the server, which imports them.

use std::sync::Arc;

use tariff_cluster::store::ClusterStore;

use crate::access::Access;
use crate::chains::Chains;
use crate::config::{ShardOptions, CRASH_WINDOW};
use crate::crashes::Crashes;
use crate::ledger::Ledger;
use crate::metrics::ShardMetrics;
use crate::registry::Registry;
use crate::spend::SpendBook;
use crate::state::ShardState;
use crate::trace::InvocationLog;

/// A shard's configuration, registry, endpoint and state, shared behind an `Arc`.
pub(crate) struct Service {
    /// How the shard was configured.
    options: ShardOptions,
    /// Function specs, read through to the cluster store.
    registry: Registry,
    /// Credentials, read through to the cluster store.
    access: Access,
    /// The cluster store itself, for tenant management (rare; not cached).
    store: Arc<dyn ClusterStore>,
    /// This shard's durable record of what it billed.
    ledger: Ledger,
    /// Spend this month across the cluster, and budgets.
    spend: Arc<SpendBook>,
    /// Running invocations' tokens, for the calls their functions make.
    chains: Chains,
    /// The shard's endpoint; also used to connect to peer shards.
    endpoint: quinn::Endpoint,
    /// The owner of everything that changes.
    state: Arc<ShardState>,
    /// The shard's metrics (counters and histograms are lock-free; levels are read from
    /// `state` at scrape time).
    metrics: Arc<ShardMetrics>,
    /// Which answered invocations are logged with their stage timings.
    invocation_log: InvocationLog,
    /// Which functions crash too often to run.
    crashes: Crashes,
}

impl Service {
    /// A service around a bound endpoint and a fresh state.
    pub(crate) fn new(
        options: ShardOptions,
        store: Arc<dyn ClusterStore>,
        ledger: Ledger,
        endpoint: quinn::Endpoint,
        state: Arc<ShardState>,
    ) -> Self {
        let spend = Arc::new(SpendBook::new(options.shard_id));
        state.set_admission(spend.clone());
        Self {
            spend,
            chains: Chains::default(),
            ledger,
            registry: Registry::new(store.clone()),
            access: Access::new(store.clone()),
            store,
            metrics: Arc::new(ShardMetrics::new(&options.classes)),
            invocation_log: InvocationLog::new(options.slow_threshold, options.sample_every),
            crashes: Crashes::new(options.crash_budget, CRASH_WINDOW),
            options,
            endpoint,
            state,
        }
    }

    /// Which answered invocations are logged, and how.
    pub(crate) fn invocation_log(&self) -> &InvocationLog {
        &self.invocation_log
    }

    /// The shard's metrics.
    pub(crate) fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }

    /// How the shard was configured.
    pub(crate) fn options(&self) -> &ShardOptions {
        &self.options
    }

    /// The function registry.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Who holds which token.
    pub(crate) fn access(&self) -> &Access {
        &self.access
    }

    /// The cluster store.
    pub(crate) fn store(&self) -> &dyn ClusterStore {
        self.store.as_ref()
    }

    /// The cluster store, shared (for tasks).
    pub(crate) fn store_arc(&self) -> &Arc<dyn ClusterStore> {
        &self.store
    }

    /// This shard's ledger.
    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Running invocations' tokens.
    pub(crate) fn chains(&self) -> &Chains {
        &self.chains
    }

    /// This month's spend and budgets.
    pub(crate) fn spend(&self) -> &Arc<SpendBook> {
        &self.spend
    }

    /// The shard's endpoint.
    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Which functions crash too often to run.
    pub(crate) fn crashes(&self) -> &Crashes {
        &self.crashes
    }

    /// The owner of the shard's mutable state.
    pub(crate) fn state(&self) -> &Arc<ShardState> {
        &self.state
    }
}
