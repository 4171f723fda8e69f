//! The subcommands that run a server or talk to one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tariff_cluster::client::{Client, ClientError};
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
    /// Invocations queued beyond which new ones are refused as overloaded.
    #[arg(long, default_value_t = tariff_policy::shard::DEFAULT_MAX_QUEUED)]
    max_queued: usize,
    /// Largest payload accepted.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    max_payload: u64,
    /// Shard id (the high bits of invocation ids); random if not given.
    #[arg(long)]
    shard_id: Option<u16>,
    /// `tariff` (price classes), or a class-blind baseline for comparison: `fifo` or `hermod`.
    #[arg(long, value_enum, default_value_t)]
    policy: Policy,
    /// Where the function registry lives: `sqlite:PATH`, or `etcd:http://HOST:2379[,...]` for
    /// shards on several machines. Default: SQLite in the cluster directory.
    #[arg(long)]
    store: Option<String>,
}

/// `tariff dispatcher`.
#[derive(Args, Debug)]
pub struct DispatcherArgs {
    /// Shards to serve (comma separated).
    #[arg(long, value_delimiter = ',', required = true)]
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
}

/// A shard to talk to.
#[derive(Args, Debug)]
pub struct ShardAddr {
    /// Shard address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    shard: SocketAddr,
}

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
    /// Tenant paying.
    #[arg(long, default_value = "default")]
    tenant: String,
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
}

pub async fn shard(global: &Global, args: ShardArgs) -> anyhow::Result<()> {
    let cluster = global.open_cluster()?;
    let store = tariff_cluster::store::open(args.store.as_deref(), &cluster.store_path())
        .context("opening the cluster store")?;
    let options = ShardOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        shard_id: args.shard_id.unwrap_or_else(rand::random),
        classes: args.classes,
        policy: {
            let defaults = ShardConfig::for_policy(args.policy);
            ShardConfig {
                k: args.k,
                aging: args.aging,
                max_queued: args.max_queued,
                use_idle_list: defaults.use_idle_list && !args.no_idle_list,
                ..defaults
            }
        },
        peers: args.peers,
        max_payload_bytes: args.max_payload as usize,
        default_timeout: tariff_scheduler::server::DEFAULT_TIMEOUT,
    };
    let shard = Shard::bind(&cluster, store, options).context("starting the shard")?;
    println!("tariff shard listening on {}", shard.local_addr());
    shard.run(crate::shutdown_signal()).await;
    Ok(())
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
        shards: args.shards,
        cores: args.cores,
        memory_bytes: args.memory,
        slots: args.slots.unwrap_or(args.cores).max(1),
        data_dir: args.data_dir,
        k: args.k,
        policy: args.policy,
    };
    let scheduler = tariff_machine_sched::machine::MachineScheduler::new(machine_options);
    let dispatcher =
        Dispatcher::new(&cluster, options, scheduler).context("starting the dispatcher")?;
    dispatcher.run(crate::shutdown_signal()).await;
    Ok(())
}

async fn connect(global: &Global, addr: SocketAddr) -> anyhow::Result<Client> {
    let cluster = global.open_cluster()?;
    Ok(Client::connect(&cluster, addr).await?)
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
    };
    spec.validate()?;
    let client = connect(global, args.shard.shard).await?;
    match client.request(ClientRequest::Deploy(spec)).await? {
        ClientResponse::Deployed { name, version } => {
            println!("deployed {name} (version {version})");
            Ok(())
        }
        ClientResponse::Refused(reason) => bail!("deploy refused: {reason}"),
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
    let client = match connect(global, args.shard.shard).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_UNREACHABLE;
        }
    };
    let request = InvokeRequest {
        function: args.function,
        class: args.class,
        tenant: args.tenant,
        payload,
        timeout_ms: args.timeout.map_or(0, |t| t.as_millis() as u64),
    };
    match client.invoke(request).await {
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
    let client = connect(global, args.shard).await?;
    match client.request(ClientRequest::ListFunctions).await? {
        ClientResponse::Functions(specs) => {
            for spec in specs {
                println!(
                    "{}\tv{}\t{}",
                    spec.name,
                    spec.version,
                    shell_words::join(&spec.command)
                );
            }
            Ok(())
        }
        ClientResponse::Refused(reason) => bail!("{reason}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub async fn status(global: &Global, args: ShardAddr) -> anyhow::Result<()> {
    let client = connect(global, args.shard).await?;
    match client.request(ClientRequest::Status).await? {
        ClientResponse::Status(status) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "shard_id": status.shard_id,
                    "queued": status.classes.iter().zip(&status.queued).map(|(c, q)| (c.clone(), *q)).collect::<std::collections::BTreeMap<_, _>>(),
                    "machines": status.machines,
                    "idle_list": status.idle_list,
                    "in_flight": status.in_flight,
                }))?
            );
            Ok(())
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}
