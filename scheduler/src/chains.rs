//! Call chains: a running function calls other functions with a token that stands for its
//! invocation, and the calls it makes inherit its class and its tenant.
//!
//! Each invocation gets a fresh random token when it is queued, valid until it is answered
//! (the [`ChainGuard`] removes it). The function finds it in its environment
//! (`TARIFF_INVOCATION`) with the shard to call; a call made with it is billed to the caller's
//! tenant, runs at the dearer of its own class and its caller's (no priority inversion: a
//! `batch` helper called from a `critical` page view runs at `critical`), carries the chain
//! (root, parent, depth) and is sent straight to the caller's machine rather than queued
//! behind the slot the caller holds while it waits, so a chain cannot deadlock on its own
//! slots. Chains are at most [`MAX_CHAIN_DEPTH`] calls deep.
//!
//! Only invocations may be made with such a token. Like tenant tokens, only hashes are kept.

use std::sync::Arc;

use dashmap::DashMap;
use tariff_cluster::tenancy::{hash_token, new_token, TenancyError};
use tariff_types::tenant::Token;
use tariff_types::wire::InvocationId;
use tariff_types::ClassId;

/// The deepest call chain: a call at a greater depth is refused.
pub const MAX_CHAIN_DEPTH: u32 = 8;

/// What a running invocation's token stands for.
#[derive(Debug, Clone)]
pub(crate) struct ChainContext {
    /// Who pays for its calls.
    pub(crate) tenant: String,
    /// The running invocation.
    pub(crate) id: InvocationId,
    /// The top of its chain.
    pub(crate) root: InvocationId,
    /// Its depth (0 for a client's call).
    pub(crate) depth: u32,
    /// The class it runs at.
    pub(crate) class: ClassId,
}

/// The live invocations' tokens, by hash.
#[derive(Default)]
pub(crate) struct Chains {
    live: Arc<DashMap<String, ChainContext>>,
}

/// Keeps an invocation's token valid; dropping it (when the invocation is answered) revokes it.
pub(crate) struct ChainGuard {
    live: Arc<DashMap<String, ChainContext>>,
    hash: String,
}

impl Drop for ChainGuard {
    fn drop(&mut self) {
        self.live.remove(&self.hash);
    }
}

impl Chains {
    /// A token for the invocation described by `context`, valid while the guard lives.
    pub(crate) fn mint(&self, context: ChainContext) -> Result<(Token, ChainGuard), TenancyError> {
        let token = new_token()?;
        let hash = hash_token(&token);
        self.live.insert(hash.clone(), context);
        let guard = ChainGuard {
            live: self.live.clone(),
            hash,
        };
        Ok((token, guard))
    }

    /// [`Chains::lookup_hash`] for a token not yet hashed.
    #[cfg(test)]
    pub(crate) fn lookup(&self, token: &Token) -> Option<ChainContext> {
        self.lookup_hash(&hash_token(token))
    }

    /// The running invocation the token hashing to `hash` stands for, if it is one of this
    /// shard's.
    pub(crate) fn lookup_hash(&self, hash: &str) -> Option<ChainContext> {
        self.live.get(hash).map(|c| c.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lives_as_long_as_its_guard() {
        let chains = Chains::default();
        let context = ChainContext {
            tenant: "acme".into(),
            id: InvocationId(7),
            root: InvocationId(7),
            depth: 0,
            class: ClassId(1),
        };
        let (token, guard) = chains.mint(context).unwrap();
        assert_eq!(chains.lookup(&token).unwrap().tenant, "acme");
        drop(guard);
        assert!(chains.lookup(&token).is_none());
    }
}
