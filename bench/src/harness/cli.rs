//! `tariff bench`: parse the flags, start the cluster(s), run every phase of the workload
//! against each policy in turn, write `report.json`, `cdf.svg`, `over_time.svg` and print
//! the table.
//!
//! With `--compare fifo` the harness starts the embedded cluster twice, one after the other
//! (both would share the same function CPUs): first with Tariff's policy, then class-blind,
//! and replays the identical schedule against each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tariff_cluster::client::Client;
use tariff_cluster::cluster::Cluster;
use tariff_types::units::parse_size;
use tariff_types::wire::{ClientRequest, ClientResponse};
use tariff_types::{Policy, PriceClasses};

use super::chaos::{self, ChaosEvent};
use super::driver::{self, RunContext};
use super::output;
use super::plot;
use super::processes::{ProcessCluster, Servers};
use super::record::{self, BenchReport, ClusterInfo, PolicyReport};
use super::schedule::{self, Plan};
use super::vs_sim;
use super::workload::Workload;
use tariff_cluster::tenancy::resolve_token;
use tariff_local::examples::example_specs;
use tariff_local::{LocalCluster, LocalClusterConfig};
use tariff_types::tenant::Token;

/// File name of the JSON report.
pub const REPORT_FILE: &str = "report.json";
/// File name of the CDF figure.
pub const CDF_FILE: &str = "cdf.svg";
/// File name of the latency-over-time figure.
pub const OVER_TIME_FILE: &str = "over_time.svg";
/// File name of the live-vs-simulated comparison (`--vs-sim`).
pub const VS_SIM_FILE: &str = "vs_sim.json";
/// Default output directory.
pub const DEFAULT_OUT: &str = "bench-results";
/// Default local shards (as `tariff local`).
const DEFAULT_LOCAL_SHARDS: usize = 2;
/// Default local dispatchers (as `tariff local`).
const DEFAULT_DISPATCHERS: usize = 2;
/// Default cores per local dispatcher (as `tariff local`).
const DEFAULT_CORES: u32 = 1;
/// Memory per dispatcher when neither the command line nor the workload says.
const DEFAULT_MEMORY_BYTES: u64 = 2 << 30;
/// Default QUIC connections per shard: quinn handles one connection on one task, so a few
/// spread the client's work over the runtime's threads.
const DEFAULT_CONNECTIONS: usize = 4;
/// Default bound on unanswered invocations.
const DEFAULT_MAX_OUTSTANDING: usize = 100_000;
/// Sub-directory of the cluster directory for each policy's servers: this prefix and the
/// policy's name (`bench-tariff`, `bench-fifo`, `bench-hermod`).
const BENCH_DIR_PREFIX: &str = "bench-";
/// Policy name of a run against a running cluster, whose policy the harness cannot know.
const RUNNING_CLUSTER_POLICY: &str = "cluster";

/// Parses `--compare`: a class-blind baseline, not Tariff itself.
fn parse_baseline(text: &str) -> Result<Policy, String> {
    match text.parse::<Policy>().map_err(|e| e.to_string())? {
        Policy::Tariff => Err("--compare takes a baseline (fifo or hermod), not tariff".into()),
        baseline => Ok(baseline),
    }
}

/// Flags of `tariff bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Workload file (TOML; see bench/workloads/ and docs/bench.md).
    #[arg(long)]
    pub workload: PathBuf,
    /// Shards of a running cluster to load; without it the harness starts an embedded one.
    #[arg(long, value_delimiter = ',')]
    pub shards: Vec<SocketAddr>,
    /// Also run the workload against a class-blind baseline (embedded cluster only).
    #[arg(long, value_parser = parse_baseline)]
    pub compare: Option<Policy>,
    /// Output directory for report.json, cdf.svg and over_time.svg.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Override the workload's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Embedded cluster: shards (default: the workload's, else 2).
    #[arg(long)]
    pub local_shards: Option<usize>,
    /// Embedded cluster: dispatchers (default: the workload's, else 2).
    #[arg(long)]
    pub dispatchers: Option<usize>,
    /// Embedded cluster: cores per dispatcher (default: the workload's, else 1).
    #[arg(long)]
    pub cores: Option<u32>,
    /// Embedded cluster: memory per dispatcher (default: the workload's, else 2G).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Embedded cluster: enforce class order in user space instead of SCHED_FIFO.
    #[arg(long)]
    pub no_rt: bool,
    /// Running cluster: CPUs its functions run on, to size `load` phases.
    #[arg(long)]
    pub function_cpus: Option<usize>,
    /// Running cluster: deploy the example functions first.
    #[arg(long)]
    pub deploy_examples: bool,
    /// QUIC connections per shard.
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// Unanswered invocations beyond which the generator counts `client_overload` instead
    /// of sending.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTSTANDING)]
    pub max_outstanding: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Running cluster: the policy it runs, to name it in the report (the harness cannot
    /// check it; without this flag the run is called `cluster`).
    #[arg(long, value_enum)]
    pub cluster_policy: Option<Policy>,
    /// Tenant token for a running cluster (`--shards`); else `TARIFF_TOKEN`, else the
    /// cluster directory's token file for the workload's tenant. An embedded cluster makes
    /// its own.
    #[arg(long, value_parser = parse_token)]
    pub token: Option<Token>,
    /// CPUs the harness's own threads run on (default: wherever the kernel puts them). Keep
    /// the harness off CPUs that real-time functions keep busy, or it measures its own stalls.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Kill a dispatcher or shard process during the run: `kill-dispatcher@5s`,
    /// `kill-shard@2.5s` (from the start of the first reported phase; repeat for more). The
    /// cluster then runs as separate processes, and the report counts answered, placed again,
    /// failed, cut off and lost calls (docs/bench.md).
    #[arg(long)]
    pub chaos: Vec<ChaosEvent>,
    /// Embedded cluster: also replay the schedule through the simulator (`tariff sim`'s
    /// Tariff, on a model of this cluster, with the dispatch overhead measured in this run)
    /// and print live and simulated p50/p99 per class side by side; writes vs_sim.json.
    #[arg(long)]
    pub vs_sim: bool,
}

impl BenchArgs {
    /// Whether this run starts dispatchers in this process at real-time priority (the
    /// binary then raises its runtime threads above every function).
    pub fn runs_functions(&self) -> bool {
        self.shards.is_empty() && !self.no_rt && self.chaos.is_empty()
    }
}

fn parse_token(text: &str) -> Result<Token, String> {
    Ok(Token::new(text))
}

/// Runs `tariff bench`.
pub async fn run(cluster: &Cluster, args: BenchArgs) -> anyhow::Result<()> {
    let mut workload = Workload::load(&args.workload)?;
    if let Some(seed) = args.seed {
        workload.seed = seed;
    }
    if !args.chaos.is_empty() && (!args.shards.is_empty() || args.compare.is_some()) {
        bail!(
            "--chaos kills processes the harness started itself: it cannot be combined with \
             --shards (someone else's cluster) or --compare"
        );
    }
    if !args.shards.is_empty() && workload.mix.iter().any(|e| e.retries.is_some()) {
        bail!(
            "a [[mix]] entry sets `retries`, which the harness deploys as a copy of its function \
             (name-retryN) in clusters it starts; against --shards deploy that copy yourself \
             (tariff deploy --retries N) and name it in `function`"
        );
    }
    if args.vs_sim && (!args.shards.is_empty() || !args.chaos.is_empty()) {
        bail!(
            "--vs-sim needs the embedded cluster: the simulator is told the cluster's shape, \
             which the harness knows only of a cluster it started (and --chaos runs processes)"
        );
    }
    let (info, classes, policies, plan) = if args.shards.is_empty() {
        run_local(cluster, &args, &workload).await?
    } else {
        run_remote(cluster, &args, &workload).await?
    };
    let ratios = match policies.as_slice() {
        [tariff, baseline] => record::compare(tariff, baseline),
        _ => Vec::new(),
    };
    let scheduled = policies
        .first()
        .map_or(0, |p| p.phases.iter().map(|ph| ph.scheduled).sum());
    let vs_sim = match (args.vs_sim, policies.first()) {
        (true, Some(tariff)) => Some(
            vs_sim::compare(&plan, tariff, &info, &classes, &example_specs()?)
                .context("replaying the schedule through the simulator")?,
        ),
        _ => None,
    };
    let report = BenchReport {
        workload,
        cluster: info,
        classes,
        scheduled,
        policies,
        ratios,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let files = [
        (REPORT_FILE, report.to_json()),
        (CDF_FILE, plot::cdf_svg(&report)),
        (OVER_TIME_FILE, plot::over_time_svg(&report)),
    ];
    let mut written = Vec::new();
    let vs_sim_file = vs_sim.as_ref().map(|v| (VS_SIM_FILE, v.to_json()));
    for (name, text) in files.into_iter().chain(vs_sim_file) {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    output::print_report(&report, &written);
    if let Some(vs_sim) = &vs_sim {
        output::print_results(&vs_sim.table());
    }
    Ok(())
}

/// What the runs against one cluster set-up produce: the cluster, its class names, one
/// report per policy, and the schedule they all replayed.
type Runs = (ClusterInfo, Vec<String>, Vec<PolicyReport>, Plan);

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Embedded cluster(s): Tariff, then the baseline if asked.
async fn run_local(
    cluster: &Cluster,
    args: &BenchArgs,
    workload: &Workload,
) -> anyhow::Result<Runs> {
    let shape = &workload.cluster;
    let mut config = LocalClusterConfig {
        shards: args
            .local_shards
            .or(shape.shards)
            .unwrap_or(DEFAULT_LOCAL_SHARDS),
        dispatchers: args
            .dispatchers
            .or(shape.dispatchers)
            .unwrap_or(DEFAULT_DISPATCHERS),
        cores: args
            .cores
            .or(shape.cores.map(|c| c.resolve(host_cpus())))
            .unwrap_or(DEFAULT_CORES),
        memory_bytes: args
            .memory
            .or(shape.memory_mb.map(|mb| mb << 20))
            .unwrap_or(DEFAULT_MEMORY_BYTES),
        no_rt: args.no_rt,
        policy: Policy::Tariff,
        functions: with_retry_copies(example_specs()?, workload),
        tenant: workload.tenant.clone(),
        other_tenants: workload
            .tenant_names()
            .into_iter()
            .skip(1)
            .map(|name| {
                let budget = workload.tenants.get(&name).and_then(|t| t.budget);
                (name, budget)
            })
            .collect(),
        budget: workload
            .tenants
            .get(&workload.tenant)
            .and_then(|t| t.budget),
        // Budgets apply to this run alone, not to what earlier runs spent this month.
        fresh: true,
        dir_name: format!("{BENCH_DIR_PREFIX}{}", Policy::Tariff),
        metrics: false,
    };
    let classes: Vec<String> = PriceClasses::default().names().map(str::to_owned).collect();
    let choice = workload.check_classes(&classes)?;
    let runs = std::iter::once(Policy::Tariff).chain(args.compare);
    let mut plan: Option<Plan> = None;
    let mut function_cpus = Vec::new();
    let mut real_time_cpus = None;
    let mut rt_budget = None;
    let mut policies = Vec::new();
    for cluster_policy in runs {
        let policy = cluster_policy.name();
        config.policy = cluster_policy;
        config.dir_name = format!("{BENCH_DIR_PREFIX}{policy}");
        let started = if args.chaos.is_empty() {
            Started::Embedded(
                LocalCluster::start(cluster, &config)
                    .await
                    .with_context(|| format!("starting the {policy} cluster"))?,
            )
        } else {
            config.dir_name = format!("{BENCH_DIR_PREFIX}chaos");
            Started::Processes(
                ProcessCluster::start(cluster, &config)
                    .await
                    .with_context(|| format!("starting the {policy} cluster's processes"))?,
            )
        };
        function_cpus = started.function_cpus();
        real_time_cpus.get_or_insert_with(|| started.real_time_cpus());
        if rt_budget.is_none() {
            rt_budget = started.rt_budget();
        }
        // The schedule is made once, from the first cluster's CPUs, so every policy gets the
        // very same invocations at the very same times.
        let plan = match &plan {
            Some(plan) => plan,
            None => match schedule::plan(workload, &choice, function_cpus.len()) {
                Ok(p) => plan.insert(p),
                Err(e) => {
                    started.stop().await;
                    return Err(e.into());
                }
            },
        };
        let (shards, tokens) = started.reach();
        let result = run_policy(
            cluster,
            args,
            workload,
            plan,
            Reach {
                shards: &shards,
                tokens: plan
                    .tenants
                    .iter()
                    .map(|name| tokens.get(name).cloned())
                    .collect(),
            },
            &classes,
            policy,
            started.servers(),
        )
        .await;
        started.stop().await;
        policies.push(result?);
    }
    let info = ClusterInfo {
        local: true,
        shards: config.shards,
        dispatchers: Some(config.dispatchers),
        cores: Some(config.cores),
        function_cpus,
        rt: Some(!args.no_rt),
        real_time_cpus: real_time_cpus.unwrap_or_default(),
        rt_budget,
        connections_per_shard: args.connections,
        host_cpus: host_cpus(),
    };
    let plan = plan.context("no cluster ran")?;
    Ok((info, classes, policies, plan))
}

/// The cluster a local run started: in this process, or (for `--chaos`) as processes.
enum Started {
    /// Shards and dispatchers as tasks of the harness.
    Embedded(LocalCluster),
    /// Shards and dispatchers as processes the chaos events can kill.
    Processes(ProcessCluster),
}

impl Started {
    fn function_cpus(&self) -> Vec<usize> {
        match self {
            Started::Embedded(local) => local.function_cpus.iter().copied().collect(),
            Started::Processes(processes) => processes.function_cpus.clone(),
        }
    }

    /// The CPUs its dispatchers gave the paying classes.
    fn real_time_cpus(&self) -> Vec<usize> {
        match self {
            Started::Embedded(local) => local.real_time_cpus.iter().copied().collect(),
            Started::Processes(processes) => processes.real_time_cpus.clone(),
        }
    }

    /// The paying classes' real-time budget per CPU, as the embedded dispatchers got it (the
    /// processes' is in their logs only).
    fn rt_budget(&self) -> Option<f64> {
        match self {
            Started::Embedded(local) => local.rt_budget,
            Started::Processes(_) => None,
        }
    }

    /// The shards' addresses and every tenant's token.
    fn reach(&self) -> (Vec<SocketAddr>, BTreeMap<String, Token>) {
        match self {
            Started::Embedded(local) => (local.shard_addrs.clone(), local.tokens.clone()),
            Started::Processes(p) => (p.shard_addrs.clone(), p.tokens.clone()),
        }
    }

    /// The processes chaos events kill (none for an embedded cluster).
    fn servers(&self) -> Option<Servers> {
        match self {
            Started::Embedded(_) => None,
            Started::Processes(p) => Some(p.servers.clone()),
        }
    }

    async fn stop(self) {
        match self {
            Started::Embedded(local) => local.stop().await,
            Started::Processes(processes) => processes.stop().await,
        }
    }
}

/// The example functions, plus a copy with retries of each function a mix entry marks
/// retryable (`retries = N`: deployed as `NAME-retryN`, [`MixEntry::deployed_name`]).
///
/// [`MixEntry::deployed_name`]: super::workload::MixEntry::deployed_name
fn with_retry_copies(
    mut functions: Vec<tariff_types::FunctionSpec>,
    workload: &Workload,
) -> Vec<tariff_types::FunctionSpec> {
    for entry in &workload.mix {
        let Some(retries) = entry.retries.filter(|&n| n > 0) else {
            continue;
        };
        let name = entry.deployed_name();
        if functions.iter().any(|f| f.name == name) {
            continue;
        }
        if let Some(spec) = functions.iter().find(|f| f.name == entry.function) {
            let copy = tariff_types::FunctionSpec {
                name,
                retries,
                ..spec.clone()
            };
            functions.push(copy);
        }
    }
    functions
}

/// A running cluster: one run, policy unknown.
async fn run_remote(
    cluster: &Cluster,
    args: &BenchArgs,
    workload: &Workload,
) -> anyhow::Result<Runs> {
    if args.compare.is_some() {
        bail!(
            "--compare needs the embedded cluster: the harness cannot switch a running cluster's \
             policy; run it without --shards, or run the baseline cluster yourself (--policy fifo) \
             and bench it separately"
        );
    }
    let token = resolve_token(args.token.clone(), cluster.dir(), &workload.tenant)?;
    let first = Client::connect(cluster, args.shards[0], token.clone()).await?;
    let classes = match first.request(ClientRequest::Status).await? {
        ClientResponse::Status(status) => status.classes,
        other => bail!("unexpected answer to a status request: {other:?}"),
    };
    if args.deploy_examples {
        for spec in example_specs()? {
            match first.request(ClientRequest::Deploy(spec.clone())).await? {
                ClientResponse::Deployed { .. } => {}
                other => bail!("deploying {}: {other:?}", spec.name),
            }
        }
    }
    let choice = workload.check_classes(&classes)?;
    let needs_cpus = workload.phases.iter().any(|p| p.load.is_some());
    let cpus = match (args.function_cpus, needs_cpus) {
        (Some(n), _) => n,
        (None, false) => 1,
        (None, true) => bail!(
            "the workload has `load` phases: give the running cluster's function CPUs with --function-cpus"
        ),
    };
    let plan = schedule::plan(workload, &choice, cpus)?;
    // The workload's own tenant uses --token (or TARIFF_TOKEN); the others the cluster
    // directory's token files.
    let mut tokens = vec![token];
    for name in plan.tenants.iter().skip(1) {
        let file = tariff_cluster::tenancy::token_file(cluster.dir(), name);
        tokens.push(tariff_cluster::tenancy::read_token_file(&file)?);
    }
    let policy = run_policy(
        cluster,
        args,
        workload,
        &plan,
        Reach {
            shards: &args.shards,
            tokens,
        },
        &classes,
        args.cluster_policy
            .map_or(RUNNING_CLUSTER_POLICY, Policy::name),
        None,
    )
    .await?;
    let info = ClusterInfo {
        local: false,
        shards: args.shards.len(),
        dispatchers: None,
        cores: None,
        function_cpus: Vec::new(),
        rt: None,
        real_time_cpus: Vec::new(),
        rt_budget: None,
        connections_per_shard: args.connections,
        host_cpus: host_cpus(),
    };
    Ok((info, classes, vec![policy], plan))
}

/// Where a run's load goes and as whom.
struct Reach<'a> {
    /// The shards.
    shards: &'a [SocketAddr],
    /// Each tenant's token, by the plan's tenant index.
    tokens: Vec<Option<Token>>,
}

/// Every phase of the plan against one cluster; with `servers`, the `--chaos` events too.
#[allow(clippy::too_many_arguments)]
async fn run_policy(
    cluster: &Cluster,
    args: &BenchArgs,
    workload: &Workload,
    plan: &Plan,
    reach: Reach<'_>,
    classes: &[String],
    policy: &str,
    servers: Option<Servers>,
) -> anyhow::Result<PolicyReport> {
    let shards = reach.shards;
    let mut clients = Vec::new();
    for token in reach.tokens {
        clients.push(driver::connect(cluster, shards, args.connections, token).await?);
    }
    let ctx = RunContext {
        clients,
        targets: Arc::new(plan.targets.clone()),
        classes: Arc::new(classes.to_vec()),
        timeout_ms: workload.timeout_ms,
        max_outstanding: args.max_outstanding,
        progress: !args.quiet,
    };
    let mut phases = Vec::new();
    let mut warmup = None;
    let mut starts = Vec::new();
    let mut chaos_task = None;
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    for phase in &plan.phases {
        let label = format!("{policy} {}", phase.name);
        let start = std::time::Instant::now();
        starts.push((phase.name.clone(), start));
        if let (false, None, Some(servers)) = (phase.warmup, &chaos_task, &servers) {
            let events: Vec<ChaosEvent> = args.chaos.clone();
            let servers = servers.clone();
            chaos_task = Some(tokio::spawn(chaos::run(
                events,
                move |target| servers.kill_next(target),
                start,
                done.clone(),
            )));
        }
        let (recorder, elapsed) = driver::run_phase(&ctx, phase, &label).await;
        let report = recorder.finish(phase, classes, &plan.tenants, elapsed, shards.len());
        if phase.warmup {
            warmup = Some(report);
        } else {
            phases.push(report);
        }
    }
    // Events timed past the last phase's end are not carried out.
    if let Some(task) = chaos_task {
        task.abort();
    }
    let mut report = PolicyReport::new(policy, phases);
    report.warmup = warmup;
    report.chaos = done
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(event, killed, at)| chaos::record(event, killed.clone(), *at, &starts))
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> tariff_types::FunctionSpec {
        tariff_types::FunctionSpec {
            name: name.into(),
            command: vec![format!("/bin/{name}")],
            env: Vec::new(),
            version: 0,
            runtime: tariff_types::function::Runtime::Exec,
            ..Default::default()
        }
    }

    #[test]
    fn a_retryable_entry_gets_its_own_copy_once() {
        let workload = Workload::parse(
            r#"
name = "t"
[[mix]]
function = "sleep"
payload = "1000"
retries = 2
[[mix]]
function = "sleep"
payload = "500"
retries = 2
[[mix]]
function = "sleep"
payload = "1000"
[[phases]]
name = "p"
duration_s = 1
rate = 1
"#,
        )
        .unwrap();
        let functions = with_retry_copies(vec![spec("sleep"), spec("echo")], &workload);
        let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["sleep", "echo", "sleep-retry2"]);
        assert_eq!(functions[2].retries, 2);
        assert_eq!(functions[2].command, ["/bin/sleep"]);
        assert_eq!(functions[0].retries, 0, "the original keeps none");
    }
}
