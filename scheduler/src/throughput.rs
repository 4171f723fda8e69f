//! How many invocations a shard answered lately, for `tariff status`: a ring of per-second
//! counts, so a status request reads the rate without the shard keeping a timestamp per
//! invocation (50,000 a second would make that a large, churning buffer).

use std::time::Instant;

/// Seconds the rate is averaged over.
const WINDOW_SECONDS: usize = 10;

/// Answers counted in total and per second over the last [`WINDOW_SECONDS`].
#[derive(Debug)]
pub(crate) struct RecentRate {
    /// Zero of the second numbers.
    started: Instant,
    /// Counts of the last seconds; slot `second % WINDOW_SECONDS`.
    buckets: [u64; WINDOW_SECONDS],
    /// The second the newest bucket counts.
    current: u64,
    /// Answers since the start.
    total: u64,
}

impl RecentRate {
    /// Nothing counted yet; seconds are numbered from `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            started: now,
            buckets: [0; WINDOW_SECONDS],
            current: 0,
            total: 0,
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    /// Moves the ring on to `second`, emptying the buckets of the seconds skipped.
    fn advance(&mut self, second: u64) {
        if second <= self.current {
            return;
        }
        let skipped = (second - self.current).min(WINDOW_SECONDS as u64);
        for s in 0..skipped {
            let slot = (second - s) as usize % WINDOW_SECONDS;
            self.buckets[slot] = 0;
        }
        self.current = second;
    }

    /// Counts one answer at `now`.
    pub(crate) fn record(&mut self, now: Instant) {
        let second = self.second(now);
        self.advance(second);
        self.buckets[second as usize % WINDOW_SECONDS] += 1;
        self.total += 1;
    }

    /// Answers since the start.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Answers per second over the last full seconds (up to [`WINDOW_SECONDS`]) before `now`;
    /// the second in progress is left out, so the rate does not dip at each second's start.
    pub(crate) fn per_second(&self, now: Instant) -> f64 {
        let second = self.second(now);
        let full = (second as usize).min(WINDOW_SECONDS - 1);
        if full == 0 {
            return 0.0;
        }
        let sum: u64 = (1..=full as u64)
            .filter(|back| {
                second - back <= self.current
                    && self.current - (second - back) < WINDOW_SECONDS as u64
            })
            .map(|back| self.buckets[(second - back) as usize % WINDOW_SECONDS])
            .sum();
        sum as f64 / full as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_covers_the_last_full_seconds_and_forgets_old_ones() {
        let t0 = Instant::now();
        let mut rate = RecentRate::new(t0);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        for i in 0..30 {
            rate.record(at(1.0 + f64::from(i) / 10.0)); // 10 a second during seconds 1..4
        }
        assert_eq!(rate.total(), 30);
        // At 4.5 s the full seconds 1, 2, 3 (and 0, empty) are in the window: 30 over 4 s.
        assert!((rate.per_second(at(4.5)) - 7.5).abs() < 1e-9);
        // Much later, nothing recent.
        assert_eq!(rate.per_second(at(100.0)), 0.0);
        rate.record(at(100.2));
        assert_eq!(
            rate.per_second(at(100.5)),
            0.0,
            "seconds from long ago were forgotten"
        );
        assert!((rate.per_second(at(101.5)) - 1.0 / 9.0).abs() < 1e-9);
    }
}
