//! Per-class turn tickets: keep each class's arrival order between the place jobs arrive in
//! order and the place they launch.
//!
//! Under `SCHED_FIFO` the kernel runs a class in the order its processes become real-time, and
//! in user-space mode the run queue in the order jobs arrive; but jobs run in tasks of their
//! own, which the async runtime may start in any order (it even favours the newest). So each
//! job takes a [`Ticket`] where placements are received in order
//! ([`crate::machine::MachineScheduler::admit`]), and launches (or enters the gate) when its
//! ticket is served ([`Turns::turn`]); dropping the [`Turn`] serves the next ticket.

use std::sync::atomic::{AtomicU64, Ordering};

use tariff_types::ClassId;

/// A job's place in its class's arrival order (see
/// [`crate::machine::MachineScheduler::admit`]).
#[derive(Debug)]
pub struct Ticket {
    /// Index of the class.
    class: usize,
    /// Place in the class's order, from 0.
    number: u64,
}

/// One class's ticket dispenser and the ticket now served.
struct ClassTurns {
    /// The next ticket to hand out.
    next: AtomicU64,
    /// The ticket now served; waiters watch it.
    serving: tokio::sync::watch::Sender<u64>,
}

impl Default for ClassTurns {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            serving: tokio::sync::watch::channel(0).0,
        }
    }
}

/// The ticket dispensers of every class.
pub(crate) struct Turns {
    /// One per class, indexed by class.
    classes: Vec<ClassTurns>,
}

impl Turns {
    /// Dispensers for `classes` classes.
    pub(crate) fn new(classes: usize) -> Self {
        Self {
            classes: (0..classes).map(|_| ClassTurns::default()).collect(),
        }
    }

    /// The next ticket of `class`.
    pub(crate) fn admit(&self, class: ClassId) -> Ticket {
        let turns = &self.classes[class.index()];
        Ticket {
            class: class.index(),
            number: turns.next.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Waits until `ticket` is served; the returned turn passes to the next ticket when
    /// dropped.
    pub(crate) async fn turn(&self, ticket: Ticket) -> Turn<'_> {
        let turns = &self.classes[ticket.class];
        let mut serving = turns.serving.subscribe();
        let _ = serving.wait_for(|&now| now == ticket.number).await;
        Turn { turns }
    }
}

/// The right to launch now; dropping it serves the next ticket of the class.
pub(crate) struct Turn<'a> {
    /// The class whose ticket this is.
    turns: &'a ClassTurns,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.serving.send_modify(|now| *now += 1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn tickets_are_served_in_order_per_class() {
        const WAIT: Duration = Duration::from_millis(50);
        let turns = Turns::new(2);
        let first = turns.admit(ClassId(0));
        let second = turns.admit(ClassId(0));
        let other = turns.admit(ClassId(1));
        // Another class's first ticket is served at once.
        drop(turns.turn(other).await);
        // The second ticket waits for the first to be served and its turn dropped.
        let mut waiting = std::pin::pin!(turns.turn(second));
        assert!(tokio::time::timeout(WAIT, &mut waiting).await.is_err());
        let turn = turns.turn(first).await;
        assert!(tokio::time::timeout(WAIT, &mut waiting).await.is_err());
        drop(turn);
        assert!(tokio::time::timeout(WAIT, &mut waiting).await.is_ok());
    }
}
