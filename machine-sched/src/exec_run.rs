//! Running one job in a process of its own (an exec function): house it, launch it off
//! real-time priority, confine and raise it in its turn, wait for it, and complete the
//! process runner's [`RunReport`] with what the machine knows.

use std::sync::Arc;
use std::time::Instant;

use tariff_types::wire::RunReport;
use tracing::debug;

use crate::job::{Job, JobError};
use crate::parts::Parts;
use crate::priority::on_launch_thread;
use crate::process::RunRequest;
use crate::provision::Prepared;
use crate::running::{thawed_at_deadline, Cancel};
use crate::turns::Turn;

/// Runs `job` in a new process, which is raised (and `turn` passed on) as soon as it has
/// exec'd; `arrived` is when the job reached the machine.
pub(crate) async fn run_exec(
    machine: &Arc<Parts>,
    job: &Job,
    arrived: Instant,
    turn: Option<Turn<'_>>,
) -> Result<RunReport, JobError> {
    let provision = Arc::clone(&machine.provision);
    let name = provision.new_instance_name();
    let launch_job = job.clone();
    let turn_us = micros_since(arrived);
    // Directories, cgroups and the new process happen on a launch thread (`on_launch_thread`).
    let scheduling = machine.priority.launch_scheduling(job);
    let launched = on_launch_thread(provision.spawn_cpus().to_vec(), scheduling, move || {
        let on_launch_thread = Instant::now();
        let queued_us = micros_since(arrived);
        let Prepared {
            mut spec,
            cgroup,
            work_dir,
            confining,
        } = provision.prepare(&name, &launch_job.function)?;
        spec.env.extend(launch_job.env.iter().cloned());
        let cpu_before = cgroup
            .as_ref()
            .and_then(|cg| cg.cpu_usage_us().ok())
            .unwrap_or(0);
        let request = RunRequest {
            launch: spec,
            stdin: launch_job.payload,
            timeout: launch_job.timeout,
            max_output: launch_job.max_output,
        };
        let prepare_us = micros_since(on_launch_thread);
        let spawned = crate::process::spawn(request);
        let launch = LaunchTimes {
            queued_us,
            prepare_us,
            spawn_us: micros_since(on_launch_thread) - prepare_us,
        };
        Ok((spawned, cgroup, work_dir, confining, cpu_before, launch))
    })
    .await?;
    let (spawned, cgroup, work_dir, confining, cpu_before, launch) = launched;
    let result = match spawned {
        Err(e) => Err(JobError::from(e)),
        Ok(process) => {
            let pid = process.pid();
            // Confine, then raise, back to back: the process becomes real-time already on
            // the function CPUs, queued behind its class in the order of raising (never
            // running real-time on a spawn CPU in between, where it could be migrated
            // later and land out of turn).
            machine.priority.confine(pid, &confining, job);
            machine.priority.raise(pid, cgroup.as_ref(), job);
            drop(turn);
            if let Some(gate) = &machine.gate {
                gate.attach(job.id, pid);
            }
            let start_us = micros_since(arrived);
            debug!(
                pid,
                start_us,
                turn_us,
                launch_queued_us = launch.queued_us,
                prepare_us = launch.prepare_us,
                spawn_us = launch.spawn_us,
                "exec function started"
            );
            machine.running.insert(
                job.id,
                pid,
                Cancel::Exec(process.handle()),
                job.class,
                cgroup.as_ref().map(|cg| cg.name().to_owned()),
            );
            // Memory is billed by its integral over the run (`meter`), read from the
            // instance's cgroup, else from the process's resident set.
            let deadline = process.deadline();
            let wait = thawed_at_deadline(&machine.running, job.id, deadline, process.wait());
            let (outcome, memory_byte_ms) = crate::meter::metered(wait, || match &cgroup {
                Some(cg) => cg.memory_current().ok(),
                None => Some(crate::memory::resident_bytes(pid)),
            })
            .await;
            if let Some(gate) = &machine.gate {
                gate.detach(job.id);
            }
            outcome.map_err(JobError::from).map(|mut report| {
                report.start_us = start_us;
                report.memory_byte_ms = memory_byte_ms;
                // The cgroup also counts what the function's children used; the process's
                // rusage only what it waited for.
                if let Some(cpu_us) = cgroup
                    .as_ref()
                    .and_then(|cg| cg.cpu_usage_us().ok())
                    .map(|us| us.saturating_sub(cpu_before))
                    .filter(|&us| us > 0)
                {
                    report.cpu_time_us = cpu_us;
                }
                if let Some(peak) = cgroup
                    .as_ref()
                    .and_then(|cg| cg.memory_peak().ok())
                    .filter(|&b| b > 0)
                {
                    report.peak_memory_bytes = peak;
                }
                report
            })
        }
    };
    machine.provision.retire(cgroup, work_dir);
    result
}

/// Where an exec cold start's time went, for the debug log: the arrival to the launch thread
/// (turn and blocking-pool hand-off), housing (cgroup, working directory), and `fork`+`exec`.
struct LaunchTimes {
    /// Arrival on the machine to the launch thread starting.
    queued_us: u64,
    /// Cgroup and working directory.
    prepare_us: u64,
    /// Fork, joining cgroups, exec.
    spawn_us: u64,
}

/// Microseconds from `since` to now, saturating.
pub(crate) fn micros_since(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}
