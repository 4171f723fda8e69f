//! The shard's view of the function registry: a read-through cache over the cluster store.
//!
//! The store is the truth; the cache only saves a database read per invocation. An entry is
//! trusted for [`CACHE_TTL`], after which the next lookup reads the store again, so a deploy
//! made through another shard is seen within that time even if its notice never arrived; peer
//! notices (see `docs/protocol.md`) make it immediate in the common case.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tariff_cluster::store::{ClusterStore, Expect, StoreError};
use tariff_types::FunctionSpec;

/// How long a cached spec is used before the store is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// Cached function specs in front of the cluster store.
pub struct Registry {
    store: Arc<dyn ClusterStore>,
    cache: DashMap<String, (Arc<FunctionSpec>, Instant)>,
}

impl Registry {
    /// A registry reading through to `store`.
    pub fn new(store: Arc<dyn ClusterStore>) -> Self {
        Self {
            store,
            cache: DashMap::new(),
        }
    }

    /// The function called `name`, from the cache while fresh, else from the store.
    pub fn lookup(&self, name: &str) -> Result<Option<Arc<FunctionSpec>>, StoreError> {
        if let Some(entry) = self.cache.get(name) {
            if entry.1.elapsed() < CACHE_TTL {
                return Ok(Some(entry.0.clone()));
            }
        }
        self.refresh(name)
    }

    /// Reads `name` from the store now, replacing the cached copy.
    pub fn refresh(&self, name: &str) -> Result<Option<Arc<FunctionSpec>>, StoreError> {
        match self.store.function(name)? {
            Some(spec) => {
                let spec = Arc::new(spec);
                self.cache
                    .insert(name.to_owned(), (spec.clone(), Instant::now()));
                Ok(Some(spec))
            }
            None => {
                self.cache.remove(name);
                Ok(None)
            }
        }
    }

    /// Stores a spec if the store holds what `expect` says, returning its new version.
    pub fn deploy(&self, spec: &FunctionSpec, expect: Expect) -> Result<u64, StoreError> {
        let version = self.store.put_function(spec, expect)?;
        let mut stored = spec.clone();
        stored.version = version;
        self.cache
            .insert(spec.name.clone(), (Arc::new(stored), Instant::now()));
        Ok(version)
    }

    /// Removes `name` if it is still at `version`; `false` if it was already gone.
    pub fn remove(&self, name: &str, version: u64) -> Result<bool, StoreError> {
        let removed = self.store.remove_function(name, version);
        self.forget(name);
        removed
    }

    /// Drops the cached copy of `name`: it was removed elsewhere.
    pub fn forget(&self, name: &str) {
        self.cache.remove(name);
    }

    /// Forgets every cached spec (their owner may have been removed).
    pub fn forget_all(&self) {
        self.cache.clear();
    }

    /// Every registered function.
    pub fn all(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        self.store.functions()
    }
}
