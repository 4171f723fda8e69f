//! Who is asking, and what they may do: tokens checked against the cluster store, peers'
//! certificate roles checked against what each stream is for.
//!
//! Credentials are read through a cache, as function specs are (`registry`): a token's holder
//! is trusted for [`CREDENTIAL_TTL`], after which the store is read again. A change made on
//! this shard (a tenant removed, a token rotated) empties this shard's cache at once and tells
//! the peers, which empty theirs; a peer the notice misses still drops the old token within the
//! TTL. Unknown tokens are never cached, so a new tenant works at once everywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tariff_cluster::cluster::Role;
use tariff_cluster::store::ClusterStore;
use tariff_types::tenant::{AccessError, Principal};
use tariff_types::wire::StreamOpen;

/// How long a token's holder is trusted without reading the store again: the longest a
/// revoked token keeps working on a shard that missed the revocation's notice.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(2);
/// Entries kept at most; past it the cache is emptied (tokens are few, this bounds a flood).
const MAX_CACHED: usize = 65_536;

/// The shard's view of the cluster's credentials.
pub(crate) struct Access {
    store: Arc<dyn ClusterStore>,
    /// Token hash → holder and when it was read.
    cache: DashMap<String, (Principal, Instant)>,
}

impl Access {
    /// Credentials read through to `store`.
    pub(crate) fn new(store: Arc<dyn ClusterStore>) -> Self {
        Self {
            store,
            cache: DashMap::new(),
        }
    }

    /// [`Access::authenticate_hash`] for a token not yet hashed.
    #[cfg(test)]
    pub(crate) fn authenticate(
        &self,
        token: Option<&tariff_types::tenant::Token>,
    ) -> Result<Principal, AccessError> {
        self.authenticate_hash(token.map(tariff_cluster::tenancy::hash_token).as_deref())
    }

    /// Who holds the token hashing to `hash` (the request's handler hashes it once, for the
    /// call-chain lookup and this). No token, an unknown one and a store failure are each
    /// refused with their own message; none of them repeats the token.
    pub(crate) fn authenticate_hash(&self, hash: Option<&str>) -> Result<Principal, AccessError> {
        let hash = hash.ok_or_else(|| {
            AccessError::Unauthenticated(
                "no token given: pass --token, set TARIFF_TOKEN, or use the token file \
                 `tariff local` or `tariff tenant add` left in the cluster directory"
                    .into(),
            )
        })?;
        if let Some(entry) = self.cache.get(hash) {
            if entry.1.elapsed() < CREDENTIAL_TTL {
                return Ok(entry.0.clone());
            }
        }
        match self.store.credential(hash) {
            Ok(Some(principal)) => {
                if self.cache.len() >= MAX_CACHED {
                    self.cache.clear();
                }
                self.cache
                    .insert(hash.to_owned(), (principal.clone(), Instant::now()));
                Ok(principal)
            }
            Ok(None) => {
                self.cache.remove(hash);
                Err(AccessError::Unauthenticated(
                    "the token is not valid in this cluster (wrong, rotated or revoked)".into(),
                ))
            }
            Err(e) => Err(AccessError::Unauthenticated(format!(
                "credentials could not be checked: {e}"
            ))),
        }
    }

    /// Forgets every cached credential: one changed somewhere.
    pub(crate) fn invalidate(&self) {
        self.cache.clear();
    }
}

/// The tenant a principal is, or why it may not act as one (the administrator manages
/// tenants but owns and invokes no functions).
pub(crate) fn tenant_of(principal: &Principal) -> Result<&str, AccessError> {
    match principal {
        Principal::Tenant(name) => Ok(name),
        Principal::Admin => Err(AccessError::Forbidden(
            "the administrator's token manages tenants; use a tenant's token for functions".into(),
        )),
    }
}

/// Whether a peer that proved `role` (or none: a client) may open a stream of this kind.
/// Client streams are open to anyone, since they carry their own token; machine streams need
/// a dispatcher's certificate; peer notices a shard's.
pub(crate) fn stream_allowed(role: Option<Role>, open: &StreamOpen) -> Result<(), AccessError> {
    let (needed, what) = match open {
        StreamOpen::Client { .. } | StreamOpen::ClientSession { .. } => return Ok(()),
        StreamOpen::DispatcherControl(_) | StreamOpen::ClassLane { .. } => {
            (Role::Dispatcher, "register a machine or open its lanes")
        }
        StreamOpen::PeerNotice(_) => (Role::Shard, "send a shard's notices"),
    };
    if role == Some(needed) {
        return Ok(());
    }
    let who = match role {
        Some(role) => format!("a {role} certificate"),
        None => "a peer without a certificate (a client)".to_owned(),
    };
    Err(AccessError::Forbidden(format!(
        "{who} may not {what}: that needs a {needed} certificate signed by the cluster's CA"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tariff_cluster::store::SqliteStore;
    use tariff_cluster::tenancy::{hash_token, new_token};
    use tariff_types::tenant::Tenant;
    use tariff_types::wire::{DispatcherHello, PeerNotice};

    #[test]
    fn tokens_are_checked_and_revocation_is_seen_after_invalidate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("s")).unwrap());
        let token = new_token().unwrap();
        let tenant = Tenant {
            name: "acme".into(),
            created_at_us: 0,
            budget: None,
        };
        store.add_tenant(&tenant, &hash_token(&token)).unwrap();
        let access = Access::new(store.clone());
        assert_eq!(
            access.authenticate(Some(&token)),
            Ok(Principal::Tenant("acme".into()))
        );
        assert!(matches!(
            access.authenticate(None),
            Err(AccessError::Unauthenticated(m)) if m.contains("no token")
        ));
        let wrong = new_token().unwrap();
        let refused = access.authenticate(Some(&wrong)).unwrap_err();
        assert!(!refused.to_string().contains(wrong.expose_secret()));
        store.remove_tenant("acme").unwrap();
        access.invalidate();
        assert!(matches!(
            access.authenticate(Some(&token)),
            Err(AccessError::Unauthenticated(_))
        ));
    }

    #[test]
    fn streams_need_the_right_role() {
        let hello = StreamOpen::DispatcherControl(DispatcherHello {
            machine: "m".into(),
            cores: 1,
            memory_bytes: 1,
            slots: 1,
        });
        let notice = StreamOpen::PeerNotice(PeerNotice::CredentialsChanged);
        let client = StreamOpen::ClientSession { token: None };
        assert!(stream_allowed(Some(Role::Dispatcher), &hello).is_ok());
        assert!(stream_allowed(Some(Role::Shard), &hello).is_err());
        assert!(stream_allowed(None, &hello).is_err());
        assert!(stream_allowed(Some(Role::Shard), &notice).is_ok());
        assert!(stream_allowed(Some(Role::Dispatcher), &notice).is_err());
        assert!(stream_allowed(None, &client).is_ok());
        assert!(tenant_of(&Principal::Admin).is_err());
    }
}
