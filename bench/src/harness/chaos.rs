//! `--chaos`: failures injected into a run at set times, and what the callers saw.
//!
//! `--chaos kill-dispatcher@5s` kills (`SIGKILL`) a dispatcher process 5 s after the first
//! reported phase starts; `kill-shard@Ns` a shard. The flag repeats: each kill takes the next
//! live process of its kind. The run is against separate processes
//! (`processes::ProcessCluster`), so the cluster must find out by itself, through its
//! heartbeats. The report then counts, next to the latency table, what became of every call:
//! answered (ok, of which placed again, or an error by kind), cut off (the connection to its
//! shard broke) and lost (no answer at all before its deadline; exactly-once forbids any).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a chaos event kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChaosTarget {
    /// A `tariff dispatcher` process: its machine is lost.
    Dispatcher,
    /// A `tariff shard` process.
    Shard,
}

impl ChaosTarget {
    /// The word in `--chaos kill-WORD@TIME`.
    fn word(self) -> &'static str {
        match self {
            ChaosTarget::Dispatcher => "dispatcher",
            ChaosTarget::Shard => "shard",
        }
    }
}

/// One `--chaos` flag: kill a process of one kind at a time into the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosEvent {
    /// What to kill.
    pub target: ChaosTarget,
    /// When, from the start of the first reported phase.
    pub at: Duration,
}

/// Why a `--chaos` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChaosError {
    /// Not `kill-dispatcher@TIME` or `kill-shard@TIME`.
    #[error(
        "`{0}`: expected kill-dispatcher@TIME or kill-shard@TIME, TIME like 5s, 2.5s or 800ms"
    )]
    Syntax(String),
}

impl FromStr for ChaosEvent {
    type Err = ChaosError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || ChaosError::Syntax(text.to_owned());
        let (action, time) = text.split_once('@').ok_or_else(syntax)?;
        let target = match action {
            "kill-dispatcher" => ChaosTarget::Dispatcher,
            "kill-shard" => ChaosTarget::Shard,
            _ => return Err(syntax()),
        };
        let (number, scale) = if let Some(ms) = time.strip_suffix("ms") {
            (ms, 1e-3)
        } else if let Some(s) = time.strip_suffix('s') {
            (s, 1.0)
        } else {
            return Err(syntax());
        };
        let seconds: f64 = number.parse().map_err(|_| syntax())?;
        let at = Duration::try_from_secs_f64(seconds * scale).map_err(|_| syntax())?;
        Ok(Self { target, at })
    }
}

impl fmt::Display for ChaosEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kill-{}@{}ms", self.target.word(), self.at.as_millis())
    }
}

/// A chaos event as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosRecord {
    /// The event as given (`kill-dispatcher@5000ms`).
    pub event: String,
    /// What was killed (none: every process of that kind was already dead).
    pub killed: Option<String>,
    /// The phase it happened in.
    pub phase: String,
    /// When, from that phase's start, s.
    pub at_s: f64,
}

/// A chaos event carried out: the event, what it killed, when.
pub type Done = (ChaosEvent, Option<String>, Instant);

/// Carries out `events` with `kill` (which kills the next live server of a role and names
/// it: `processes::Servers::kill_next`), timed from `start`, adding each to `done` as it
/// happens (so a run that ends before the last event keeps the earlier ones).
pub async fn run(
    events: Vec<ChaosEvent>,
    kill: impl Fn(ChaosTarget) -> Option<String> + Clone + Send + 'static,
    start: Instant,
    done: Arc<Mutex<Vec<Done>>>,
) {
    let mut events = events;
    events.sort_by_key(|e| e.at);
    for event in events {
        tokio::time::sleep_until((start + event.at).into()).await;
        let kill = kill.clone();
        let killed = tokio::task::spawn_blocking(move || kill(event.target))
            .await
            .unwrap_or(None);
        done.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((event, killed, Instant::now()));
    }
}

/// The record of a kill at `at`, placed in the phase that was running then (`phases`: each
/// phase's name and start, in order).
pub fn record(
    event: &ChaosEvent,
    killed: Option<String>,
    at: Instant,
    phases: &[(String, Instant)],
) -> ChaosRecord {
    let (phase, start) = phases
        .iter()
        .rev()
        .find(|(_, start)| *start <= at)
        .or(phases.first())
        .map_or((String::new(), at), |(name, start)| (name.clone(), *start));
    ChaosRecord {
        event: event.to_string(),
        killed,
        phase,
        at_s: at.saturating_duration_since(start).as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_with_seconds_or_milliseconds() {
        let e: ChaosEvent = "kill-dispatcher@5s".parse().unwrap();
        assert_eq!(e.target, ChaosTarget::Dispatcher);
        assert_eq!(e.at, Duration::from_secs(5));
        let e: ChaosEvent = "kill-shard@2.5s".parse().unwrap();
        assert_eq!(
            (e.target, e.at),
            (ChaosTarget::Shard, Duration::from_millis(2500))
        );
        let e: ChaosEvent = "kill-shard@800ms".parse().unwrap();
        assert_eq!(e.at, Duration::from_millis(800));
        assert_eq!(e.to_string(), "kill-shard@800ms");
        for bad in [
            "kill-dispatcher",
            "kill-gateway@1s",
            "kill-shard@5",
            "kill-shard@-1s",
            "kill-shard@xs",
        ] {
            assert!(bad.parse::<ChaosEvent>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_kill_is_placed_in_the_phase_running_then() {
        let t0 = Instant::now();
        let phases = vec![
            ("low".to_owned(), t0),
            ("high".to_owned(), t0 + Duration::from_secs(10)),
        ];
        let event = "kill-dispatcher@12s".parse().unwrap();
        let r = record(
            &event,
            Some("m1".into()),
            t0 + Duration::from_secs(12),
            &phases,
        );
        assert_eq!(r.phase, "high");
        assert!((r.at_s - 2.0).abs() < 1e-9);
    }
}
