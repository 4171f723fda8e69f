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
use tariff_types::PriceClasses;

mod commands;
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
    /// Cluster directory holding the credentials and the embedded store (created if empty).
    #[arg(long, global = true, env = CLUSTER_ENV)]
    cluster: Option<PathBuf>,
}

impl Global {
    fn cluster_dir(&self) -> PathBuf {
        self.cluster.clone().unwrap_or_else(default_cluster_dir)
    }

    fn open_cluster(&self) -> anyhow::Result<Cluster> {
        let dir = self.cluster_dir();
        Cluster::open(&dir).with_context(|| format!("opening cluster directory {}", dir.display()))
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
    /// List registered functions.
    Functions(commands::ShardAddr),
    /// Show the cluster at a glance: every shard and dispatcher, queues, throughput.
    Status(commands::StatusArgs),
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
        Command::Shard(_) | Command::Dispatcher(_) | Command::Local(_)
    );
    init_tracing(if servers { "info" } else { "warn" });
    let code = match cli.command {
        Command::Sim(args) => report(tariff_sim::run(&args)),
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
            runtime.block_on(run(cli.global, command))
        }
    };
    std::process::exit(code);
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(global: Global, command: Command) -> i32 {
    match command {
        Command::Shard(args) => report(commands::shard(&global, args).await),
        Command::Dispatcher(args) => report(commands::dispatcher(&global, args).await),
        Command::Deploy(args) => report(commands::deploy(&global, args).await),
        Command::Invoke(args) => commands::invoke(&global, args).await,
        Command::Functions(args) => report(commands::functions(&global, args).await),
        Command::Status(args) => report(commands::status(&global, args).await),
        Command::Local(args) => report(local::run(&global, args).await),
        Command::Sim(_) | Command::Bench { .. } => {
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
        E::TimedOut(_) | E::Cancelled => 7,
        E::MachineLost(_) => 8,
        E::FunctionFailed { .. } | E::StartFailed(_) => 9,
        E::Protocol(_) => 11,
    }
}

/// Exit status when no shard could be reached.
pub const EXIT_UNREACHABLE: i32 = 10;
