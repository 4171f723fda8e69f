//! `tariff local`: a whole cluster in one process, for trying Tariff and for the demo.
//!
//! Shards and dispatchers are the same types the standalone commands run, talking over real
//! QUIC on loopback (`tariff-local`); only the process boundary is missing. The example
//! functions are found next to this executable and deployed by name. `--demo` loads the
//! cluster with the load harness (`tariff-bench`, the one load generator) on a workload built
//! from the demo's flags.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tariff_cluster::cluster::Cluster;
use tariff_cluster::tenancy::{admin_token_file, token_file, DEFAULT_TENANT};
use tariff_local::examples::{example_specs, web_specs, EXAMPLE_FUNCTIONS, WEB_FUNCTIONS};
use tariff_local::{harness_binary, LocalCluster, LocalClusterConfig};
use tariff_types::units::parse_size;
use tariff_types::Policy;

use crate::{parse_duration, Global};

/// File name of the demo's workload, written under the cluster directory's `local/`.
const DEMO_WORKLOAD_FILE: &str = "demo.toml";
/// Directory of the demo's report, under the cluster directory's `local/`.
const DEMO_RESULTS_DIR: &str = "demo-results";
/// Longest the demo waits for one invocation (the harness answers `timed_out` after it).
const DEMO_TIMEOUT_MS: u64 = 60_000;

/// `tariff local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Scheduler shards to start.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Dispatchers (simulated machines) to start.
    #[arg(long, default_value_t = 2)]
    dispatchers: usize,
    /// Cores per dispatcher.
    #[arg(long, default_value_t = 1)]
    cores: u32,
    /// Memory per dispatcher.
    #[arg(long, value_parser = parse_size, default_value = "2G")]
    memory: u64,
    /// Run a short mixed-class load, print a per-class latency table and exit.
    #[arg(long)]
    demo: bool,
    /// How long the demo's load runs.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    demo_duration: Duration,
    /// Demo load as a multiple of the cluster's capacity (above 1 is overload).
    #[arg(long, default_value_t = 1.5)]
    demo_load: f64,
    /// CPU milliseconds each demo invocation spins.
    #[arg(long, default_value_t = 20)]
    demo_spin_ms: u64,
    /// Run the demo's spins as one-shot processes (`spin`) instead of on warm persistent
    /// instances (`counter`).
    #[arg(long)]
    demo_cold: bool,
    /// Do not use SCHED_FIFO: enforce class order in user space.
    #[arg(long)]
    pub no_rt: bool,
    /// Serve Prometheus metrics from every shard and dispatcher (each on its own port of
    /// 127.0.0.1, printed at start).
    #[arg(long)]
    metrics: bool,
    /// `tariff` (price classes), or a class-blind baseline: `fifo` or `hermod`.
    #[arg(long, value_enum, default_value_t)]
    pub policy: Policy,
    /// Also serve HTTP through `tariff gateway` with this route table, and deploy the
    /// example web application's functions (examples/web/routes.toml; docs/gateway.md).
    #[arg(long, value_name = "ROUTES")]
    gateway: Option<std::path::PathBuf>,
    /// Where the gateway listens (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:0")]
    gateway_listen: std::net::SocketAddr,
}

/// Runs `tariff local`.
pub async fn run(global: &Global, args: LocalArgs) -> anyhow::Result<()> {
    let cluster = global.init_cluster()?;
    if args.demo {
        // Refuse before starting anything if the demo's load generator was not built.
        harness_binary()?;
    }
    let config = LocalClusterConfig {
        shards: args.shards,
        dispatchers: args.dispatchers,
        cores: args.cores,
        memory_bytes: args.memory,
        no_rt: args.no_rt,
        policy: args.policy,
        functions: match &args.gateway {
            Some(_) => [example_specs()?, web_specs()?].concat(),
            None => example_specs()?,
        },
        tenant: DEFAULT_TENANT.into(),
        other_tenants: Vec::new(),
        budget: None,
        fresh: false,
        dir_name: "local".into(),
        metrics: args.metrics,
    };
    let local = LocalCluster::start(&cluster, &config).await?;
    let addrs: Vec<String> = local.shard_addrs.iter().map(ToString::to_string).collect();
    println!("Tariff local cluster");
    println!("  cluster directory: {}", cluster.dir().display());
    println!("  shards:            {}", addrs.join(", "));
    println!(
        "  dispatchers:       {} x {} core(s), {} MiB each; functions run on CPUs {:?}",
        args.dispatchers,
        args.cores,
        args.memory >> 20,
        local.function_cpus
    );
    println!("  policy:            {}", args.policy);
    println!("  price classes:     {}", local.classes);
    println!(
        "  functions:         {} (tenant `{DEFAULT_TENANT}`)",
        EXAMPLE_FUNCTIONS.join(", ")
    );
    println!(
        "  tenant token:      {} (the CLI on this machine uses it by default)",
        token_file(cluster.dir(), DEFAULT_TENANT).display()
    );
    println!(
        "  admin token:       {} (for `tariff tenant`)",
        admin_token_file(cluster.dir()).display()
    );
    for (process, addr) in &local.metrics_addrs {
        println!("  metrics:           http://{addr}/metrics  ({process})");
    }
    let gateway = match &args.gateway {
        Some(routes) => Some(start_gateway(&cluster, &local, routes, &args).await?),
        None => None,
    };
    // Clients find the shards through the records in the cluster directory, so the command
    // needs no address; it needs the directory only when it is not the default one.
    let cluster_flag = match &global.cluster {
        Some(dir) => format!(" --cluster {}", dir.display()),
        None => String::new(),
    };
    println!("try: tariff invoke{cluster_flag} --function echo --class critical --payload hello");
    println!(
        "     tariff status{cluster_flag}   (shards are recorded in {})",
        tariff_cluster::directory::shards_dir(cluster.dir()).display()
    );
    let result = if args.demo {
        demo(&cluster, &local, &args).await
    } else {
        let stop = crate::shutdown_signal();
        println!("running; Ctrl-C to stop");
        stop.await;
        Ok(())
    };
    if let Some((stop, task)) = gateway {
        let _ = stop.send(());
        let _ = task.await;
    }
    local.stop().await;
    result
}

/// Starts the gateway on the local shards, prints its address, and returns what stops it.
async fn start_gateway(
    cluster: &Cluster,
    local: &LocalCluster,
    routes: &std::path::Path,
    args: &LocalArgs,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let mut options = tariff_gateway::GatewayOptions::new(args.gateway_listen, routes.to_owned());
    options.shards = local.shard_addrs.clone();
    let gateway = tariff_gateway::Gateway::bind(cluster.clone(), options)
        .await
        .context("starting the gateway")?;
    crate::gateway::reload_on_sighup(gateway.handle())?;
    let names: Vec<&str> = WEB_FUNCTIONS.iter().map(|(name, ..)| *name).collect();
    println!(
        "  gateway:           http://{}  (routes {}, reloaded on SIGHUP; web functions {})",
        gateway.local_addr(),
        routes.display(),
        names.join(", ")
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async move {
        let _ = stopped.await;
    }));
    Ok((stop, task))
}

/// The demo's workload: every class equally likely, one fixed spin per invocation, arrivals
/// evenly spaced at `demo_load` times what the function CPUs can do, for `demo_duration`.
fn demo_workload(args: &LocalArgs) -> String {
    let (function, payload) = if args.demo_cold {
        ("spin", args.demo_spin_ms.to_string())
    } else {
        ("counter", format!("spin {}", args.demo_spin_ms))
    };
    format!(
        "# Written by `tariff local --demo` from its flags.\n\
         name = \"local-demo\"\n\
         seed = 1\n\
         arrival = \"constant\"\n\
         timeout_ms = {DEMO_TIMEOUT_MS}\n\
         tenant = \"{DEFAULT_TENANT}\"\n\
         \n\
         [[mix]]\n\
         function = \"{function}\"\n\
         payload = \"{payload}\"\n\
         cpu_ms = {spin}\n\
         \n\
         [[phases]]\n\
         name = \"demo\"\n\
         duration_s = {duration}\n\
         load = {load}\n",
        spin = args.demo_spin_ms,
        duration = args.demo_duration.as_secs_f64(),
        load = args.demo_load,
    )
}

/// Runs the load harness against the running cluster on the demo's workload. The harness
/// keeps its threads off the function CPUs, where real-time functions would stall it.
async fn demo(cluster: &Cluster, local: &LocalCluster, args: &LocalArgs) -> anyhow::Result<()> {
    let harness = harness_binary()?;
    let workload = local.dir.join(DEMO_WORKLOAD_FILE);
    std::fs::write(&workload, demo_workload(args))
        .with_context(|| format!("writing {}", workload.display()))?;
    let shards: Vec<String> = local.shard_addrs.iter().map(ToString::to_string).collect();
    let client_cpus: Vec<String> = non_function_cpus(local)
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut command = Command::new(&harness);
    command
        .arg("--cluster")
        .arg(cluster.dir())
        .arg("--workload")
        .arg(&workload)
        .args(["--shards", &shards.join(",")])
        .args([
            "--function-cpus",
            &local.function_cpus.len().max(1).to_string(),
        ])
        .args(["--cluster-policy", args.policy.name()])
        .arg("--out")
        .arg(local.dir.join(DEMO_RESULTS_DIR));
    if !client_cpus.is_empty() {
        command.args(["--cpus", &client_cpus.join(",")]);
    }
    let status = tokio::task::spawn_blocking(move || command.status())
        .await?
        .with_context(|| format!("running {}", harness.display()))?;
    if !status.success() {
        bail!("the load harness failed ({status})");
    }
    Ok(())
}

/// The host's CPUs that run no real-time functions (empty if they may run on every CPU): the
/// cheapest class may run there too, but as a normal (`SCHED_BATCH`) task it only shares them.
fn non_function_cpus(local: &LocalCluster) -> Vec<usize> {
    tariff_machine_sched::rt::allowed_cpus()
        .into_iter()
        .filter(|cpu| !local.real_time_cpus.contains(cpu))
        .collect()
}
