//! The shard's table of connected machines: for each, its name, its control stream, its class
//! lanes and the polls it has not answered yet.
//!
//! Plain data with no lock of its own: the only owner is [`crate::state::ShardState`], which
//! touches it under its one lock together with the core and the invocation table, so the
//! three can never disagree about which machines exist. Indices are never reused: a machine
//! that registers again gets a fresh [`MachineIdx`], so a late message from an old session
//! cannot reach the new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tariff_policy::MachineIdx;
use tariff_types::wire::{
    DispatcherHello, InvocationId, MachineLoad, MachineStatus, MemoryReport, Placement,
    ShardToDispatcher,
};
use tariff_types::ClassId;
use tokio::sync::{mpsc, oneshot};

/// A connected machine.
pub(crate) struct MachineLink {
    /// The name it registered with, unique among connected machines.
    name: Arc<str>,
    /// Invocations at or above one class it runs at once (from its hello).
    slots: u32,
    /// CPUs and memory functions may use (from its hello), for status.
    cores: u32,
    memory_bytes: u64,
    /// Free memory as last reported (idle entry or poll answer), for status.
    free_memory_bytes: Option<u64>,
    /// Functions with an idle warm instance, as last reported, for status.
    warm: u32,
    /// Its memory and per-class memory pressure, as its last heartbeat said, for status.
    memory: Option<MemoryReport>,
    /// When the shard last heard from it, for status.
    last_heard: Instant,
    /// The QUIC connection its control stream came on; its lanes must come on the same one.
    connection_id: usize,
    /// Frames to its dispatcher's control stream.
    control: mpsc::UnboundedSender<ShardToDispatcher>,
    /// One placement lane per class, `None` until the dispatcher opens it.
    lanes: Vec<Option<mpsc::UnboundedSender<Placement>>>,
    /// Polls sent and not yet answered, by sequence number.
    polls: HashMap<u64, oneshot::Sender<MachineLoad>>,
    /// Sequence number of the next poll.
    next_poll: u64,
}

impl MachineLink {
    /// The machine's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its slots.
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    /// The machine sent something: notes when, and its free memory if the message said.
    pub(crate) fn heard(&mut self, free_memory_bytes: Option<u64>) {
        self.last_heard = Instant::now();
        if free_memory_bytes.is_some() {
            self.free_memory_bytes = free_memory_bytes;
        }
    }

    /// The machine reported how many functions have an idle warm instance on it.
    pub(crate) fn set_warm(&mut self, warm: usize) {
        self.warm = warm as u32;
    }

    /// The machine reported how its memory stands.
    pub(crate) fn set_memory(&mut self, report: MemoryReport) {
        self.memory = Some(report);
    }

    /// The machine as `tariff status` shows it; `running` and `listed` are the shard's.
    pub(crate) fn status(&self, running: Vec<u32>, listed: bool) -> MachineStatus {
        MachineStatus {
            name: self.name.to_string(),
            cores: self.cores,
            slots: self.slots,
            memory_bytes: self.memory_bytes,
            free_memory_bytes: self.free_memory_bytes,
            running,
            warm: self.warm,
            listed,
            last_heard_ms: self.last_heard.elapsed().as_millis() as u64,
            memory: self.memory.clone(),
        }
    }

    /// Sends a placement on its class lane; false if the lane is gone.
    pub(crate) fn place(&self, placement: Placement) -> bool {
        match self.lanes.get(placement.class.index()) {
            Some(Some(lane)) => lane.send(placement).is_ok(),
            _ => false,
        }
    }

    /// Asks the dispatcher to stop an invocation (its caller stopped waiting). Best effort:
    /// a dispatcher that is gone has stopped everything anyway.
    pub(crate) fn cancel(&self, id: InvocationId) {
        let _ = self.control.send(ShardToDispatcher::Cancel(id));
    }

    /// Starts a poll; the receiver yields the machine's load, or `None` if the control stream
    /// is gone.
    pub(crate) fn start_poll(&mut self) -> Option<oneshot::Receiver<MachineLoad>> {
        let seq = self.next_poll;
        self.next_poll += 1;
        self.control.send(ShardToDispatcher::Poll { seq }).ok()?;
        let (tx, rx) = oneshot::channel();
        self.polls.insert(seq, tx);
        Some(rx)
    }

    /// The machine answered poll `seq`.
    pub(crate) fn load_reported(&mut self, seq: u64, load: MachineLoad) {
        if let Some(waiter) = self.polls.remove(&seq) {
            let _ = waiter.send(load);
        }
    }

    /// Records the lane for `class` if this connection may open it; returns whether it did.
    pub(crate) fn open_lane(
        &mut self,
        connection_id: usize,
        class: ClassId,
        lane: mpsc::UnboundedSender<Placement>,
    ) -> bool {
        if connection_id != self.connection_id || class.index() >= self.lanes.len() {
            return false;
        }
        self.lanes[class.index()] = Some(lane);
        true
    }

    /// True once every class lane is open: only then can the machine take placements.
    pub(crate) fn all_lanes_open(&self) -> bool {
        self.lanes.iter().all(Option::is_some)
    }
}

/// The connected machines, by index and by name.
#[derive(Default)]
pub(crate) struct MachineTable {
    /// Links by index.
    links: HashMap<MachineIdx, MachineLink>,
    /// Index of each name.
    by_name: HashMap<Arc<str>, MachineIdx>,
    /// The next index handed out.
    next: u32,
}

impl MachineTable {
    /// Adds a machine that has sent its hello on `connection_id`; its lanes are not open yet.
    /// The name must not be in the table (lose the old machine first).
    pub(crate) fn insert(
        &mut self,
        name: Arc<str>,
        hello: &DispatcherHello,
        classes: usize,
        connection_id: usize,
        control: mpsc::UnboundedSender<ShardToDispatcher>,
    ) -> MachineIdx {
        let idx = MachineIdx(self.next);
        self.next += 1;
        self.by_name.insert(name.clone(), idx);
        self.links.insert(
            idx,
            MachineLink {
                name,
                slots: hello.slots,
                cores: hello.cores,
                memory_bytes: hello.memory_bytes,
                free_memory_bytes: None,
                warm: 0,
                memory: None,
                last_heard: Instant::now(),
                connection_id,
                control,
                lanes: vec![None; classes],
                polls: HashMap::new(),
                next_poll: 0,
            },
        );
        idx
    }

    /// Removes a machine, returning its link if it was there.
    pub(crate) fn remove(&mut self, machine: MachineIdx) -> Option<MachineLink> {
        let link = self.links.remove(&machine)?;
        self.by_name.remove(&link.name);
        Some(link)
    }

    /// The machine at `machine`, if connected.
    pub(crate) fn get(&self, machine: MachineIdx) -> Option<&MachineLink> {
        self.links.get(&machine)
    }

    /// The machine at `machine`, if connected, for changing.
    pub(crate) fn get_mut(&mut self, machine: MachineIdx) -> Option<&mut MachineLink> {
        self.links.get_mut(&machine)
    }

    /// The index of the machine called `name`, if connected.
    pub(crate) fn lookup(&self, name: &str) -> Option<MachineIdx> {
        self.by_name.get(name).copied()
    }

    /// The connected machines with their indices, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (MachineIdx, &MachineLink)> {
        self.links.iter().map(|(idx, link)| (*idx, link))
    }

    /// Names of the connected machines, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.by_name.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }
}
