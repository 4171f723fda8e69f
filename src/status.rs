//! `tariff status`: the cluster at a glance, gathered from every shard at once.
//!
//! Each shard knows its own queues and the machines registered with it; a dispatcher serves
//! every shard, so the dispatchers' rows merge what the shards say about them: the running
//! counts add up (each shard counts its own invocations), the freshest report of free memory
//! and warm instances wins, and the idle list it is on is named by shard id. A shard that does
//! not answer is listed with the reason rather than hidden.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::json;
use tariff_cluster::client::{Client, ClientError, DISCOVERY_TIMEOUT};
use tariff_cluster::cluster::Cluster;
use tariff_types::wire::{ClientRequest, ClientResponse, MachineStatus, MemoryReport, ShardStatus};

/// What one shard answered, or why it did not.
pub struct ShardView {
    /// Where it was asked.
    pub addr: SocketAddr,
    /// Its status, or the reason it gave none.
    pub status: Result<ShardStatus, String>,
}

/// One dispatcher, merged from what every shard says about it.
#[derive(Default)]
pub struct DispatcherView {
    /// As the shard that heard from it last sees it.
    pub latest: MachineStatus,
    /// Running invocations per class, summed over the shards.
    pub running: Vec<u32>,
    /// Ids of the shards it is registered with.
    pub shards: Vec<u16>,
    /// Ids of the shards whose idle list it is on.
    pub listed_on: Vec<u16>,
}

/// The whole cluster as gathered.
pub struct ClusterView {
    /// Every shard asked, in address order.
    pub shards: Vec<ShardView>,
    /// The price classes, most expensive first (from the first shard that answered).
    pub classes: Vec<String>,
    /// Every dispatcher, by name.
    pub dispatchers: BTreeMap<String, DispatcherView>,
}

/// Asks every shard in `addrs` for its status at once (each bounded by
/// [`DISCOVERY_TIMEOUT`] to connect). Fails only when none answers.
pub async fn gather(
    cluster: &Cluster,
    addrs: &[SocketAddr],
    token: Option<tariff_types::Token>,
) -> anyhow::Result<ClusterView> {
    let mut asks = tokio::task::JoinSet::new();
    for &addr in addrs {
        let cluster = cluster.clone();
        let token = token.clone();
        asks.spawn(async move { (addr, ask(&cluster, addr, token).await) });
    }
    let mut shards = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((addr, status)) = joined {
            shards.push(ShardView { addr, status });
        }
    }
    shards.sort_by_key(|s| s.addr);
    if shards.iter().all(|s| s.status.is_err()) {
        let tried = shards
            .iter()
            .map(|s| (s.addr, s.status.as_ref().err().cloned().unwrap_or_default()))
            .collect();
        anyhow::bail!(
            "{}\n  shards are recorded in {} by every running shard; start one with `tariff local` \
             or `tariff shard`, or pass --shard",
            ClientError::NoneReachable { tried },
            tariff_cluster::directory::shards_dir(cluster.dir()).display()
        );
    }
    Ok(ClusterView::merge(shards))
}

async fn ask(
    cluster: &Cluster,
    addr: SocketAddr,
    token: Option<tariff_types::Token>,
) -> Result<ShardStatus, String> {
    let client = Client::connect_within(cluster, addr, DISCOVERY_TIMEOUT, token)
        .await
        .map_err(|e| match e {
            ClientError::Unreachable { reason, .. } => reason,
            other => other.to_string(),
        })?;
    match client.request(ClientRequest::Status).await {
        Ok(ClientResponse::Status(status)) => Ok(status),
        Ok(other) => Err(format!("unexpected answer: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

impl ClusterView {
    fn merge(shards: Vec<ShardView>) -> Self {
        let classes = shards
            .iter()
            .find_map(|s| s.status.as_ref().ok().map(|st| st.classes.clone()))
            .unwrap_or_default();
        let mut dispatchers: BTreeMap<String, DispatcherView> = BTreeMap::new();
        for status in shards.iter().filter_map(|s| s.status.as_ref().ok()) {
            for machine in &status.machine_status {
                let view = dispatchers.entry(machine.name.clone()).or_default();
                if view.shards.is_empty() || machine.last_heard_ms < view.latest.last_heard_ms {
                    // Free memory reaches only the shards a machine lists with or is polled
                    // by: keep a report from another shard rather than show none.
                    let known = view.latest.free_memory_bytes;
                    let known_memory = view.latest.memory.take();
                    view.latest = machine.clone();
                    view.latest.free_memory_bytes = machine.free_memory_bytes.or(known);
                    view.latest.memory = machine.memory.clone().or(known_memory);
                } else {
                    if view.latest.free_memory_bytes.is_none() {
                        view.latest.free_memory_bytes = machine.free_memory_bytes;
                    }
                    if view.latest.memory.is_none() {
                        view.latest.memory = machine.memory.clone();
                    }
                }
                if view.running.len() < machine.running.len() {
                    view.running.resize(machine.running.len(), 0);
                }
                for (sum, n) in view.running.iter_mut().zip(&machine.running) {
                    *sum += n;
                }
                view.shards.push(status.shard_id);
                if machine.listed {
                    view.listed_on.push(status.shard_id);
                }
            }
        }
        for view in dispatchers.values_mut() {
            view.shards.sort_unstable();
            view.listed_on.sort_unstable();
        }
        Self {
            shards,
            classes,
            dispatchers,
        }
    }

    fn per_class(&self, counts: &[impl Into<u64> + Copy]) -> serde_json::Value {
        self.classes
            .iter()
            .zip(counts)
            .map(|(class, n)| (class.clone(), json!(Into::<u64>::into(*n))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The `--json` form: every shard (with its error if it did not answer), every
    /// dispatcher, and the cluster's totals.
    pub fn to_json(&self) -> serde_json::Value {
        let shards: Vec<serde_json::Value> = self
            .shards
            .iter()
            .map(|s| match &s.status {
                Ok(st) => json!({
                    "addr": s.addr.to_string(),
                    "shard_id": st.shard_id,
                    "queued": self.per_class(&st.queued),
                    "in_flight": st.in_flight,
                    "answered": st.answered,
                    "answered_per_s": st.answered_per_s,
                    "machines": st.machines,
                    "idle_list": st.idle_list,
                }),
                Err(reason) => json!({ "addr": s.addr.to_string(), "error": reason }),
            })
            .collect();
        let dispatchers: Vec<serde_json::Value> = self
            .dispatchers
            .iter()
            .map(|(name, d)| {
                json!({
                    "name": name,
                    "cores": d.latest.cores,
                    "slots": d.latest.slots,
                    "memory_bytes": d.latest.memory_bytes,
                    "free_memory_bytes": d.latest.free_memory_bytes,
                    "running": self.per_class(&d.running),
                    "warm_functions": d.latest.warm,
                    "shards": d.shards,
                    "idle_listed_on": d.listed_on,
                    "last_heard_ms": d.latest.last_heard_ms,
                    "memory": d.latest.memory.as_ref().map(|m| self.memory_json(m)),
                })
            })
            .collect();
        json!({
            "classes": self.classes,
            "queued": self.per_class(&self.total_queued()),
            "answered_per_s": self.answered_per_s(),
            "shards": shards,
            "dispatchers": dispatchers,
        })
    }

    /// A machine's memory report in the `--json` form: its readings and, per class, what
    /// memory pressure has cost it.
    fn memory_json(&self, memory: &MemoryReport) -> serde_json::Value {
        let per_class: serde_json::Map<_, _> = self
            .classes
            .iter()
            .zip(&memory.per_class)
            .map(|(class, c)| {
                (
                    class.clone(),
                    json!({
                        "swapped_out_bytes": c.pressure.swapped_out_bytes,
                        "swapped_in_bytes": c.pressure.swapped_in_bytes,
                        "held_for_memory_ms": c.pressure.held_us / 1000,
                        "killed_memory_pressure": c.kills,
                    }),
                )
            })
            .collect();
        json!({
            "used_bytes": memory.used_bytes,
            "free_bytes": memory.free_bytes,
            "swap_total_bytes": memory.swap_total_bytes,
            "swap_free_bytes": memory.swap_free_bytes,
            "per_class": per_class,
        })
    }

    fn answering(&self) -> impl Iterator<Item = &ShardStatus> {
        self.shards.iter().filter_map(|s| s.status.as_ref().ok())
    }

    fn total_queued(&self) -> Vec<u64> {
        let mut total = vec![0; self.classes.len()];
        for st in self.answering() {
            for (sum, n) in total.iter_mut().zip(&st.queued) {
                *sum += n;
            }
        }
        total
    }

    fn answered_per_s(&self) -> f64 {
        self.answering().map(|st| st.answered_per_s).sum()
    }

    /// The table a person reads.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let classes = self.classes.join("/");
        let slash = |counts: &[String]| counts.join("/");
        let _ = writeln!(
            out,
            "Tariff cluster: {} shard(s), {} dispatcher(s); {:.1} invocations/s; queued {classes}: {}",
            self.shards.len(),
            self.dispatchers.len(),
            self.answered_per_s(),
            slash(&self.total_queued().iter().map(u64::to_string).collect::<Vec<_>>()),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22} {:>5} {:>16} {:>9} {:>10} {:>9} {:>8}  IDLE LIST",
            "SHARD", "ID", "QUEUED", "IN FLIGHT", "ANSWERED", "PER S", "MACHINES"
        );
        for s in &self.shards {
            match &s.status {
                Ok(st) => {
                    let _ = writeln!(
                        out,
                        "{:<22} {:>5} {:>16} {:>9} {:>10} {:>9.1} {:>8}  {}",
                        s.addr.to_string(),
                        st.shard_id,
                        slash(&st.queued.iter().map(u64::to_string).collect::<Vec<_>>()),
                        st.in_flight,
                        st.answered,
                        st.answered_per_s,
                        st.machines.len(),
                        if st.idle_list.is_empty() {
                            "-".to_owned()
                        } else {
                            st.idle_list.join(",")
                        }
                    );
                }
                Err(reason) => {
                    let _ = writeln!(out, "{:<22} not answering: {reason}", s.addr.to_string());
                }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18} {:>5} {:>5} {:>9} {:>9} {:>16} {:>5} {:>10} {:>10}",
            "DISPATCHER",
            "CORES",
            "SLOTS",
            "MEMORY",
            "FREE",
            "RUNNING",
            "WARM",
            "IDLE-LIST",
            "HEARD"
        );
        for (name, d) in &self.dispatchers {
            let listed = if d.listed_on.is_empty() {
                "-".to_owned()
            } else {
                d.listed_on
                    .iter()
                    .map(|id| format!("shard {id}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(
                out,
                "{:<18} {:>5} {:>5} {:>9} {:>9} {:>16} {:>5} {:>10} {:>10}",
                name,
                d.latest.cores,
                d.latest.slots,
                mib(Some(d.latest.memory_bytes)),
                mib(d.latest.free_memory_bytes),
                slash(&d.running.iter().map(u32::to_string).collect::<Vec<_>>()),
                d.latest.warm,
                listed,
                format!("{:.1}s ago", d.latest.last_heard_ms as f64 / 1000.0),
            );
        }
        self.memory_table(&mut out);
        out
    }

    /// Each machine's memory and, per class, what memory pressure has cost it since its
    /// dispatcher started: bytes swapped out and back in, time held frozen, kills.
    fn memory_table(&self, out: &mut String) {
        let reporting: Vec<(&String, &MemoryReport)> = self
            .dispatchers
            .iter()
            .filter_map(|(name, d)| d.latest.memory.as_ref().map(|m| (name, m)))
            .collect();
        if reporting.is_empty() {
            return;
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18} {:<10} {:>9} {:>9} {:>12} {:>12} {:>9} {:>6}",
            "MEMORY", "CLASS", "USED", "FREE", "SWAPPED OUT", "SWAPPED IN", "HELD", "KILLS"
        );
        for (name, memory) in reporting {
            let swap = if memory.swap_total_bytes == 0 {
                "no swap".to_owned()
            } else {
                format!(
                    "swap {} free of {}",
                    mib(Some(memory.swap_free_bytes)),
                    mib(Some(memory.swap_total_bytes))
                )
            };
            let _ = writeln!(
                out,
                "{:<18} {:<10} {:>9} {:>9}  {swap}",
                name,
                "",
                mib(Some(memory.used_bytes)),
                mib(Some(memory.free_bytes)),
            );
            for (class, c) in self.classes.iter().zip(&memory.per_class) {
                let _ = writeln!(
                    out,
                    "{:<18} {:<10} {:>9} {:>9} {:>12} {:>12} {:>9} {:>6}",
                    "",
                    class,
                    "",
                    "",
                    mib(Some(c.pressure.swapped_out_bytes)),
                    mib(Some(c.pressure.swapped_in_bytes)),
                    format!("{:.1}s", c.pressure.held_us as f64 / 1e6),
                    c.kills,
                );
            }
        }
    }
}

/// Bytes as MiB, or `?` when unknown.
fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".to_owned(), |b| format!("{}MiB", b >> 20))
}
