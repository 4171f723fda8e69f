//! One shard client per distinct token, in a bounded cache.
//!
//! A token is a tenant's identity at the shard, which checks it on every request, so the
//! gateway does not interpret tokens: it presents each caller's token on a client of its own.
//! Opening a QUIC connection and session costs a handshake (milliseconds), so clients are
//! kept, keyed by the token's hash (the map never holds a token as a key), and the least
//! recently used one is dropped when [`ClientPool`] is full: a flood of made-up tokens costs
//! the gateway at most `capacity` connections and pushes real callers out only for one extra
//! handshake. A client is also dropped when its token is refused or its connection fails, so
//! revoked tokens and restarted shards are forgotten at once.
//!
//! Each token's shard is picked by its hash, so tenants spread over the shards, and a
//! token's requests share one session (and so its one connection's ordering).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tariff_cluster::client::{Client, ClientError, DISCOVERY_TIMEOUT};
use tariff_cluster::cluster::Cluster;
use tariff_cluster::tenancy::hash_token;
use tariff_types::tenant::Token;
use tokio::sync::OnceCell;

/// A cached client; the cell is filled by the first request that needs it, which others with
/// the same token wait for instead of opening connections of their own.
#[derive(Debug)]
struct Entry {
    client: Arc<OnceCell<Client>>,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Entries {
    by_hash: HashMap<String, Entry>,
    clock: u64,
}

/// Clients of the shards, one per token.
#[derive(Debug)]
pub struct ClientPool {
    cluster: Cluster,
    shards: Vec<SocketAddr>,
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ClientPool {
    /// A pool over `shards` holding at most `capacity` clients (at least one).
    pub fn new(cluster: Cluster, shards: Vec<SocketAddr>, capacity: usize) -> Self {
        Self {
            cluster,
            shards,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many clients are held.
    pub fn len(&self) -> usize {
        self.entries().by_hash.len()
    }

    /// Whether no client is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The client for `token`, connecting (with a session) if there is none.
    pub async fn get(&self, token: &Token) -> Result<Client, ClientError> {
        let key = hash_token(token);
        let cell = {
            let mut entries = self.entries();
            entries.clock += 1;
            let now = entries.clock;
            if !entries.by_hash.contains_key(&key) && entries.by_hash.len() >= self.capacity {
                let oldest = entries
                    .by_hash
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.by_hash.remove(&oldest);
                }
            }
            let entry = entries.by_hash.entry(key.clone()).or_insert_with(|| Entry {
                client: Arc::new(OnceCell::new()),
                last_used: now,
            });
            entry.last_used = now;
            entry.client.clone()
        };
        let result = cell
            .get_or_try_init(|| self.connect(&key, token.clone()))
            .await
            .cloned();
        if result.is_err() {
            self.forget_hash(&key, &cell);
        }
        result
    }

    /// Drops `token`'s client (refused token, broken connection); the next request connects
    /// afresh.
    pub fn forget(&self, token: &Token) {
        self.entries().by_hash.remove(&hash_token(token));
    }

    /// Drops the entry for `key` if it is still `cell` (not a newer client made since).
    fn forget_hash(&self, key: &str, cell: &Arc<OnceCell<Client>>) {
        let mut entries = self.entries();
        if entries
            .by_hash
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.client, cell))
        {
            entries.by_hash.remove(key);
        }
    }

    /// Connects to the token's shard (by its hash), else to whichever other shard answers.
    async fn connect(&self, key: &str, token: Token) -> Result<Client, ClientError> {
        let Some(first) = self.home_shard(key) else {
            return Err(ClientError::NoneReachable { tried: Vec::new() });
        };
        let client = match Client::connect_within(
            &self.cluster,
            first,
            DISCOVERY_TIMEOUT,
            Some(token.clone()),
        )
        .await
        {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(shard = %first, %error, "shard unreachable, trying the others");
                let others: Vec<SocketAddr> = self
                    .shards
                    .iter()
                    .copied()
                    .filter(|&a| a != first)
                    .collect();
                Client::connect_first(&self.cluster, &others, DISCOVERY_TIMEOUT, Some(token))
                    .await?
                    .0
            }
        };
        client.with_session().await
    }

    /// The shard a token's hash picks.
    fn home_shard(&self, key: &str) -> Option<SocketAddr> {
        let hash = key
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let count = u64::try_from(self.shards.len()).ok().filter(|&n| n > 0)?;
        let index = usize::try_from(hash % count).ok()?;
        self.shards.get(index).copied()
    }
}
