//! User-space enforcement of the run order, for machines where `SCHED_FIFO` is not allowed.
//!
//! The [`RunQueue`] decides (pure); the gate carries the decisions out: a task waits in
//! [`Gate::enter`] until it is started, a preempted task's process group is stopped with
//! `SIGSTOP`, and continued with `SIGCONT` when it gets its core back. The result is the same
//! order as the kernel gives in real-time mode: at most `cores` functions run, dearest class
//! first, first come first served within a class. It is coarser (a signal, not a context
//! switch) and cannot preempt within a process, but needs no privileges.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::debug;

use tariff_policy::run_queue::{Decision, Decisions, RunQueue, TaskId};

#[derive(Default)]
struct TaskCtl {
    start: Option<oneshot::Sender<()>>,
    /// Process group to stop and continue, once the task's process exists.
    group: Option<i32>,
    /// When the task was last preempted, if it is now.
    stopped_since: Option<Instant>,
    preempted: Duration,
}

struct Inner {
    queue: RunQueue,
    tasks: HashMap<TaskId, TaskCtl>,
}

/// The user-space enforcer of one machine's run order.
pub struct Gate {
    inner: Mutex<Inner>,
}

fn signal_group(group: i32, signal: libc::c_int) {
    // SAFETY: kill() with a negative pid signals that process group; no memory is touched.
    // The group is a function's process group that the runner has not reaped yet (the caller
    // detaches before the process is reaped), so it cannot have been recycled.
    unsafe {
        libc::kill(-group, signal);
    }
}

impl Gate {
    /// A gate for a machine with `cores` cores and `classes` price classes.
    pub fn new(cores: usize, classes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: RunQueue::new(cores.max(1), classes.max(1)),
                tasks: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(inner: &mut Inner, decisions: Decisions) {
        for decision in decisions {
            match decision {
                Decision::Start(task) => {
                    if let Some(ctl) = inner.tasks.get_mut(&task) {
                        if let Some(start) = ctl.start.take() {
                            let _ = start.send(());
                        }
                    }
                }
                Decision::Preempt(task) => {
                    if let Some(ctl) = inner.tasks.get_mut(&task) {
                        ctl.stopped_since = Some(Instant::now());
                        if let Some(group) = ctl.group {
                            debug!(task, group, "preempting");
                            signal_group(group, libc::SIGSTOP);
                        }
                    }
                }
                Decision::Resume(task) => {
                    if let Some(ctl) = inner.tasks.get_mut(&task) {
                        if let Some(since) = ctl.stopped_since.take() {
                            ctl.preempted += since.elapsed();
                        }
                        if let Some(group) = ctl.group {
                            signal_group(group, libc::SIGCONT);
                        }
                    }
                }
            }
        }
    }

    /// Queues `task` of class `class` (0 = dearest) and waits until it may run.
    pub async fn enter(&self, task: TaskId, class: u8) {
        let _ = self.arrive(task, class).await;
    }

    /// Queues `task` of class `class` now; the receiver completes when it may run. Splitting
    /// this from the wait lets a caller fix the arrival order before it awaits.
    pub fn arrive(&self, task: TaskId, class: u8) -> oneshot::Receiver<()> {
        let (start, started) = oneshot::channel();
        {
            let mut inner = self.lock();
            inner.tasks.insert(
                task,
                TaskCtl {
                    start: Some(start),
                    ..TaskCtl::default()
                },
            );
            let decisions = inner.queue.arrive(task, class);
            Self::apply(&mut inner, decisions);
        }
        started
    }

    /// The task's process (group) now exists; if the task was preempted meanwhile, it is
    /// stopped at once.
    pub fn attach(&self, task: TaskId, group: i32) {
        let mut inner = self.lock();
        if let Some(ctl) = inner.tasks.get_mut(&task) {
            ctl.group = Some(group);
            if ctl.stopped_since.is_some() {
                signal_group(group, libc::SIGSTOP);
            }
        }
    }

    /// The task's process is about to be reaped or returned to a pool: forget it, continuing
    /// it first if it was stopped.
    pub fn detach(&self, task: TaskId) {
        let mut inner = self.lock();
        if let Some(ctl) = inner.tasks.get_mut(&task) {
            if let (Some(group), Some(_)) = (ctl.group.take(), ctl.stopped_since) {
                signal_group(group, libc::SIGCONT);
            }
        }
    }

    /// The task is over: frees its core for the next in order and returns how long it was
    /// held stopped.
    pub fn leave(&self, task: TaskId) -> Duration {
        let mut inner = self.lock();
        let decisions = inner.queue.finish(task);
        let preempted = inner.tasks.remove(&task).map_or(Duration::ZERO, |ctl| {
            ctl.preempted + ctl.stopped_since.map_or(Duration::ZERO, |s| s.elapsed())
        });
        Self::apply(&mut inner, decisions);
        preempted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn dearer_work_goes_first_and_order_holds_within_a_class() {
        let gate = Arc::new(Gate::new(1, 4));
        gate.enter(1, 3).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (task, class) in [(2, 3), (3, 3), (4, 0)] {
            let gate = gate.clone();
            let order = order.clone();
            waiters.push(tokio::spawn(async move {
                gate.enter(task, class).await;
                order.lock().unwrap().push(task);
                gate.leave(task);
            }));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Task 4 (class 0) preempted task 1 and ran at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(order.lock().unwrap().as_slice(), [4]);
        let stopped = gate.leave(1);
        assert!(stopped > Duration::ZERO, "task 1 was held while task 4 ran");
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(order.lock().unwrap().as_slice(), [4, 2, 3]);
    }
}
