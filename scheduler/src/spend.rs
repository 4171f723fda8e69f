//! What each tenant has spent this month across the cluster, and its budget: the figures the
//! budget check (`tariff_policy::budget`) is made on.
//!
//! A shard knows its own spend exactly (its ledger, updated as each invocation is billed) and
//! other shards' as they last published it to the cluster store. Every [`PUBLISH_INTERVAL`] it
//! publishes its own totals, reads everyone's, and re-reads the tenants' budgets. What a shard
//! has not seen of another's spend is at most that shard's spend in the last two intervals
//! (one until it publishes, one until this shard reads). So once a tenant's spend crosses its
//! budget, every shard stops admitting it within two intervals: the overshoot is at most the
//! tenant's cluster-wide spend rate × 2 × [`PUBLISH_INTERVAL`], plus the cost of the
//! invocations already admitted (in flight) when it crossed (`docs/billing.md`;
//! `tests/billing.rs` races two shards against it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tariff_cluster::store::ClusterStore;
use tariff_types::billing::{Month, SpendInfo, Throttle};
use tariff_types::wire::unix_micros;
use tracing::warn;

use crate::ledger::Ledger;

/// How often a shard publishes its spend and reads everyone's. What a budget can be overshot
/// by is the tenant's spend rate over two of these (see the module's doc).
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
/// The window a tenant's recent spending rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The book of this month's spend (one mutex; no I/O while it is held).
pub(crate) struct SpendBook {
    shard: u16,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    month: Option<Month>,
    /// This shard's billed totals, per tenant.
    own: HashMap<String, f64>,
    /// Tenants whose own total changed since the last publish.
    dirty: Vec<String>,
    /// Other shards' last published totals, summed per tenant.
    others: HashMap<String, f64>,
    /// Budgets, as last read from the store.
    budgets: HashMap<String, Option<f64>>,
    /// (when, cluster-wide spent) samples per tenant over the last [`RATE_WINDOW`].
    history: HashMap<String, VecDeque<(Instant, f64)>>,
}

impl Inner {
    fn spent(&self, tenant: &str) -> f64 {
        self.own.get(tenant).copied().unwrap_or(0.0)
            + self.others.get(tenant).copied().unwrap_or(0.0)
    }

    fn rate(&self, tenant: &str, now: Instant) -> f64 {
        let Some(samples) = self.history.get(tenant) else {
            return 0.0;
        };
        let (Some(&(then, before)), spent) = (samples.front(), self.spent(tenant)) else {
            return 0.0;
        };
        let seconds = now.duration_since(then).as_secs_f64();
        if seconds < PUBLISH_INTERVAL.as_secs_f64() {
            return 0.0;
        }
        (spent - before).max(0.0) / seconds
    }

    /// Starts a new month's book if the month has turned.
    fn roll(&mut self, month: Month) {
        if self.month != Some(month) {
            let budgets = std::mem::take(&mut self.budgets);
            *self = Self {
                month: Some(month),
                budgets,
                ..Self::default()
            };
        }
    }
}

impl SpendBook {
    /// An empty book for shard `shard`.
    pub(crate) fn new(shard: u16) -> Self {
        Self {
            shard,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a billed amount to this shard's own total.
    pub(crate) fn billed(&self, tenant: &str, amount: f64) {
        let mut inner = self.lock();
        inner.roll(Month::of_unix_us(unix_micros()));
        *inner.own.entry(tenant.to_owned()).or_default() += amount;
        if !inner.dirty.iter().any(|t| t == tenant) {
            inner.dirty.push(tenant.to_owned());
        }
    }

    /// How `tenant` stands now.
    pub(crate) fn info(&self, tenant: &str) -> SpendInfo {
        let now_us = unix_micros();
        let month = Month::of_unix_us(now_us);
        let mut inner = self.lock();
        inner.roll(month);
        let spent = inner.spent(tenant);
        let budget = inner.budgets.get(tenant).copied().flatten();
        let rate_per_s = inner.rate(tenant, Instant::now());
        let length = (month.end_us() - month.start_us()) as f64;
        let gone = now_us.saturating_sub(month.start_us()) as f64;
        let seconds_left = (month.end_us().saturating_sub(now_us)) as f64 / 1e6;
        SpendInfo {
            month: month.to_string(),
            spent,
            budget,
            rate_per_s,
            pace: tariff_policy::budget::pace(spent, budget, gone / length),
            throttle: tariff_policy::budget::throttle(spent, budget, rate_per_s, seconds_left),
        }
    }

    /// The throttle state of `tenant` now.
    /// Asked for every invocation (twice: when it arrives and when it leaves the queue), so a
    /// tenant without a budget, the common case, is answered without reading the clock or
    /// the calendar, with an empty [`SpendInfo`].
    pub(crate) fn throttle(&self, tenant: &str) -> (Throttle, SpendInfo) {
        if !self.lock().budgets.get(tenant).is_some_and(Option::is_some) {
            return (Throttle::Normal, SpendInfo::default());
        }
        let info = self.info(tenant);
        (info.throttle, info)
    }

    /// Loads this shard's own totals for the current month from its ledger (after a restart).
    pub(crate) async fn load(&self, ledger: &Ledger) -> Result<(), crate::ledger::LedgerError> {
        let month = Month::of_unix_us(unix_micros());
        let totals = ledger.totals(&month.to_string()).await?;
        let mut inner = self.lock();
        inner.roll(month);
        for (tenant, amount) in totals {
            inner.own.insert(tenant.clone(), amount);
            inner.dirty.push(tenant);
        }
        Ok(())
    }

    /// Publishes this shard's changed totals, reads every shard's and the budgets. Blocking
    /// (the store is); run it off the async threads.
    pub(crate) fn exchange(&self, store: &dyn ClusterStore) {
        let month = Month::of_unix_us(unix_micros());
        let key = month.to_string();
        let changed: Vec<(String, f64)> = {
            let mut inner = self.lock();
            inner.roll(month);
            let dirty = std::mem::take(&mut inner.dirty);
            dirty
                .into_iter()
                .map(|t| {
                    let amount = inner.own.get(&t).copied().unwrap_or(0.0);
                    (t, amount)
                })
                .collect()
        };
        if !changed.is_empty() {
            if let Err(e) = store.publish_spend(&key, self.shard, &changed) {
                warn!(error = %e, "publishing spend to the cluster store");
                let mut inner = self.lock();
                inner.dirty.extend(changed.into_iter().map(|(t, _)| t));
            }
        }
        self.refresh(store);
    }

    /// Reads every shard's published spend and the tenants' budgets.
    pub(crate) fn refresh(&self, store: &dyn ClusterStore) {
        let key = Month::of_unix_us(unix_micros()).to_string();
        let others = match store.spend(&key) {
            Ok(rows) => {
                let mut sums: HashMap<String, f64> = HashMap::new();
                for (tenant, shard, amount) in rows {
                    if shard != self.shard {
                        *sums.entry(tenant).or_default() += amount;
                    }
                }
                Some(sums)
            }
            Err(e) => {
                warn!(error = %e, "reading spend from the cluster store");
                None
            }
        };
        let budgets = match store.tenants() {
            Ok(tenants) => Some(tenants.into_iter().map(|t| (t.name, t.budget)).collect()),
            Err(e) => {
                warn!(error = %e, "reading budgets from the cluster store");
                None
            }
        };
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(others) = others {
            inner.others = others;
        }
        if let Some(budgets) = budgets {
            inner.budgets = budgets;
        }
        let tenants: Vec<String> = inner
            .own
            .keys()
            .chain(inner.others.keys())
            .cloned()
            .collect();
        for tenant in tenants {
            let spent = inner.spent(&tenant);
            let samples = inner.history.entry(tenant).or_default();
            samples.push_back((now, spent));
            while samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
            {
                samples.pop_front();
            }
        }
    }
}

/// The message of a refusal for an exhausted budget.
pub(crate) fn exhausted_message(tenant: &str, info: &SpendInfo) -> String {
    format!(
        "tenant `{tenant}` has spent {:.6} of its budget of {:.6} for {}; raise it with \
         `tariff tenant set-budget` or wait for the next month",
        info.spent,
        info.budget.unwrap_or(0.0),
        info.month
    )
}

/// Invocations queued while their tenant's budget ran out are refused when they would leave
/// the queue, so what a budget can be overshot by is bounded by what is running, not by how
/// much was queued.
impl crate::state::Admission for SpendBook {
    fn refuse(&self, tenant: &str) -> Option<tariff_types::InvokeError> {
        match self.throttle(tenant) {
            (Throttle::Exhausted, info) => Some(tariff_types::InvokeError::OverBudget(
                exhausted_message(tenant, &info),
            )),
            _ => None,
        }
    }
}

/// Publishes and refreshes every [`PUBLISH_INTERVAL`] until the shard stops.
pub(crate) async fn run(book: Arc<SpendBook>, store: Arc<dyn ClusterStore>) {
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (book, store) = (book.clone(), store.clone());
        let _ = tokio::task::spawn_blocking(move || book.exchange(store.as_ref())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tariff_cluster::store::SqliteStore;
    use tariff_types::tenant::Tenant;

    #[test]
    fn two_books_share_spend_through_the_store_and_budgets_throttle() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s")).unwrap();
        let tenant = Tenant {
            name: "acme".into(),
            created_at_us: 0,
            budget: Some(10.0),
        };
        store.add_tenant(&tenant, "h").unwrap();
        let (a, b) = (SpendBook::new(1), SpendBook::new(2));
        a.refresh(&store);
        assert_eq!(a.throttle("acme").0, Throttle::Normal);
        a.billed("acme", 4.0);
        b.billed("acme", 3.0);
        assert_eq!(a.info("acme").spent, 4.0, "own spend is seen at once");
        a.exchange(&store);
        b.exchange(&store);
        a.exchange(&store);
        assert_eq!(a.info("acme").spent, 7.0);
        assert_eq!(b.info("acme").spent, 7.0);
        b.billed("acme", 3.0);
        assert_eq!(b.throttle("acme").0, Throttle::Exhausted);
        assert_eq!(a.throttle("acme").0, Throttle::Normal, "not yet published");
        b.exchange(&store);
        a.exchange(&store);
        assert_eq!(a.throttle("acme").0, Throttle::Exhausted);
        // A raised budget takes effect at the next refresh.
        store.set_tenant_budget("acme", Some(1e12)).unwrap();
        a.refresh(&store);
        assert_ne!(a.throttle("acme").0, Throttle::Exhausted);
        assert_eq!(a.throttle("other").0, Throttle::Normal);
    }
}
