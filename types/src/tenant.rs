//! Who is asking: tenants, the bearer tokens they prove themselves with, and the requests
//! that manage them.
//!
//! A token is a secret. [`Token`] therefore never prints itself: its `Debug` and `Display`
//! show only that a token is there, so a request logged with `{:?}` cannot leak one. Only
//! hashes of tokens are ever stored (see `tariff-cluster`'s `tenancy` module); this crate knows
//! nothing of hashing, which needs a crypto library.

use serde::{Deserialize, Serialize};

/// Longest tenant name accepted.
pub const MAX_TENANT_NAME: usize = 64;

/// A bearer token, as a client presents it. Never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token(String);

impl Token {
    /// Wraps a token's text (as read from a flag, the environment or a token file).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into().trim().to_owned())
    }

    /// The secret text, for hashing it or writing it to its owner's token file. Deliberately
    /// a method with a name that stands out in review, rather than `Display`.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a credential lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// A tenant: deploys, invokes and lists its own functions and those shared with it.
    Tenant(String),
    /// The cluster's administrator: manages tenants; owns no functions and invokes none.
    Admin,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tenant(name) => write!(f, "tenant `{name}`"),
            Self::Admin => f.write_str("the cluster administrator"),
        }
    }
}

/// Why a request was not allowed: who the caller is could not be established, or the caller
/// may not do this. Carried to the client as it is, so each gets its own message and exit
/// code. Never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AccessError {
    /// No token, or one the cluster does not know (wrong, rotated away or revoked).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// A tenant as the cluster store holds it. Its tokens are not part of it: they are stored
/// apart, as hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// Unique name; also the owner recorded on the tenant's functions.
    pub name: String,
    /// When it was added, µs since the Unix epoch.
    pub created_at_us: u64,
    /// Monthly budget in the unit class prices are quoted in; none: unlimited.
    #[serde(default)]
    pub budget: Option<f64>,
}

/// A tenant with what `tariff tenant show` and `list` print about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantInfo {
    /// The tenant.
    pub tenant: Tenant,
    /// Functions it owns, by name.
    pub functions: Vec<String>,
    /// Its spending this month, as the answering shard sees it.
    #[serde(default)]
    pub spend: crate::billing::SpendInfo,
}

/// Why a tenant name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant name `{0}` must be 1-{MAX_TENANT_NAME} characters of a-z 0-9 _ - and start with a letter")]
pub struct BadTenantName(pub String);

/// Checks a tenant name: lower-case letters, digits, `_` and `-`, starting with a letter, so
/// it is safe in file names (token files), store keys and log lines.
pub fn validate_tenant_name(name: &str) -> Result<(), BadTenantName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TENANT_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BadTenantName(name.to_owned()))
    }
}

/// What the administrator asks a shard to do with tenants.
///
/// Tokens are made by the client (`tariff tenant add`), which sends only their hash: the
/// plain token never crosses the network and never appears in an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TenantRequest {
    /// Adds a tenant whose token hashes to `token_hash`.
    Add {
        /// The new tenant's name.
        name: String,
        /// Hex SHA-256 of its first token.
        token_hash: String,
        /// Its monthly budget, if limited.
        budget: Option<f64>,
    },
    /// Sets (or, with `None`, lifts) a tenant's monthly budget, with immediate effect.
    SetBudget {
        /// The tenant.
        name: String,
        /// The new budget.
        budget: Option<f64>,
    },
    /// Every tenant.
    List,
    /// One tenant.
    Show(String),
    /// Removes a tenant, its tokens and its functions.
    Remove(String),
    /// Replaces every token of a tenant with the one hashing to `token_hash`; the old ones
    /// stop working at once on the shard that did it, and within the credential cache's
    /// lifetime on the others.
    RotateToken {
        /// The tenant.
        name: String,
        /// Hex SHA-256 of the new token.
        token_hash: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_print() {
        let token = Token::new("tariff_secret123\n");
        assert_eq!(token.expose_secret(), "tariff_secret123");
        let shown = format!("{token:?} {:?}", Some(&token));
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn tenant_names_are_checked() {
        for good in ["default", "acme-web", "t1_x"] {
            assert_eq!(validate_tenant_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Acme", "1abc", "a/b", "a b", "../x", &"a".repeat(65)] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
