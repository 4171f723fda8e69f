//! Sessions with dispatchers: registration, idle-list entries, polls, and the class lanes
//! that carry placements out and completions back.
//!
//! A dispatcher opens a control stream (its hello first), waits for the shard's welcome, then
//! opens one lane per class so that a backlog of `batch` completions can never delay a
//! `critical` placement. The machine becomes placeable once every lane is open. When the
//! control stream or any lane ends, the machine is lost: it leaves the core and every
//! invocation it was running is answered with a machine-lost error. This module only reads
//! and writes streams; every change it causes is an operation of [`ShardState`].

use std::sync::Arc;

use tariff_cluster::codec;
use tariff_types::wire::{
    Completion, DispatcherHello, DispatcherToShard, Placement, ShardToDispatcher,
};
use tariff_types::ClassId;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::config::PROTOCOL_VIOLATION;
use crate::keys;
use crate::service::Service;
use crate::state::{LaneRefused, ShardState};
use tariff_policy::MachineIdx;

/// Serves a dispatcher's control stream for as long as it lasts.
pub(crate) async fn control_session(
    service: Arc<Service>,
    conn: quinn::Connection,
    hello: DispatcherHello,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let state = service.state();
    let name = hello.machine.clone();
    let (control, outbox) = mpsc::unbounded_channel::<ShardToDispatcher>();
    let machine = state.register(&hello, conn.stable_id(), control.clone());
    info!(machine = %name, cores = hello.cores, slots = hello.slots, "machine registered");
    let options = service.options();
    let liveness = options.liveness;
    let _ = control.send(ShardToDispatcher::Welcome {
        shard_id: options.shard_id,
        classes: options.classes.names().map(str::to_owned).collect(),
        liveness_ms: u64::try_from(liveness.as_millis()).unwrap_or(u64::MAX),
    });
    let writer = tokio::spawn(codec::forward(outbox, send).in_current_span());
    let heartbeat = tokio::spawn(codec::heartbeats(control.clone(), liveness, || {
        ShardToDispatcher::Heartbeat
    }));
    loop {
        // Silence for `liveness` means the machine is dead or cut off: a healthy dispatcher
        // sends a heartbeat four times within it, from a thread above every function's
        // priority. A read cut short loses a partial frame, but the session ends then.
        let read = codec::read_message::<DispatcherToShard, _>(&mut recv);
        match tokio::time::timeout(liveness, read).await {
            Ok(Ok(Some(DispatcherToShard::Orphan(orphan)))) => {
                tokio::spawn(
                    keys::settle_orphan(service.clone(), name.clone(), orphan).in_current_span(),
                );
            }
            Ok(Ok(Some(message))) => handle_control(state, machine, &control, message),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                if e.is_protocol_violation() {
                    warn!(machine = %name, error = %e, "malformed control frame; closing the connection");
                    conn.close(PROTOCOL_VIOLATION.into(), b"malformed control frame");
                }
                break;
            }
            Err(_silent) => {
                warn!(machine = %name, ?liveness, "machine silent; taking it for lost");
                break;
            }
        }
    }
    heartbeat.abort();
    writer.abort();
    state.lose_machine(machine);
    conn.close(0u32.into(), b"control stream ended");
}

fn handle_control(
    state: &ShardState,
    machine: MachineIdx,
    control: &mpsc::UnboundedSender<ShardToDispatcher>,
    message: DispatcherToShard,
) {
    match message {
        DispatcherToShard::QueryIdleListLength { seq } => {
            let length = state.idle_list_len() as u32;
            let _ = control.send(ShardToDispatcher::IdleListLength { seq, length });
        }
        DispatcherToShard::Idle(entry) => state.idle_update(machine, entry),
        DispatcherToShard::Warm(functions) => state.warm_update(machine, &functions),
        DispatcherToShard::Load { seq, load } => state.load_reported(machine, seq, load),
        DispatcherToShard::Heartbeat => state.heard(machine),
        DispatcherToShard::Memory(report) => state.memory_reported(machine, report),
        // Handled by the session, which can spawn the store write.
        DispatcherToShard::Orphan(_) => {}
    }
}

/// Serves one class lane: writes placements, reads completions.
pub(crate) async fn lane_session(
    service: Arc<Service>,
    conn: quinn::Connection,
    name: String,
    class: ClassId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let state = service.state();
    let (lane, outbox) = mpsc::unbounded_channel::<Placement>();
    let machine = match state.open_lane(&name, conn.stable_id(), class, lane) {
        Ok(machine) => machine,
        Err(LaneRefused::Unregistered) => {
            // A machine that left (its connection closing) while its lanes were still opening
            // is not an error; a lane that comes before any registration is.
            if conn.close_reason().is_some() {
                debug!(machine = %name, "lane from a machine that has left");
            } else {
                warn!(machine = %name, "lane from an unregistered machine");
            }
            conn.close(PROTOCOL_VIOLATION.into(), b"lane before registration");
            return;
        }
        Err(LaneRefused::BadLane) => {
            conn.close(PROTOCOL_VIOLATION.into(), b"bad lane");
            return;
        }
    };
    let writer = tokio::spawn(codec::forward(outbox, send).in_current_span());
    loop {
        match codec::read_message::<Completion, _>(&mut recv).await {
            Ok(Some(completion)) => state.complete(machine, completion),
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
    state.lose_machine(machine);
    // Whatever ended the lane, the session is unusable without it: closing the connection
    // makes the dispatcher reconnect and register again rather than linger half-attached.
    conn.close(0u32.into(), b"lane ended");
}
