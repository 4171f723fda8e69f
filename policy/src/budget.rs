//! Budgets: when a tenant's spending is throttled, and how.
//!
//! A tenant whose recent pace would exhaust its monthly budget before the month ends is
//! *degraded*: its invocations run at the cheapest class, so it yields to every paying tenant
//! and pays the least per CPU-second while it does; one whose spending has reached the budget
//! is *refused* until the month ends or the budget is raised. Other tenants are untouched:
//! priority is by class, and the degraded tenant's class is the lowest.
//!
//! Pure: the shard gives the figures (spent across the cluster, recent rate, time left).

use tariff_types::billing::Throttle;
use tariff_types::ClassId;

/// The class an invocation runs (and is billed) at: the class it asked for, raised to its
/// caller's if a running function made the call (no priority inversion along a call chain),
/// and the cheapest while its tenant is [`Throttle::Degraded`] (a degraded tenant's callers are
/// degraded too, so its chains stay in order).
pub fn run_class(
    asked: ClassId,
    caller: Option<ClassId>,
    throttle: Throttle,
    cheapest: ClassId,
) -> ClassId {
    if throttle == Throttle::Degraded {
        return cheapest;
    }
    // Lower ids are dearer.
    caller.map_or(asked, |caller| asked.min(caller))
}

/// The throttle state of a tenant that has spent `spent` of `budget` this month, spending
/// `rate_per_s` lately, with `seconds_left` in the month.
pub fn throttle(spent: f64, budget: Option<f64>, rate_per_s: f64, seconds_left: f64) -> Throttle {
    let Some(budget) = budget else {
        return Throttle::Normal;
    };
    if spent >= budget {
        Throttle::Exhausted
    } else if spent + rate_per_s.max(0.0) * seconds_left.max(0.0) > budget {
        Throttle::Degraded
    } else {
        Throttle::Normal
    }
}

/// Spent ÷ (budget × the share of the month gone): 1 is exactly on budget, above 1 faster.
/// `None` without a budget or before any of the month has passed.
pub fn pace(spent: f64, budget: Option<f64>, month_elapsed_share: f64) -> Option<f64> {
    let budget = budget.filter(|b| *b > 0.0)?;
    (month_elapsed_share > 0.0).then(|| spent / (budget * month_elapsed_share))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runaway_is_degraded_then_refused_and_a_steady_tenant_is_not() {
        let month = 30.0 * 86_400.0;
        assert_eq!(throttle(1e9, None, 1e6, month), Throttle::Normal);
        // 10 spent of 100, spending 1e-6 per second: 2.6 more by month's end.
        assert_eq!(throttle(10.0, Some(100.0), 1e-6, month), Throttle::Normal);
        // The same spent, 1e-3 per second: 2,592 more by month's end.
        assert_eq!(throttle(10.0, Some(100.0), 1e-3, month), Throttle::Degraded);
        assert_eq!(
            throttle(100.0, Some(100.0), 0.0, month),
            Throttle::Exhausted
        );
        assert_eq!(throttle(0.0, Some(0.0), 0.0, month), Throttle::Exhausted);
    }

    #[test]
    fn calls_run_at_their_callers_class_unless_degraded() {
        let (critical, batch) = (ClassId(0), ClassId(3));
        assert_eq!(run_class(batch, None, Throttle::Normal, batch), batch);
        assert_eq!(
            run_class(batch, Some(critical), Throttle::Normal, batch),
            critical
        );
        assert_eq!(
            run_class(critical, Some(batch), Throttle::Normal, batch),
            critical
        );
        assert_eq!(run_class(critical, None, Throttle::Degraded, batch), batch);
    }

    #[test]
    fn pace_compares_spend_with_the_share_of_the_month_gone() {
        assert_eq!(pace(50.0, Some(100.0), 0.5), Some(1.0));
        assert_eq!(pace(50.0, None, 0.5), None);
        assert_eq!(pace(50.0, Some(100.0), 0.0), None);
    }
}
