//! Works out, at start, how this machine will run functions: real-time or user-space
//! ordering, which CPUs, which cgroups, which user. Every decision is logged plainly, because
//! an operator must be able to tell from the log whether class priority is enforced by the
//! kernel and why not if it is not.

use std::path::{Path, PathBuf};

use tariff_machine_sched::cgroup::rt_budget::RtBudget;
use tariff_machine_sched::cgroup::CgroupRoot;
use tariff_machine_sched::machine::MachineOptions;
use tariff_machine_sched::rt::{self, SchedMode};
use tariff_types::policy::Policy;
use tracing::{info, warn};

use crate::DispatcherError;

/// File in the data directory listing the dispatcher's cgroup directories, one per line.
pub const CGROUPS_FILE: &str = "cgroups";

/// Detects the machine's capabilities and builds the machine scheduler's options.
/// `no_rt` forces user-space ordering.
pub fn machine_options(
    cores: u32,
    no_rt: bool,
    policy: Policy,
    data_dir: &Path,
    machine: &str,
) -> Result<MachineOptions, DispatcherError> {
    // The same span the running dispatcher logs in, so these lines name their machine too.
    let _span = tracing::info_span!("dispatcher", machine = %machine).entered();
    let mode = if policy == Policy::Hermod {
        SchedMode::ProcessorSharing
    } else if no_rt {
        SchedMode::UserSpace {
            reason: "--no-rt was given".into(),
        }
    } else {
        rt::probe()
    };
    let real_time = mode == SchedMode::RealTime;
    let (mut cpus, note) = rt::function_cpus(&rt::allowed_cpus(), cores as usize, real_time);
    // One subtree per dispatcher: the machine name, plus a digest of the data directory so two
    // dispatchers on one host (tests, or a misconfiguration) never clean up each other's
    // instances as stale.
    let base = format!("tariff/{}-{:08x}", sanitize(machine), digest(data_dir));
    let rt_budget = if real_time && cpus.real_time_confined() {
        real_time_budget(&base, cpus.functions.len())
    } else {
        None
    };
    if rt_budget.is_some() {
        cpus = cpus.with_real_time_everywhere();
    } else if let Some(note) = note {
        warn!("{note}");
    }
    match &mode {
        SchedMode::RealTime => {
            let throttle = rt::rt_throttle()
                .map(|(run, period)| format!("{run} of every {period} µs"))
                .unwrap_or_else(|| "unknown".into());
            info!(
                cpus = ?cpus.functions,
                real_time_cpus = ?cpus.real_time,
                dispatcher_priority = rt::DISPATCHER_PRIORITY,
                lowest_function_priority = rt::LOWEST_FUNCTION_PRIORITY,
                rt_throttle = %throttle,
                "machine scheduler: real-time (SCHED_FIFO by price class, the cheapest class under SCHED_BATCH on every CPU; the kernel preempts cheaper classes)"
            );
        }
        SchedMode::ProcessorSharing => info!(
            cpus = ?cpus.functions,
            "machine scheduler: processor sharing (the Hermod baseline: class-blind, every function at once, time-shared by the kernel)"
        ),
        // Asked for with --no-rt it is a choice, not a problem; otherwise real time was not
        // available and the operator should know.
        SchedMode::UserSpace { reason } if no_rt => info!(
            cpus = ?cpus.functions,
            %reason,
            "machine scheduler: user-space ordering (at most one function per CPU, cheaper classes stopped with SIGSTOP while dearer ones run)"
        ),
        SchedMode::UserSpace { reason } => warn!(
            cpus = ?cpus.functions,
            %reason,
            "machine scheduler: user-space ordering (at most one function per CPU, cheaper classes stopped with SIGSTOP while dearer ones run)"
        ),
    }
    let cgroups = match CgroupRoot::detect(&base) {
        Ok(root) => {
            match root.clean_stale() {
                Ok(0) => {}
                Ok(n) => info!(
                    removed = n,
                    "removed instance cgroups left by an earlier run"
                ),
                Err(e) => warn!(error = %e, "could not clean stale instance cgroups"),
            }
            match root.confine_cpus(&cpus.functions) {
                Ok(true) => info!(cpus = ?cpus.functions, "functions confined by cpuset"),
                Ok(false) => info!("no cpuset controller: functions confined by affinity only"),
                Err(e) => warn!(error = %e, "cpuset confinement failed: affinity only"),
            }
            info!(version = ?root.version(), base = %base, "per-instance cgroups");
            favor_dynamic_modifications();
            // Written down so an operator (or a test) can find and remove the subtree even
            // if this dispatcher is killed before it can clean up.
            let listing: String = root
                .base_dirs()
                .iter()
                .map(PathBuf::as_path)
                .chain(rt_budget.as_ref().map(RtBudget::dir))
                .map(|d| format!("{}\n", d.display()))
                .collect();
            let record = data_dir.join(CGROUPS_FILE);
            if let Err(e) =
                std::fs::create_dir_all(data_dir).and_then(|()| std::fs::write(&record, listing))
            {
                warn!(file = %record.display(), error = %e, "could not record the cgroup subtree");
            }
            Some(root)
        }
        Err(e) => {
            warn!(error = %e, "no per-instance cgroups: CPU time and memory come from rusage and /proc");
            None
        }
    };
    let user = tariff_machine_sched::isolation::function_user();
    match user {
        Some((uid, gid)) => info!(uid, gid, "functions run as an unprivileged user"),
        None => info!("functions run as the dispatcher's user (not root)"),
    }
    let work_root = data_dir.join("instances");
    std::fs::create_dir_all(&work_root).map_err(|source| DispatcherError::DataDir {
        path: work_root.clone(),
        source,
    })?;
    Ok(MachineOptions {
        cores: cpus.functions.len(),
        mode,
        cpus,
        cgroups,
        rt_budget,
        user,
        work_root,
    })
}

/// The paying classes' real-time budget on every function CPU, or `None` (logged) where the
/// kernel has none to give: then they are confined to all CPUs but one instead (see
/// `tariff_machine_sched::cgroup::rt_budget`).
fn real_time_budget(base: &str, cpus: usize) -> Option<RtBudget> {
    match RtBudget::detect(base, rt::real_time_share(cpus), cpus) {
        Ok(budget) => {
            info!(
                group = %budget.dir().display(),
                runtime_us = budget.runtime_us(),
                period_us = tariff_machine_sched::cgroup::rt_budget::BUDGET_PERIOD_US,
                share = budget.share(),
                "real-time budget: the paying classes run on every function CPU, at most this \
                 share of each; the kernel keeps the rest of every CPU for normal tasks"
            );
            Some(budget)
        }
        Err(e) => {
            info!(
                error = %e,
                "no real-time group budget: the paying classes keep off one CPU instead"
            );
            None
        }
    }
}

/// Makes cgroup joins cheap on this host (the `favordynmods` mount option, see
/// `tariff_machine_sched::cgroup::dynmods`): without it every launch that is not right behind
/// another waits for an RCU grace period (8–16 ms measured) before its process may join its
/// cgroups, which was most of an idle cluster's exec cold start. Logged plainly, because it
/// changes a host-wide setting.
fn favor_dynamic_modifications() {
    use tariff_machine_sched::cgroup::dynmods::{self, Dynmods};
    match dynmods::favor_dynamic_modifications() {
        Ok(Some(Dynmods::AlreadyOn(mount))) => info!(
            mount = %mount.display(),
            "cgroup joins do not wait for RCU grace periods (favordynmods already on)"
        ),
        Ok(Some(Dynmods::TurnedOn(mount))) => info!(
            mount = %mount.display(),
            "turned on the cgroup mount option favordynmods for this host, so that a cold start's \
             cgroup join does not wait for an RCU grace period (~10 ms); fork and exit take a \
             slightly slower path"
        ),
        Ok(None) => {}
        Err(e) => warn!(
            error = %e,
            "could not turn on favordynmods: cold starts that are not right behind another wait \
             ~10 ms for an RCU grace period before joining their cgroups"
        ),
    }
}

/// A short, stable digest of a path (FNV-1a), for naming.
fn digest(path: &Path) -> u32 {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    absolute
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0x811c_9dc5_u32, |hash, &byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        })
}

/// Machine names become cgroup directory names: keep them to safe characters.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
