//! Billing one run: price it at its class, record it in the shard's ledger, add it to the
//! tenant's spend. Every path that ends in a run the tenant pays for comes through here: a
//! client's answer, and the end of a keyed invocation whose shard was lost (`keys`).

use std::sync::Arc;

use tariff_types::billing::{Cost, Month};
use tariff_types::wire::InvocationOutcome;
use tariff_types::ClassId;

use crate::ledger::Entry;
use crate::service::Service;

/// Prices a successful run, records it in the ledger (the answer waits for the line to be
/// durable) and adds it to the tenant's spend. A ledger failure is logged, not turned into an
/// error: the function has run and its caller gets its result.
pub(crate) async fn bill(
    service: &Arc<Service>,
    tenant: &str,
    function: &str,
    class: ClassId,
    outcome: &InvocationOutcome,
) -> Cost {
    let classes = &service.options().classes;
    let cost = Cost::of(
        &classes.get(class).name,
        classes.price(class),
        service.options().memory_price,
        outcome.run.cpu_time_us,
        outcome.run.memory_byte_ms,
    );
    let at_us = tariff_types::wire::unix_micros();
    let entry = Entry {
        invocation: outcome.id.to_string(),
        tenant: tenant.to_owned(),
        function: function.to_owned(),
        at_us,
        month: Month::of_unix_us(at_us).to_string(),
        cost: cost.clone(),
    };
    if let Err(e) = service.ledger().record(entry).await {
        tracing::error!(error = %e, "could not record the invocation in the ledger");
    }
    service.spend().billed(tenant, cost.total);
    cost
}
