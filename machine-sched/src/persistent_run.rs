//! Running one job on a persistent instance: take a warm one from the pool or start one (the
//! cold start), raise it for the call, measure the call, build the job's [`RunReport`], and
//! return the instance to the pool lowered, or retire it if the call left it dead.
//!
//! The instance's own protocol (frames, poisoning, crash reports) is
//! [`crate::persistent`]'s business; the pool's is [`crate::instance_pool`]'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tariff_types::wire::{unix_micros, RunReport};
use tracing::{debug, info, Instrument};

use crate::exec_run::micros_since;
use crate::instance_pool::Instance;
use crate::job::{Job, JobError, StartError};
use crate::parts::Parts;
use crate::persistent::{CallError, PersistentProcess};
use crate::priority::on_launch_thread;
use crate::provision::Prepared;
use crate::running::Cancel;
use crate::turns::Turn;

/// Runs `job` on a warm instance of its function, or on a new one kept for `keep_alive`
/// afterwards; `arrived` is when the job reached the machine.
pub(crate) async fn run_persistent(
    machine: &Arc<Parts>,
    job: &Job,
    arrived: Instant,
    keep_alive: Duration,
    turn: Option<Turn<'_>>,
) -> Result<RunReport, JobError> {
    let key = (
        job.tenant.clone(),
        job.function.name.clone(),
        job.function.version,
    );
    let (mut instance, cold_start) = match machine.pool.take(&key) {
        Some(instance) => (instance, false),
        None => {
            let starter = Arc::clone(machine);
            let first = job.clone();
            let cpus = machine.provision.spawn_cpus().to_vec();
            let scheduling = machine.priority.launch_scheduling(job);
            let started = on_launch_thread(cpus, scheduling, move || {
                start_instance(&starter, &first, keep_alive)
            })
            .await?;
            (started, true)
        }
    };
    let pid = instance.process.pid();
    machine.priority.raise(pid, instance.cgroup.as_ref(), job);
    drop(turn);
    if let Some(gate) = &machine.gate {
        gate.attach(job.id, pid);
    }
    if let Some(cg) = &instance.cgroup {
        let _ = cg.reset_memory_peak();
    }
    let cpu_before = instance
        .cgroup
        .as_ref()
        .and_then(|cg| cg.cpu_usage_us().ok());
    let wait_before = crate::rt::process_runqueue_wait_us(pid);
    let start_us = micros_since(arrived);
    let started_at_us = unix_micros();
    machine.running.insert(
        job.id,
        pid,
        Cancel::Persistent(instance.process.handle()),
        job.class,
        instance.cgroup.as_ref().map(|cg| cg.name().to_owned()),
    );
    if !job.env.is_empty() {
        if let Err(e) = crate::context_file::write(&instance.work_dir, &job.env) {
            debug!(instance = %instance.name, error = %e, "could not write the invocation context");
        }
    }
    let cgroup = instance.cgroup.as_ref();
    let (answer, memory_byte_ms) = crate::meter::metered(
        instance
            .process
            .call(&job.payload, job.timeout, job.max_output),
        || match cgroup {
            Some(cg) => cg.memory_current().ok(),
            None => Some(crate::memory::resident_bytes(pid)),
        },
    )
    .await;
    let finished_at_us = unix_micros();
    if !job.env.is_empty() {
        crate::context_file::remove(&instance.work_dir);
    }
    if let Some(gate) = &machine.gate {
        gate.detach(job.id);
    }
    let cpu_after = instance
        .cgroup
        .as_ref()
        .and_then(|cg| cg.cpu_usage_us().ok());
    let cpu_time_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => 0,
    };
    let peak_memory_bytes = instance
        .cgroup
        .as_ref()
        .and_then(|cg| cg.memory_peak().ok())
        .unwrap_or_else(|| crate::memory::resident_bytes(pid));
    let preempted_us = crate::rt::process_runqueue_wait_us(pid).saturating_sub(wait_before);
    let result = match answer {
        Ok(output) => Ok(RunReport {
            output,
            started_at_us,
            finished_at_us,
            peak_memory_bytes,
            cpu_time_us,
            memory_byte_ms,
            cold_start,
            start_us,
            preempted_us,
            // Filled in by the machine scheduler, which saw the memory pressure.
            memory: Default::default(),
        }),
        // The instance is still at hand to say what it last logged.
        Err(CallError::Protocol(reason)) => Err(JobError::Failed {
            status: format!("protocol violation: {reason}"),
            stderr_tail: instance.process.stderr_tail(),
        }),
        Err(other) => Err(JobError::from(other)),
    };
    if instance.process.is_dead() {
        debug!(instance = %instance.name, "instance gone; a fresh one starts next time");
        let retiring = Arc::clone(machine);
        tokio::spawn(
            async move {
                instance.process.kill().await;
                retiring
                    .provision
                    .retire(instance.cgroup, instance.work_dir);
            }
            .in_current_span(),
        );
    } else {
        machine.priority.lower(pid, instance.cgroup.as_ref());
        machine.pool.put(key, instance, keep_alive);
    }
    result
}

/// Starts a new instance for `job` (on a launch thread, at its call's priority), confined
/// and raised for the call that started it, so its start-up is not starved on the function
/// CPUs; it is lowered again when it goes idle.
fn start_instance(machine: &Parts, job: &Job, keep_alive: Duration) -> Result<Instance, JobError> {
    let function = &job.function;
    let name = machine.provision.new_instance_name();
    let Prepared {
        mut spec,
        cgroup,
        work_dir,
        confining,
    } = machine.provision.prepare(&name, function)?;
    // Each call's invocation context is written to this file (`context_file`).
    spec.env.push((
        crate::context_file::CONTEXT_FILE_ENV.to_owned(),
        crate::context_file::path(&work_dir)
            .to_string_lossy()
            .into_owned(),
    ));
    let process = match PersistentProcess::spawn(&spec) {
        Ok(process) => process,
        Err(e) => {
            machine.provision.retire(cgroup, work_dir);
            return Err(StartError::from(e).into());
        }
    };
    machine.priority.confine(process.pid(), &confining, job);
    machine.priority.raise(process.pid(), cgroup.as_ref(), job);
    info!(instance = %name, function = %function.name, pid = process.pid(), "instance started");
    Ok(Instance {
        name,
        process,
        cgroup,
        work_dir,
        idle_since: Instant::now(),
        keep_alive,
    })
}
