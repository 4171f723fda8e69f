//! `tariff-bench`: the load harness as its own executable. `tariff bench ARGS` runs it (it is
//! built beside `tariff`), and so does `tariff local --demo`; keeping it out of the `tariff`
//! binary means the service never compiles or links the harness.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tariff_bench::harness::{self, BenchArgs};
use tariff_cluster::cluster::{default_cluster_dir, Cluster, CLUSTER_ENV};

/// Open-loop load against a live cluster, with an optional class-blind baseline measured in
/// the same run (docs/bench.md).
#[derive(Parser, Debug)]
#[command(name = "tariff bench", version)]
struct Cli {
    /// Cluster directory holding the credentials and the embedded store (created if empty).
    #[arg(long, env = CLUSTER_ENV)]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    args: BenchArgs,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only on a terminal, as `tariff` does: logs redirected to files stay greppable.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if !cli.args.cpus.is_empty() {
        // Before the runtime starts, so every thread it and the generator make inherit it.
        if let Err(e) = tariff_machine_sched::rt::set_affinity(0, &cli.args.cpus) {
            eprintln!(
                "error: keeping the harness on CPUs {:?}: {e}",
                cli.args.cpus
            );
            std::process::exit(1);
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // An embedded cluster runs functions in this process: its threads stay above every
    // function's real-time priority, so busy functions cannot starve them (a no-op without
    // CAP_SYS_NICE; the dispatchers then report user-space ordering).
    if cli.args.runs_functions() {
        builder.on_thread_start(|| {
            let _ = tariff_machine_sched::rt::raise_current_thread();
        });
    }
    let runtime = builder.build().expect("starting the tokio runtime");
    if cli.args.runs_functions() {
        // `block_on` runs the harness and the embedded cluster's start on this thread, and
        // threads started from it (the shard's ledger) take its scheduling.
        let _ = tariff_machine_sched::rt::raise_current_thread();
    }
    let result = runtime.block_on(async {
        let dir = cli.cluster.clone().unwrap_or_else(default_cluster_dir);
        // An embedded cluster may be the first in the directory; a running one must be there.
        let cluster = if cli.args.shards.is_empty() {
            Cluster::init(&dir)
        } else {
            Cluster::open(&dir)
        }
        .with_context(|| format!("opening cluster directory {}", dir.display()))?;
        harness::run(&cluster, cli.args).await
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
