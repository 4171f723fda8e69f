//! The messages Tariff processes exchange, one type per request and per response.
//!
//! Every stream starts with a [`StreamOpen`] frame that says what the stream is for; after that
//! each side sends the frames of that stream's role. The byte layout of frames is the business
//! of [`crate::codec`] alone. `docs/protocol.md` describes the streams and their order.

use serde::{Deserialize, Serialize};

use crate::class::ClassId;
use crate::function::FunctionSpec;
use crate::tenant::{AccessError, TenantInfo, TenantRequest, Token};

/// ALPN token of the Tariff protocol; a peer that speaks anything else is refused by TLS.
pub const ALPN: &[u8] = b"tariff/1";

/// Identifies an invocation cluster-wide: the shard's id in the high 16 bits, a counter below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InvocationId(pub u64);

impl std::fmt::Display for InvocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}-{:012x}", self.0 >> 48, self.0 & 0xffff_ffff_ffff)
    }
}

/// The first frame of every stream: what the stream carries from now on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StreamOpen {
    /// A client request; the stream carries this one request and one [`ClientResponse`].
    Client {
        /// The caller's bearer token; without one, only a refusal comes back.
        token: Option<Token>,
        /// The request.
        request: ClientRequest,
    },
    /// A dispatcher's control stream: registration, idle-list entries and polls.
    DispatcherControl(DispatcherHello),
    /// A dispatcher's lane for one class: placements in, completions out.
    ClassLane {
        /// The machine that opened the lane.
        machine: String,
        /// The class this lane carries.
        class: ClassId,
    },
    /// A peer shard passing on a change it wrote to the store.
    PeerNotice(PeerNotice),
    /// A client's long-lived session: many [`SessionRequest`]s in, their
    /// [`SessionResponse`]s out in completion order. Saves opening a stream per request.
    /// The token is given once and checked again on every request, so a revoked token stops
    /// working on open sessions too.
    ClientSession {
        /// The caller's bearer token.
        token: Option<Token>,
    },
}

/// One request on a client session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// The request.
    pub request: ClientRequest,
}

/// One response on a client session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    /// The request's id.
    pub id: u64,
    /// The response.
    pub response: ClientResponse,
}

/// What a client (the CLI, the bench harness, a function calling another) asks a shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Run a function.
    Invoke(InvokeRequest),
    /// Register or replace a function. The shard records the caller as its owner (the
    /// spec's `owner` is ignored); replacing another tenant's function needs it shared.
    Deploy(FunctionSpec),
    /// Remove a function (its owner only).
    RemoveFunction(String),
    /// List the functions the caller may use: its own and those shared with it.
    ListFunctions,
    /// The shard's view of the cluster.
    Status,
    /// Manage tenants (the administrator only).
    Tenants(TenantRequest),
    /// This shard's part of a tenant's bill (the caller's own; any tenant's for the
    /// administrator) for a month (`YYYY-MM`, default the current one).
    Bill {
        /// The tenant; the caller's own if `None`.
        tenant: Option<String>,
        /// The month.
        month: Option<String>,
    },
}

/// A request to run one function once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvokeRequest {
    /// Registered function name.
    pub function: String,
    /// Price class name.
    pub class: String,
    /// Bytes given to the function on stdin.
    pub payload: Vec<u8>,
    /// How long the caller waits for an answer, in milliseconds; 0 means the shard's default.
    pub timeout_ms: u64,
    /// This invocation's own stage limits, over its function's (0: the function's).
    #[serde(default)]
    pub limits: crate::StageLimits,
    /// Set by a caller that may send the same invocation again (after losing its shard): a
    /// shard that has seen the key recently answers the resubmission with the first run's
    /// answer instead of running the function again (docs/failures.md gives the window).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A shard's answer to one [`ClientRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The answer to an invocation.
    Invoked(Result<InvocationOutcome, InvokeError>),
    /// The function is stored at this version.
    Deployed {
        /// Function name.
        name: String,
        /// Version the store gave it.
        version: u64,
    },
    /// The request was refused; the reason says why.
    Refused(String),
    /// The caller is not known, or may not do this.
    Denied(AccessError),
    /// The function was removed.
    Removed(String),
    /// A tenant (answer to adding, showing or rotating one).
    Tenant(TenantInfo),
    /// Every tenant.
    TenantList(Vec<TenantInfo>),
    /// This shard's part of a bill.
    Bill(crate::billing::Bill),
    /// Registered functions.
    Functions(Vec<FunctionSpec>),
    /// The shard's status.
    Status(ShardStatus),
    /// The frame could not be understood; the stream is closed after this.
    ProtocolError(String),
}

/// When each stage of an invocation happened, in microseconds since the Unix epoch. The first
/// two are read on the shard's clock, the next two on the dispatcher's.
///
/// A view, not a stored record: [`InvocationOutcome::timings`] puts the shard's two stamps and
/// the [`RunReport`]'s two together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// The shard accepted the request.
    pub queued_at_us: u64,
    /// The shard chose a machine and sent it the invocation.
    pub placed_at_us: u64,
    /// The dispatcher started the function's process.
    pub started_at_us: u64,
    /// The function's process finished.
    pub finished_at_us: u64,
}

impl Timings {
    /// Microseconds spent in the shard's queue.
    pub fn queued_us(&self) -> u64 {
        self.placed_at_us.saturating_sub(self.queued_at_us)
    }

    /// Microseconds between placement and the process starting (network plus spawn).
    pub fn start_us(&self) -> u64 {
        self.started_at_us.saturating_sub(self.placed_at_us)
    }

    /// Microseconds the process ran.
    pub fn run_us(&self) -> u64 {
        self.finished_at_us.saturating_sub(self.started_at_us)
    }
}

/// A successful invocation: the shard's account (which invocation, where, when it was queued
/// and placed) around the machine's [`RunReport`], which it embeds as the machine sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationOutcome {
    /// The invocation.
    pub id: InvocationId,
    /// Machine that ran it.
    pub machine: String,
    /// The shard accepted the request, µs since the epoch on the shard's clock.
    pub queued_at_us: u64,
    /// The shard chose a machine and sent it the invocation, µs since the epoch on the
    /// shard's clock.
    pub placed_at_us: u64,
    /// What the machine reported about the run: output, timings on its clock, resource use.
    pub run: RunReport,
    /// What it cost the tenant, and of what.
    #[serde(default)]
    pub cost: crate::billing::Cost,
    /// Where it stands in a call chain (a function invoking a function).
    #[serde(default)]
    pub chain: Chain,
    /// Times it was placed: 1, or more when a lost machine made the shard place it again.
    #[serde(default)]
    pub attempts: u32,
    /// True when this is the answer of an earlier submission with the same idempotency key,
    /// given again rather than run again.
    #[serde(default)]
    pub replayed: bool,
}

/// An invocation's place in a call chain: made by a client (depth 0, its own root) or by a
/// running function (its caller is the parent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The invocation at the top of the chain (itself, at depth 0).
    pub root: Option<InvocationId>,
    /// The invocation whose function made this call, if any.
    pub parent: Option<InvocationId>,
    /// Calls between the root and this one: 0 for a client's call.
    pub depth: u32,
}

/// Environment variables a running function gets, so that it (the SDK, or `tariff invoke`
/// run inside it) can call other functions as part of its chain without the tenant's token.
/// The same names as the function SDK's `context` module, which functions read them with
/// (the SDK has no dependencies, so they are spelled out in both; a test in the machine
/// scheduler checks they agree).
pub mod context_env {
    /// A token valid while this invocation runs, standing for its tenant and its chain.
    pub const INVOCATION: &str = "TARIFF_INVOCATION";
    /// The shard to call (the one that placed this invocation, which knows the token).
    pub const SHARD: &str = "TARIFF_SHARD";
    /// The class this invocation runs at: calls it makes run at least at this class.
    pub const CLASS: &str = "TARIFF_CLASS";
    /// The cluster's CA certificate (PEM), to verify the shard.
    pub const CA: &str = "TARIFF_CA";
}

impl InvocationOutcome {
    /// Every stage's time stamp, the shard's and the machine's together.
    pub fn timings(&self) -> Timings {
        Timings {
            queued_at_us: self.queued_at_us,
            placed_at_us: self.placed_at_us,
            started_at_us: self.run.started_at_us,
            finished_at_us: self.run.finished_at_us,
        }
    }
}

/// Why an invocation did not produce a result. Every submitted invocation ends in exactly one
/// [`InvocationOutcome`] or one of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum InvokeError {
    /// No function of that name is registered.
    #[error("unknown function `{0}`")]
    UnknownFunction(String),
    /// The class name is not one of the cluster's.
    #[error("{0}")]
    BadClass(String),
    /// The payload is larger than the shard accepts.
    #[error("payload of {size} bytes is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Payload size.
        size: u64,
        /// The shard's limit.
        limit: u64,
    },
    /// The caller gave no token, or one the cluster does not know.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not invoke this function (another tenant's, not shared with it).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The tenant has spent its monthly budget.
    #[error("budget exhausted: {0}")]
    OverBudget(String),
    /// The shard's backlog is too long for this class (cheaper classes are refused first).
    #[error(
        "shard overloaded: {queued} invocations queued, over the limit of {limit} for this class; \
         retry after {retry_after_ms} ms"
    )]
    Overloaded {
        /// Invocations queued.
        queued: u64,
        /// The class's limit.
        limit: u64,
        /// When the shard expects to take it.
        retry_after_ms: u64,
    },
    /// No answer came within the timeout.
    #[error("timed out after {0} ms")]
    TimedOut(u64),
    /// One stage of the invocation passed its own limit (the function's or the call's).
    #[error("{}", stage_timeout_message(*.stage, *.limit_ms))]
    StageTimedOut {
        /// The stage that took too long.
        stage: crate::Stage,
        /// Its limit, in milliseconds.
        limit_ms: u64,
    },
    /// The function crashed too often lately and is not run until it is redeployed or its
    /// crash budget resets.
    #[error(
        "function `{function}` is suspended: it crashed {crashes} times within {window_s} s; \
         redeploy it or retry after {retry_after_ms} ms"
    )]
    Suspended {
        /// The function.
        function: String,
        /// Crashes counted within the window.
        crashes: u32,
        /// The window, in seconds.
        window_s: u64,
        /// When the suspension ends unless it is redeployed.
        retry_after_ms: u64,
    },
    /// The machine running the invocation went away before answering.
    #[error("machine `{0}` was lost while running the invocation")]
    MachineLost(String),
    /// The function ran and failed.
    #[error("function exited with {status}; stderr: {stderr_tail}")]
    FunctionFailed {
        /// How it ended, e.g. `exit status 3` or `signal 9`.
        status: String,
        /// The end of what it wrote to stderr.
        stderr_tail: String,
    },
    /// The function's process could not be started.
    #[error("could not start the function: {0}")]
    StartFailed(String),
    /// The request could not be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The shard is shutting down.
    #[error("shard shutting down")]
    ShuttingDown,
    /// The invocation was cancelled (its caller stopped waiting) and its function killed
    /// before it finished: not a failure of the function.
    #[error("cancelled")]
    Cancelled,
    /// The machine ran out of memory and swap, and killed this invocation's function to
    /// free memory: the cheapest class and the latest arrival go first, so a dearer class is
    /// killed only once no cheaper one holds any memory on the machine.
    #[error("killed under memory pressure: the machine's memory and swap were exhausted and this call's class was the cheapest holding memory")]
    KilledUnderMemoryPressure,
    /// A function called a function beyond the chain depth limit.
    #[error("call chain too deep: depth {depth} is over the limit of {limit}")]
    ChainTooDeep {
        /// The depth this call would have had.
        depth: u32,
        /// The limit.
        limit: u32,
    },
}

impl InvokeError {
    /// A short, stable, machine-readable name for the kind of error (for `--json` output,
    /// reports and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownFunction(_) => "unknown_function",
            Self::BadClass(_) => "bad_class",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::OverBudget(_) => "over_budget",
            Self::Overloaded { .. } => "overloaded",
            Self::TimedOut(_) => "timed_out",
            Self::StageTimedOut { stage, .. } => match stage {
                crate::Stage::Queue => "queue_timed_out",
                crate::Stage::Placement => "placement_timed_out",
                crate::Stage::Start => "start_timed_out",
                crate::Stage::Run => "run_timed_out",
            },
            Self::Suspended { .. } => "suspended",
            Self::MachineLost(_) => "machine_lost",
            Self::FunctionFailed { .. } => "function_failed",
            Self::StartFailed(_) => "start_failed",
            Self::Protocol(_) => "protocol",
            Self::ShuttingDown => "shutting_down",
            Self::Cancelled => "cancelled",
            Self::ChainTooDeep { .. } => "chain_too_deep",
            Self::KilledUnderMemoryPressure => "killed_memory_pressure",
        }
    }
}

/// What a stage timeout says: where the invocation was when its limit passed.
fn stage_timeout_message(stage: crate::Stage, limit_ms: u64) -> String {
    let what = match stage {
        crate::Stage::Queue => "waited in the shard's queue",
        crate::Stage::Placement => "waited for a machine with room",
        crate::Stage::Start => "waited on its machine to be launched",
        crate::Stage::Run => "ran",
    };
    format!("timed out: {what} longer than its {stage} limit of {limit_ms} ms")
}

impl From<AccessError> for InvokeError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Unauthenticated(reason) => Self::Unauthenticated(reason),
            AccessError::Forbidden(reason) => Self::Forbidden(reason),
        }
    }
}

/// A shard's view of its part of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardStatus {
    /// Shard id.
    pub shard_id: u16,
    /// Price class names, most expensive first.
    pub classes: Vec<String>,
    /// Queued invocations per class.
    pub queued: Vec<u64>,
    /// Machines connected to this shard.
    pub machines: Vec<String>,
    /// Machines on this shard's idle list.
    pub idle_list: Vec<String>,
    /// Invocations placed and not yet answered.
    pub in_flight: u64,
    /// Each connected machine as this shard sees it, by name.
    pub machine_status: Vec<MachineStatus>,
    /// Invocations this shard has answered since it started.
    pub answered: u64,
    /// Invocations answered per second over the last few seconds.
    pub answered_per_s: f64,
}

/// One machine as a shard sees it, for `tariff status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineStatus {
    /// The machine's name.
    pub name: String,
    /// CPUs functions may use (from its hello).
    pub cores: u32,
    /// Invocations at or above one class it runs at once.
    pub slots: u32,
    /// Memory functions may use, bytes.
    pub memory_bytes: u64,
    /// Free memory as it last reported it (idle-list entry or poll answer), if it has.
    pub free_memory_bytes: Option<u64>,
    /// This shard's invocations running on it, per class, most expensive first.
    pub running: Vec<u32>,
    /// Functions with an idle warm instance on it, as it last reported.
    pub warm: u32,
    /// Whether it is on this shard's idle list.
    pub listed: bool,
    /// Milliseconds since the shard last heard from it (any control message).
    pub last_heard_ms: u64,
    /// Its memory and what memory pressure has cost each class there, as its last heartbeat
    /// said; `None` until one has (or from a dispatcher that does not report it).
    #[serde(default)]
    pub memory: Option<MemoryReport>,
}

/// A machine's memory as its dispatcher reports it with every heartbeat (issue 15), for
/// `tariff status`: memory is not reserved, so an operator needs to see what the functions
/// hold, what is left, and what oversubscription is costing each class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Bytes the machine's functions hold in memory now (their cgroups' resident memory
    /// where the memory guard runs, else their processes' resident sets).
    pub used_bytes: u64,
    /// Bytes they may still take before `--memory` (bounded by what the machine has).
    pub free_bytes: u64,
    /// Swap space on the machine, bytes (0: none, so memory pressure kills).
    pub swap_total_bytes: u64,
    /// Swap space left, bytes.
    pub swap_free_bytes: u64,
    /// What memory pressure has cost each class since the dispatcher started, most
    /// expensive first.
    pub per_class: Vec<ClassMemory>,
}

/// What memory pressure has cost one class on one machine since its dispatcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassMemory {
    /// Swapped bytes and time held, summed over the class's finished runs.
    pub pressure: MemoryPressure,
    /// The class's runs killed under memory pressure.
    pub kills: u64,
}

/// First frame of a dispatcher's control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatcherHello {
    /// The machine's name, unique in the cluster.
    pub machine: String,
    /// CPUs functions may use.
    pub cores: u32,
    /// Memory functions may use, in bytes.
    pub memory_bytes: u64,
    /// Invocations at or above one class the machine runs at once.
    pub slots: u32,
}

/// Frames a shard sends on a dispatcher's control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardToDispatcher {
    /// Registration accepted.
    Welcome {
        /// Shard id.
        shard_id: u16,
        /// Price classes (names, most expensive first) so the dispatcher opens one lane each.
        classes: Vec<String>,
        /// Silence on the control stream after which each side takes the other for lost,
        /// in milliseconds; each sends a [`ShardToDispatcher::Heartbeat`] /
        /// [`DispatcherToShard::Heartbeat`] four times within it.
        liveness_ms: u64,
    },
    /// Nothing else to say: the shard is alive.
    Heartbeat,
    /// How many machines are on this shard's idle list.
    IdleListLength {
        /// Sequence number of the query answered.
        seq: u64,
        /// Entries on the list.
        length: u32,
    },
    /// Power-of-k poll: how busy are you?
    Poll {
        /// Sequence number echoed in the reply.
        seq: u64,
    },
    /// Stop running an invocation: its caller has stopped waiting.
    Cancel(InvocationId),
}

/// Frames a dispatcher sends on its control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DispatcherToShard {
    /// Ask for the length of the idle list.
    QueryIdleListLength {
        /// Sequence number to echo.
        seq: u64,
    },
    /// Join, update or leave this shard's idle list.
    Idle(IdleEntry),
    /// The functions that now have an idle warm instance on this machine (sent on change).
    Warm(Vec<String>),
    /// Reply to a [`ShardToDispatcher::Poll`].
    Load {
        /// Sequence number of the poll.
        seq: u64,
        /// The machine's load.
        load: MachineLoad,
    },
    /// Nothing else to say: the machine is alive.
    Heartbeat,
    /// A heartbeat that also says how the machine's memory stands (sent in place of
    /// [`DispatcherToShard::Heartbeat`]).
    Memory(MemoryReport),
    /// The end of a keyed invocation whose shard was lost while it ran: this shard settles
    /// its idempotency key, so the caller's resubmission gets the answer instead of a second
    /// run.
    Orphan(Orphan),
}

/// A keyed invocation's end, carried to another shard than the one that placed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Orphan {
    /// The store key of its idempotency key (tenant and key).
    pub key: String,
    /// The tenant that pays for it.
    pub tenant: String,
    /// The function.
    pub function: String,
    /// The class it ran at.
    pub class: ClassId,
    /// How it ended.
    pub completion: Completion,
}

/// A dispatcher's entry on a shard's idle list.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IdleEntry {
    /// True to join or update, false to leave the list.
    pub listed: bool,
    /// Free memory in bytes.
    pub free_memory_bytes: u64,
    /// Invocations placed on the machine and not finished.
    pub queue_length: u32,
}

/// How busy a machine is, as reported to a poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineLoad {
    /// Unfinished invocations per class, most expensive first.
    pub per_class: Vec<u32>,
    /// Invocations at or above one class the machine takes at once.
    pub slots: u32,
    /// Free memory in bytes.
    pub free_memory_bytes: u64,
    /// Functions (by name) with an idle warm instance on the machine.
    pub warm: Vec<String>,
}

/// An invocation sent to a machine on a class lane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    /// The invocation.
    pub id: InvocationId,
    /// Its class.
    pub class: ClassId,
    /// Tenant paying.
    pub tenant: String,
    /// What to run.
    pub function: FunctionSpec,
    /// stdin bytes.
    pub payload: Vec<u8>,
    /// Milliseconds the function may run before it is killed.
    pub timeout_ms: u64,
    /// Its start and run limits (the shard's stages are over by now).
    #[serde(default)]
    pub limits: crate::StageLimits,
    /// The store key of its idempotency key, if it has one: such an invocation runs on when
    /// its shard is lost, and its end goes to another shard ([`DispatcherToShard::Orphan`]).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Environment the function gets besides its spec's: its invocation context
    /// ([`context_env`]).
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// What a machine sends back on a class lane when an invocation ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    /// The invocation.
    pub id: InvocationId,
    /// Its result or error.
    pub result: Result<RunReport, InvokeError>,
}

/// The machine's account of one successful run: built once, where the run ends (by the process
/// runner when a one-shot process is reaped, by the machine scheduler when a warm instance
/// answers), completed by the machine scheduler with what only it knows (cold or warm, time to
/// start, time held back, cgroup measurements), and then moved, never copied field by field: into the dispatcher's [`Completion`], and from
/// there into the shard's [`InvocationOutcome`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// What the function wrote to stdout (or answered, for a persistent instance).
    pub output: Vec<u8>,
    /// The function started (its process was spawned, or its request sent), µs since the
    /// epoch on the machine's clock.
    pub started_at_us: u64,
    /// The function finished, µs since the epoch on the machine's clock.
    pub finished_at_us: u64,
    /// Peak resident memory, in bytes.
    pub peak_memory_bytes: u64,
    /// CPU time used, user plus system, in µs (the function's cgroup, else its rusage).
    pub cpu_time_us: u64,
    /// Memory used over the run: the integral of its memory over time, in byte-milliseconds
    /// (sampled; see machine-sched's `meter`). What memory is billed by.
    #[serde(default)]
    pub memory_byte_ms: u64,
    /// Whether a process had to be started for this invocation (false: a warm instance).
    pub cold_start: bool,
    /// µs from the machine receiving the invocation to the function starting on it (process
    /// creation for a cold start, queueing on the machine for both).
    pub start_us: u64,
    /// µs the function was runnable but held back by dearer work (preempted or queued).
    pub preempted_us: u64,
    /// What memory pressure cost this run: bytes swapped out and back in, and time held
    /// stopped for memory. Zero when the machine had memory to spare.
    #[serde(default)]
    pub memory: MemoryPressure,
}

/// What memory pressure on its machine cost one run (issue 15): the machine swaps out the
/// memory of cheaper classes' stopped functions rather than kill them, and a caller should see
/// what that cost its call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPressure {
    /// Bytes of the function's memory the machine paged out to swap while it was stopped.
    pub swapped_out_bytes: u64,
    /// Bytes of the function's memory brought back from swap after it resumed.
    pub swapped_in_bytes: u64,
    /// µs the function was held stopped, waiting for memory.
    pub held_us: u64,
}

/// A change one shard wrote to the store, passed on so peers refresh their caches now rather
/// than at their next miss.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerNotice {
    /// A function was deployed or replaced.
    FunctionChanged {
        /// Its name.
        name: String,
        /// Its new version.
        version: u64,
    },
    /// A function was removed.
    FunctionRemoved {
        /// Its name.
        name: String,
    },
    /// A tenant or a token was added, rotated or removed: cached credentials are stale.
    CredentialsChanged,
}

/// Current time in microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
