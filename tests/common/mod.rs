//! Shared helpers for the cross-process tests: start real `tariff shard` and `tariff
//! dispatcher` processes on 127.0.0.1 with port 0, wait for them with bounded loops, and
//! clean them up (processes and directories) when the test ends, pass or fail.

#![allow(dead_code)]

pub mod netns;
pub mod swap;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tariff_cluster::client::Client;
use tariff_cluster::cluster::Cluster;
use tariff_cluster::tenancy::{admin_token_file, hash_token, new_token, read_token_file};
use tariff_types::tenant::{TenantRequest, Token};
use tariff_types::wire::{
    ClientRequest, ClientResponse, InvocationOutcome, InvokeError, InvokeRequest,
};
use tariff_types::FunctionSpec;

/// Longest a test waits for a process to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The shards' default heartbeat timeout (`--heartbeat-timeout`): a lost peer must be noticed
/// within it plus [`DETECTION_SLACK`].
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack on a shared 2-CPU machine for the failure itself, the detecting side's timer and the
/// answer's trip.
pub const DETECTION_SLACK: Duration = Duration::from_millis(1_200);
/// Longest a stopped process gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// CPUs for the tests' own processes (the test, its shards): every CPU but the highest, which
/// dispatchers in real-time mode give to functions. A normal-priority thread on a CPU that
/// real-time functions keep busy waits for as long as the kernel lets them run, which would
/// make the tests measure themselves rather than Tariff.
pub fn non_function_cpus() -> Vec<usize> {
    let mut cpus = tariff_machine_sched::rt::allowed_cpus();
    if cpus.len() > 1 {
        cpus.pop();
    }
    cpus
}

/// A runtime whose worker threads keep off the function CPUs. The calling thread keeps its
/// affinity: processes it starts (dispatchers above all) must see every CPU.
pub fn runtime() -> tokio::runtime::Runtime {
    let cpus = non_function_cpus();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            let _ = tariff_machine_sched::rt::set_affinity(0, &cpus);
        })
        .build()
        .unwrap()
}

/// The `tariff` binary under test.
pub fn tariff() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tariff"))
}

/// The example function `name` as a one-shot (exec) function spec.
pub fn example_spec(name: &str) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        command: vec![example(name).to_string_lossy().into_owned()],
        env: vec![],
        version: 0,
        runtime: tariff_types::function::Runtime::Exec,
        ..Default::default()
    }
}

/// The example function `example` deployed under another name (to give one binary two
/// settings, e.g. with and without retries).
pub fn named_example(name: &str, example: &str) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        ..example_spec(example)
    }
}

/// A `tariff` command with no cluster, tenant or token of the caller's environment.
pub fn tariff_command() -> Command {
    let mut cmd = Command::new(tariff());
    cmd.env("RUST_LOG", "warn");
    cmd.env_remove(tariff_cluster::tenancy::TOKEN_ENV);
    cmd.env_remove(tariff_cluster::tenancy::ADMIN_TOKEN_ENV);
    cmd.env_remove(tariff_cluster::cluster::CLUSTER_ENV);
    cmd
}

/// Path of the example function deployed as `name` (`tariff-echo` for `echo`). The examples
/// are their own package; `cargo test --workspace` builds them (their package has tests).
pub fn example(name: &str) -> PathBuf {
    let path = tariff_local::examples::example_binary(&tariff().with_file_name(""), name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, or build the examples \
         first (`cargo build -p tariff-example-functions`)",
        path.display()
    );
    path
}

/// Where a test's process runs: in the test's own network namespace, listening on loopback,
/// or in a network namespace of a [`netns::Lab`], at its own address there.
#[derive(Debug, Clone)]
pub struct Host {
    /// The network namespace (its name under `/run/netns`); none: the test's own.
    pub netns: Option<String>,
    /// The address a shard on this host listens on.
    pub ip: IpAddr,
}

impl Host {
    /// The test's own network namespace, on 127.0.0.1.
    pub fn local() -> Self {
        Self {
            netns: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Makes `command` start in this host's network namespace. The namespace is entered with
    /// `setns` between fork and exec rather than through `ip netns exec`, which also remounts
    /// `/sys` for the namespace and so hides `/sys/fs/cgroup`, where a dispatcher makes its
    /// functions' cgroups. Keep the returned file open until the command has been spawned.
    pub fn enter(&self, command: &mut Command) -> Option<std::fs::File> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let name = self.netns.as_ref()?;
        let path = netns::netns_path(name);
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let fd = file.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls setns on a
        // descriptor opened before the fork, which the parent keeps open until after spawn.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Some(file)
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Kills the process at once, as a crashed machine would die.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop and waits (bounded) for it.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill with a valid signal on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster of real processes in a private directory.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub shards: Vec<Proc>,
    pub shard_addrs: Vec<SocketAddr>,
    pub dispatchers: Vec<Proc>,
    pub cluster: Cluster,
    /// The token of tenant `test`, added through shard 0 the first time a client is made.
    token: tokio::sync::OnceCell<Token>,
}

impl TestCluster {
    /// An empty cluster directory, with credentials.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = Cluster::init(&dir.path().join("cluster")).expect("cluster credentials");
        Self {
            dir,
            shards: Vec::new(),
            shard_addrs: Vec::new(),
            dispatchers: Vec::new(),
            cluster,
            token: tokio::sync::OnceCell::new(),
        }
    }

    pub fn cluster_dir(&self) -> PathBuf {
        self.cluster.dir().to_owned()
    }

    /// A `tariff` command already pointed at this cluster, acting as tenant `test` (whose
    /// token file exists once [`TestCluster::token`] has been called).
    pub fn command(&self) -> Command {
        self.command_as("test")
    }

    /// A `tariff` command pointed at this cluster, using this machine's token file for
    /// `tenant` (if there is one) and no token from the environment.
    pub fn command_as(&self, tenant: &str) -> Command {
        let mut cmd = tariff_command();
        cmd.arg("--cluster").arg(self.cluster_dir());
        cmd.args(["--tenant", tenant]);
        cmd.env("RUST_LOG", "warn");
        cmd
    }

    /// `tariff status --json` for this cluster, parsed; panics (with the command's output) if
    /// the command fails or its output is not JSON. One place for what several tests read
    /// (shards, dispatchers, memory), so they agree on how the cluster is asked.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self
            .command()
            .args(["status", "--json"])
            .output()
            .expect("running tariff status --json");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("tariff status --json printed no JSON ({e}): {out:?}"))
    }

    /// Starts a shard with extra arguments and waits for its address.
    pub fn start_shard(&mut self, extra: &[&str]) -> SocketAddr {
        self.start_shard_logging(extra, "warn")
    }

    /// Where shard `n` (in start order) logs.
    pub fn shard_log(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("shard-{n}.log"))
    }

    /// Starts a shard with extra arguments, logging at `rust_log` to [`TestCluster::shard_log`],
    /// and waits for its address.
    pub fn start_shard_logging(&mut self, extra: &[&str], rust_log: &str) -> SocketAddr {
        let n = self.shards.len();
        let data_dir = self.dir.path().join(format!("shard-{n}"));
        self.start_shard_in(&data_dir, extra, rust_log)
    }

    /// Starts a shard keeping its files in `data_dir` (another shard's, to restart it).
    pub fn start_shard_in(
        &mut self,
        data_dir: &Path,
        extra: &[&str],
        rust_log: &str,
    ) -> SocketAddr {
        self.spawn_shard(&Host::local(), data_dir, extra, rust_log)
    }

    /// Starts a shard on `host` (listening on its address), logging at `rust_log` to
    /// [`TestCluster::shard_log`], and waits for its address.
    pub fn start_shard_on(&mut self, host: &Host, extra: &[&str], rust_log: &str) -> SocketAddr {
        let n = self.shards.len();
        let data_dir = self.dir.path().join(format!("shard-{n}"));
        self.spawn_shard(host, &data_dir, extra, rust_log)
    }

    fn spawn_shard(
        &mut self,
        host: &Host,
        data_dir: &Path,
        extra: &[&str],
        rust_log: &str,
    ) -> SocketAddr {
        let n = self.shards.len();
        let log = std::fs::File::create(self.shard_log(n)).expect("log file");
        let data_dir = data_dir.to_owned();
        let _ = std::fs::remove_file(data_dir.join("shard.addr"));
        let addr_file = data_dir.join("shard.addr");
        let cpus = non_function_cpus();
        let mut command = self.command();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // sched_setaffinity on a set prepared before the fork.
        unsafe {
            use std::os::unix::process::CommandExt;
            let set = cpu_set(&cpus);
            command.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let namespace = host.enter(&mut command);
        let child = command
            .env("RUST_LOG", rust_log)
            .stderr(log)
            .args(["shard", "--listen"])
            .arg(SocketAddr::new(host.ip, 0).to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning tariff shard");
        drop(namespace);
        self.shards.push(Proc {
            child,
            name: format!("shard-{n}"),
        });
        let addr = wait_for_file(&addr_file)
            .parse()
            .expect("shard.addr holds an address");
        self.shard_addrs.push(addr);
        addr
    }

    /// Starts a dispatcher serving every shard started so far; its log goes to
    /// [`TestCluster::dispatcher_log`].
    pub fn start_dispatcher(&mut self, name: &str, cores: u32, extra: &[&str]) {
        self.start_dispatcher_on(&Host::local(), name, cores, extra);
    }

    /// Starts a dispatcher on `host` serving every shard started so far; its log goes to
    /// [`TestCluster::dispatcher_log`].
    pub fn start_dispatcher_on(&mut self, host: &Host, name: &str, cores: u32, extra: &[&str]) {
        let shards: Vec<String> = self.shard_addrs.iter().map(ToString::to_string).collect();
        let log = std::fs::File::create(self.dispatcher_log(name)).expect("log file");
        // 2G unless the test gives its own.
        let memory: &[&str] = if extra.contains(&"--memory") {
            &[]
        } else {
            &["--memory", "2G"]
        };
        let mut command = self.command();
        let namespace = host.enter(&mut command);
        let child = command
            .env("RUST_LOG", "info")
            .stderr(log)
            .args(["dispatcher", "--shards", &shards.join(",")])
            .args(memory)
            .args(["--cores", &cores.to_string(), "--name", name, "--data-dir"])
            .arg(self.dir.path().join(format!("dispatcher-{name}")))
            .args(extra)
            .spawn()
            .expect("spawning tariff dispatcher");
        drop(namespace);
        self.dispatchers.push(Proc {
            child,
            name: name.into(),
        });
    }

    /// Where dispatcher `name` logs.
    pub fn dispatcher_log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("dispatcher-{name}.log"))
    }

    /// Deploys one function through shard 0.
    pub async fn deploy(&self, spec: FunctionSpec) {
        let response = self
            .client(0)
            .await
            .request(ClientRequest::Deploy(spec))
            .await
            .unwrap();
        assert!(
            matches!(response, ClientResponse::Deployed { .. }),
            "{response:?}"
        );
    }

    /// Deploys the example `example` twice through shard 0: as `safe`, with `retries`, and as
    /// `unsafe`, without, so a test can lose a machine under both kinds of work.
    pub async fn deploy_safe_and_unsafe(&self, example: &str, retries: u32) {
        self.deploy(FunctionSpec {
            retries,
            ..named_example("safe", example)
        })
        .await;
        self.deploy(named_example("unsafe", example)).await;
    }

    /// A client of shard `i`, as tenant `test`.
    pub async fn client(&self, i: usize) -> Client {
        let token = self.token().await;
        self.client_as(i, Some(token)).await
    }

    /// A client of shard `i` presenting `token`.
    pub async fn client_as(&self, i: usize, token: Option<Token>) -> Client {
        Client::connect(&self.cluster, self.shard_addrs[i], token)
            .await
            .expect("connecting to the shard")
    }

    /// The administrator's token, which the first shard wrote into the cluster directory.
    pub fn admin_token(&self) -> Token {
        let path = admin_token_file(&self.cluster_dir());
        wait_for_file(&path);
        read_token_file(&path)
            .expect("reading the admin token")
            .expect("an admin token")
    }

    /// Adds tenant `name` through shard 0 with the administrator's token; its token.
    pub async fn add_tenant(&self, name: &str) -> Token {
        self.add_tenant_with_budget(name, None).await
    }

    /// Adds tenant `name` with a monthly budget through shard 0; its token.
    pub async fn add_tenant_with_budget(&self, name: &str, budget: Option<f64>) -> Token {
        let token = new_token().unwrap();
        let admin = self.client_as(0, Some(self.admin_token())).await;
        let request = TenantRequest::Add {
            name: name.into(),
            token_hash: hash_token(&token),
            budget,
        };
        let answer = admin
            .request(ClientRequest::Tenants(request))
            .await
            .expect("adding a tenant");
        assert!(matches!(answer, ClientResponse::Tenant(_)), "{answer:?}");
        // Where `tariff tenant add` would leave it, so the CLI finds it with `--tenant`.
        let file = tariff_cluster::tenancy::token_file(&self.cluster_dir(), name);
        tariff_cluster::tenancy::write_token_file(&file, &token).unwrap();
        token
    }

    /// The token of tenant `test`, added on first use.
    pub async fn token(&self) -> Token {
        self.token
            .get_or_init(|| self.add_tenant("test"))
            .await
            .clone()
    }

    /// Waits until every shard has `machines` machines registered with all lanes open.
    pub async fn wait_for_machines(&self, machines: usize) {
        for i in 0..self.shard_addrs.len() {
            let client = self.client(i).await;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(ClientResponse::Status(status)) =
                    client.request(ClientRequest::Status).await
                {
                    if status.machines.len() >= machines {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "shard {i} did not see {machines} machines in time"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Lanes open just after registration; give them a moment to be placeable.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// The machines shard `i` has registered, by name.
    pub async fn machines(&self, i: usize) -> Vec<String> {
        match self.client(i).await.request(ClientRequest::Status).await {
            Ok(ClientResponse::Status(status)) => {
                status.machine_status.into_iter().map(|m| m.name).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Deploys the example functions through shard 0.
    pub async fn deploy_examples(&self) {
        let client = self.client(0).await;
        for name in ["echo", "sleep", "spin", "alloc", "fail"] {
            let spec = example_spec(name);
            let response = client.request(ClientRequest::Deploy(spec)).await.unwrap();
            assert!(
                matches!(response, ClientResponse::Deployed { .. }),
                "{response:?}"
            );
        }
    }
}

impl Drop for TestCluster {
    /// Stops the processes, then removes any cgroups a dispatcher could not remove itself
    /// (one killed by a test, as a crashed machine would be).
    fn drop(&mut self) {
        self.dispatchers.clear();
        self.shards.clear();
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            tariff_machine_sched::cgroup::remove_listed_subtrees(&entry.path().join("cgroups"));
        }
    }
}

/// A kernel CPU set holding `cpus`.
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET stays inside it for CPU
    // numbers below CPU_SETSIZE, which the filter guarantees.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    }
}

/// Reads a file a child writes once it is ready, waiting for it (bounded).
pub fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text.trim().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear in time",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (at most 10 s) until machine `name` runs at least `at_least` invocations of shard
/// 0's.
pub async fn wait_running(cluster: &TestCluster, name: &str, at_least: u32) {
    let client = cluster.client(0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(ClientResponse::Status(status)) = client.request(ClientRequest::Status).await {
            let running: u32 = status
                .machine_status
                .iter()
                .filter(|m| m.name == name)
                .flat_map(|m| m.running.iter())
                .sum();
            if running >= at_least {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} never ran {at_least} invocations"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded by `within`) until the file `log` contains `text` `times` times or more;
/// when it first did.
pub async fn wait_for_log(log: &Path, text: &str, times: usize, within: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let contents = std::fs::read_to_string(log).unwrap_or_default();
        if contents.matches(text).count() >= times {
            return Instant::now();
        }
        assert!(
            started.elapsed() < within,
            "`{text}` did not appear {times} time(s) in {} within {within:?}:\n{contents}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An invocation request with a 30 s timeout.
pub fn request(function: &str, class: &str, payload: &str) -> InvokeRequest {
    InvokeRequest {
        function: function.into(),
        class: class.into(),
        payload: payload.as_bytes().to_vec(),
        timeout_ms: 30_000,
        limits: Default::default(),
        idempotency_key: None,
    }
}

/// Invokes and unwraps the transport result, leaving the shard's answer.
pub async fn invoke(
    client: &Client,
    request: InvokeRequest,
) -> Result<InvocationOutcome, InvokeError> {
    client.invoke(request).await.expect("the shard answers")
}

/// Fetches `GET /metrics` from a `--metrics` endpoint (classic Prometheus text format).
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of one sample, named with its labels exactly as exposed
/// (`name{a="x",b="y"}`), or 0 when the series has no sample yet.
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0.0)
}

/// The address in a server's `metrics.addr` file, under `data_dir`.
pub fn metrics_addr(data_dir: &Path) -> SocketAddr {
    wait_for_file(&data_dir.join("metrics.addr"))
        .parse()
        .expect("metrics.addr holds an address")
}

/// Runs `promtool check metrics` on an exposition; panics with its complaints if it refuses.
pub fn promtool_check(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "running promtool: install Debian's `prometheus` package (.ci/run does) to check \
             the metrics exposition",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the exposition: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
