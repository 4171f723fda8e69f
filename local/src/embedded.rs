//! Starting and stopping an embedded cluster: the shards and dispatchers `tariff local` and
//! `tariff bench` start, and the wait until every shard sees every dispatcher.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tariff_cluster::client::Client;
use tariff_cluster::cluster::Cluster;
use tariff_cluster::store::{ClusterStore, Expect, SqliteStore};
use tariff_cluster::tenancy::ensure_tenant;
use tariff_dispatcher::{Dispatcher, DispatcherOptions};
use tariff_machine_sched::machine::MachineScheduler;
use tariff_policy::ShardConfig;
use tariff_scheduler::{Shard, ShardOptions};
use tariff_types::policy::Policy;
use tariff_types::tenant::Token;
use tariff_types::wire::{ClientRequest, ClientResponse};
use tariff_types::{FunctionSpec, PriceClasses};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Shard `i`'s id in the embedded cluster `dir_name`: the name's hash in the high byte, so
/// the embedded clusters sharing one cluster store (`tariff local`, each policy of a bench
/// run) publish their spend under ids of their own.
fn shard_id(dir_name: &str, i: usize) -> u16 {
    let hash = dir_name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    ((hash as u16) & 0xff00) | (i as u16 + 1)
}

/// How long to wait for every dispatcher to register with every shard.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each server task gets to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalClusterConfig {
    /// Scheduler shards.
    pub shards: usize,
    /// Dispatchers (simulated machines).
    pub dispatchers: usize,
    /// Cores per dispatcher.
    pub cores: u32,
    /// Memory per dispatcher, bytes.
    pub memory_bytes: u64,
    /// Enforce class order in user space instead of SCHED_FIFO.
    pub no_rt: bool,
    /// Tariff's policy, or a class-blind baseline.
    pub policy: Policy,
    /// Functions to deploy before starting, owned by `tenant`.
    pub functions: Vec<FunctionSpec>,
    /// The tenant made (if missing) and owning `functions`; its token is kept in the cluster
    /// directory's token file for it, where the CLI finds it.
    pub tenant: String,
    /// Other tenants to make, with their monthly budgets; the functions are shared with them.
    pub other_tenants: Vec<(String, Option<f64>)>,
    /// The budget of `tenant` (none: unlimited).
    pub budget: Option<f64>,
    /// Start from nothing: remove the servers' files (their ledgers) and the spend their
    /// shards published, so budgets apply to this run alone (the harness's runs).
    pub fresh: bool,
    /// Sub-directory of the cluster directory for the servers' files.
    pub dir_name: String,
    /// Serve Prometheus metrics from every shard and dispatcher, each on a port of its own
    /// on 127.0.0.1 ([`LocalCluster::metrics_addrs`] says where).
    pub metrics: bool,
}

/// A running embedded cluster.
pub struct LocalCluster {
    /// The shards' addresses.
    pub shard_addrs: Vec<SocketAddr>,
    /// Distinct CPUs the dispatchers run functions on (the cheapest class uses them all).
    pub function_cpus: BTreeSet<usize>,
    /// Distinct CPUs the dispatchers run real-time functions on: a normal-priority thread
    /// there waits behind them; elsewhere it only shares the CPU fairly with the cheapest class
    /// (`SCHED_BATCH`).
    pub real_time_cpus: BTreeSet<usize>,
    /// The share of each real-time CPU the paying classes' real-time group budget gives them
    /// per period, the least over the dispatchers (`None`: no dispatcher has a budget).
    pub rt_budget: Option<f64>,
    /// The price classes.
    pub classes: PriceClasses,
    /// Where the servers keep their files.
    pub dir: PathBuf,
    /// Each server's metrics endpoint, as (process name, address), when asked for.
    pub metrics_addrs: Vec<(String, SocketAddr)>,
    /// The token of the configured tenant.
    pub token: Token,
    /// The tokens of every tenant made, by name (the configured one included).
    pub tokens: std::collections::BTreeMap<String, Token>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Waits (at most [`REGISTRATION_TIMEOUT`]) until every shard at `shard_addrs` sees
/// `dispatchers` machines, asking as the tenant of `token`.
pub async fn wait_for_machines(
    cluster: &Cluster,
    shard_addrs: &[SocketAddr],
    token: &Token,
    dispatchers: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    for &addr in shard_addrs {
        let client = Client::connect(cluster, addr, Some(token.clone())).await?;
        loop {
            if let ClientResponse::Status(status) = client.request(ClientRequest::Status).await? {
                if status.machines.len() >= dispatchers {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("dispatchers did not register with shard {addr} within {REGISTRATION_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// What [`prepare`] made ready for a cluster's servers.
pub struct Prepared {
    /// The cluster store (SQLite in the cluster directory).
    pub store: Arc<dyn ClusterStore>,
    /// Where the servers keep their files.
    pub dir: PathBuf,
    /// Each shard's id.
    pub shard_ids: Vec<u16>,
    /// The token of the configured tenant.
    pub token: Token,
    /// The tokens of every tenant made, by name (the configured one included).
    pub tokens: std::collections::BTreeMap<String, Token>,
}

/// Everything before the servers start, written straight into the cluster store: the servers'
/// directory (emptied when `fresh`), the tenants with their budgets, and the functions. Shared
/// by [`LocalCluster::start`] and the harness's clusters of separate processes, which must
/// start from the same state.
pub fn prepare(cluster: &Cluster, config: &LocalClusterConfig) -> anyhow::Result<Prepared> {
    let store: Arc<dyn ClusterStore> =
        Arc::new(SqliteStore::open(&cluster.store_path()).context("opening the embedded store")?);
    let dir = cluster.dir().join(&config.dir_name);
    let shard_ids: Vec<u16> = (0..config.shards)
        .map(|i| shard_id(&config.dir_name, i))
        .collect();
    if config.fresh {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        for &id in &shard_ids {
            store.clear_spend(id)?;
        }
    }
    let token = ensure_tenant(cluster.dir(), store.as_ref(), &config.tenant)?;
    store.set_tenant_budget(&config.tenant, config.budget)?;
    let mut tokens = std::collections::BTreeMap::new();
    tokens.insert(config.tenant.clone(), token.clone());
    for (name, budget) in &config.other_tenants {
        tokens.insert(
            name.clone(),
            ensure_tenant(cluster.dir(), store.as_ref(), name)?,
        );
        store.set_tenant_budget(name, *budget)?;
    }
    for spec in &config.functions {
        let mut spec = spec.clone();
        spec.owner = config.tenant.clone();
        spec.shared_with = config
            .other_tenants
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let expect = match store.function(&spec.name)? {
            None => Expect::Absent,
            // An empty owner: deployed before tenants existed; the examples' tenant adopts it.
            Some(current) if current.owner == config.tenant || current.owner.is_empty() => {
                Expect::Version(current.version)
            }
            Some(current) => {
                tracing::warn!(
                    function = %spec.name,
                    owner = %current.owner,
                    "not deploying an example function over another tenant's function"
                );
                continue;
            }
        };
        store.put_function(&spec, expect)?;
    }
    Ok(Prepared {
        store,
        dir,
        shard_ids,
        token,
        tokens,
    })
}

impl LocalCluster {
    /// Starts the cluster and waits until every shard sees every dispatcher.
    pub async fn start(cluster: &Cluster, config: &LocalClusterConfig) -> anyhow::Result<Self> {
        if config.shards == 0 || config.dispatchers == 0 || config.cores == 0 {
            bail!("a local cluster needs at least one shard, one dispatcher and one core");
        }
        let Prepared {
            store,
            dir,
            shard_ids,
            token,
            tokens,
        } = prepare(cluster, config)?;
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|&s| s).await;
        };
        let classes = PriceClasses::default();
        let mut shard_addrs = Vec::new();
        let mut tasks = Vec::new();
        let mut function_cpus = BTreeSet::new();
        let mut real_time_cpus = BTreeSet::new();
        let mut rt_budget: Option<f64> = None;
        let mut metrics_addrs = Vec::new();
        let metrics_addr = || config.metrics.then(|| ([127, 0, 0, 1], 0).into());
        for (i, &shard_id) in shard_ids.iter().enumerate() {
            let options = ShardOptions {
                listen: ([127, 0, 0, 1], 0).into(),
                data_dir: dir.join(format!("shard-{i}")),
                shard_id,
                classes: classes.clone(),
                policy: ShardConfig::for_policy(config.policy),
                peers: Vec::new(),
                max_payload_bytes: tariff_scheduler::server::DEFAULT_MAX_PAYLOAD_BYTES,
                memory_price: tariff_types::billing::DEFAULT_MEMORY_PRICE,
                default_timeout: tariff_scheduler::server::DEFAULT_TIMEOUT,
                metrics: metrics_addr(),
                slow_threshold: tariff_scheduler::trace::DEFAULT_SLOW_THRESHOLD,
                sample_every: Some(tariff_scheduler::trace::DEFAULT_SAMPLE_EVERY),
                liveness: tariff_scheduler::server::DEFAULT_LIVENESS,
                crash_budget: tariff_scheduler::server::DEFAULT_CRASH_BUDGET,
            };
            let shard = Shard::bind(cluster, store.clone(), options)?;
            shard_addrs.push(shard.local_addr());
            if let Some(addr) = shard.metrics_addr() {
                metrics_addrs.push((format!("shard {}", i + 1), addr));
            }
            tasks.push(tokio::spawn(shard.run(until_stopped(stopped.clone()))));
        }
        for i in 0..config.dispatchers {
            let options = DispatcherOptions {
                shards: shard_addrs.clone(),
                machine: format!("{}-{}", config.dir_name, i + 1),
                cores: config.cores,
                memory_bytes: config.memory_bytes,
                slots: config.cores,
                data_dir: dir.join(format!("dispatcher-{i}")),
                k: tariff_dispatcher::service::DEFAULT_K,
                policy: config.policy,
                metrics: metrics_addr(),
                memory: Default::default(),
            };
            let machine = tariff_dispatcher::machine_setup::machine_options(
                config.cores,
                config.no_rt,
                config.policy,
                &options.data_dir,
                &options.machine,
            )?;
            function_cpus.extend(machine.cpus.functions.iter().copied());
            real_time_cpus.extend(machine.cpus.real_time.iter().copied());
            if let Some(share) = machine.rt_budget.as_ref().map(|b| b.share()) {
                rt_budget = Some(rt_budget.map_or(share, |s: f64| s.min(share)));
            }
            let name = options.machine.clone();
            let dispatcher = Dispatcher::new(cluster, options, MachineScheduler::new(machine))?;
            if let Some(addr) = dispatcher.metrics_addr() {
                metrics_addrs.push((format!("dispatcher {name}"), addr));
            }
            tasks.push(tokio::spawn(dispatcher.run(until_stopped(stopped.clone()))));
        }
        let local = Self {
            shard_addrs,
            function_cpus,
            real_time_cpus,
            rt_budget,
            classes,
            dir,
            metrics_addrs,
            token,
            tokens,
            stop,
            tasks,
        };
        local.wait_for_machines(cluster, config.dispatchers).await?;
        Ok(local)
    }

    /// Waits until every shard sees `dispatchers` machines, so the first invocations are not
    /// refused for want of machines.
    async fn wait_for_machines(&self, cluster: &Cluster, dispatchers: usize) -> anyhow::Result<()> {
        wait_for_machines(cluster, &self.shard_addrs, &self.token, dispatchers).await
    }

    /// Stops every server and waits (bounded) for them to finish cleaning up.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
        }
    }
}
