//! Machine-scheduler benchmarks with real processes (and real SCHED_FIFO where permitted):
//! cold starts of an exec and of a persistent instance, warm no-op dispatch overhead, and
//! preemption latency at a saturated machine. Each figure comes with a baseline measured in
//! the same run, because the machines are shared and noisy:
//!
//! - cold exec start vs. a bare `std::process::Command` spawn + wait of the same binary;
//! - warm dispatch vs. calling the same warm instance directly, without the scheduler;
//! - preemption vs. the same no-op call on an idle machine.
//!
//! Run with `cargo build --release && cargo bench -p tariff-bench --bench machine`: the example
//! functions are looked up in `target/release`.

#![allow(missing_docs)] // a bench binary

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tariff_machine_sched::launch::LaunchSpec;
use tariff_machine_sched::machine::{Job, MachineOptions, MachineScheduler};
use tariff_machine_sched::persistent::PersistentProcess;
use tariff_machine_sched::rt::{self, SchedMode};
use tariff_types::function::Runtime;
use tariff_types::{ClassId, FunctionSpec};

const SAMPLES: u64 = 300;
const CLASSES: usize = 4;
const MAX_OUTPUT: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

fn function(name: &str, runtime: Runtime, version: u64) -> FunctionSpec {
    let dir = tariff_local::binaries_dir().expect("locating the bench executable");
    let path = tariff_local::examples::example_binary(&dir, name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release` first",
        path.display()
    );
    FunctionSpec {
        name: name.into(),
        command: vec![path.to_string_lossy().into_owned()],
        env: vec![],
        version,
        runtime,
        owner: "bench".into(),
        ..Default::default()
    }
}

fn job(id: u64, class: u8, function: FunctionSpec, payload: &str) -> Job {
    Job {
        tenant: "bench".into(),
        env: Vec::new(),
        id,
        class: ClassId(class),
        classes: CLASSES,
        function,
        payload: payload.as_bytes().to_vec(),
        timeout: TIMEOUT,
        max_output: MAX_OUTPUT,
        claim: None,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("valid precision")
}

fn line(name: &str, h: &Histogram<u64>, baseline: Option<&Histogram<u64>>) {
    let ratio = baseline
        .map(|b| {
            format!(
                "  ({:.2}x / {:.2}x baseline)",
                h.value_at_quantile(0.5) as f64 / b.value_at_quantile(0.5).max(1) as f64,
                h.value_at_quantile(0.99) as f64 / b.value_at_quantile(0.99).max(1) as f64
            )
        })
        .unwrap_or_default();
    println!(
        "{name:<44} p50 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms{ratio}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn scheduler(work: &std::path::Path) -> Arc<MachineScheduler> {
    let mode = rt::probe();
    let real_time = mode == SchedMode::RealTime;
    let (cpus, _) = rt::function_cpus(&rt::allowed_cpus(), 1, real_time);
    let cgroups = tariff_machine_sched::cgroup::CgroupRoot::detect(&format!(
        "tariff/bench-{}",
        std::process::id()
    ))
    .ok();
    if let Some(root) = &cgroups {
        let _ = root.confine_cpus(&cpus.functions);
    }
    println!(
        "mode: {mode:?}; function CPUs {cpus:?}; cgroups: {}",
        cgroups
            .as_ref()
            .map_or("none".to_string(), |r| format!("{:?}", r.version()))
    );
    MachineScheduler::new(MachineOptions {
        cores: cpus.functions.len(),
        mode,
        cpus,
        cgroups,
        rt_budget: None,
        user: tariff_machine_sched::isolation::function_user(),
        work_root: work.to_owned(),
    })
}

fn main() {
    let work = std::env::temp_dir().join(format!("tariff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| {
            let _ = rt::raise_current_thread();
        })
        .build()
        .expect("runtime");
    runtime.block_on(run(&work));
    let _ = std::fs::remove_dir_all(&work);
}

async fn run(work: &std::path::Path) {
    let machine = scheduler(work);
    let reaper = tokio::spawn(machine.clone().reap_forever());
    let mut id = 0;
    let mut next_id = || {
        id += 1;
        id
    };

    // Baseline: a bare spawn + wait of the echo binary.
    let echo = function("echo", Runtime::Exec, 1);
    let mut bare = histogram();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let status = std::process::Command::new(&echo.command[0])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("spawn echo");
        assert!(status.success());
        bare.record(start.elapsed().as_micros() as u64).unwrap();
    }
    let mut exec_start = histogram();
    let mut exec_total = histogram();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let report = machine
            .run(job(next_id(), 1, echo.clone(), ""))
            .await
            .expect("echo runs");
        exec_total
            .record(start.elapsed().as_micros() as u64)
            .unwrap();
        exec_start.record(report.start_us).unwrap();
    }

    // Persistent cold starts: a fresh version each time, so no instance is reused.
    let mut persistent_start = histogram();
    for version in 0..SAMPLES {
        let counter = function(
            "counter",
            Runtime::Persistent { keep_alive_ms: 0 },
            1_000 + version,
        );
        let report = machine
            .run(job(next_id(), 1, counter, "x"))
            .await
            .expect("counter runs");
        assert!(report.cold_start);
        persistent_start.record(report.start_us).unwrap();
    }
    machine.reap_idle().await;

    // Warm no-op dispatch, and the same instance kind called directly as the baseline.
    let warm_fn = function(
        "counter",
        Runtime::Persistent {
            keep_alive_ms: 60_000,
        },
        1,
    );
    machine
        .run(job(next_id(), 1, warm_fn.clone(), "x"))
        .await
        .expect("warm-up");
    let mut warm = histogram();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let report = machine
            .run(job(next_id(), 1, warm_fn.clone(), "x"))
            .await
            .expect("warm call");
        assert!(!report.cold_start);
        warm.record(start.elapsed().as_micros() as u64).unwrap();
    }
    let mut direct = histogram();
    let mut process = PersistentProcess::spawn(&LaunchSpec {
        command: warm_fn.command.clone(),
        ..LaunchSpec::default()
    })
    .expect("direct instance");
    for _ in 0..SAMPLES {
        let start = Instant::now();
        process
            .call(b"x", TIMEOUT, MAX_OUTPUT)
            .await
            .expect("direct call");
        direct.record(start.elapsed().as_micros() as u64).unwrap();
    }
    process.kill().await;

    // Preemption: saturate the function CPU with a long batch spin on a warm instance, then
    // time critical no-op calls to another warm instance: arrival to answer, vs. idle.
    let batch_fn = function(
        "counter",
        Runtime::Persistent {
            keep_alive_ms: 60_000,
        },
        2,
    );
    let spin_machine = machine.clone();
    let spin_id = next_id();
    let saturate = tokio::spawn(async move {
        spin_machine
            .run(job(spin_id, 3, batch_fn, "spin 20000"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut preempting = histogram();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        machine
            .run(job(next_id(), 0, warm_fn.clone(), "x"))
            .await
            .expect("critical call");
        preempting
            .record(start.elapsed().as_micros() as u64)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    machine.cancel(spin_id);
    let _ = saturate.await;

    println!();
    println!("{SAMPLES} samples each");
    line("baseline: bare spawn+wait of echo (total)", &bare, None);
    line(
        "cold start, exec (arrival -> process started)",
        &exec_start,
        None,
    );
    line("exec invocation total (echo)", &exec_total, Some(&bare));
    line(
        "cold start, persistent (arrival -> request sent)",
        &persistent_start,
        None,
    );
    line("baseline: direct call to a warm instance", &direct, None);
    line("warm no-op via the machine scheduler", &warm, Some(&direct));
    line(
        "critical no-op, CPU saturated by batch",
        &preempting,
        Some(&warm),
    );
    reaper.abort();
    machine.shutdown().await;
}
