//! Memory actually used, integrated over a run: what a tenant pays for memory.
//!
//! Tariff bills memory by use, not by reservation and not by peak (paper section 3.1): the
//! integral of the function's memory over the time it ran. The kernel keeps no such integral,
//! so the run is sampled: its cgroup's current usage (or, without cgroups, its process's
//! resident set) every [`SAMPLE_INTERVAL`], joined by straight lines (the trapezoid rule), the
//! last sample held to the end. A run shorter than one interval is billed at its first
//! sample; the error of the rule is at most one interval's worth of the largest change between
//! two samples. Reading a cgroup file costs a few microseconds, on the dispatcher's own threads.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a running function's memory is read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// The running integral of memory over time.
#[derive(Debug, Clone)]
pub struct MemoryIntegral {
    last_bytes: u64,
    last_at: Instant,
    /// Byte-microseconds so far (u128: a terabyte for a year still fits).
    byte_us: u128,
}

impl MemoryIntegral {
    /// Starts at `bytes` now.
    pub fn start(bytes: u64, at: Instant) -> Self {
        Self {
            last_bytes: bytes,
            last_at: at,
            byte_us: 0,
        }
    }

    /// Adds the segment from the last sample to this one (trapezoid).
    pub fn sample(&mut self, bytes: u64, at: Instant) {
        let us = at.saturating_duration_since(self.last_at).as_micros();
        self.byte_us += (u128::from(self.last_bytes) + u128::from(bytes)) * us / 2;
        self.last_bytes = bytes;
        self.last_at = at;
    }

    /// Holds the last sample until `at` and returns the integral in byte-milliseconds.
    pub fn finish(mut self, at: Instant) -> u64 {
        let us = at.saturating_duration_since(self.last_at).as_micros();
        self.byte_us += u128::from(self.last_bytes) * us;
        u64::try_from(self.byte_us / 1000).unwrap_or(u64::MAX)
    }
}

/// Runs `run` to completion while sampling `read` (current bytes, if readable) every
/// [`SAMPLE_INTERVAL`]; returns its output and the integral in byte-milliseconds.
pub async fn metered<F: Future>(run: F, read: impl Fn() -> Option<u64>) -> (F::Output, u64) {
    let started = Instant::now();
    let mut integral = MemoryIntegral::start(read().unwrap_or(0), started);
    let mut ticks = tokio::time::interval_at((started + SAMPLE_INTERVAL).into(), SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(run);
    loop {
        tokio::select! {
            output = &mut run => return (output, integral.finish(Instant::now())),
            _ = ticks.tick() => {
                if let Some(bytes) = read() {
                    integral.sample(bytes, Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integral_is_area_under_the_samples() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut m = MemoryIntegral::start(0, t0);
        m.sample(1000, ms(10)); // ramp 0 → 1000 over 10 ms: 5,000 byte-ms
        m.sample(1000, ms(20)); // flat 1000 for 10 ms: 10,000
        assert_eq!(m.finish(ms(30)), 25_000); // held 1000 for 10 ms more: 10,000
    }

    #[tokio::test]
    async fn a_run_is_sampled_while_it_lasts() {
        let reads = std::sync::atomic::AtomicU64::new(0);
        let ((), byte_ms) = metered(tokio::time::sleep(Duration::from_millis(55)), || {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(1 << 20)
        })
        .await;
        assert!(reads.load(std::sync::atomic::Ordering::Relaxed) >= 4);
        // 1 MiB for at least 55 ms.
        assert!(byte_ms >= (1 << 20) * 55, "{byte_ms}");
        assert!(byte_ms < (1 << 20) * 500, "{byte_ms}");
    }
}
