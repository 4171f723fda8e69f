//! `tariff`: the one binary. Subcommands run a shard, a dispatcher, an embedded local cluster
//! or the simulator, and talk to a running cluster (deploy, invoke, status).
//!
//! Library errors are typed; this binary adds context with `anyhow` and maps invocation
//! errors to distinct exit codes (see [`exit_code`]) so scripts can tell them apart.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tariff_cluster::cluster::{default_cluster_dir, Cluster, CLUSTER_ENV};
use tariff_cluster::tenancy::{resolve_admin_token, resolve_token, DEFAULT_TENANT};
use tariff_types::tenant::Token;
use tariff_types::PriceClasses;

mod admin;
mod commands;
mod gateway;
mod local;
mod status;

/// Tariff: a price-class priority scheduler for serverless functions.
#[derive(Parser, Debug)]
#[command(name = "tariff", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand shares.
#[derive(Args, Debug, Clone)]
struct Global {
    /// Cluster directory holding the CA certificate, this machine's certificates and token
    /// files, and the embedded store. Servers create it if empty; clients need it made.
    #[arg(long, global = true, env = CLUSTER_ENV)]
    cluster: Option<PathBuf>,
    /// Tenant token for client commands. Default: the TARIFF_TOKEN environment variable,
    /// else this machine's token file for --tenant (CLUSTER/tokens/TENANT).
    #[arg(long, global = true, value_parser = parse_token)]
    token: Option<Token>,
    /// Which of this machine's tenant token files to use when no token is given (`tariff
    /// local` makes `default`, the default; `tariff tenant add NAME` makes NAME). `tariff
    /// bill` bills this tenant.
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// Administrator token for `tariff tenant`. Default: TARIFF_ADMIN_TOKEN, else
    /// CLUSTER/admin.token (written by the shard that made the cluster).
    #[arg(long, global = true, value_parser = parse_token)]
    admin_token: Option<Token>,
}

fn parse_token(text: &str) -> Result<Token, String> {
    let token = Token::new(text);
    if token.expose_secret().is_empty() {
        return Err("the token is empty".into());
    }
    Ok(token)
}

impl Global {
    fn cluster_dir(&self) -> PathBuf {
        self.cluster.clone().unwrap_or_else(default_cluster_dir)
    }

    /// The cluster as a client sees it: it must exist.
    fn open_cluster(&self) -> anyhow::Result<Cluster> {
        let dir = self.cluster_dir();
        Cluster::open(&dir).with_context(|| format!("opening cluster directory {}", dir.display()))
    }

    /// The cluster as a server sees it: made here if this is the first server.
    fn init_cluster(&self) -> anyhow::Result<Cluster> {
        let dir = self.cluster_dir();
        Cluster::init(&dir).with_context(|| format!("opening cluster directory {}", dir.display()))
    }

    /// The tenant token client commands present (see `--token`).
    fn token(&self) -> anyhow::Result<Option<Token>> {
        let tenant = self.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        Ok(resolve_token(
            self.token.clone(),
            &self.cluster_dir(),
            tenant,
        )?)
    }

    /// The administrator's token (see `--admin-token`).
    fn admin_token(&self) -> anyhow::Result<Option<Token>> {
        Ok(resolve_admin_token(
            self.admin_token.clone(),
            &self.cluster_dir(),
        )?)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scheduler shard.
    Shard(commands::ShardArgs),
    /// Run a dispatcher (one per machine).
    Dispatcher(commands::DispatcherArgs),
    /// Register or replace a function.
    Deploy(commands::DeployArgs),
    /// Invoke a function and print its output.
    Invoke(commands::InvokeArgs),
    /// Remove one of your functions.
    Remove(commands::RemoveArgs),
    /// List the functions you may use (yours and those shared with you).
    Functions(commands::ShardAddr),
    /// A tenant's itemised bill for a month, from every shard's ledger.
    Bill(commands::BillArgs),
    /// Manage tenants (needs the administrator's token).
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// The cluster's authority: issue certificates for other machines, recover the admin.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Show the cluster at a glance: every shard and dispatcher, queues, throughput.
    Status(commands::StatusArgs),
    /// Serve HTTP: route requests to functions at price classes (docs/gateway.md).
    Gateway(gateway::GatewayArgs),
    /// Run an embedded cluster (shards, dispatchers, example functions) in this process.
    Local(local::LocalArgs),
    /// Run the discrete-event simulator of the paper's experiments (docs/simulator.md).
    Sim(tariff_sim::SimArgs),
    /// Open-loop load against a live cluster, with an optional class-blind baseline
    /// (docs/bench.md). Runs `tariff-bench`, built beside this binary: `tariff bench --help`.
    #[command(disable_help_flag = true)]
    Bench {
        /// Everything after `bench`, passed to `tariff-bench` as it is.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Parses `--classes`.
fn parse_classes(text: &str) -> Result<PriceClasses, String> {
    text.parse()
        .map_err(|e: tariff_types::class::ClassError| e.to_string())
}

/// Parses a duration such as `500ms` or `2s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    // Colour codes only where a person reads them: logs redirected to files stay greppable.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM). The handlers are
/// installed when this is called, not when the future is first polled, so a process that
/// says it is ready and then awaits this cannot be killed outright by a signal sent in
/// between (a test stopping `tariff local` right after its "running" line did).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let servers = matches!(
        cli.command,
        Command::Shard(_) | Command::Dispatcher(_) | Command::Local(_) | Command::Gateway(_)
    );
    init_tracing(if servers { "info" } else { "warn" });
    let code = match cli.command {
        Command::Sim(args) => report(tariff_sim::run(&args)),
        Command::Cluster(command) => report(admin::cluster(&cli.global, command)),
        Command::Bench { args } => report(bench(&cli.global, args)),
        command => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all();
            // Processes that run functions keep their own threads above every function's
            // real-time priority, so busy functions can never starve them (no-op without
            // CAP_SYS_NICE; the dispatcher then reports user-space ordering).
            let runs_functions = match &command {
                Command::Dispatcher(args) => !args.no_rt,
                Command::Local(args) => !args.no_rt,
                _ => false,
            };
            if runs_functions {
                builder.on_thread_start(|| {
                    let _ = tariff_machine_sched::rt::raise_current_thread();
                });
            }
            let runtime = builder.build().expect("starting the tokio runtime");
            if runs_functions {
                // `block_on` runs the command on this thread, and threads started from it (a
                // shard's ledger) take its scheduling: above every function too.
                let _ = tariff_machine_sched::rt::raise_current_thread();
            }
            runtime.block_on(run(cli.global, command))
        }
    };
    std::process::exit(code);
}

/// Prints an error and picks the exit status: refusals of who the caller is get the same
/// codes as they do from `invoke`, everything else 1.
fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            let denied = e.chain().find_map(|cause| {
                match cause.downcast_ref::<tariff_cluster::client::ClientError>() {
                    Some(tariff_cluster::client::ClientError::Denied(denied)) => Some(denied),
                    _ => cause.downcast_ref::<tariff_types::AccessError>(),
                }
            });
            match denied {
                Some(tariff_types::AccessError::Unauthenticated(_)) => EXIT_UNAUTHENTICATED,
                Some(tariff_types::AccessError::Forbidden(_)) => EXIT_FORBIDDEN,
                None => 1,
            }
        }
    }
}

async fn run(global: Global, command: Command) -> i32 {
    match command {
        Command::Shard(args) => report(commands::shard(&global, args).await),
        Command::Dispatcher(args) => report(commands::dispatcher(&global, args).await),
        Command::Deploy(args) => report(commands::deploy(&global, args).await),
        Command::Invoke(args) => commands::invoke(&global, args).await,
        Command::Remove(args) => report(commands::remove(&global, args).await),
        Command::Functions(args) => report(commands::functions(&global, args).await),
        Command::Tenant(command) => report(admin::tenant(&global, command).await),
        Command::Bill(args) => report(commands::bill(&global, args).await),
        Command::Status(args) => report(commands::status(&global, args).await),
        Command::Gateway(args) => report(gateway::run(&global, args).await),
        Command::Local(args) => report(local::run(&global, args).await),
        Command::Sim(_) | Command::Bench { .. } | Command::Cluster(_) => {
            unreachable!("the simulator and the harness run without this runtime")
        }
    }
}

/// `tariff bench`: replaces this process with the harness, `tariff-bench`, so its exit status
/// and signals are the caller's to see. The cluster directory is passed on when given.
fn bench(global: &Global, args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let harness = tariff_local::harness_binary()?;
    let mut command = std::process::Command::new(&harness);
    if let Some(dir) = &global.cluster {
        command.arg("--cluster").arg(dir);
    }
    let error = command.args(args).exec();
    Err(error).with_context(|| format!("running {}", harness.display()))
}

/// Exit status for each kind of invocation failure, so scripts can branch on it.
pub fn exit_code(error: &tariff_types::InvokeError) -> i32 {
    use tariff_types::InvokeError as E;
    match error {
        E::UnknownFunction(_) => 3,
        E::BadClass(_) => 4,
        E::PayloadTooLarge { .. } => 5,
        E::Overloaded { .. } | E::OverBudget(_) | E::ShuttingDown => 6,
        // A cancellation is sent only when the caller stopped waiting (its timeout) or the
        // machine shut down mid-run: the function did not fail, its time ran out.
        E::TimedOut(_) | E::StageTimedOut { .. } | E::Cancelled => 7,
        E::MachineLost(_) => 8,
        // Like a lost machine: the function had started and was stopped by the machine.
        E::KilledUnderMemoryPressure => 8,
        E::FunctionFailed { .. } | E::StartFailed(_) => 9,
        E::Protocol(_) => 11,
        E::Unauthenticated(_) => EXIT_UNAUTHENTICATED,
        E::Forbidden(_) => EXIT_FORBIDDEN,
        E::ChainTooDeep { .. } => 14,
        E::Suspended { .. } => 15,
    }
}

/// Exit status when the cluster does not accept the caller's token (none, wrong, revoked).
pub const EXIT_UNAUTHENTICATED: i32 = 12;
/// Exit status when the caller may not do what it asked (another tenant's function, a tenant
/// managing tenants).
pub const EXIT_FORBIDDEN: i32 = 13;

/// Exit status when no shard could be reached.
pub const EXIT_UNREACHABLE: i32 = 10;
