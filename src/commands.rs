//! The subcommands that run a server or talk to one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tariff_cluster::client::{invoke_failover, Client, ClientError, DISCOVERY_TIMEOUT};
use tariff_cluster::directory::{recorded_shards, shards_dir};
use tariff_dispatcher::{Dispatcher, DispatcherOptions};
use tariff_policy::ShardConfig;
use tariff_scheduler::{Shard, ShardOptions};
use tariff_types::function::Runtime;
use tariff_types::units::parse_size;
use tariff_types::wire::{ClientRequest, ClientResponse, InvocationOutcome, InvokeRequest};
use tariff_types::{FunctionSpec, Policy, PriceClasses};

use crate::{exit_code, parse_classes, parse_duration, Global, EXIT_UNREACHABLE};

/// `tariff shard`.
#[derive(Args, Debug)]
pub struct ShardArgs {
    /// Address to listen on (port 0 picks one; the bound address is written to DATA_DIR/shard.addr).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Directory for this shard's files.
    #[arg(long)]
    data_dir: PathBuf,
    /// Other shards, told about deploys at once (comma separated).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Price classes as name=price,... (price per CPU-second); same on every shard.
    #[arg(long, value_parser = parse_classes, default_value = tariff_types::class::DEFAULT_CLASSES)]
    classes: PriceClasses,
    /// Machines polled when the idle list has none with room.
    #[arg(long, default_value_t = tariff_policy::placement::DEFAULT_K)]
    k: usize,
    /// Waiting time that doubles an invocation's priority score (see docs/design.md).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    aging: Duration,
    /// Do not place from the idle list (power-of-k only), as in the paper's latency experiment.
    #[arg(long)]
    no_idle_list: bool,
    /// Invocations queued beyond which new ones of the top class are refused as overloaded;
    /// cheaper classes are refused earlier, the cheapest at half (docs/design.md).
    #[arg(long, default_value_t = tariff_policy::shard::DEFAULT_MAX_QUEUED)]
    max_queued: usize,
    /// Refuse a new top-class invocation whose expected wait (the backlog ahead of it over
    /// the shard's recent completion rate) is longer than this; cheaper classes earlier.
    /// Off unless given.
    #[arg(long, value_parser = parse_duration)]
    max_wait: Option<Duration>,
    /// Largest payload accepted.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    max_payload: u64,
    /// Price of one GB-second of memory actually used, in the unit of class prices (every
    /// class pays the same for memory; docs/billing.md).
    #[arg(long, default_value_t = tariff_types::billing::DEFAULT_MEMORY_PRICE)]
    memory_price: f64,
    /// Shard id (the high bits of invocation ids); if not given, the one in DATA_DIR/shard.id,
    /// chosen at random on the first start.
    #[arg(long)]
    shard_id: Option<u16>,
    /// `tariff` (price classes), or a class-blind baseline for comparison: `fifo` or `hermod`.
    #[arg(long, value_enum, default_value_t)]
    policy: Policy,
    /// Serve Prometheus metrics on this address (`GET /metrics`; e.g. 127.0.0.1:9400, port 0
    /// picks one). Off unless given.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Log every successful invocation at least this slow with its stage timings (errors are
    /// always logged).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    slow: Duration,
    /// Also log one other invocation per this interval, as a sample (0s: none).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    trace_sample: Duration,
    /// Where the function registry lives: `sqlite:PATH`, or `etcd:http://HOST:2379[,...]` for
    /// shards on several machines. Default: SQLite in the cluster directory.
    #[arg(long)]
    store: Option<String>,
    /// Silence after which a dispatcher is taken for lost (its work placed again or answered
    /// "machine lost"); dispatchers send heartbeats four times within it.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    heartbeat_timeout: Duration,
    /// Failures of one function version allowed per minute before it is suspended until
    /// redeployed or the minute passes (0: never suspend).
    #[arg(long, default_value_t = tariff_scheduler::server::DEFAULT_CRASH_BUDGET)]
    crash_budget: u32,
}

/// `tariff dispatcher`.
#[derive(Args, Debug)]
pub struct DispatcherArgs {
    /// Shards to serve (comma separated). Default: the shards recorded in the cluster
    /// directory (those running with the same `--cluster`).
    #[arg(long, value_delimiter = ',')]
    shards: Vec<SocketAddr>,
    /// CPUs functions may use.
    #[arg(long)]
    cores: u32,
    /// Memory functions may use (e.g. 4G).
    #[arg(long, value_parser = parse_size)]
    memory: u64,
    /// Directory for the dispatcher's files and the functions' working directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Invocations at or above one class run at once (default: cores).
    #[arg(long)]
    slots: Option<u32>,
    /// Machine name, unique in the cluster (default: host name and process id).
    #[arg(long)]
    name: Option<String>,
    /// Shards compared when joining an idle list.
    #[arg(long, default_value_t = tariff_dispatcher::service::DEFAULT_K)]
    k: usize,
    /// Do not use SCHED_FIFO: enforce class order in user space (stop and continue signals).
    #[arg(long)]
    pub no_rt: bool,
    /// `tariff` (price classes), or a class-blind baseline: `fifo` (every function at one
    /// priority) or `hermod` (every function at once, time-shared).
    #[arg(long, value_enum, default_value_t)]
    policy: Policy,
    /// Serve Prometheus metrics on this address (`GET /metrics`; port 0 picks one). Off
    /// unless given.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Do not enforce --memory (no limit on the functions' cgroups, no swapping by class):
    /// functions may then meet the kernel's OOM killer.
    #[arg(long)]
    no_memory_limit: bool,
    /// Share of --memory that must be free for the machine to list itself idle.
    #[arg(long, default_value_t = tariff_policy::idle_advert::DEFAULT_IDLE_THRESHOLD)]
    idle_threshold: f64,
    /// Share of --memory free memory must move by to update the idle-list entry.
    #[arg(long, default_value_t = tariff_policy::idle_advert::DEFAULT_SIGNIFICANT_CHANGE)]
    idle_delta: f64,
    /// Share of --memory free below which the cheapest classes' stopped work is swapped out.
    #[arg(long, default_value_t = tariff_machine_sched::memory_guard::DEFAULT_LOW_WATERMARK)]
    swap_low: f64,
    /// Share of --memory free that swapping out restores.
    #[arg(long, default_value_t = tariff_machine_sched::memory_guard::DEFAULT_HIGH_WATERMARK)]
    swap_high: f64,
    /// Share of --memory free below which, with swap exhausted, the cheapest class is killed.
    #[arg(long, default_value_t = tariff_machine_sched::memory_guard::DEFAULT_KILL_WATERMARK)]
    kill_below: f64,
}

/// A shard to talk to.
#[derive(Args, Debug)]
pub struct ShardAddr {
    /// Shard address, or several (comma separated): the first that answers is used, and
    /// `invoke` fails over to the others if it is lost mid-call. Default: the shards recorded
    /// in the cluster directory (every running shard records itself there), else
    /// 127.0.0.1:7400.
    #[arg(long, value_delimiter = ',')]
    pub(crate) shard: Vec<SocketAddr>,
}

/// The shard tried when none is given and none is recorded: `tariff shard`'s default.
const DEFAULT_SHARD: &str = "127.0.0.1:7400";

/// `tariff deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    shard: ShardAddr,
    /// Function name.
    #[arg(long)]
    name: String,
    /// Program and arguments, quoted as in a shell: 'PATH ARGS...'.
    #[arg(long)]
    command: String,
    /// Environment variable the function sees, as KEY=VALUE (repeatable; nothing else is passed).
    #[arg(long = "env")]
    env: Vec<String>,
    /// `exec`: a process per invocation; `persistent`: a warm instance serving many
    /// invocations over framed stdin/stdout (docs/persistent-functions.md).
    #[arg(long, value_enum, default_value = "exec")]
    runtime: RuntimeKind,
    /// How long an idle persistent instance stays warm.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    keep_alive: Duration,
    /// Let another tenant invoke, list and replace this function (repeatable or comma
    /// separated). Only the owner's deploys change this list.
    #[arg(long, value_delimiter = ',')]
    share_with: Vec<String>,
    /// Times an invocation is placed again when its machine is lost while running it. Only
    /// for functions safe to run twice: a lost machine may have done part of the work.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    #[command(flatten)]
    limits: StageLimitArgs,
}

/// Limits on each stage of an invocation's life (docs/failures.md); each passes with an
/// error of its own. On `deploy` they are the function's; on `invoke` they win over it.
#[derive(Args, Debug, Default)]
pub struct StageLimitArgs {
    /// Longest wait in the shard's queue (e.g. 500ms).
    #[arg(long, value_parser = parse_duration)]
    queue_timeout: Option<Duration>,
    /// Longest time finding a machine with room.
    #[arg(long, value_parser = parse_duration)]
    placement_timeout: Option<Duration>,
    /// Longest wait on the machine for a CPU, launch included.
    #[arg(long, value_parser = parse_duration)]
    start_timeout: Option<Duration>,
    /// Longest run: a function still running then is killed.
    #[arg(long, value_parser = parse_duration)]
    run_timeout: Option<Duration>,
}

impl StageLimitArgs {
    /// The limits as the wire carries them (0: none of its own).
    pub fn limits(&self) -> tariff_types::StageLimits {
        let ms = |d: Option<Duration>| d.map_or(0, |d| (d.as_millis() as u64).max(1));
        tariff_types::StageLimits {
            queue_ms: ms(self.queue_timeout),
            placement_ms: ms(self.placement_timeout),
            start_ms: ms(self.start_timeout),
            run_ms: ms(self.run_timeout),
        }
    }
}

/// `tariff remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    #[command(flatten)]
    shard: ShardAddr,
    /// Function name.
    name: String,
}

/// `--runtime` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum RuntimeKind {
    /// A process per invocation.
    Exec,
    /// A warm instance serving many invocations.
    Persistent,
}

/// `tariff invoke`.
#[derive(Args, Debug)]
pub struct InvokeArgs {
    #[command(flatten)]
    shard: ShardAddr,
    /// Function name.
    #[arg(long)]
    function: String,
    /// Price class.
    #[arg(long)]
    class: String,
    /// Payload given to the function on stdin.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// File whose bytes are the payload.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// How long to wait for the answer (e.g. 30s); the shard's default if not given.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print one JSON object with the output and the timings.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: StageLimitArgs,
    /// A key naming this invocation (at most 128 bytes): sent again with the same key, to the
    /// same or another shard, it is answered from the first run rather than run twice
    /// (docs/failures.md gives the window). `tariff invoke` makes one itself when it has
    /// several shards to fail over to.
    #[arg(long)]
    idempotency_key: Option<String>,
}

pub async fn shard(global: &Global, args: ShardArgs) -> anyhow::Result<()> {
    if args.heartbeat_timeout < Duration::from_millis(40) {
        bail!("--heartbeat-timeout must be at least 40ms");
    }
    let cluster = global.init_cluster()?;
    let store = tariff_cluster::store::open(args.store.as_deref(), &cluster.store_path())
        .context("opening the cluster store")?;
    let shard_id = match args.shard_id {
        Some(id) => id,
        None => stable_shard_id(&args.data_dir)?,
    };
    let options = ShardOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        shard_id,
        classes: args.classes,
        policy: {
            let defaults = ShardConfig::for_policy(args.policy);
            ShardConfig {
                k: args.k,
                aging: args.aging,
                max_queued: args.max_queued,
                max_wait: args.max_wait,
                use_idle_list: defaults.use_idle_list && !args.no_idle_list,
                ..defaults
            }
        },
        peers: args.peers,
        max_payload_bytes: args.max_payload as usize,
        memory_price: args.memory_price,
        default_timeout: tariff_scheduler::server::DEFAULT_TIMEOUT,
        metrics: args.metrics,
        slow_threshold: args.slow,
        sample_every: (!args.trace_sample.is_zero()).then_some(args.trace_sample),
        liveness: args.heartbeat_timeout,
        crash_budget: args.crash_budget,
    };
    // Before binding: from the moment the shard records its address, a SIGTERM must stop it
    // cleanly (removing the record) rather than kill it.
    let stop = crate::shutdown_signal();
    let shard = Shard::bind(&cluster, store, options).context("starting the shard")?;
    println!("tariff shard listening on {}", shard.local_addr());
    if let Some(addr) = shard.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    shard.run(stop).await;
    Ok(())
}

/// The shard id kept in `data_dir/shard.id`, chosen at random on first start. Stable across
/// restarts because the shard's ledger and its published spend are keyed by it: a restarted
/// shard with a new id would publish its ledger's totals a second time.
fn stable_shard_id(data_dir: &std::path::Path) -> anyhow::Result<u16> {
    let path = data_dir.join("shard.id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a shard id", path.display()));
    }
    let id: u16 = rand::random();
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, format!("{id}\n")))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The machine's host name, for default machine names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "machine".into())
}

pub async fn dispatcher(global: &Global, args: DispatcherArgs) -> anyhow::Result<()> {
    if args.cores == 0 {
        bail!("--cores must be at least 1");
    }
    let cluster = global.open_cluster()?;
    let shards = if args.shards.is_empty() {
        let recorded = recorded_shards(cluster.dir())?;
        if recorded.is_empty() {
            bail!(
                "no --shards given and no shard recorded in {}: start a shard with the same \
                 --cluster first, or name the shards",
                shards_dir(cluster.dir()).display()
            );
        }
        recorded
    } else {
        args.shards
    };
    let machine = args
        .name
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let machine_options = tariff_dispatcher::machine_setup::machine_options(
        args.cores,
        args.no_rt,
        args.policy,
        &args.data_dir,
        &machine,
    )?;
    let options = DispatcherOptions {
        machine,
        shards,
        cores: args.cores,
        memory_bytes: args.memory,
        slots: args.slots.unwrap_or(args.cores).max(1),
        data_dir: args.data_dir,
        k: args.k,
        policy: args.policy,
        metrics: args.metrics,
        memory: tariff_dispatcher::service::MemorySettings {
            enforce: !args.no_memory_limit,
            idle_threshold: args.idle_threshold,
            idle_significant: args.idle_delta,
            low_watermark: args.swap_low,
            high_watermark: args.swap_high,
            kill_watermark: args.kill_below,
        },
    };
    let stop = crate::shutdown_signal();
    let scheduler = tariff_machine_sched::machine::MachineScheduler::new(machine_options);
    let dispatcher =
        Dispatcher::new(&cluster, options, scheduler).context("starting the dispatcher")?;
    if let Some(addr) = dispatcher.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    dispatcher.run(stop).await;
    Ok(())
}

/// Connects as the tenant (see [`Global::token`]) to the shard given, or else to the first
/// of the cluster directory's recorded shards that answers (all tried at once, for at most
/// [`DISCOVERY_TIMEOUT`]). When none answers the error lists every address tried and where
/// they were read from.
async fn connect(global: &Global, given: &[SocketAddr]) -> anyhow::Result<Client> {
    connect_with(global, given, global.token()?).await
}

/// The shards to try: those given, else those recorded in the cluster directory, else the
/// default address; and whether they came from the records.
fn shard_candidates(
    cluster: &tariff_cluster::cluster::Cluster,
    given: &[SocketAddr],
) -> anyhow::Result<(Vec<SocketAddr>, bool)> {
    if !given.is_empty() {
        return Ok((given.to_vec(), false));
    }
    let recorded = recorded_shards(cluster.dir())?;
    if recorded.is_empty() {
        return Ok((vec![DEFAULT_SHARD.parse().expect("a valid address")], false));
    }
    Ok((recorded, true))
}

/// [`connect`] presenting `token`.
pub(crate) async fn connect_with(
    global: &Global,
    given: &[SocketAddr],
    token: Option<tariff_types::Token>,
) -> anyhow::Result<Client> {
    let cluster = global.open_cluster()?;
    if let [addr] = given {
        return Ok(Client::connect(&cluster, *addr, token).await?);
    }
    let (addrs, recorded) = shard_candidates(&cluster, given)?;
    match Client::connect_first(&cluster, &addrs, DISCOVERY_TIMEOUT, token).await {
        Ok((client, addr)) => {
            tracing::debug!(%addr, "connected to a recorded shard");
            Ok(client)
        }
        Err(error) => {
            let records = shards_dir(cluster.dir());
            let hint = if !given.is_empty() {
                "check the --shard addresses".to_owned()
            } else if recorded {
                format!(
                    "the addresses come from {}; their shards may have stopped without \
                     cleaning up",
                    records.display()
                )
            } else {
                format!(
                    "no shard is recorded in {}: start one with `tariff local` or \
                     `tariff shard` (with the same --cluster), or pass --shard",
                    records.display()
                )
            };
            Err(anyhow::anyhow!("{error}\n  {hint}"))
        }
    }
}

pub async fn deploy(global: &Global, args: DeployArgs) -> anyhow::Result<()> {
    let command = shell_words::split(&args.command)
        .with_context(|| format!("parsing --command {:?}", args.command))?;
    let mut env = Vec::new();
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair:?} is not KEY=VALUE"))?;
        env.push((key.to_owned(), value.to_owned()));
    }
    let runtime = match args.runtime {
        RuntimeKind::Exec => Runtime::Exec,
        RuntimeKind::Persistent => Runtime::Persistent {
            keep_alive_ms: args.keep_alive.as_millis() as u64,
        },
    };
    let spec = FunctionSpec {
        name: args.name,
        command,
        env,
        version: 0,
        runtime,
        owner: String::new(),
        shared_with: args.share_with,
        retries: args.retries,
        limits: args.limits.limits(),
    };
    spec.validate()?;
    let client = connect(global, &args.shard.shard).await?;
    match client.request(ClientRequest::Deploy(spec)).await? {
        ClientResponse::Deployed { name, version } => {
            println!("deployed {name} (version {version})");
            Ok(())
        }
        ClientResponse::Refused(reason) => bail!("deploy refused: {reason}"),
        ClientResponse::Denied(denied) => Err(anyhow::Error::new(denied).context("deploy refused")),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub async fn remove(global: &Global, args: RemoveArgs) -> anyhow::Result<()> {
    let client = connect(global, &args.shard.shard).await?;
    match client
        .request(ClientRequest::RemoveFunction(args.name.clone()))
        .await?
    {
        ClientResponse::Removed(name) => {
            println!("removed {name}");
            Ok(())
        }
        ClientResponse::Refused(reason) => bail!("remove refused: {reason}"),
        ClientResponse::Denied(denied) => Err(anyhow::Error::new(denied).context("remove refused")),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub async fn invoke(global: &Global, args: InvokeArgs) -> i32 {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("error: reading {}: {e}", path.display());
                return 1;
            }
        },
        (None, None) => Vec::new(),
    };
    let request = InvokeRequest {
        function: args.function,
        class: args.class,
        payload,
        timeout_ms: args.timeout.map_or(0, |t| t.as_millis() as u64),
        limits: args.limits.limits(),
        idempotency_key: args.idempotency_key,
    };
    let answer = match invocation_context(global, args.shard.shard.first().copied()) {
        Some(context) => match context.connect().await {
            Ok(client) => client.invoke(request).await,
            Err(e) => {
                eprintln!("error: {e:#}");
                return EXIT_UNREACHABLE;
            }
        },
        None => match invoke_anywhere(global, &args.shard.shard, request).await {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!("error: {e:#}");
                return EXIT_UNREACHABLE;
            }
        },
    };
    match answer {
        Ok(Ok(outcome)) => {
            if args.json {
                println!("{}", outcome_json(&outcome));
            } else {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&outcome.run.output);
            }
            0
        }
        Ok(Err(error)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "error": error.kind(), "message": error.to_string() })
                );
            }
            eprintln!("error: {error}");
            exit_code(&error)
        }
        Err(error) => {
            eprintln!("error: {error}");
            match error {
                ClientError::TimedOut(_) => 7,
                _ => EXIT_UNREACHABLE,
            }
        }
    }
}

/// Invokes through the shards given or recorded: with several, through
/// [`invoke_failover`], which resubmits to another shard (same idempotency key) if the first
/// is lost mid-call. The outer error means no shard could be asked.
async fn invoke_anywhere(
    global: &Global,
    given: &[SocketAddr],
    request: InvokeRequest,
) -> anyhow::Result<Result<Result<InvocationOutcome, tariff_types::InvokeError>, ClientError>> {
    let cluster = global.open_cluster()?;
    let (shards, _) = shard_candidates(&cluster, given)?;
    if shards.len() < 2 {
        let client = connect(global, given).await?;
        return Ok(client.invoke(request).await);
    }
    let answer = invoke_failover(&cluster, &shards, global.token()?, request)
        .await
        .map(|failover| {
            for (shard, reason) in &failover.lost {
                eprintln!(
                    "note: shard {shard} was lost ({reason}); answered by {}",
                    failover.shard
                );
            }
            failover.answer
        });
    Ok(answer)
}

/// The invocation context a running function finds in its environment (see
/// `tariff_types::wire::context_env`): used by `tariff invoke` inside a function when it is
/// given no token of its own, so the call joins the caller's chain.
struct InvocationContext {
    token: tariff_types::Token,
    shard: SocketAddr,
    ca_pem: String,
}

impl InvocationContext {
    async fn connect(self) -> anyhow::Result<Client> {
        let cluster = tariff_cluster::cluster::Cluster::from_ca_pem(&self.ca_pem)?;
        Ok(Client::connect(&cluster, self.shard, Some(self.token)).await?)
    }
}

/// The context, if this process runs inside a function (its environment, or a persistent
/// instance's context file: `tariff_function::context`) and was given no token or cluster of
/// its own (an explicit `--token`, `TARIFF_TOKEN` or `--cluster` wins).
fn invocation_context(global: &Global, shard: Option<SocketAddr>) -> Option<InvocationContext> {
    use tariff_function::context;
    if global.token.is_some()
        || global.cluster.is_some()
        || std::env::var_os(tariff_cluster::tenancy::TOKEN_ENV).is_some()
    {
        return None;
    }
    let current = context::current()?;
    let shard = match shard {
        Some(addr) => addr,
        None => current.get(context::SHARD_ENV)?.parse().ok()?,
    };
    Some(InvocationContext {
        token: tariff_types::Token::new(current.get(context::INVOCATION_ENV)?),
        shard,
        ca_pem: current.get(context::CA_ENV)?.to_owned(),
    })
}

/// The `--json` form of a successful invocation.
pub fn outcome_json(outcome: &InvocationOutcome) -> serde_json::Value {
    let t = outcome.timings();
    serde_json::json!({
        "id": outcome.id.to_string(),
        "output": String::from_utf8_lossy(&outcome.run.output),
        "machine": outcome.machine,
        "peak_memory_bytes": outcome.run.peak_memory_bytes,
        "cpu_time_us": outcome.run.cpu_time_us,
        "cold_start": outcome.run.cold_start,
        "start_us": outcome.run.start_us,
        "preempted_us": outcome.run.preempted_us,
        "attempts": outcome.attempts,
        "replayed": outcome.replayed,
        "memory_byte_ms": outcome.run.memory_byte_ms,
        "chain": {
            "root": outcome.chain.root.map(|id| id.to_string()),
            "parent": outcome.chain.parent.map(|id| id.to_string()),
            "depth": outcome.chain.depth,
        },
        "cost": {
            "class": outcome.cost.class,
            "cpu_seconds": outcome.cost.cpu_seconds,
            "gb_seconds": outcome.cost.gb_seconds,
            "cpu_charge": outcome.cost.cpu_charge,
            "memory_charge": outcome.cost.memory_charge,
            "total": outcome.cost.total,
        },
        "timings": {
            "queued_at_us": t.queued_at_us,
            "placed_at_us": t.placed_at_us,
            "started_at_us": t.started_at_us,
            "finished_at_us": t.finished_at_us,
            "queued_us": t.queued_us(),
            "start_us": t.start_us(),
            "run_us": t.run_us(),
        },
    })
}

pub async fn functions(global: &Global, args: ShardAddr) -> anyhow::Result<()> {
    let client = connect(global, &args.shard).await?;
    match client.request(ClientRequest::ListFunctions).await? {
        ClientResponse::Functions(specs) => {
            for spec in specs {
                let shared = if spec.shared_with.is_empty() {
                    String::new()
                } else {
                    format!("\tshared with {}", spec.shared_with.join(","))
                };
                println!(
                    "{}\tv{}\towner {}\t{}{shared}",
                    spec.name,
                    spec.version,
                    spec.owner,
                    shell_words::join(&spec.command)
                );
            }
            Ok(())
        }
        ClientResponse::Refused(reason) => bail!("{reason}"),
        ClientResponse::Denied(denied) => Err(denied.into()),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `tariff status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Ask only this shard. Default: every shard recorded in the cluster directory.
    #[arg(long)]
    shard: Option<SocketAddr>,
    /// Print one JSON object (one per refresh with --watch) for scripts.
    #[arg(long)]
    json: bool,
    /// Refresh every INTERVAL (default 1s), like `top`, until interrupted.
    #[arg(long, value_parser = parse_duration, num_args = 0..=1, default_missing_value = "1s")]
    watch: Option<Duration>,
}

pub async fn status(global: &Global, args: StatusArgs) -> anyhow::Result<()> {
    let cluster = global.open_cluster()?;
    // A tenant's token, or else the administrator's: both may see the cluster's status.
    let token = match global.token()? {
        Some(token) => Some(token),
        None => global.admin_token()?,
    };
    let addrs = shards_to_ask(&cluster, args.shard)?;
    let Some(every) = args.watch else {
        let view = crate::status::gather(&cluster, &addrs, token.clone()).await?;
        print_status(&view, args.json)?;
        return Ok(());
    };
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        match crate::status::gather(&cluster, &addrs, token.clone()).await {
            Ok(view) => {
                if !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    // Clear the screen and home the cursor, as `top` does; into a pipe or a
                    // file the tables simply follow one another.
                    print!("\x1b[2J\x1b[H");
                }
                print_status(&view, args.json)?;
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The shard given, else every shard recorded in the cluster directory, else the default
/// address: what commands that ask every shard (`status`, `bill`) ask.
fn shards_to_ask(
    cluster: &tariff_cluster::cluster::Cluster,
    given: Option<SocketAddr>,
) -> anyhow::Result<Vec<SocketAddr>> {
    if let Some(addr) = given {
        return Ok(vec![addr]);
    }
    let recorded = recorded_shards(cluster.dir())?;
    Ok(if recorded.is_empty() {
        vec![DEFAULT_SHARD.parse().expect("a valid address")]
    } else {
        recorded
    })
}

fn print_status(view: &crate::status::ClusterView, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let text = if json {
        format!("{}\n", serde_json::to_string(&view.to_json())?)
    } else {
        view.table()
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `tariff bill`.
#[derive(Args, Debug)]
pub struct BillArgs {
    /// Ask only this shard. Default: every shard recorded in the cluster directory.
    #[arg(long)]
    shard: Option<SocketAddr>,
    /// The month, `YYYY-MM` (UTC). Default: the current one.
    #[arg(long)]
    month: Option<String>,
    /// Use the administrator's token (to see the bill of the tenant named by `--tenant`).
    #[arg(long)]
    admin: bool,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// Asks every shard for its part of the bill (each shard bills what it answered, in its own
/// ledger) and prints the sum, itemised by function and class.
pub async fn bill(global: &Global, args: BillArgs) -> anyhow::Result<()> {
    let cluster = global.open_cluster()?;
    let token = if args.admin {
        global.admin_token()?
    } else {
        global.token()?
    };
    let addrs = shards_to_ask(&cluster, args.shard)?;
    let mut total: Option<tariff_types::billing::Bill> = None;
    for addr in addrs {
        let client = Client::connect(&cluster, addr, token.clone()).await?;
        let request = ClientRequest::Bill {
            tenant: global.tenant.clone(),
            month: args.month.clone(),
        };
        let part = match client.request(request).await? {
            ClientResponse::Bill(part) => part,
            ClientResponse::Refused(reason) => bail!("refused: {reason}"),
            ClientResponse::Denied(denied) => return Err(denied.into()),
            other => bail!("unexpected answer: {other:?}"),
        };
        match &mut total {
            Some(bill) => bill.merge(part),
            None => total = Some(part),
        }
    }
    let bill = total.unwrap_or_default();
    if args.json {
        let lines: Vec<_> = bill
            .lines
            .iter()
            .map(|l| {
                serde_json::json!({
                    "function": l.function, "class": l.class, "invocations": l.invocations,
                    "cpu_seconds": l.cpu_seconds, "gb_seconds": l.gb_seconds, "total": l.total,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "tenant": bill.tenant, "month": bill.month, "lines": lines, "total": bill.total(),
            })
        );
        return Ok(());
    }
    println!("bill for tenant {} in {}", bill.tenant, bill.month);
    println!(
        "{:<24} {:<10} {:>11} {:>14} {:>14} {:>14}",
        "function", "class", "invocations", "cpu_s", "gb_s", "amount"
    );
    for l in &bill.lines {
        println!(
            "{:<24} {:<10} {:>11} {:>14.6} {:>14.6} {:>14.6}",
            l.function, l.class, l.invocations, l.cpu_seconds, l.gb_seconds, l.total
        );
    }
    println!(
        "{:<24} {:<10} {:>11} {:>14} {:>14} {:>14.6}",
        "total",
        "",
        "",
        "",
        "",
        bill.total()
    );
    Ok(())
}
