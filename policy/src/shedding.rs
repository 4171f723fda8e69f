//! Load shedding by class: when a shard's backlog is too long, refuse new work of the cheapest
//! classes first and the top class last, and say when to come back.
//!
//! Two bounds, both scaled by the class's share: the backlog's length (`max_queued` × share, so
//! bounded memory whatever the offered load) and, if configured, the expected wait of a new
//! invocation (the invocations ahead of it, those of its class and dearer ones, over the rate
//! the shard's invocations have lately been finishing at), at most `max_wait` × share. The top
//! class's share is 1 and the cheapest class's [`CHEAPEST_SHARE`], the others in between: when
//! the backlog grows, `batch` is refused at half of what `critical` may still queue. A refusal
//! carries a retry-after: how long the shard needs at its current rate to drain back under
//! the bound.

use std::time::Duration;

use tariff_types::ClassId;

/// The share of the bounds the cheapest class gets (the top class gets all of them).
pub const CHEAPEST_SHARE: f64 = 0.5;
/// The retry-after given when the shard has no recent completions to estimate from.
pub const UNKNOWN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The share of the bounds `class` gets among `classes` classes: 1 for the top class, falling
/// evenly to [`CHEAPEST_SHARE`] for the cheapest.
pub fn class_share(class: ClassId, classes: usize) -> f64 {
    if classes <= 1 {
        return 1.0;
    }
    let position = class.index().min(classes - 1) as f64 / (classes - 1) as f64;
    1.0 - position * (1.0 - CHEAPEST_SHARE)
}

/// Why a new invocation is refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shed {
    /// Invocations queued.
    pub queued: usize,
    /// The class's bound on the backlog.
    pub limit: usize,
    /// When the shard expects to be under the bound again.
    pub retry_after: Duration,
}

/// The backlog a new invocation of some class would join.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// Everything queued.
    pub queued: usize,
    /// Queued at the new invocation's class or dearer: what would be placed before it.
    pub ahead: usize,
    /// Invocations finishing per second lately; 0 if unknown.
    pub drain_per_s: f64,
}

/// Whether to refuse a new invocation whose class has `share` of the bounds.
pub fn shed(
    backlog: Backlog,
    share: f64,
    max_queued: usize,
    max_wait: Option<Duration>,
) -> Option<Shed> {
    let drain = |excess: f64| {
        if backlog.drain_per_s > 0.0 {
            Duration::from_secs_f64(excess.max(1.0) / backlog.drain_per_s)
        } else {
            UNKNOWN_RETRY_AFTER
        }
    };
    let limit = ((max_queued as f64) * share).ceil() as usize;
    if backlog.queued >= limit {
        return Some(Shed {
            queued: backlog.queued,
            limit,
            retry_after: drain((backlog.queued + 1 - limit) as f64),
        });
    }
    let max_wait = max_wait?;
    if backlog.drain_per_s <= 0.0 {
        return None;
    }
    let allowed = max_wait.as_secs_f64() * share;
    let expected = backlog.ahead as f64 / backlog.drain_per_s;
    (expected > allowed).then(|| Shed {
        queued: backlog.queued,
        limit: (allowed * backlog.drain_per_s).floor() as usize,
        retry_after: Duration::from_secs_f64(expected - allowed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fall_from_the_top_class_to_the_cheapest() {
        assert_eq!(class_share(ClassId(0), 4), 1.0);
        assert_eq!(class_share(ClassId(3), 4), CHEAPEST_SHARE);
        assert!(class_share(ClassId(1), 4) > class_share(ClassId(2), 4));
        assert_eq!(class_share(ClassId(0), 1), 1.0);
    }

    #[test]
    fn the_cheapest_class_is_shed_first_and_told_when_to_return() {
        let backlog = Backlog {
            queued: 60,
            ahead: 60,
            drain_per_s: 20.0,
        };
        let top = shed(backlog, class_share(ClassId(0), 4), 100, None);
        assert_eq!(top, None, "the top class still queues at 60 of 100");
        let cheapest = shed(backlog, class_share(ClassId(3), 4), 100, None).unwrap();
        assert_eq!(cheapest.limit, 50);
        // 11 over its bound at 20 per second.
        assert_eq!(cheapest.retry_after, Duration::from_millis(550));
        let full = Backlog {
            queued: 100,
            ..backlog
        };
        assert!(shed(full, 1.0, 100, None).is_some(), "memory stays bounded");
    }

    #[test]
    fn expected_waits_are_bounded_per_class_when_asked() {
        // 40 ahead at 10 per second: a 4 s wait.
        let backlog = Backlog {
            queued: 40,
            ahead: 40,
            drain_per_s: 10.0,
        };
        let max_wait = Some(Duration::from_secs(6));
        assert_eq!(shed(backlog, 1.0, 1000, max_wait), None);
        let cheapest = shed(backlog, CHEAPEST_SHARE, 1000, max_wait).unwrap();
        assert_eq!(cheapest.retry_after, Duration::from_secs(1));
        // Without a drain estimate there is no wait to bound.
        let unknown = Backlog {
            drain_per_s: 0.0,
            ..backlog
        };
        assert_eq!(shed(unknown, CHEAPEST_SHARE, 1000, max_wait), None);
    }
}
