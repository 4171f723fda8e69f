//! The invocation context: what a function needs to call other functions as part of its
//! call chain, without flags and without its tenant's token.
//!
//! Tariff gives a one-shot function its context in its environment. A persistent instance
//! (whose environment is fixed when it starts) finds it instead in the file named by
//! [`CONTEXT_FILE_ENV`], rewritten before each call. [`current`] reads whichever there is, and
//! [`Context::apply`] passes it on to a child command such as `tariff invoke`, which then joins
//! the chain: it runs at least at the caller's class and is billed to the caller's tenant.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! if let Some(context) = tariff_function::context::current() {
//!     let mut call = std::process::Command::new("tariff");
//!     call.args(["invoke", "--function", "resize", "--class", "batch", "--payload", "x"]);
//!     context.apply(&mut call);
//!     let output = call.output()?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The file format is `KEY=VALUE` lines; a value spanning lines (the CA certificate) continues
//! on lines that begin with one space.

/// The running invocation's token.
pub const INVOCATION_ENV: &str = "TARIFF_INVOCATION";
/// The shard to call.
pub const SHARD_ENV: &str = "TARIFF_SHARD";
/// The class the invocation runs at.
pub const CLASS_ENV: &str = "TARIFF_CLASS";
/// The cluster's CA certificate (PEM).
pub const CA_ENV: &str = "TARIFF_CA";
/// Names a persistent instance's context file.
pub const CONTEXT_FILE_ENV: &str = "TARIFF_CONTEXT_FILE";

/// A running invocation's context, as `KEY=VALUE` pairs (the variables above).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    /// The pairs, in the order Tariff gave them.
    pub pairs: Vec<(String, String)>,
}

impl Context {
    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets the context in `command`'s environment, so a `tariff invoke` it runs joins the
    /// chain.
    pub fn apply(&self, command: &mut std::process::Command) {
        command.envs(self.pairs.iter().map(|(k, v)| (k, v)));
    }
}

/// The current invocation's context: from the environment (a one-shot function), else from
/// the context file (a persistent instance, during a call); `None` outside a call.
pub fn current() -> Option<Context> {
    if std::env::var_os(INVOCATION_ENV).is_some() {
        let pairs = [INVOCATION_ENV, SHARD_ENV, CLASS_ENV, CA_ENV]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
            .collect();
        return Some(Context { pairs });
    }
    let path = std::env::var_os(CONTEXT_FILE_ENV)?;
    let text = std::fs::read_to_string(path).ok()?;
    let context = Context {
        pairs: parse(&text),
    };
    context.get(INVOCATION_ENV).is_some().then_some(context)
}

/// The file form of `pairs`.
pub fn encode(pairs: &[(String, String)]) -> String {
    let mut text = String::new();
    for (key, value) in pairs {
        text.push_str(key);
        text.push('=');
        text.push_str(&value.replace('\n', "\n "));
        text.push('\n');
    }
    text
}

/// Parses what [`encode`] wrote.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(continued) = line.strip_prefix(' ') {
            if let Some((_, value)) = pairs.last_mut() {
                value.push('\n');
                value.push_str(continued);
            }
        } else if let Some((key, value)) = line.split_once('=') {
            pairs.push((key.to_owned(), value.to_owned()));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_round_trips_through_its_file_form() {
        let pairs = vec![
            (INVOCATION_ENV.to_owned(), "tariff_abc".to_owned()),
            (
                CA_ENV.to_owned(),
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned(),
            ),
        ];
        let parsed = parse(&encode(&pairs));
        assert_eq!(parsed, pairs);
        let context = Context { pairs: parsed };
        assert_eq!(context.get(INVOCATION_ENV), Some("tariff_abc"));
        assert_eq!(context.get(SHARD_ENV), None);
    }
}
