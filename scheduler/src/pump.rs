//! The placement pump: the one task that turns the core's decisions into messages.
//!
//! It sleeps until something may allow a placement (a submission, a completion, an idle-list
//! change, a machine joining), then asks the shard state for steps until there are none. A
//! step that needs a poll comes back as a [`Poll`] whose answers the pump awaits with the
//! state unlocked, so placements never wait on a slow machine while holding the lock. While a
//! class is blocked for lack of room the pump also wakes every [`RETRY_INTERVAL`], because
//! capacity freed by another shard's invocations reaches this shard only through a fresh poll.

use std::sync::Arc;
use std::time::Duration;

use tariff_policy::MachineIdx;
use tariff_types::wire::MachineLoad;
use tokio::sync::oneshot;

use crate::state::{Placing, Poll, ShardState};

/// How often a blocked shard polls again without other news.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(2);

/// How long a poll waits for answers; a machine that does not answer in time is skipped.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(200);

/// Runs the pump forever.
pub(crate) async fn run(state: Arc<ShardState>) {
    loop {
        if state.is_blocked() {
            tokio::select! {
                () = state.changed() => {}
                () = tokio::time::sleep(RETRY_INTERVAL) => state.unblock(),
            }
        } else {
            state.changed().await;
        }
        place_all(&state).await;
    }
}

async fn place_all(state: &ShardState) {
    loop {
        match state.place_next() {
            Placing::Idle => return,
            Placing::Progress => {}
            Placing::Poll(poll) => {
                let (poll, answers) = collect(poll).await;
                state.polled(poll, &answers);
            }
        }
    }
}

/// Awaits a poll's answers in parallel; machines that do not answer within [`POLL_TIMEOUT`]
/// are left out.
async fn collect(mut poll: Poll) -> (Poll, Vec<(MachineIdx, MachineLoad)>) {
    let waiting: Vec<(MachineIdx, oneshot::Receiver<MachineLoad>)> = poll.take_waiting();
    let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
    let mut answers = Vec::with_capacity(waiting.len());
    for (machine, rx) in waiting {
        if let Ok(Ok(load)) = tokio::time::timeout_at(deadline, rx).await {
            answers.push((machine, load));
        }
    }
    (poll, answers)
}
