//! The placement pump: the one task that turns the core's decisions into messages.
//!
//! It sleeps until something may allow a placement (a submission, a completion, an idle-list
//! change, a machine joining), then asks the core for steps until there are none. Polls are
//! awaited outside the core's lock. While a class is blocked for lack of room the pump also
//! wakes every [`RETRY_INTERVAL`], because capacity freed by another shard's invocations
//! reaches this shard only through a fresh poll.

use std::sync::Arc;
use std::time::Duration;

use tariff_types::wire::{unix_micros, InvokeError, MachineLoad, Placement};
use tracing::debug;

use crate::client::Pending;
use crate::machines::{InFlight, POLL_TIMEOUT};
use crate::server::Shared;
use tariff_policy::placement::PolledLoad;
use tariff_policy::{MachineIdx, Step, Taken};

/// How often a blocked shard polls again without other news.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(2);

/// Runs the pump forever.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        if shared.core().is_blocked() {
            tokio::select! {
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(RETRY_INTERVAL) => shared.core().unblock(),
            }
        } else {
            shared.wake.notified().await;
        }
        place_all(&shared).await;
    }
}

async fn place_all(shared: &Shared) {
    loop {
        let step = shared.core().next(shared.now());
        match step {
            None => return,
            Some(Step::Place(taken, machine)) => {
                if taken.item.is_abandoned() {
                    shared.core().completed(machine);
                    continue;
                }
                send(shared, taken, machine);
            }
            Some(Step::Poll(taken, candidates)) => {
                if taken.item.is_abandoned() {
                    continue;
                }
                let answers = poll(shared, &candidates).await;
                let function = &taken.item.function.name;
                let loads: Vec<PolledLoad<'_>> = answers
                    .iter()
                    .map(|(machine, load)| PolledLoad {
                        machine: *machine,
                        per_class: &load.per_class,
                        slots: load.slots,
                        warm: load.warm.iter().any(|w| w == function),
                    })
                    .collect();
                let placed = shared.core().polled(taken, &loads);
                if let Ok((taken, machine)) = placed {
                    send(shared, taken, machine);
                }
            }
        }
    }
}

/// Polls machines in parallel; those that do not answer within [`POLL_TIMEOUT`] are left out.
async fn poll(shared: &Shared, machines: &[MachineIdx]) -> Vec<(MachineIdx, MachineLoad)> {
    let waiting: Vec<_> = {
        let table = shared.machines();
        machines
            .iter()
            .filter_map(|&m| table.get(m).and_then(|link| link.poll()).map(|rx| (m, rx)))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
    let mut answers = Vec::with_capacity(waiting.len());
    for (machine, rx) in waiting {
        if let Ok(Ok(load)) = tokio::time::timeout_at(deadline, rx).await {
            answers.push((machine, load));
        }
    }
    answers
}

/// Sends a placement on the machine's lane for its class and records it as in flight.
fn send(shared: &Shared, taken: Taken<Pending>, machine: MachineIdx) {
    let Taken { item, class, .. } = taken;
    let remaining = item
        .deadline
        .saturating_duration_since(std::time::Instant::now());
    let placement = Placement {
        id: item.id,
        class,
        tenant: item.tenant,
        function: (*item.function).clone(),
        payload: item.payload,
        timeout_ms: remaining.as_millis() as u64,
    };
    let machines = shared.machines();
    let Some(link) = machines.get(machine) else {
        drop(machines);
        let _ = item
            .answer
            .send(Err(InvokeError::MachineLost(format!("{machine:?}"))));
        shared.core().completed(machine);
        return;
    };
    let id = item.id;
    shared.in_flight.insert(
        id,
        InFlight {
            machine,
            machine_name: link.name.clone(),
            queued_at_us: item.queued_at_us,
            placed_at_us: unix_micros(),
            timeout_ms: item.timeout.as_millis() as u64,
            answer: item.answer,
        },
    );
    if !link.place(placement) {
        let name = link.name.to_string();
        drop(machines);
        if let Some((_, in_flight)) = shared.in_flight.remove(&id) {
            let _ = in_flight.answer.send(Err(InvokeError::MachineLost(name)));
        }
        shared.core().completed(machine);
    } else {
        debug!(invocation = %id, ?machine, "placed");
    }
}
