//! What a deployed function is: a command to run, with the environment it declares.

use serde::{Deserialize, Serialize};

/// Longest function name accepted; names travel in every placement.
pub const MAX_FUNCTION_NAME: usize = 128;

/// A registered function. The spec travels with every placement, so dispatchers need no copy
/// of the registry.
/// `Default` is an empty spec (no name, no command) that `validate` refuses: a base for
/// literals that set what they need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// Unique name.
    pub name: String,
    /// Program and arguments; the payload arrives on stdin, the answer is read from stdout.
    pub command: Vec<String>,
    /// The only environment variables the process sees.
    pub env: Vec<(String, String)>,
    /// Store version, raised by every deploy; 0 before the first.
    pub version: u64,
    /// How the function's process lives: one per invocation, or a warm persistent instance.
    #[serde(default)]
    pub runtime: Runtime,
    /// The tenant that deployed it. Set by the shard from the deployer's token, never taken
    /// from the request; it never changes while the function exists.
    #[serde(default)]
    pub owner: String,
    /// Other tenants that may invoke, list and replace it (not remove it, nor change this).
    #[serde(default)]
    pub shared_with: Vec<String>,
    /// How many times an invocation may be placed again after its machine is lost (or its
    /// run killed to free memory). Non-zero only for a function its deployer says is safe to
    /// run twice (`deploy --retries N`): a lost machine may have run part of it.
    #[serde(default)]
    pub retries: u32,
    /// Limits on each stage of an invocation's life (`deploy --queue-timeout` ...); an
    /// invocation may set its own.
    #[serde(default)]
    pub limits: crate::StageLimits,
}

/// How a function's processes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Runtime {
    /// A new process per invocation: payload on stdin, answer on stdout, then it exits.
    #[default]
    Exec,
    /// One process serves many invocations over length-prefixed frames on stdin/stdout
    /// (docs/persistent-functions.md); it stays warm while idle for `keep_alive_ms`.
    Persistent {
        /// Idle time after which the instance is reaped, in milliseconds.
        keep_alive_ms: u64,
    },
}

/// Why a spec is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// Empty or too-long name, or one with characters other than `[A-Za-z0-9_.-]`.
    #[error("function name `{0}` must be 1-{MAX_FUNCTION_NAME} characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
    /// No program to run.
    #[error("function `{0}` has an empty command")]
    EmptyCommand(String),
    /// A `--share-with` entry that is not a tenant name.
    #[error(transparent)]
    BadSharee(#[from] crate::tenant::BadTenantName),
}

impl FunctionSpec {
    /// Whether `tenant` may invoke, list and replace this function: its owner, or a tenant
    /// it is shared with.
    pub fn usable_by(&self, tenant: &str) -> bool {
        self.owner == tenant || self.shared_with.iter().any(|t| t == tenant)
    }

    /// Checks the spec before it is stored.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_FUNCTION_NAME
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(SpecError::BadName(self.name.clone()));
        }
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err(SpecError::EmptyCommand(self.name.clone()));
        }
        for tenant in &self.shared_with {
            crate::tenant::validate_tenant_name(tenant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, command: &[&str]) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            version: 0,
            runtime: Runtime::Exec,
            ..Default::default()
        }
    }

    #[test]
    fn names_and_commands_are_checked() {
        assert_eq!(spec("echo", &["/bin/cat"]).validate(), Ok(()));
        assert!(matches!(
            spec("a b", &["/bin/cat"]).validate(),
            Err(SpecError::BadName(_))
        ));
        assert!(matches!(
            spec("x", &[]).validate(),
            Err(SpecError::EmptyCommand(_))
        ));
    }
}
