//! The one owner of a shard's mutable state: the pure [`ShardCore`], the machine table and the
//! invocation table, changed only through the named operations of [`ShardState`].
//!
//! The session modules ([`crate::client`], [`crate::machines`]) and the placement pump
//! ([`crate::pump`]) call these operations and nothing else; they never see the tables. So the
//! rules that span the tables are kept here, once:
//!
//! **Every invocation gets exactly one answer.** An invocation is *live* while it has an entry
//! in the invocation table; the entry holds the caller's answer sender. The private
//! [`Book::answer`] is the only code that sends an answer, and it first removes the entry, so
//! a second answer finds nothing to send to. It also frees the invocation's slot in the core
//! if it was running on a machine that is still connected. Every way an invocation ends goes
//! through it: a completion ([`ShardState::complete`]), the caller giving up
//! ([`ShardState::abandon`]), its machine being lost ([`ShardState::lose_machine`]) or gone
//! before the placement could be sent, and shutdown ([`ShardState::fail_all_queued`]).
//!
//! **The core may hold answered invocations; they are never placed.** Answering a queued
//! invocation leaves its item in the core's queues (finding it there would cost a scan per
//! timeout). Such an item is a tombstone: the pump drops it when the core hands it out, and
//! [`ShardState::sweep`] clears the rest every so often.
//!
//! **Machines exist in the table and the core together.** A machine joins the core when all
//! its lanes are open and leaves both under the same lock, so a decision the core makes under
//! the lock always names a machine with a link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tariff_policy::placement::PolledLoad;
use tariff_policy::shard::{Overloaded, PlacePath, ShardConfig, ShardCore};
use tariff_policy::{FunctionKey, MachineIdx, Step, Taken};
use tariff_types::wire::{
    unix_micros, Completion, DispatcherHello, IdleEntry, InvocationId, InvocationOutcome,
    InvokeError, MachineLoad, MachineStatus, MemoryReport, Placement, ShardStatus,
    ShardToDispatcher,
};
use tariff_types::{ClassId, FunctionSpec, PriceClasses, Stage, StageLimits};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use crate::machine_table::MachineTable;
use crate::throughput::RecentRate;

/// The answer to one invocation.
pub(crate) type Answer = Result<InvocationOutcome, InvokeError>;

/// An invocation a client hands in to be queued (already checked: class, size, function).
pub(crate) struct Submission {
    /// Its id, from [`ShardState::next_id`].
    pub(crate) id: InvocationId,
    /// Its class.
    pub(crate) class: ClassId,
    /// The tenant paying.
    pub(crate) tenant: String,
    /// What to run.
    pub(crate) function: Arc<FunctionSpec>,
    /// stdin bytes.
    pub(crate) payload: Vec<u8>,
    /// The caller's timeout.
    pub(crate) timeout: Duration,
    /// When the caller stops waiting.
    pub(crate) deadline: Instant,
    /// Environment for the function (its invocation context).
    pub(crate) env: Vec<(String, String)>,
    /// The running invocation whose function made this call, if one did: the call is sent
    /// straight to that machine rather than queued behind the slot its caller holds.
    pub(crate) nested_in: Option<InvocationId>,
    /// Its stage limits (its own over its function's).
    pub(crate) limits: StageLimits,
    /// The store key of its idempotency key, if it has one.
    pub(crate) idempotency_key: Option<String>,
}

/// A stage the shard enforces, and when it runs out (see [`ShardState::stage_deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StageDeadline {
    /// The stage.
    pub(crate) stage: Stage,
    /// Which placement attempt it belongs to: a retry starts the stages over.
    attempt: u32,
    /// When its limit passes.
    pub(crate) at: Instant,
}

/// Why a class lane was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneRefused {
    /// No machine of that name has registered.
    Unregistered,
    /// The lane came on another connection than the machine's control stream, or names a
    /// class the shard does not have.
    BadLane,
}

/// What one call of [`ShardState::place_next`] did.
pub(crate) enum Placing {
    /// Nothing can be placed now; wait for news.
    Idle,
    /// One invocation was sent to a machine, or dropped because it was already answered.
    Progress,
    /// The core wants machines polled first: await the loads outside the lock, then hand
    /// them to [`ShardState::polled`].
    Poll(Poll),
}

/// A poll in progress: the invocation it is for, and the machines' answers to await.
pub(crate) struct Poll {
    /// The invocation, out of its queue while the poll lasts (boxed: it is large, and a
    /// poll is rare next to the other steps).
    taken: Box<Taken<Queued>>,
    /// One receiver per machine the poll reached.
    waiting: Vec<(MachineIdx, oneshot::Receiver<MachineLoad>)>,
}

impl Poll {
    /// The answers to await; the rest of the poll goes back to [`ShardState::polled`].
    pub(crate) fn take_waiting(&mut self) -> Vec<(MachineIdx, oneshot::Receiver<MachineLoad>)> {
        std::mem::take(&mut self.waiting)
    }
}

/// A queued invocation as the core holds it: what placing it needs. Its answer sender is in
/// the invocation table, not here, so nothing that holds a `Queued` can answer it.
#[derive(Clone)]
struct Queued {
    id: InvocationId,
    tenant: String,
    function: Arc<FunctionSpec>,
    payload: Vec<u8>,
    deadline: Instant,
    env: Vec<(String, String)>,
    limits: StageLimits,
    idempotency_key: Option<String>,
}

/// A live invocation's entry in the invocation table.
struct Invocation {
    /// The caller's answer; sent only by [`Book::answer`].
    answer: oneshot::Sender<Answer>,
    /// The caller's timeout, reported if the machine gives up on time first.
    timeout: Duration,
    /// When it was queued, µs since the epoch.
    queued_at_us: u64,
    /// Where it runs, once sent to a machine.
    running: Option<Running>,
    /// Its stage limits; the shard keeps `queue` and `placement`.
    limits: StageLimits,
    /// When its current attempt entered the queue.
    queued_at: Instant,
    /// When the core took its current attempt from the queue to place it; cleared when a
    /// poll finds no room and it goes back (its queue time counts on from `queued_at`).
    taken_at: Option<Instant>,
    /// Placements so far (the answer's `attempts`).
    attempts: u32,
    /// What it takes to place it again if its machine is lost: kept only for functions
    /// deployed with retries, and only while some are left.
    retry: Option<Retry>,
}

/// A copy of a queued invocation kept to place it again.
struct Retry {
    item: Queued,
    class: ClassId,
    /// Placements still allowed after the current one.
    left: u32,
}

/// Where a placed invocation runs.
struct Running {
    machine: MachineIdx,
    /// Its class, for the per-machine counts of `tariff status`.
    class: ClassId,
    machine_name: Arc<str>,
    /// When it was sent, µs since the epoch.
    placed_at_us: u64,
}

/// How many invocations were sent to a machine by each path, for the shard's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PlacementCounts {
    /// A listed machine with an idle warm instance of the function.
    pub(crate) warm: u64,
    /// The idle list's best machine.
    pub(crate) idle_list: u64,
    /// The least loaded of k polled machines.
    pub(crate) power_of_k: u64,
    /// Straight to the machine of the function that made the call (call chains).
    pub(crate) nested: u64,
}

/// Everything mutable about a shard, behind [`ShardState`]'s one lock.
struct Book {
    /// Placements so far, by path.
    placements: PlacementCounts,
    /// Invocations answered, in total and over the last seconds.
    answered: RecentRate,
    /// Queues, idle list and placement decisions.
    core: ShardCore<Queued>,
    /// Connected machines.
    machines: MachineTable,
    /// Live invocations, queued or running.
    invocations: HashMap<InvocationId, Invocation>,
    /// Asked again just before an invocation is sent: its tenant's budget may have run out
    /// while it was queued.
    admission: Option<Arc<dyn Admission>>,
    /// Invocations placed again after their machine was lost.
    retried: u64,
    /// Invocations answered while still in a queue since the last sweep: their entries stay
    /// there as tombstones until taken or swept. A hint, not an exact count (an entry taken
    /// from its queue is not subtracted): the sweep scans the queues only when it is non-zero.
    tombstones: usize,
}

/// A last check before an invocation leaves the queue for a machine.
pub(crate) trait Admission: Send + Sync {
    /// Why `tenant`'s invocation may not run now, if it may not. Called under the state's
    /// lock: it must not block, and may take only locks that take no other.
    fn refuse(&self, tenant: &str) -> Option<InvokeError>;
}

/// The owner of a shard's state; shared by every task of the shard behind an `Arc`.
pub(crate) struct ShardState {
    /// The one lock of the shard's state. Lock order: this lock, then the spend book's (the
    /// [`Admission`] check takes it, and it takes no other lock), never the other way. It is a
    /// `std` mutex, held only for the short, non-blocking body of one operation and never
    /// across an `.await` (its guard is not `Send`, so a spawned task that tried would not
    /// compile). Sends under it go to unbounded channels and oneshots, which never block. The
    /// function registry has its own concurrent map; no operation here touches it, so the two
    /// are never held together.
    book: Mutex<Book>,
    /// Wakes the placement pump when something may allow a placement.
    wake: Notify,
    /// Zero of the core's clock.
    started: Instant,
    /// This shard's id; the high bits of every invocation id.
    shard_id: u16,
    /// The cluster's price classes.
    classes: PriceClasses,
    /// Low bits of the next invocation id.
    next_invocation: AtomicU64,
}

impl ShardState {
    /// A shard with no machines and nothing queued.
    pub(crate) fn new(shard_id: u16, classes: PriceClasses, policy: ShardConfig) -> Self {
        let core = ShardCore::new(classes.prices(), policy, u64::from(shard_id));
        Self {
            book: Mutex::new(Book {
                placements: PlacementCounts::default(),
                answered: RecentRate::new(Instant::now()),
                core,
                machines: MachineTable::default(),
                invocations: HashMap::new(),
                admission: None,
                retried: 0,
                tombstones: 0,
            }),
            wake: Notify::new(),
            started: Instant::now(),
            shard_id,
            classes,
            next_invocation: AtomicU64::new(1),
        }
    }

    /// Installs the check made just before each invocation is sent (the budgets).
    pub(crate) fn set_admission(&self, admission: Arc<dyn Admission>) {
        self.book().admission = Some(admission);
    }

    /// The book, locked; see the lock rule on the `book` field.
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The core's notion of now.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A fresh invocation id.
    pub(crate) fn next_id(&self) -> InvocationId {
        let n = self.next_invocation.fetch_add(1, Ordering::Relaxed);
        InvocationId((u64::from(self.shard_id) << 48) | (n & 0xffff_ffff_ffff))
    }

    /// Waits until something may allow a placement (the pump's sleep).
    pub(crate) async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Queues an invocation; the receiver yields its one answer. Refused when the queues are
    /// full, and then nothing is kept.
    pub(crate) fn submit(
        &self,
        submission: Submission,
    ) -> Result<oneshot::Receiver<Answer>, Overloaded> {
        let Submission {
            id,
            class,
            tenant,
            function,
            payload,
            timeout,
            deadline,
            env,
            nested_in,
            limits,
            idempotency_key,
        } = submission;
        let key = FunctionKey::of(&function.name);
        let retries = function.retries;
        let queued = Queued {
            id,
            tenant,
            function,
            payload,
            deadline,
            env,
            limits,
            idempotency_key,
        };
        let retry = (retries > 0).then(|| Retry {
            item: queued.clone(),
            class,
            left: retries,
        });
        let now = self.now();
        let (answer, receiver) = oneshot::channel();
        {
            let mut book = self.book();
            let invocation = Invocation {
                answer,
                timeout,
                queued_at_us: unix_micros(),
                running: None,
                limits,
                queued_at: Instant::now(),
                taken_at: None,
                attempts: 0,
                retry,
            };
            let parent_machine = nested_in
                .and_then(|parent| book.invocations.get(&parent)?.running.as_ref())
                .map(|running| running.machine)
                .filter(|&machine| book.machines.get(machine).is_some());
            match parent_machine {
                Some(machine) => {
                    book.invocations.insert(id, invocation);
                    book.core.placed_nested(machine);
                    book.placements.nested += 1;
                    let taken = Taken {
                        item: queued,
                        function: key,
                        class,
                        enqueued: now,
                    };
                    book.send(taken, machine);
                    return Ok(receiver);
                }
                None => {
                    book.core
                        .submit(class, key, queued, now)
                        .map_err(|(_, overloaded)| overloaded)?;
                    book.invocations.insert(id, invocation);
                }
            }
        }
        self.wake.notify_one();
        Ok(receiver)
    }

    /// The caller stopped waiting: answers it with `error` (unless it was answered already)
    /// and, if it is running, tells its machine to stop it.
    pub(crate) fn abandon(&self, id: InvocationId, error: InvokeError) {
        let was_running = self.book().abandon(id, error);
        if was_running {
            self.wake.notify_one();
        }
    }

    /// The next limit the shard keeps for `id` to pass: its queue limit until it is sent to a
    /// machine, its placement limit while a poll for it is out; `None` once it is on a
    /// machine (the dispatcher keeps the rest), answered, or without such limits.
    pub(crate) fn stage_deadline(&self, id: InvocationId) -> Option<StageDeadline> {
        self.book().invocations.get(&id)?.stage_deadline()
    }

    /// `deadline` passed: answers `id` with the stage's timeout if it is still in that stage
    /// of that attempt (it may have moved on since the caller looked).
    pub(crate) fn stage_expired(&self, id: InvocationId, deadline: StageDeadline) {
        let mut book = self.book();
        let current = book
            .invocations
            .get(&id)
            .is_some_and(|i| i.stage_deadlines().any(|d| d == deadline));
        if current {
            let limits = book.invocations[&id].limits;
            let limit_ms = limits
                .get(deadline.stage)
                .map_or(0, |d| d.as_millis() as u64);
            book.answer(id, |_| {
                Err(InvokeError::StageTimedOut {
                    stage: deadline.stage,
                    limit_ms,
                })
            });
        }
    }

    /// A machine's heartbeat: it is alive.
    pub(crate) fn heard(&self, machine: MachineIdx) {
        if let Some(link) = self.book().machines.get_mut(machine) {
            link.heard(None);
        }
    }

    /// A machine's heartbeat said how its memory stands.
    pub(crate) fn memory_reported(&self, machine: MachineIdx, report: MemoryReport) {
        if let Some(link) = self.book().machines.get_mut(machine) {
            link.heard(Some(report.free_bytes));
            link.set_memory(report);
        }
    }

    /// Invocations placed again after their machine was lost, since the shard started.
    pub(crate) fn retried(&self) -> u64 {
        self.book().retried
    }

    /// Takes the core's next decision and carries it out as far as it can without waiting:
    /// sends a placement, drops an answered invocation, or starts a poll.
    pub(crate) fn place_next(&self) -> Placing {
        let now = self.now();
        self.book().place_next(now)
    }

    /// Hands in a poll's answers (machines that did not answer are absent) and sends the
    /// invocation to the machine chosen, if any; otherwise the core has requeued it.
    pub(crate) fn polled(&self, poll: Poll, answers: &[(MachineIdx, MachineLoad)]) {
        self.book().polled(*poll.taken, answers);
    }

    /// True when some class is waiting for capacity.
    pub(crate) fn is_blocked(&self) -> bool {
        self.book().core.is_blocked()
    }

    /// Lifts the core's block: capacity may have freed up on another shard's machines.
    pub(crate) fn unblock(&self) {
        self.book().core.unblock();
    }

    /// A dispatcher sent its hello on connection `connection_id`; `control` reaches its
    /// control stream. A machine already registered under the name is lost first.
    pub(crate) fn register(
        &self,
        hello: &DispatcherHello,
        connection_id: usize,
        control: mpsc::UnboundedSender<ShardToDispatcher>,
    ) -> MachineIdx {
        let name: Arc<str> = hello.machine.as_str().into();
        let mut book = self.book();
        if let Some(old) = book.machines.lookup(&name) {
            warn!(machine = %name, "machine registered again; dropping its old session");
            let now = self.now();
            if let Some((_, count)) = book.lose_machine(old, now) {
                warn!(machine = %name, lost = count, "machine lost");
            }
            self.wake.notify_one();
        }
        book.machines
            .insert(name, hello, self.classes.len(), connection_id, control)
    }

    /// A dispatcher opened its lane for `class`. Once every lane is open the machine joins
    /// the core and can take placements.
    pub(crate) fn open_lane(
        &self,
        name: &str,
        connection_id: usize,
        class: ClassId,
        lane: mpsc::UnboundedSender<Placement>,
    ) -> Result<MachineIdx, LaneRefused> {
        let mut book = self.book();
        let machine = book
            .machines
            .lookup(name)
            .ok_or(LaneRefused::Unregistered)?;
        let link = book
            .machines
            .get_mut(machine)
            .expect("lookup and get agree");
        if !link.open_lane(connection_id, class, lane) {
            return Err(LaneRefused::BadLane);
        }
        if link.all_lanes_open() {
            let slots = link.slots();
            book.core.add_machine(machine, slots);
            drop(book);
            self.wake.notify_one();
            debug!(machine = %name, "all lanes open; machine placeable");
        }
        Ok(machine)
    }

    /// A machine joined, updated or left this shard's idle list.
    pub(crate) fn idle_update(&self, machine: MachineIdx, entry: IdleEntry) {
        let mut book = self.book();
        if let Some(link) = book.machines.get_mut(machine) {
            link.heard(Some(entry.free_memory_bytes));
        }
        book.core.idle_update(machine, entry);
        drop(book);
        self.wake.notify_one();
    }

    /// A machine reported which functions have an idle warm instance on it.
    pub(crate) fn warm_update(&self, machine: MachineIdx, functions: &[String]) {
        let keys = functions.iter().map(|f| FunctionKey::of(f)).collect();
        let mut book = self.book();
        if let Some(link) = book.machines.get_mut(machine) {
            link.heard(None);
            link.set_warm(functions.len());
        }
        book.core.warm_update(machine, keys);
    }

    /// Length of the idle list, for a dispatcher choosing a shard.
    pub(crate) fn idle_list_len(&self) -> usize {
        self.book().core.idle_list_len()
    }

    /// A machine answered poll `seq`.
    pub(crate) fn load_reported(&self, machine: MachineIdx, seq: u64, load: MachineLoad) {
        if let Some(link) = self.book().machines.get_mut(machine) {
            link.heard(Some(load.free_memory_bytes));
            link.load_reported(seq, load);
        }
    }

    /// A machine reported an invocation's end: answers its caller, unless answered already.
    /// Ignored unless `machine` is where the invocation runs now: a completion from a machine
    /// it was taken from (lost, and the invocation placed again) is stale.
    ///
    /// A run the machine killed to free memory is placed again, like a lost machine's, when
    /// its function has retries left.
    pub(crate) fn complete(&self, machine: MachineIdx, completion: Completion) {
        let now = self.now();
        if self.book().complete(machine, completion, now) {
            self.wake.notify_one();
        }
    }

    /// Forgets a machine and answers everything it was running with a machine-lost error,
    /// except what may be placed again (its function has retries left), which is queued
    /// again at the front of its class's fairness. Losing a machine twice (its control stream and a lane both end) is harmless.
    pub(crate) fn lose_machine(&self, machine: MachineIdx) {
        let now = self.now();
        let lost = self.book().lose_machine(machine, now);
        if let Some((name, count)) = lost {
            // A machine that goes while running nothing (a dispatcher stopping cleanly, or
            // this shard shutting down) has cost nobody anything: not worth a warning.
            if count == 0 {
                info!(machine = %name, "machine left");
            } else {
                warn!(machine = %name, lost = count, "machine lost");
            }
            self.wake.notify_one();
        }
    }

    /// Drops queued invocations that were answered already (tombstones); returns how many.
    /// Scans the queues only when something was answered while queued since the last sweep,
    /// so a long healthy backlog costs nothing here (a scan is O(queued) under the lock).
    pub(crate) fn sweep(&self) -> usize {
        let mut book = self.book();
        if book.tombstones == 0 {
            return 0;
        }
        book.sweep()
    }

    /// Like [`ShardState::sweep`], and also drops queued invocations whose caller went away
    /// without being answered (its task dropped): that leaves no mark, so only a full scan of
    /// the queues finds them. Run less often than the cheap sweep.
    pub(crate) fn sweep_all(&self) -> usize {
        self.book().sweep()
    }

    /// At shutdown: answers every invocation not yet sent to a machine (queued, or out of
    /// its queue for a poll) with a shutting-down error rather than dropping it silently.
    pub(crate) fn fail_all_queued(&self) {
        self.book().fail_all_queued();
    }

    /// Placements so far, by path.
    pub(crate) fn placements(&self) -> PlacementCounts {
        self.book().placements
    }

    /// What the shard is doing, for a status request.
    pub(crate) fn status(&self) -> ShardStatus {
        let book = self.book();
        ShardStatus {
            shard_id: self.shard_id,
            classes: self.classes.names().map(str::to_owned).collect(),
            queued: book
                .core
                .queued_per_class()
                .into_iter()
                .map(|n| n as u64)
                .collect(),
            machines: book.machines.names(),
            idle_list: book
                .core
                .idle_machines()
                .filter_map(|m| book.machines.get(m).map(|l| l.name().to_string()))
                .collect(),
            in_flight: book
                .invocations
                .values()
                .filter(|i| i.running.is_some())
                .count() as u64,
            machine_status: {
                let listed: Vec<MachineIdx> = book.core.idle_machines().collect();
                let mut running: HashMap<MachineIdx, Vec<u32>> = HashMap::new();
                for r in book.invocations.values().filter_map(|i| i.running.as_ref()) {
                    let counts = running
                        .entry(r.machine)
                        .or_insert_with(|| vec![0; self.classes.len()]);
                    if let Some(count) = counts.get_mut(r.class.index()) {
                        *count += 1;
                    }
                }
                let mut machines: Vec<MachineStatus> = book
                    .machines
                    .iter()
                    .map(|(idx, link)| {
                        let counts = running
                            .remove(&idx)
                            .unwrap_or_else(|| vec![0; self.classes.len()]);
                        link.status(counts, listed.contains(&idx))
                    })
                    .collect();
                machines.sort_by(|a, b| a.name.cmp(&b.name));
                machines
            },
            answered: book.answered.total(),
            answered_per_s: book.answered.per_second(Instant::now()),
        }
    }
}

impl Book {
    /// The only code that answers an invocation: removes it from the invocation table, frees
    /// its slot in the core if it was running on a machine still connected (a lost machine
    /// has left the core already), and sends `result(entry)` to its caller. Returns false,
    /// sending nothing, if the invocation was answered already.
    fn answer(&mut self, id: InvocationId, result: impl FnOnce(&Invocation) -> Answer) -> bool {
        let Some(invocation) = self.invocations.remove(&id) else {
            return false;
        };
        if let Some(running) = &invocation.running {
            if self.machines.get(running.machine).is_some() {
                self.core.completed(running.machine);
            }
        }
        if invocation.running.is_none() && invocation.taken_at.is_none() {
            self.tombstones += 1;
        }
        let result = result(&invocation);
        self.answered.record(Instant::now());
        // The caller may be gone (its task was dropped); there is no one else to tell.
        let _ = invocation.answer.send(result);
        true
    }

    /// True while `id` has not been answered and its caller still waits.
    fn is_live(&self, id: InvocationId) -> bool {
        is_live(&self.invocations, id)
    }

    /// Clears an invocation whose caller is gone or was answered, so it is never placed.
    fn forget(&mut self, id: InvocationId) {
        self.answer(id, |invocation| {
            Err(InvokeError::TimedOut(invocation.timeout.as_millis() as u64))
        });
    }

    /// See [`ShardState::abandon`]; returns whether the invocation was running.
    fn abandon(&mut self, id: InvocationId, error: InvokeError) -> bool {
        let Some(invocation) = self.invocations.get(&id) else {
            return false;
        };
        let running = invocation.running.as_ref().map(|r| r.machine);
        if let Some(link) = running.and_then(|m| self.machines.get(m)) {
            link.cancel(id);
        }
        self.answer(id, |_| Err(error));
        running.is_some()
    }

    /// See [`ShardState::place_next`].
    fn place_next(&mut self, now: Duration) -> Placing {
        let step = self.core.next(now);
        if let Some(Step::Place(taken, ..) | Step::Poll(taken, _)) = &step {
            if let Some(invocation) = self.invocations.get_mut(&taken.item.id) {
                invocation.taken_at = Some(Instant::now());
            }
        }
        match step {
            None => Placing::Idle,
            Some(Step::Place(taken, machine, path)) => {
                if self.is_live(taken.item.id) {
                    match path {
                        PlacePath::Warm => self.placements.warm += 1,
                        PlacePath::IdleList => self.placements.idle_list += 1,
                    }
                    self.send(taken, machine);
                } else {
                    // The core counted it against the machine already.
                    self.core.completed(machine);
                    self.forget(taken.item.id);
                }
                Placing::Progress
            }
            Some(Step::Poll(taken, candidates)) => {
                if !self.is_live(taken.item.id) {
                    self.forget(taken.item.id);
                    return Placing::Progress;
                }
                let waiting = candidates
                    .into_iter()
                    .filter_map(|m| {
                        let link = self.machines.get_mut(m)?;
                        link.start_poll().map(|rx| (m, rx))
                    })
                    .collect();
                Placing::Poll(Poll {
                    taken: Box::new(taken),
                    waiting,
                })
            }
        }
    }

    /// See [`ShardState::polled`].
    fn polled(&mut self, taken: Taken<Queued>, answers: &[(MachineIdx, MachineLoad)]) {
        if !self.is_live(taken.item.id) {
            // Answered while the poll lasted: placing it would only waste a machine's time.
            self.forget(taken.item.id);
            return;
        }
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
        let id = taken.item.id;
        match self.core.polled(taken, &loads) {
            Ok((taken, machine)) => {
                self.placements.power_of_k += 1;
                self.send(taken, machine);
            }
            Err(_requeued) => {
                // No machine had room: it is back in the queue, and its queue limit counts on.
                if let Some(invocation) = self.invocations.get_mut(&id) {
                    invocation.taken_at = None;
                }
            }
        }
    }

    /// Sends a live invocation on its machine's lane for its class and marks it running.
    fn send(&mut self, taken: Taken<Queued>, machine: MachineIdx) {
        let Taken { item, class, .. } = taken;
        let id = item.id;
        let Some(link) = self.machines.get(machine) else {
            // The machine was lost while a poll for it was out.
            self.core.completed(machine);
            self.answer(id, |_| {
                Err(InvokeError::MachineLost(format!("{machine:?}")))
            });
            return;
        };
        if let Some(refused) = self.admission.as_ref().and_then(|a| a.refuse(&item.tenant)) {
            self.core.completed(machine);
            self.answer(id, |_| Err(refused));
            return;
        }
        let remaining = item.deadline.saturating_duration_since(Instant::now());
        let placement = Placement {
            id,
            class,
            tenant: item.tenant,
            function: (*item.function).clone(),
            payload: item.payload,
            timeout_ms: remaining.as_millis() as u64,
            limits: item.limits,
            idempotency_key: item.idempotency_key,
            env: item.env,
        };
        let name = link.name().clone();
        let sent = link.place(placement);
        if let Some(invocation) = self.invocations.get_mut(&id) {
            invocation.attempts += 1;
            invocation.running = Some(Running {
                machine,
                class,
                machine_name: name.clone(),
                placed_at_us: unix_micros(),
            });
        }
        if sent {
            debug!(invocation = %id, ?machine, "placed");
        } else {
            self.answer(id, |_| Err(InvokeError::MachineLost(name.to_string())));
        }
    }

    /// See [`ShardState::complete`]; returns whether a caller was answered.
    fn complete(&mut self, machine: MachineIdx, completion: Completion, now: Duration) -> bool {
        let placed = self
            .invocations
            .get(&completion.id)
            .is_some_and(|i| i.running.as_ref().is_some_and(|r| r.machine == machine));
        if !placed {
            // Answered already (its caller timed out), or never sent: nothing to tell.
            return false;
        }
        let Completion { id, result } = completion;
        if matches!(result, Err(InvokeError::KilledUnderMemoryPressure))
            && self.place_again(id, now)
        {
            // Queued again; the machine that killed it has its slot back.
            self.core.completed(machine);
            return true;
        }
        self.answer(id, |invocation| {
            let (machine, placed_at_us) = invocation
                .running
                .as_ref()
                .map(|r| (r.machine_name.to_string(), r.placed_at_us))
                .unwrap_or_default();
            let result = result.map_err(|error| match error {
                // The machine's deadline is derived from the caller's: report the caller's.
                InvokeError::TimedOut(_) => {
                    InvokeError::TimedOut(invocation.timeout.as_millis() as u64)
                }
                other => other,
            });
            result.map(|run| InvocationOutcome {
                id,
                machine,
                queued_at_us: invocation.queued_at_us,
                placed_at_us,
                run,
                // Priced by the request's handler, which knows the tenant and the prices.
                cost: Default::default(),
                // Filled in by the request's handler, which knows the chain.
                chain: Default::default(),
                attempts: invocation.attempts,
                replayed: false,
            })
        })
    }

    /// See [`ShardState::lose_machine`]; returns the machine's name and how many invocations
    /// it was running, or `None` if it was lost already.
    fn lose_machine(&mut self, machine: MachineIdx, now: Duration) -> Option<(Arc<str>, usize)> {
        let link = self.machines.remove(machine)?;
        self.core.remove_machine(machine);
        let lost: Vec<InvocationId> = self
            .invocations
            .iter()
            .filter(|(_, i)| i.running.as_ref().is_some_and(|r| r.machine == machine))
            .map(|(id, _)| *id)
            .collect();
        for &id in &lost {
            if !self.place_again(id, now) {
                self.answer(id, |_| {
                    Err(InvokeError::MachineLost(link.name().to_string()))
                });
            }
        }
        Some((link.name().clone(), lost.len()))
    }

    /// Queues `id` again if its function allows another placement and its caller still
    /// waits; returns whether it did. Its machine has left the core, so no slot is freed.
    fn place_again(&mut self, id: InvocationId, now: Duration) -> bool {
        let live = self.is_live(id);
        let Some(invocation) = self.invocations.get_mut(&id) else {
            return false;
        };
        let Some(retry) = invocation.retry.as_mut().filter(|r| r.left > 0 && live) else {
            return false;
        };
        retry.left -= 1;
        let item = retry.item.clone();
        let class = retry.class;
        if retry.left == 0 {
            invocation.retry = None;
        }
        let key = FunctionKey::of(&item.function.name);
        if self.core.submit(class, key, item, now).is_err() {
            // The queues are full: the machine's loss is the answer.
            return false;
        }
        let invocation = self.invocations.get_mut(&id).expect("checked above");
        invocation.running = None;
        invocation.queued_at = Instant::now();
        invocation.taken_at = None;
        self.retried += 1;
        debug!(invocation = %id, "machine lost; placing it again");
        true
    }

    /// See [`ShardState::sweep`].
    fn sweep(&mut self) -> usize {
        self.tombstones = 0;
        let invocations = &self.invocations;
        let dropped = self.core.expire(|queued| !is_live(invocations, queued.id));
        for queued in &dropped {
            self.forget(queued.id);
        }
        if !dropped.is_empty() {
            debug!(
                dropped = dropped.len(),
                "swept abandoned invocations from the queues"
            );
        }
        dropped.len()
    }

    /// See [`ShardState::fail_all_queued`].
    fn fail_all_queued(&mut self) {
        self.core.drain();
        let waiting: Vec<InvocationId> = self
            .invocations
            .iter()
            .filter(|(_, i)| i.running.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.answer(id, |_| Err(InvokeError::ShuttingDown));
        }
    }
}

impl Invocation {
    /// The limits the shard keeps for it now: the queue limit until it is sent to a machine
    /// (it counts on while a poll is out), and the placement limit while a poll is out.
    fn stage_deadlines(&self) -> impl Iterator<Item = StageDeadline> + '_ {
        let unsent = self.running.is_none();
        let queue = unsent.then_some((Stage::Queue, self.queued_at));
        let placement = self
            .taken_at
            .filter(|_| unsent)
            .map(|taken| (Stage::Placement, taken));
        queue
            .into_iter()
            .chain(placement)
            .filter_map(|(stage, since)| {
                Some(StageDeadline {
                    stage,
                    attempt: self.attempts,
                    at: since + self.limits.get(stage)?,
                })
            })
    }

    /// See [`ShardState::stage_deadline`]: the earliest of [`Invocation::stage_deadlines`].
    fn stage_deadline(&self) -> Option<StageDeadline> {
        self.stage_deadlines().min_by_key(|deadline| deadline.at)
    }
}

/// True while `id` is in the table and its caller still waits.
fn is_live(invocations: &HashMap<InvocationId, Invocation>, id: InvocationId) -> bool {
    invocations
        .get(&id)
        .is_some_and(|invocation| !invocation.answer.is_closed())
}

#[cfg(test)]
mod tests {
    //! The operations driven directly, without a network: channels stand in for the streams.
    use super::*;
    use tariff_types::wire::RunReport;
    use tokio::sync::oneshot::error::TryRecvError;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A machine as the shard sees it: the far ends of its control stream and lanes.
    struct FakeMachine {
        idx: MachineIdx,
        control: mpsc::UnboundedReceiver<ShardToDispatcher>,
        lanes: Vec<mpsc::UnboundedReceiver<Placement>>,
    }

    impl FakeMachine {
        /// Every placement sent to it so far, on any lane.
        fn placements(&mut self) -> Vec<Placement> {
            let mut out = Vec::new();
            for lane in &mut self.lanes {
                while let Ok(p) = lane.try_recv() {
                    out.push(p);
                }
            }
            out
        }

        /// Every control frame sent to it so far.
        fn control_frames(&mut self) -> Vec<ShardToDispatcher> {
            let mut out = Vec::new();
            while let Ok(frame) = self.control.try_recv() {
                out.push(frame);
            }
            out
        }
    }

    fn state_with(config: ShardConfig) -> ShardState {
        ShardState::new(7, PriceClasses::default(), config)
    }

    fn state() -> ShardState {
        state_with(ShardConfig::default())
    }

    /// Registers `name`, opens all its lanes and, if `listed`, puts it on the idle list with
    /// `slots` free slots, so placements need no poll.
    fn connect(
        state: &ShardState,
        name: &str,
        connection: usize,
        slots: u32,
        listed: bool,
    ) -> FakeMachine {
        let (control_tx, control) = mpsc::unbounded_channel();
        let hello = DispatcherHello {
            machine: name.to_owned(),
            cores: 4,
            memory_bytes: 1 << 30,
            slots,
        };
        let idx = state.register(&hello, connection, control_tx);
        let mut lanes = Vec::new();
        for class in PriceClasses::default().ids() {
            let (tx, rx) = mpsc::unbounded_channel();
            assert_eq!(state.open_lane(name, connection, class, tx), Ok(idx));
            lanes.push(rx);
        }
        if listed {
            state.idle_update(
                idx,
                IdleEntry {
                    listed: true,
                    free_memory_bytes: 1 << 30,
                    queue_length: 0,
                },
            );
        }
        FakeMachine {
            idx,
            control,
            lanes,
        }
    }

    fn spec(name: &str) -> Arc<FunctionSpec> {
        Arc::new(FunctionSpec {
            name: name.to_owned(),
            command: vec!["cat".to_owned()],
            env: Vec::new(),
            version: 1,
            runtime: Default::default(),
            owner: "tenant".into(),
            ..Default::default()
        })
    }

    fn submit(state: &ShardState) -> (InvocationId, oneshot::Receiver<Answer>) {
        submit_spec(state, spec("echo"), StageLimits::default())
    }

    fn submit_spec(
        state: &ShardState,
        function: Arc<FunctionSpec>,
        limits: StageLimits,
    ) -> (InvocationId, oneshot::Receiver<Answer>) {
        let id = state.next_id();
        let rx = state
            .submit(Submission {
                id,
                class: ClassId(0),
                tenant: "tenant".to_owned(),
                function,
                payload: b"hello".to_vec(),
                timeout: TIMEOUT,
                deadline: Instant::now() + TIMEOUT,
                env: Vec::new(),
                nested_in: None,
                limits,
                idempotency_key: None,
            })
            .expect("queues have room");
        (id, rx)
    }

    fn retrying(name: &str, retries: u32) -> Arc<FunctionSpec> {
        let mut spec = (*spec(name)).clone();
        spec.retries = retries;
        Arc::new(spec)
    }

    fn report() -> RunReport {
        RunReport {
            output: b"out".to_vec(),
            started_at_us: 10,
            finished_at_us: 20,
            peak_memory_bytes: 1,
            cpu_time_us: 2,
            memory_byte_ms: 4,
            cold_start: true,
            start_us: 3,
            preempted_us: 0,
            memory: Default::default(),
        }
    }

    /// A poll answer from a machine with every slot free.
    fn free_load() -> MachineLoad {
        MachineLoad {
            per_class: vec![0; PriceClasses::default().len()],
            slots: 4,
            free_memory_bytes: 1 << 30,
            warm: Vec::new(),
        }
    }

    fn expect_placed(state: &ShardState) {
        match state.place_next() {
            Placing::Progress => {}
            Placing::Idle => panic!("nothing was placed"),
            Placing::Poll(_) => panic!("a poll was asked for"),
        }
    }

    fn expect_idle(state: &ShardState) {
        assert!(matches!(state.place_next(), Placing::Idle));
    }

    /// The error `rx` was answered with; panics on no answer or a success.
    fn error_of(rx: &mut oneshot::Receiver<Answer>) -> InvokeError {
        match rx.try_recv() {
            Ok(Err(error)) => error,
            other => panic!("expected an error answer, got {other:?}"),
        }
    }

    /// True if `rx` has no answer yet and still can get one.
    fn unanswered(rx: &mut oneshot::Receiver<Answer>) -> bool {
        matches!(rx.try_recv(), Err(TryRecvError::Empty))
    }

    fn live(state: &ShardState) -> usize {
        state.book().invocations.len()
    }

    #[test]
    fn lost_machine_answers_its_invocation_once_with_machine_lost() {
        let state = state();
        let mut m = connect(&state, "m1", 1, 4, true);
        let (id, mut rx) = submit(&state);
        expect_placed(&state);
        assert_eq!(m.placements()[0].id, id);
        assert_eq!(state.status().in_flight, 1);

        state.lose_machine(m.idx);
        assert_eq!(error_of(&mut rx), InvokeError::MachineLost("m1".to_owned()));
        assert_eq!(live(&state), 0);
        // A late completion and a second loss find nothing to answer.
        let late = Completion {
            id,
            result: Ok(report()),
        };
        assert!(!state.book().complete(m.idx, late, Duration::ZERO));
        assert!(state.book().lose_machine(m.idx, Duration::ZERO).is_none());
        let status = state.status();
        assert_eq!(status.in_flight, 0);
        assert!(status.machines.is_empty());
    }

    #[test]
    fn a_retryable_invocation_of_a_lost_machine_is_placed_again_and_answered_once() {
        let state = state();
        let mut m1 = connect(&state, "m1", 1, 4, true);
        let (id, mut rx) = submit_spec(&state, retrying("safe", 1), StageLimits::default());
        expect_placed(&state);
        assert_eq!(m1.placements()[0].id, id);

        let mut m2 = connect(&state, "m2", 2, 4, true);
        state.lose_machine(m1.idx);
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "not answered"
        );
        assert_eq!(state.retried(), 1);
        expect_placed(&state);
        let again = m2.placements();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, id);
        assert_eq!(again[0].payload, b"hello", "the payload travels again");

        // A stale completion from the first machine answers nothing.
        let stale = Completion {
            id,
            result: Ok(report()),
        };
        assert!(!state.book().complete(m1.idx, stale, Duration::ZERO));
        state.complete(
            m2.idx,
            Completion {
                id,
                result: Ok(report()),
            },
        );
        let outcome = rx.try_recv().expect("answered").expect("succeeded");
        assert_eq!((outcome.machine.as_str(), outcome.attempts), ("m2", 2));
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn a_run_killed_for_memory_is_placed_again_when_its_function_allows() {
        let state = state();
        let mut m = connect(&state, "m1", 1, 1, true);
        let (id, mut rx) = submit_spec(&state, retrying("safe", 1), StageLimits::default());
        expect_placed(&state);
        assert_eq!(m.placements().len(), 1);
        let killed = || Completion {
            id,
            result: Err(InvokeError::KilledUnderMemoryPressure),
        };
        state.complete(m.idx, killed());
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "not answered"
        );
        // The machine's one slot is free again, so it takes the invocation back.
        expect_placed(&state);
        assert_eq!(m.placements()[0].id, id);
        state.complete(m.idx, killed());
        assert_eq!(error_of(&mut rx), InvokeError::KilledUnderMemoryPressure);
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn retries_run_out_and_then_the_machine_loss_is_the_answer() {
        let state = state();
        let m1 = connect(&state, "m1", 1, 4, true);
        let (_, mut rx) = submit_spec(&state, retrying("safe", 1), StageLimits::default());
        expect_placed(&state);
        let m2 = connect(&state, "m2", 2, 4, true);
        state.lose_machine(m1.idx);
        expect_placed(&state);
        state.lose_machine(m2.idx);
        assert_eq!(error_of(&mut rx), InvokeError::MachineLost("m2".to_owned()));
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn the_queue_limit_answers_a_queued_invocation_but_not_a_placed_one() {
        let state = state();
        let limits = StageLimits {
            queue_ms: 50,
            ..StageLimits::default()
        };
        let (queued, mut rx) = submit_spec(&state, spec("echo"), limits);
        let deadline = state.stage_deadline(queued).expect("a queue limit");
        assert_eq!(deadline.stage, Stage::Queue);
        state.stage_expired(queued, deadline);
        assert_eq!(
            error_of(&mut rx),
            InvokeError::StageTimedOut {
                stage: Stage::Queue,
                limit_ms: 50
            }
        );

        let _m = connect(&state, "m1", 1, 4, true);
        expect_placed(&state); // drops the answered one's tombstone
        let (placed, mut rx) = submit_spec(&state, spec("echo"), limits);
        let deadline = state.stage_deadline(placed).expect("a queue limit");
        expect_placed(&state);
        assert_eq!(
            state.stage_deadline(placed),
            None,
            "on a machine: the dispatcher's"
        );
        state.stage_expired(placed, deadline);
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "not answered"
        );
    }

    #[test]
    fn the_placement_limit_answers_an_invocation_whose_poll_is_out_too_long() {
        let state = state();
        // Not on the idle list: placing means polling it.
        let _m = connect(&state, "m1", 1, 4, false);
        let limits = StageLimits {
            placement_ms: 30,
            ..StageLimits::default()
        };
        let (id, mut rx) = submit_spec(&state, spec("echo"), limits);
        let Placing::Poll(poll) = state.place_next() else {
            panic!("an unlisted machine must be polled");
        };
        let deadline = state.stage_deadline(id).expect("a placement limit");
        assert_eq!(deadline.stage, Stage::Placement);
        state.stage_expired(id, deadline);
        assert_eq!(
            error_of(&mut rx),
            InvokeError::StageTimedOut {
                stage: Stage::Placement,
                limit_ms: 30
            }
        );
        // The poll's late answers place nothing.
        state.polled(poll, &[]);
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn completion_after_abandon_sends_nothing_and_frees_the_slot_once() {
        let state = state();
        // Two slots: the idle list places directly while the machine has one free.
        let mut m = connect(&state, "m1", 1, 2, true);
        let (a, mut rx_a) = submit(&state);
        let (_b, _rx_b) = submit(&state);
        expect_placed(&state);
        expect_placed(&state);
        assert_eq!(m.placements().len(), 2);

        state.abandon(a, InvokeError::TimedOut(5000));
        assert_eq!(error_of(&mut rx_a), InvokeError::TimedOut(5000));
        assert!(m
            .control_frames()
            .iter()
            .any(|f| matches!(f, ShardToDispatcher::Cancel(c) if *c == a)));

        // The machine reports the cancelled run: no one to answer, and no second free slot.
        let late = Completion {
            id: a,
            result: Err(InvokeError::TimedOut(1)),
        };
        assert!(!state.book().complete(m.idx, late, Duration::ZERO));
        // One slot is free (a's), so one more goes straight to the machine, and the next
        // needs a poll. Had the late completion freed a's slot again, both would be placed.
        let (_c, _rx_c) = submit(&state);
        let (_d, _rx_d) = submit(&state);
        expect_placed(&state);
        assert!(matches!(state.place_next(), Placing::Poll(_)));
    }

    #[test]
    fn fail_all_answers_every_waiting_invocation_once_and_spares_running_ones() {
        let state = state();
        let mut m = connect(&state, "m1", 1, 4, true);
        let (running, mut rx_running) = submit(&state);
        expect_placed(&state);
        assert_eq!(m.placements()[0].id, running);
        let mut queued: Vec<_> = (0..3).map(|_| submit(&state)).collect();

        state.fail_all_queued();
        for (_, rx) in &mut queued {
            assert_eq!(error_of(rx), InvokeError::ShuttingDown);
        }
        assert!(unanswered(&mut rx_running));
        assert_eq!(state.status().queued.iter().sum::<u64>(), 0);
        assert_eq!(live(&state), 1);
        for (id, _) in &queued {
            assert!(!state.book().answer(*id, |_| Err(InvokeError::ShuttingDown)));
        }
        expect_idle(&state);
    }

    #[test]
    fn completion_answers_with_timings_and_the_callers_timeout() {
        let state = state();
        let m = connect(&state, "m1", 1, 4, true);
        let (ok, mut rx_ok) = submit(&state);
        let (late, mut rx_late) = submit(&state);
        expect_placed(&state);
        expect_placed(&state);

        state.complete(
            m.idx,
            Completion {
                id: ok,
                result: Ok(report()),
            },
        );
        let outcome = rx_ok.try_recv().expect("answered").expect("succeeded");
        assert_eq!(outcome.id, ok);
        assert_eq!(outcome.machine, "m1");
        assert_eq!(outcome.run.output, b"out");
        assert!(outcome.timings().queued_at_us <= outcome.timings().placed_at_us);
        assert_eq!(outcome.timings().started_at_us, 10);

        // The machine's own deadline is shorter; the caller hears its own figure.
        state.complete(
            m.idx,
            Completion {
                id: late,
                result: Err(InvokeError::TimedOut(1)),
            },
        );
        assert_eq!(
            error_of(&mut rx_late),
            InvokeError::TimedOut(TIMEOUT.as_millis() as u64)
        );
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn abandoned_queued_invocation_is_never_placed() {
        let state = state();
        let (id, mut rx) = submit(&state);
        state.abandon(id, InvokeError::TimedOut(5000));
        assert_eq!(error_of(&mut rx), InvokeError::TimedOut(5000));

        let mut m = connect(&state, "m1", 1, 4, true);
        expect_placed(&state); // the tombstone, dropped
        expect_idle(&state);
        assert!(m.placements().is_empty());
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn sweep_clears_answered_invocations_from_the_queues() {
        let state = state();
        let (a, _rx_a) = submit(&state);
        let (_b, mut rx_b) = submit(&state);
        state.abandon(a, InvokeError::TimedOut(5000));
        assert_eq!(state.sweep(), 1);
        assert_eq!(state.status().queued.iter().sum::<u64>(), 1);
        assert_eq!(state.sweep(), 0);
        assert!(unanswered(&mut rx_b));
    }

    #[test]
    fn caller_gone_without_abandoning_is_swept_and_forgotten() {
        let state = state();
        let (_id, rx) = submit(&state);
        drop(rx);
        // No answer was sent, so the cheap sweep has nothing to go on; the full one finds it.
        assert_eq!(state.sweep(), 0);
        assert_eq!(state.sweep_all(), 1);
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn closed_lane_answers_machine_lost() {
        let state = state();
        let m = connect(&state, "m1", 1, 4, true);
        drop(m.lanes);
        let (_id, mut rx) = submit(&state);
        expect_placed(&state);
        assert_eq!(error_of(&mut rx), InvokeError::MachineLost("m1".to_owned()));
        assert_eq!(state.status().in_flight, 0);
    }

    #[test]
    fn registering_again_loses_the_old_session() {
        let state = state();
        let old = connect(&state, "m1", 1, 4, true);
        let (_id, mut rx) = submit(&state);
        expect_placed(&state);
        let new = connect(&state, "m1", 2, 4, true);
        assert_ne!(old.idx, new.idx);
        assert_eq!(error_of(&mut rx), InvokeError::MachineLost("m1".to_owned()));
        // The old session ending later must not touch the new machine.
        state.lose_machine(old.idx);
        assert_eq!(state.status().machines, vec!["m1".to_owned()]);
    }

    #[test]
    fn lanes_are_refused_from_strangers() {
        let state = state();
        let (tx, _rx) = mpsc::unbounded_channel();
        assert_eq!(
            state.open_lane("nobody", 1, ClassId(0), tx.clone()),
            Err(LaneRefused::Unregistered)
        );
        let (control, _control_rx) = mpsc::unbounded_channel();
        let hello = DispatcherHello {
            machine: "m1".to_owned(),
            cores: 1,
            memory_bytes: 1,
            slots: 1,
        };
        state.register(&hello, 1, control);
        assert_eq!(
            state.open_lane("m1", 2, ClassId(0), tx.clone()),
            Err(LaneRefused::BadLane)
        );
        assert_eq!(
            state.open_lane("m1", 1, ClassId(99), tx),
            Err(LaneRefused::BadLane)
        );
    }

    #[test]
    fn poll_answers_place_on_a_machine_with_room() {
        let state = state();
        let mut m = connect(&state, "m1", 1, 4, false);
        let (id, _rx) = submit(&state);
        let Placing::Poll(mut poll) = state.place_next() else {
            panic!("an unlisted machine must be polled");
        };
        let seq = m
            .control_frames()
            .iter()
            .find_map(|f| match f {
                ShardToDispatcher::Poll { seq } => Some(*seq),
                _ => None,
            })
            .expect("a poll frame");
        let load = free_load();
        state.load_reported(m.idx, seq, load);
        let answers: Vec<_> = poll
            .take_waiting()
            .into_iter()
            .map(|(machine, mut rx)| (machine, rx.try_recv().expect("load delivered")))
            .collect();
        state.polled(poll, &answers);
        assert_eq!(m.placements()[0].id, id);
        assert_eq!(state.status().in_flight, 1);
    }

    #[test]
    fn invocation_answered_during_its_poll_is_not_placed() {
        let state = state();
        let mut m = connect(&state, "m1", 1, 4, false);
        let (id, mut rx) = submit(&state);
        let Placing::Poll(mut poll) = state.place_next() else {
            panic!("an unlisted machine must be polled");
        };
        let _ = poll.take_waiting();
        state.abandon(id, InvokeError::TimedOut(5000));
        let load = free_load();
        state.polled(poll, &[(m.idx, load)]);
        assert!(m.placements().is_empty());
        assert_eq!(error_of(&mut rx), InvokeError::TimedOut(5000));
        assert_eq!(live(&state), 0);
    }

    #[test]
    fn shutdown_answers_an_invocation_out_for_a_poll() {
        let state = state();
        let _m = connect(&state, "m1", 1, 4, false);
        let (_id, mut rx) = submit(&state);
        let Placing::Poll(_poll) = state.place_next() else {
            panic!("an unlisted machine must be polled");
        };
        state.fail_all_queued();
        assert_eq!(error_of(&mut rx), InvokeError::ShuttingDown);
    }

    #[test]
    fn overloaded_submission_keeps_nothing() {
        let state = state_with(ShardConfig {
            max_queued: 1,
            ..ShardConfig::default()
        });
        let _first = submit(&state);
        let refused = state.submit(Submission {
            id: state.next_id(),
            class: ClassId(0),
            tenant: "tenant".to_owned(),
            function: spec("echo"),
            payload: Vec::new(),
            timeout: TIMEOUT,
            deadline: Instant::now() + TIMEOUT,
            env: Vec::new(),
            nested_in: None,
            limits: StageLimits::default(),
            idempotency_key: None,
        });
        let refused = refused.expect_err("refused");
        assert_eq!((refused.queued, refused.limit), (1, 1));
        assert!(refused.retry_after > Duration::ZERO);
        assert_eq!(live(&state), 1);
    }

    #[test]
    fn ids_carry_the_shard_id_in_their_high_bits() {
        let state = state();
        let a = state.next_id();
        let b = state.next_id();
        assert_eq!(a.0 >> 48, 7);
        assert_ne!(a, b);
    }
}
