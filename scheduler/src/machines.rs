//! Sessions with dispatchers: registration, idle-list entries, polls, and the class lanes
//! that carry placements out and completions back.
//!
//! A dispatcher opens a control stream (its hello first), waits for the shard's welcome, then
//! opens one lane per class so that a backlog of `batch` completions can never delay a
//! `critical` placement. The machine becomes placeable once every lane is open. When the
//! control stream or any lane ends, the machine is lost: it leaves the core and every
//! invocation it was running is answered with a machine-lost error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tariff_cluster::codec;
use tariff_types::wire::{
    Completion, DispatcherHello, DispatcherToShard, InvocationId, InvocationOutcome, InvokeError,
    MachineLoad, Placement, ShardToDispatcher,
};
use tariff_types::ClassId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::client::Answer;
use crate::server::{Shared, PROTOCOL_VIOLATION};
use tariff_policy::{FunctionKey, MachineIdx};

/// A placement waiting for its machine's completion.
pub(crate) struct InFlight {
    pub(crate) machine: MachineIdx,
    pub(crate) machine_name: Arc<str>,
    pub(crate) queued_at_us: u64,
    pub(crate) placed_at_us: u64,
    /// The caller's timeout, reported if the machine gives up on time first.
    pub(crate) timeout_ms: u64,
    pub(crate) answer: oneshot::Sender<Answer>,
}

/// Polls awaiting a machine's load report, by sequence number.
type PendingPolls = Arc<Mutex<HashMap<u64, oneshot::Sender<MachineLoad>>>>;

/// A connected machine.
pub(crate) struct MachineLink {
    pub(crate) name: Arc<str>,
    pub(crate) hello: DispatcherHello,
    connection_id: usize,
    pub(crate) control: mpsc::UnboundedSender<ShardToDispatcher>,
    lanes: Vec<Option<mpsc::UnboundedSender<Placement>>>,
    polls: PendingPolls,
    next_poll: Arc<AtomicU64>,
}

impl MachineLink {
    /// Sends a placement on its class lane; false if the lane is gone.
    pub(crate) fn place(&self, placement: Placement) -> bool {
        match self.lanes.get(placement.class.index()) {
            Some(Some(lane)) => lane.send(placement).is_ok(),
            _ => false,
        }
    }

    /// Starts a poll; the receiver yields the machine's load.
    pub(crate) fn poll(&self) -> Option<oneshot::Receiver<MachineLoad>> {
        let seq = self.next_poll.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, tx);
        self.control.send(ShardToDispatcher::Poll { seq }).ok()?;
        Some(rx)
    }
}

/// The shard's table of connected machines.
#[derive(Default)]
pub(crate) struct Machines {
    links: HashMap<MachineIdx, MachineLink>,
    by_name: HashMap<Arc<str>, MachineIdx>,
    next: u32,
}

impl Machines {
    pub(crate) fn get(&self, machine: MachineIdx) -> Option<&MachineLink> {
        self.links.get(&machine)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.by_name.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }
}

/// Serves a dispatcher's control stream for as long as it lasts.
pub(crate) async fn control_session(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    hello: DispatcherHello,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let name: Arc<str> = hello.machine.as_str().into();
    let (control, outbox) = mpsc::unbounded_channel::<ShardToDispatcher>();
    let polls: PendingPolls = Arc::default();
    let machine = {
        let mut machines = shared.machines();
        if let Some(old) = machines.by_name.get(&name).copied() {
            warn!(machine = %name, "machine registered again; dropping its old session");
            drop(machines);
            machine_lost(&shared, old);
            machines = shared.machines();
        }
        let idx = MachineIdx(machines.next);
        machines.next += 1;
        machines.by_name.insert(name.clone(), idx);
        machines.links.insert(
            idx,
            MachineLink {
                name: name.clone(),
                lanes: vec![None; shared.options.classes.len()],
                hello: hello.clone(),
                connection_id: conn.stable_id(),
                control: control.clone(),
                polls: polls.clone(),
                next_poll: Arc::default(),
            },
        );
        idx
    };
    info!(machine = %name, cores = hello.cores, slots = hello.slots, "machine registered");
    let _ = control.send(ShardToDispatcher::Welcome {
        shard_id: shared.options.shard_id,
        classes: shared.options.classes.names().map(str::to_owned).collect(),
    });
    let writer = tokio::spawn(codec::forward(outbox, send));
    loop {
        match codec::read_message::<DispatcherToShard, _>(&mut recv).await {
            Ok(Some(message)) => handle_control(&shared, machine, &control, &polls, message),
            Ok(None) => break,
            Err(e) => {
                if e.is_protocol_violation() {
                    warn!(machine = %name, error = %e, "malformed control frame; closing the connection");
                    conn.close(PROTOCOL_VIOLATION.into(), b"malformed control frame");
                }
                break;
            }
        }
    }
    writer.abort();
    machine_lost(&shared, machine);
    conn.close(0u32.into(), b"control stream ended");
}

fn handle_control(
    shared: &Shared,
    machine: MachineIdx,
    control: &mpsc::UnboundedSender<ShardToDispatcher>,
    polls: &PendingPolls,
    message: DispatcherToShard,
) {
    match message {
        DispatcherToShard::QueryIdleListLength { seq } => {
            let length = shared.core().idle_list_len() as u32;
            let _ = control.send(ShardToDispatcher::IdleListLength { seq, length });
        }
        DispatcherToShard::Idle(entry) => {
            shared.core().idle_update(machine, entry);
            shared.wake.notify_one();
        }
        DispatcherToShard::Warm(functions) => {
            let keys = functions.iter().map(|f| FunctionKey::of(f)).collect();
            shared.core().warm_update(machine, keys);
        }
        DispatcherToShard::Load { seq, load } => {
            let waiter = polls.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
            if let Some(waiter) = waiter {
                let _ = waiter.send(load);
            }
        }
    }
}

/// Serves one class lane: writes placements, reads completions.
pub(crate) async fn lane_session(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    name: String,
    class: ClassId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (lane, outbox) = mpsc::unbounded_channel::<Placement>();
    let machine = {
        let mut machines = shared.machines();
        let Some(&idx) = machines.by_name.get(name.as_str()) else {
            warn!(machine = %name, "lane from an unregistered machine");
            conn.close(PROTOCOL_VIOLATION.into(), b"lane before registration");
            return;
        };
        let link = machines
            .links
            .get_mut(&idx)
            .expect("by_name and links agree");
        if link.connection_id != conn.stable_id() || class.index() >= link.lanes.len() {
            conn.close(PROTOCOL_VIOLATION.into(), b"bad lane");
            return;
        }
        link.lanes[class.index()] = Some(lane);
        if link.lanes.iter().all(Option::is_some) {
            let slots = link.hello.slots;
            drop(machines);
            shared.core().add_machine(idx, slots);
            shared.wake.notify_one();
            debug!(machine = %name, "all lanes open; machine placeable");
        }
        idx
    };
    let writer = tokio::spawn(codec::forward(outbox, send));
    loop {
        match codec::read_message::<Completion, _>(&mut recv).await {
            Ok(Some(completion)) => complete(&shared, completion),
            Ok(None) => break,
            Err(e) => {
                if e.is_protocol_violation() {
                    warn!(machine = %name, error = %e, "malformed completion; closing the connection");
                    conn.close(PROTOCOL_VIOLATION.into(), b"malformed completion");
                }
                break;
            }
        }
    }
    writer.abort();
    machine_lost(&shared, machine);
    // Whatever ended the lane, the session is unusable without it: closing the connection
    // makes the dispatcher reconnect and register again rather than linger half-attached.
    conn.close(0u32.into(), b"lane ended");
}

/// A machine answered: pass the result to the waiting caller.
fn complete(shared: &Shared, completion: Completion) {
    let Some((id, in_flight)) = shared.in_flight.remove(&completion.id) else {
        // The caller timed out and was answered already.
        return;
    };
    let result = completion.result.map_err(|error| match error {
        // The machine's deadline is derived from the caller's: report the caller's figure.
        InvokeError::TimedOut(_) => InvokeError::TimedOut(in_flight.timeout_ms),
        other => other,
    });
    let answer = result.map(|run| InvocationOutcome {
        id,
        machine: in_flight.machine_name.to_string(),
        queued_at_us: in_flight.queued_at_us,
        placed_at_us: in_flight.placed_at_us,
        run,
    });
    let _ = in_flight.answer.send(answer);
    shared.core().completed(in_flight.machine);
    shared.wake.notify_one();
}

/// Forgets a machine and answers everything it was running with a machine-lost error.
pub(crate) fn machine_lost(shared: &Shared, machine: MachineIdx) {
    let Some(link) = ({
        let mut machines = shared.machines();
        let link = machines.links.remove(&machine);
        if let Some(link) = &link {
            machines.by_name.remove(&link.name);
        }
        link
    }) else {
        return;
    };
    shared.core().remove_machine(machine);
    let lost: Vec<InvocationId> = shared
        .in_flight
        .iter()
        .filter(|entry| entry.machine == machine)
        .map(|entry| *entry.key())
        .collect();
    for id in &lost {
        if let Some((_, in_flight)) = shared.in_flight.remove(id) {
            let _ = in_flight
                .answer
                .send(Err(InvokeError::MachineLost(link.name.to_string())));
        }
    }
    warn!(machine = %link.name, lost = lost.len(), "machine lost");
    shared.wake.notify_one();
}

/// How long a poll waits for answers; a machine that does not answer in time is skipped.
pub(crate) const POLL_TIMEOUT: Duration = Duration::from_millis(200);
