//! `tariff local`: a whole cluster in one process, for trying Tariff and for the demo.
//!
//! Shards and dispatchers are the same types the standalone commands run, talking over real
//! QUIC on loopback; only the process boundary is missing. The example functions are found
//! next to this executable (built by `cargo build --workspace`) and deployed by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use tariff_cluster::client::Client;
use tariff_types::function::Runtime;
use tariff_types::units::parse_size;
use tariff_types::wire::InvokeRequest;
use tariff_types::FunctionSpec;

use crate::{parse_duration, Global, Policy};
use tariff_local::{LocalCluster, LocalClusterConfig};

/// The example functions deployed into a local cluster, by binary name.
pub const EXAMPLE_FUNCTIONS: [&str; 6] = ["echo", "sleep", "spin", "alloc", "fail", "counter"];
/// How long the persistent example stays warm when idle.
const COUNTER_KEEP_ALIVE_MS: u64 = 60_000;

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
    /// `tariff` (price classes) or `fifo` (the class-blind baseline).
    #[arg(long, value_enum, default_value = "tariff")]
    pub policy: Policy,
}

/// Where the example function binaries are: beside the running executable.
fn examples_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the tariff executable")?;
    let dir = exe
        .parent()
        .context("the executable has no directory")?
        .to_owned();
    // `cargo test` runs binaries from target/<profile>/deps; the examples are one level up.
    if dir.ends_with("deps") {
        return Ok(dir.parent().map(Path::to_owned).unwrap_or(dir));
    }
    Ok(dir)
}

/// Specs for the example functions, refusing clearly if they were not built.
pub fn example_specs() -> anyhow::Result<Vec<FunctionSpec>> {
    let dir = examples_dir()?;
    EXAMPLE_FUNCTIONS
        .iter()
        .map(|name| {
            let path = dir.join(name);
            if !path.exists() {
                bail!(
                    "example function {} is missing: build them with `cargo build --release --workspace`",
                    path.display()
                );
            }
            let runtime = if *name == "counter" {
                Runtime::Persistent {
                    keep_alive_ms: COUNTER_KEEP_ALIVE_MS,
                }
            } else {
                Runtime::Exec
            };
            Ok(FunctionSpec {
                name: (*name).to_owned(),
                command: vec![path.to_string_lossy().into_owned()],
                env: Vec::new(),
                version: 0,
                runtime,
            })
        })
        .collect()
}

pub async fn run(global: &Global, args: LocalArgs) -> anyhow::Result<()> {
    let cluster = global.open_cluster()?;
    let config = LocalClusterConfig {
        shards: args.shards,
        dispatchers: args.dispatchers,
        cores: args.cores,
        memory_bytes: args.memory,
        no_rt: args.no_rt,
        policy: args.policy.into(),
        functions: example_specs()?,
        dir_name: "local".into(),
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
    println!("  policy:            {:?}", args.policy);
    println!("  price classes:     {}", local.classes);
    println!("  functions:         {}", EXAMPLE_FUNCTIONS.join(", "));
    println!(
        "try: tariff invoke --cluster {} --shard {} --function echo --class critical --payload hello",
        cluster.dir().display(),
        addrs[0]
    );
    let result = if args.demo {
        demo(&cluster, &local, &args).await
    } else {
        println!("running; Ctrl-C to stop");
        crate::shutdown_signal().await;
        Ok(())
    };
    local.stop().await;
    result
}

/// Per-class results of the demo.
#[derive(Default)]
struct ClassResult {
    latency_us: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    /// Sums over successful invocations: shard queue, machine start, run, preempted (µs).
    stages_us: [u64; 4],
}

/// Open-loop mixed-class load: every class equally likely, a fixed spin per invocation,
/// arrivals evenly spaced at `demo_load` times the cluster's capacity. Latency is measured
/// from each invocation's scheduled send time.
async fn demo(
    cluster: &tariff_cluster::cluster::Cluster,
    local: &LocalCluster,
    args: &LocalArgs,
) -> anyhow::Result<()> {
    let classes = &local.classes;
    let function_cpus = local.function_cpus.len();
    let mut clients = Vec::new();
    for &addr in &local.shard_addrs {
        clients.push(Client::connect(cluster, addr).await?.with_session().await?);
    }
    // Capacity is what the function CPUs can do: dispatchers in one process share the
    // host's CPUs, and in real-time mode one CPU is kept away from functions.
    let capacity_per_sec = function_cpus.max(1) as f64 * 1000.0 / args.demo_spin_ms as f64;
    let rate = capacity_per_sec * args.demo_load;
    let total = (rate * args.demo_duration.as_secs_f64()).ceil() as u64;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let (function, payload) = if args.demo_cold {
        ("spin", args.demo_spin_ms.to_string())
    } else {
        ("counter", format!("spin {}", args.demo_spin_ms))
    };
    println!(
        "demo: {total} invocations of `{function}` ({} ms of CPU each) over {:?} at {:.0}/s = \
         {:.1}x the capacity of {function_cpus} function CPU(s); classes mixed evenly",
        args.demo_spin_ms, args.demo_duration, rate, args.demo_load
    );
    let names: Vec<String> = classes.names().map(str::to_owned).collect();
    let start = tokio::time::Instant::now();
    let mut handles = Vec::new();
    for n in 0..total {
        let scheduled = start + gap.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled).await;
        let client = clients[n as usize % clients.len()].clone();
        let class = names[n as usize % names.len()].clone();
        let request = InvokeRequest {
            function: function.into(),
            class: class.clone(),
            tenant: "demo".into(),
            payload: payload.clone().into_bytes(),
            timeout_ms: 60_000,
        };
        handles.push(tokio::spawn(async move {
            let answer = client.invoke(request).await;
            (class, scheduled.elapsed(), answer)
        }));
    }
    let mut results: BTreeMap<String, ClassResult> = BTreeMap::new();
    for handle in handles {
        let (class, latency, answer) = handle.await?;
        let entry = results.entry(class).or_default();
        match answer {
            Ok(Ok(outcome)) => {
                let t = outcome.timings();
                let stages = [
                    t.queued_us(),
                    outcome.run.start_us,
                    t.run_us(),
                    outcome.run.preempted_us,
                ];
                for (sum, value) in entry.stages_us.iter_mut().zip(stages) {
                    *sum += value;
                }
                let histogram = entry.latency_us.get_or_insert_with(|| {
                    Histogram::new(3).expect("3 significant digits is valid")
                });
                let _ = histogram.record(latency.as_micros() as u64);
            }
            Ok(Err(e)) => *entry.errors.entry(e.kind().into()).or_default() += 1,
            Err(e) => *entry.errors.entry(format!("client: {e}")).or_default() += 1,
        }
    }
    println!();
    println!(
        "{:<10} {:>6} {:>9} {:>9} {:>9} {:>9} | mean ms: {:>7} {:>7} {:>7} {:>7}  errors",
        "class", "ok", "p50 ms", "p90 ms", "p99 ms", "max ms", "queue", "start", "run", "preempt"
    );
    for name in &names {
        let Some(result) = results.get(name) else {
            continue;
        };
        let ms = |q: f64| {
            result
                .latency_us
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        let ok = result.latency_us.as_ref().map_or(0, Histogram::len);
        let mean = |i: usize| result.stages_us[i] as f64 / ok.max(1) as f64 / 1000.0;
        let errors: Vec<String> = result
            .errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let errors = if errors.is_empty() {
            "-".to_owned()
        } else {
            errors.join(" ")
        };
        println!(
            "{:<10} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} |          {:>7.1} {:>7.1} {:>7.1} {:>7.1}  {errors}",
            name,
            ok,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(1.0),
            mean(0),
            mean(1),
            mean(2),
            mean(3),
        );
    }
    Ok(())
}
