//! A cluster of separate processes for chaos runs: `tariff shard` and `tariff dispatcher`
//! started from the `tariff` binary beside the harness, in the same shape and with the same
//! tenants and functions as the embedded cluster ([`tariff_local::embedded::prepare`]).
//!
//! Why processes: a chaos kill must be a real failure that the cluster finds out about by
//! itself. An embedded dispatcher is a task in the harness's process; aborting it drops its
//! QUIC connections, which tells every shard at once (quinn closes a dropped connection
//! explicitly), and its functions live on as the harness's children. A process killed with
//! `SIGKILL` sends nothing: its shards learn of it only from the silence, through the
//! heartbeat, as they would of a machine that lost power.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tariff_cluster::cluster::Cluster;
use tariff_local::embedded::{prepare, wait_for_machines, Prepared};
use tariff_local::LocalClusterConfig;
use tariff_machine_sched::rt;
use tariff_types::tenant::Token;

use super::chaos::ChaosTarget;

/// The service binary, beside the harness.
const TARIFF_BINARY: &str = "tariff";
/// Longest a shard may take to write its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a server gets to exit after `SIGTERM` before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a starting shard's address file and a stopping server are looked at.
const POLL: Duration = Duration::from_millis(20);
/// Log filter of the servers (their logs go to files beside their data directories).
const SERVER_LOG: &str = "info";
/// File a dispatcher lists its cgroup subtrees in (`tariff_dispatcher::machine_setup`).
const CGROUPS_FILE: &str = "cgroups";

/// One server process.
struct Server {
    /// Its name in the report: `shard-1`, or the dispatcher's machine name.
    name: String,
    role: ChaosTarget,
    child: Child,
    data_dir: PathBuf,
    /// Killed by a chaos event (and reaped).
    killed: bool,
}

/// The running processes of a [`ProcessCluster`], shared with the chaos task that kills them.
#[derive(Clone)]
pub struct Servers(Arc<Mutex<Vec<Server>>>);

impl Servers {
    /// Kills (`SIGKILL`) the first live server of `role`, as a crash would; its name, or none
    /// when every one is already dead.
    pub fn kill_next(&self, role: ChaosTarget) -> Option<String> {
        let mut servers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let server = servers.iter_mut().find(|s| s.role == role && !s.killed)?;
        let _ = server.child.kill();
        let _ = server.child.wait();
        server.killed = true;
        tracing::info!(server = %server.name, "chaos: killed");
        Some(server.name.clone())
    }
}

/// Shards and dispatchers as separate processes on this host.
pub struct ProcessCluster {
    /// The shards' addresses.
    pub shard_addrs: Vec<SocketAddr>,
    /// CPUs the dispatchers run functions on.
    pub function_cpus: Vec<usize>,
    /// CPUs the paying classes run on, by the dispatcher's rule without a budget (the
    /// dispatchers' logs say what they chose).
    pub real_time_cpus: Vec<usize>,
    /// Every tenant's token, by name.
    pub tokens: BTreeMap<String, Token>,
    /// The processes.
    pub servers: Servers,
}

impl ProcessCluster {
    /// Prepares the store as the embedded cluster does, starts `config.shards` shards and
    /// `config.dispatchers` dispatchers, and waits until every shard sees every dispatcher.
    /// Shards run off the CPUs real-time functions take, as the tests' shards do, so busy
    /// functions cannot starve them.
    pub async fn start(cluster: &Cluster, config: &LocalClusterConfig) -> anyhow::Result<Self> {
        if config.shards == 0 || config.dispatchers == 0 || config.cores == 0 {
            bail!("a cluster needs at least one shard, one dispatcher and one core");
        }
        let tariff = tariff_local::binaries_dir()?.join(TARIFF_BINARY);
        if !tariff.exists() {
            bail!(
                "{} is missing: build the workspace (`cargo build --release`)",
                tariff.display()
            );
        }
        let Prepared {
            dir,
            shard_ids,
            token,
            tokens,
            ..
        } = prepare(cluster, config)?;
        let real_time = !config.no_rt && rt::probe() == rt::SchedMode::RealTime;
        let allowed = rt::allowed_cpus();
        let (cpus, _) = rt::function_cpus(&allowed, config.cores as usize, real_time);
        let shard_cpus: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|c| !cpus.real_time.contains(c))
            .collect();
        let mut processes = ProcessCluster {
            shard_addrs: Vec::new(),
            function_cpus: cpus.functions.clone(),
            real_time_cpus: cpus.real_time.clone(),
            tokens,
            servers: Servers(Arc::default()),
        };
        let launch = Launch {
            tariff: &tariff,
            dir: &dir,
            shard_ids: &shard_ids,
            shard_cpus: &shard_cpus,
        };
        // What was started before a failure is stopped, not left running.
        match processes.launch(cluster, config, &launch, &token).await {
            Ok(()) => Ok(processes),
            Err(e) => {
                processes.stop().await;
                Err(e)
            }
        }
    }

    /// Starts the shards, then the dispatchers, and waits until every shard sees them all.
    async fn launch(
        &mut self,
        cluster: &Cluster,
        config: &LocalClusterConfig,
        launch: &Launch<'_>,
        token: &Token,
    ) -> anyhow::Result<()> {
        let Launch {
            tariff,
            dir,
            shard_ids,
            shard_cpus,
        } = *launch;
        let policy = config.policy.name();
        for (i, id) in shard_ids.iter().enumerate() {
            let data_dir = dir.join(format!("shard-{i}"));
            let mut command = server_command(tariff, cluster, &data_dir)?;
            let addr_file = data_dir.join("shard.addr");
            let _ = std::fs::remove_file(&addr_file);
            command
                .args(["shard", "--listen", "127.0.0.1:0", "--policy", policy])
                .args(["--shard-id", &id.to_string(), "--data-dir"])
                .arg(&data_dir);
            if !shard_cpus.is_empty() {
                let cpus = shard_cpus.to_vec();
                // SAFETY: runs in the forked child before exec; set_affinity only fills a
                // cpu_set_t on the stack and makes one system call.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                        rt::set_affinity(0, &cpus)
                    });
                }
            }
            self.spawn(
                format!("shard-{}", i + 1),
                ChaosTarget::Shard,
                command,
                &data_dir,
            )?;
            let addr = wait_for_address(&addr_file).await?;
            self.shard_addrs.push(addr);
        }
        let shards: Vec<String> = self.shard_addrs.iter().map(ToString::to_string).collect();
        for i in 0..config.dispatchers {
            let name = format!("{}-{}", config.dir_name, i + 1);
            let data_dir = dir.join(format!("dispatcher-{i}"));
            let mut command = server_command(tariff, cluster, &data_dir)?;
            command
                .args(["dispatcher", "--shards", &shards.join(",")])
                .args(["--cores", &config.cores.to_string()])
                .args(["--memory", &config.memory_bytes.to_string()])
                .args(["--name", &name, "--policy", policy, "--data-dir"])
                .arg(&data_dir);
            if config.no_rt {
                command.arg("--no-rt");
            }
            self.spawn(name, ChaosTarget::Dispatcher, command, &data_dir)?;
        }
        wait_for_machines(cluster, &self.shard_addrs, token, config.dispatchers).await
    }

    fn spawn(
        &self,
        name: String,
        role: ChaosTarget,
        mut command: Command,
        data_dir: &Path,
    ) -> anyhow::Result<()> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.servers
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Server {
                name,
                role,
                child,
                data_dir: data_dir.to_owned(),
                killed: false,
            });
        Ok(())
    }

    /// Stops every live server (`SIGTERM`, then `SIGKILL` after [`STOP_GRACE`]) and removes
    /// the cgroups a killed dispatcher left behind.
    pub async fn stop(self) {
        let servers: Vec<Server> = std::mem::take(
            &mut *self
                .servers
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        // Dispatchers first, so no shard sees its machines go before it stops itself.
        let (dispatchers, shards): (Vec<Server>, Vec<Server>) = servers
            .into_iter()
            .partition(|s| s.role == ChaosTarget::Dispatcher);
        for group in [dispatchers, shards] {
            let mut group = group;
            for server in group.iter().filter(|s| !s.killed) {
                terminate(&server.child);
            }
            let deadline = Instant::now() + STOP_GRACE;
            for server in &mut group {
                while !server.killed
                    && matches!(server.child.try_wait(), Ok(None))
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(POLL).await;
                }
                let _ = server.child.kill();
                let _ = server.child.wait();
                if server.role == ChaosTarget::Dispatcher {
                    tariff_machine_sched::cgroup::remove_listed_subtrees(
                        &server.data_dir.join(CGROUPS_FILE),
                    );
                }
            }
        }
    }
}

/// What [`ProcessCluster::launch`] starts the servers from.
struct Launch<'a> {
    /// The `tariff` binary.
    tariff: &'a Path,
    /// The servers' directory.
    dir: &'a Path,
    /// Each shard's id.
    shard_ids: &'a [u16],
    /// CPUs the shards run on (all when empty).
    shard_cpus: &'a [usize],
}

/// A `tariff` command for a server keeping its files in `data_dir`, logging to
/// `data_dir.log`.
fn server_command(tariff: &Path, cluster: &Cluster, data_dir: &Path) -> anyhow::Result<Command> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let log_path = data_dir.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(tariff);
    command
        .arg("--cluster")
        .arg(cluster.dir())
        .env("RUST_LOG", SERVER_LOG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(command)
}

/// Asks a server to stop.
fn terminate(child: &Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill with a valid signal on our own unreaped child has no memory effects, and
    // the pid cannot have been reused while the child is unreaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Waits (at most [`START_TIMEOUT`]) for a shard's address file.
async fn wait_for_address(path: &Path) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(addr) = text.trim().parse() {
                return Ok(addr);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not appear within {START_TIMEOUT:?} (see the shard's log beside it)",
                path.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
