//! What an invocation costs and what a tenant is billed: the paper's interface (section 3.1),
//! CPU-seconds at the class's price plus GB-seconds of memory actually used at one memory
//! price for every class, in the unit class prices are quoted in.
//!
//! Pure arithmetic and calendar; the ledger that records costs is the scheduler's.

use serde::{Deserialize, Serialize};

/// Default price of one GB-second of memory actually used, in the unit of class prices. An
/// arbitrary default about an eighth of the `critical` CPU-second, as for Lambda's ratio of
/// memory to CPU; set it per cluster with `tariff shard --memory-price`.
pub const DEFAULT_MEMORY_PRICE: f64 = 0.25;

/// Bytes in the GB that memory is priced by (a decimal gigabyte, as cloud bills use).
pub const BYTES_PER_GB: f64 = 1e9;

/// What one invocation cost, and of what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// The class it was billed (and ran) at.
    pub class: String,
    /// CPU-seconds used (from the kernel's accounting of its processes).
    pub cpu_seconds: f64,
    /// GB-seconds of memory used (the integral of its memory over the run).
    pub gb_seconds: f64,
    /// `cpu_seconds` × the class's price.
    pub cpu_charge: f64,
    /// `gb_seconds` × the memory price.
    pub memory_charge: f64,
    /// The two charges together.
    pub total: f64,
}

impl Cost {
    /// The cost of a run that used `cpu_time_us` of CPU and `memory_byte_ms` of memory at
    /// `class`, whose price per CPU-second is `cpu_price`.
    pub fn of(
        class: &str,
        cpu_price: f64,
        memory_price: f64,
        cpu_time_us: u64,
        memory_byte_ms: u64,
    ) -> Self {
        let cpu_seconds = cpu_time_us as f64 / 1e6;
        let gb_seconds = memory_byte_ms as f64 / 1e3 / BYTES_PER_GB;
        let cpu_charge = cpu_seconds * cpu_price;
        let memory_charge = gb_seconds * memory_price;
        Self {
            class: class.to_owned(),
            cpu_seconds,
            gb_seconds,
            cpu_charge,
            memory_charge,
            total: cpu_charge + memory_charge,
        }
    }
}

/// A budget that is not a finite amount of zero or more.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("a budget must be a finite amount of zero or more, not {0}")]
pub struct BadBudget(pub f64);

/// Checks a monthly budget (none: unlimited).
pub fn validate_budget(budget: Option<f64>) -> Result<(), BadBudget> {
    match budget {
        Some(b) if !(b.is_finite() && b >= 0.0) => Err(BadBudget(b)),
        _ => Ok(()),
    }
}

/// One line of a bill: a function at a class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BillLine {
    /// The function.
    pub function: String,
    /// The class it was billed at.
    pub class: String,
    /// Invocations billed.
    pub invocations: u64,
    /// CPU-seconds.
    pub cpu_seconds: f64,
    /// GB-seconds.
    pub gb_seconds: f64,
    /// Amount.
    pub total: f64,
}

/// A tenant's bill for one month, itemised by function and class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bill {
    /// The tenant.
    pub tenant: String,
    /// The month, `YYYY-MM` (UTC).
    pub month: String,
    /// Lines, by function then class.
    pub lines: Vec<BillLine>,
}

impl Bill {
    /// The sum of the lines.
    pub fn total(&self) -> f64 {
        self.lines.iter().map(|l| l.total).sum()
    }

    /// Adds `other`'s lines (another shard's part of the same bill) into this one.
    pub fn merge(&mut self, other: Bill) {
        for line in other.lines {
            match self
                .lines
                .iter_mut()
                .find(|l| l.function == line.function && l.class == line.class)
            {
                Some(l) => {
                    l.invocations += line.invocations;
                    l.cpu_seconds += line.cpu_seconds;
                    l.gb_seconds += line.gb_seconds;
                    l.total += line.total;
                }
                None => self.lines.push(line),
            }
        }
        self.lines
            .sort_by(|a, b| (&a.function, &a.class).cmp(&(&b.function, &b.class)));
    }
}

/// A calendar month (UTC), the period budgets and bills run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    /// The year.
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm, proleptic Gregorian).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = i64::from(if month <= 2 { year - 1 } else { year });
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Month {
    /// The month containing `unix_us` (µs since the epoch).
    pub fn of_unix_us(unix_us: u64) -> Self {
        let days = (unix_us / 86_400_000_000) as i64;
        // The inverse of `days_from_civil`.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400) as i32 + i32::from(month <= 2);
        Self { year, month }
    }

    /// The first µs of the month.
    pub fn start_us(self) -> u64 {
        (days_from_civil(self.year, self.month, 1) * 86_400_000_000).max(0) as u64
    }

    /// The first µs of the next month.
    pub fn end_us(self) -> u64 {
        let (year, month) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        Self { year, month }.start_us()
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Self> {
        let (y, m) = text.split_once('-')?;
        let month: u32 = m.parse().ok()?;
        ((1..=12).contains(&month) && y.len() == 4)
            .then(|| y.parse().ok().map(|year| Self { year, month }))
            .flatten()
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// How a tenant's budget holds it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Throttle {
    /// Spending at a pace the budget covers (or no budget).
    #[default]
    Normal,
    /// At its recent pace the budget runs out before the month ends: its invocations run at
    /// the cheapest class, behind every paying tenant.
    Degraded,
    /// The budget is spent: invocations are refused until the month ends or it is raised.
    Exhausted,
}

impl Throttle {
    /// Its name in `tariff tenant show`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Degraded => "degraded",
            Self::Exhausted => "exhausted",
        }
    }
}

/// A tenant's spending this month as a shard sees it (for `tariff tenant show`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpendInfo {
    /// The month.
    pub month: String,
    /// Spent this month across the cluster, as last published by every shard.
    pub spent: f64,
    /// The monthly budget, if any.
    pub budget: Option<f64>,
    /// Spend per second over the last minute.
    pub rate_per_s: f64,
    /// Spent ÷ (budget × share of the month gone): above 1 is faster than the budget allows.
    pub pace: Option<f64>,
    /// The throttle state.
    pub throttle: Throttle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_cpu_and_memory() {
        // 200 ms of CPU at 2.0 per CPU-second, 100 MB held for 1 s at 0.25 per GB-second.
        let cost = Cost::of("critical", 2.0, 0.25, 200_000, 100_000_000 * 1000);
        assert!((cost.cpu_charge - 0.4).abs() < 1e-12);
        assert!((cost.gb_seconds - 0.1).abs() < 1e-12);
        assert!((cost.memory_charge - 0.025).abs() < 1e-12);
        assert!((cost.total - 0.425).abs() < 1e-12);
    }

    #[test]
    fn months_round_trip_through_the_calendar() {
        // 2026-12-01T04:19:38Z
        let m = Month::of_unix_us(1_796_098_778_000_000);
        assert_eq!(m.to_string(), "2026-12");
        assert_eq!(Month::of_unix_us(m.start_us()), m);
        assert_eq!(Month::of_unix_us(m.start_us() - 1).to_string(), "2026-11");
        assert_eq!(Month::of_unix_us(m.end_us()).to_string(), "2027-01");
        assert_eq!((m.end_us() - m.start_us()) / 86_400_000_000, 31);
        let feb = Month::parse("2028-02").unwrap();
        assert_eq!((feb.end_us() - feb.start_us()) / 86_400_000_000, 29);
        assert_eq!(Month::parse("2026-13"), None);
        assert_eq!(Month::parse("26-01"), None);
        assert_eq!(Month::of_unix_us(0).to_string(), "1970-01");
    }

    #[test]
    fn bills_merge_by_function_and_class() {
        let line = |f: &str, c: &str, t: f64| BillLine {
            function: f.into(),
            class: c.into(),
            invocations: 1,
            total: t,
            ..BillLine::default()
        };
        let mut a = Bill {
            lines: vec![line("f", "batch", 1.0)],
            ..Bill::default()
        };
        a.merge(Bill {
            lines: vec![line("f", "batch", 2.0), line("a", "high", 0.5)],
            ..Bill::default()
        });
        assert_eq!(a.lines.len(), 2);
        assert_eq!(a.lines[0].function, "a");
        assert_eq!(a.lines[1].invocations, 2);
        assert!((a.total() - 3.5).abs() < 1e-12);
    }
}
