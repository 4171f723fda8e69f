//! Which scheduling policy a cluster runs: Tariff's, or one of the class-blind baselines it is
//! measured against in the same run. The baselines are configurations of the same code, so a
//! comparison measures the policy and nothing else.
//!
//! This is the one policy type: shards, dispatchers, `tariff local`, the harness's
//! `--compare` and the simulator's scheduler list all name policies with it, and the command
//! line parses it through [`std::str::FromStr`] (or clap's `ValueEnum` with the `clap`
//! feature), so the names are written once, in [`Policy::name`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A cluster's scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Price classes everywhere: queue order, placement room, machine priority.
    #[default]
    Tariff,
    /// Class-blind: one FIFO queue at the shard, class-blind room, every function at the same
    /// priority on the machine (first come, first served, no preemption).
    Fifo,
    /// Class-blind after Hermod (SoCC '22), as in the paper's comparison: early binding (every
    /// invocation placed at once on the least-loaded of k polled machines, no shard queue
    /// while any machine answers) and processor sharing on the machine (every function runs
    /// at once, time-shared by the kernel).
    Hermod,
}

/// A name that is not a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy `{0}`: use tariff, fifo or hermod")]
pub struct UnknownPolicy(pub String);

impl Policy {
    /// Every policy, Tariff's first.
    pub const ALL: [Policy; 3] = [Policy::Tariff, Policy::Fifo, Policy::Hermod];

    /// Whether price classes are ignored.
    pub fn is_class_blind(self) -> bool {
        self != Policy::Tariff
    }

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Tariff => "tariff",
            Policy::Fifo => "fifo",
            Policy::Hermod => "hermod",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| UnknownPolicy(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for policy in Policy::ALL {
            assert_eq!(policy.name().parse::<Policy>(), Ok(policy));
            assert_eq!(policy.to_string(), policy.name());
        }
        assert_eq!(" FIFO ".parse::<Policy>(), Ok(Policy::Fifo));
        assert!("edf".parse::<Policy>().is_err());
    }
}
