//! Cross-process tests of the machine scheduler: real dispatcher processes running real
//! function processes under SCHED_FIFO (we are root here) or, with `--no-rt`, under the
//! user-space fallback; both must give the same orders.

mod common;

use std::time::{Duration, Instant};

use common::{example, invoke, request, runtime, TestCluster};
use tariff_types::function::Runtime;
use tariff_types::wire::{InvocationOutcome, InvokeError};
use tariff_types::FunctionSpec;

/// These tests measure who gets the function CPU; run in parallel, their dispatchers (all
/// confined to the same CPU) would compete with each other. One at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One shard and one dispatcher confined to one CPU, admitting four invocations of a class
/// and above, so a backlog sits on the machine itself.
async fn one_core_machine(extra: &[&str]) -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.start_shard(&[]);
    let mut args = vec!["--slots", "4"];
    args.extend_from_slice(extra);
    cluster.start_dispatcher("m1", 1, &args);
    cluster.wait_for_machines(1).await;
    cluster.deploy_examples().await;
    cluster
}

fn mode_logged(cluster: &TestCluster) -> String {
    let path = cluster.dispatcher_log("m1");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| format!("cannot read {}: {e}", path.display()))
}

/// With the function CPU busy with `batch` spins for seconds, a `critical` 200 ms spin ends in
/// about its own run time; the batch spin it interrupted reports the time it was held back.
async fn critical_preempts_batch(extra: &[&str]) -> String {
    let cluster = one_core_machine(extra).await;
    let client = cluster.client(0).await;
    let mut batch = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        batch.push(tokio::spawn(async move {
            invoke(&client, request("spin", "batch", "1500")).await
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let critical = invoke(&client, request("spin", "critical", "200"))
        .await
        .expect("critical spin succeeds");
    let critical_latency = sent.elapsed();
    let batch: Vec<InvocationOutcome> = futures_all(batch).await;
    assert!(
        critical_latency < Duration::from_millis(1000),
        "critical 200 ms spin took {critical_latency:?}, behind a backlog of 4.5 s of batch work; \
         critical: {critical:?}\ndispatcher log:\n{}",
        mode_logged(&cluster)
    );
    assert!(
        critical.run.cpu_time_us >= 150_000,
        "{}",
        critical.run.cpu_time_us
    );
    let last_batch_end = batch.iter().map(|o| o.run.finished_at_us).max().unwrap();
    assert!(critical.run.finished_at_us + 1_000_000 < last_batch_end);
    let preempted: u64 = batch.iter().map(|o| o.run.preempted_us).max().unwrap();
    assert!(
        preempted >= 100_000,
        "a batch spin was held back while critical ran: max preempted {preempted} µs"
    );
    mode_logged(&cluster)
}

async fn futures_all(
    tasks: Vec<tokio::task::JoinHandle<Result<InvocationOutcome, InvokeError>>>,
) -> Vec<InvocationOutcome> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap().expect("batch spin succeeds"));
    }
    out
}

/// Four `standard` spins sent one after another run one after another on one CPU (first
/// come, first served), not time-shared.
async fn fcfs_within_a_class(extra: &[&str]) {
    let cluster = one_core_machine(extra).await;
    let client = cluster.client(0).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            invoke(&client, request("spin", "standard", "150")).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = futures_all(tasks).await;
    let ends: Vec<u64> = done.iter().map(|o| o.run.finished_at_us).collect();
    let stages: Vec<(u64, u64, u64, u64)> = done
        .iter()
        .map(|o| {
            let t = o.timings();
            (
                t.placed_at_us,
                t.started_at_us,
                o.run.start_us,
                o.run.preempted_us,
            )
        })
        .collect();
    assert!(
        ends.windows(2).all(|w| w[0] < w[1]),
        "completion order follows arrival: ends {ends:?}; (placed, started, start_us, preempted_us) {stages:?}"
    );
    assert!(
        ends[3] - ends[0] >= 300_000,
        "the runs were sequential (time-shared runs would all end together): {ends:?}"
    );
}

/// (policy, real-time priority) of every runtime worker thread of process `pid`.
fn worker_policies(pid: u32) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("tokio-") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // proc(5): field 40 is rt_priority, 41 policy; `fields` starts at field 3.
        found.push((
            fields[41 - 3].parse().unwrap(),
            fields[40 - 3].parse().unwrap(),
        ));
    }
    found
}

#[test]
fn the_dispatcher_runs_above_every_function() {
    let _serial = serial();
    runtime().block_on(async {
        let cluster = one_core_machine(&[]).await;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: the dispatcher cannot use SCHED_FIFO here; nothing to check");
            return;
        }
        let policies = worker_policies(cluster.dispatchers[0].child.id());
        assert!(!policies.is_empty());
        let fifo = libc::SCHED_FIFO as u32;
        assert!(
            policies
                .iter()
                .all(|&(policy, prio)| policy == fifo && prio == 50),
            "dispatcher worker threads (policy, priority): {policies:?}"
        );
    });
}

#[test]
fn real_time_critical_preempts_a_batch_backlog() {
    let _serial = serial();
    runtime().block_on(async {
        let log = critical_preempts_batch(&[]).await;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            !root || log.contains("machine scheduler: real-time"),
            "this test machine allows SCHED_FIFO; the dispatcher should use it:\n{log}"
        );
    });
}

#[test]
fn real_time_runs_a_class_first_come_first_served() {
    let _serial = serial();
    runtime().block_on(fcfs_within_a_class(&[]));
}

#[test]
fn user_space_fallback_gives_the_same_preemption() {
    let _serial = serial();
    runtime().block_on(async {
        let log = critical_preempts_batch(&["--no-rt"]).await;
        assert!(
            log.contains("machine scheduler: user-space ordering"),
            "{log}"
        );
        assert!(log.contains("--no-rt was given"), "{log}");
    });
}

#[test]
fn user_space_fallback_runs_a_class_first_come_first_served() {
    let _serial = serial();
    runtime().block_on(fcfs_within_a_class(&["--no-rt"]));
}

fn counter(keep_alive_ms: u64) -> FunctionSpec {
    FunctionSpec {
        name: "counter".into(),
        command: vec![example("counter").to_string_lossy().into_owned()],
        env: vec![],
        version: 0,
        runtime: Runtime::Persistent { keep_alive_ms },
        owner: "test".into(),
        ..Default::default()
    }
}

#[test]
fn persistent_instances_stay_warm_and_are_reaped_after_keep_alive() {
    let _serial = serial();
    runtime().block_on(async {
        let cluster = one_core_machine(&[]).await;
        cluster.deploy(counter(700)).await;
        let client = cluster.client(0).await;
        let first = invoke(&client, request("counter", "high", "a"))
            .await
            .unwrap();
        assert!(first.run.cold_start);
        assert_eq!(first.run.output, b"invocation 1: a");
        let second = invoke(&client, request("counter", "batch", "b"))
            .await
            .unwrap();
        assert!(
            !second.run.cold_start,
            "the second call finds the instance warm"
        );
        assert_eq!(second.run.output, b"invocation 2: b");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let third = invoke(&client, request("counter", "high", "c"))
            .await
            .unwrap();
        assert!(
            third.run.cold_start,
            "the instance was reaped after its keep-alive"
        );
        assert_eq!(third.run.output, b"invocation 1: c");
    });
}

#[test]
fn a_crashed_instance_answers_with_an_error_and_is_replaced() {
    let _serial = serial();
    runtime().block_on(async {
        let cluster = one_core_machine(&[]).await;
        cluster.deploy(counter(60_000)).await;
        let client = cluster.client(0).await;
        invoke(&client, request("counter", "standard", "warm up")).await.unwrap();
        let crashed = invoke(&client, request("counter", "standard", "crash"))
            .await
            .unwrap_err();
        assert!(
            matches!(&crashed, InvokeError::FunctionFailed { status, .. } if status.contains("crashed")),
            "{crashed}"
        );
        let fresh = invoke(&client, request("counter", "standard", "again")).await.unwrap();
        assert!(fresh.run.cold_start);
        assert_eq!(fresh.run.output, b"invocation 1: again");
    });
}

#[test]
fn functions_run_isolated_and_accounted() {
    let _serial = serial();
    runtime().block_on(async {
        let cluster = one_core_machine(&[]).await;
        let shell = |name: &str, script: &str, env: Vec<(String, String)>| FunctionSpec {
            name: name.into(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env,
            version: 0,
            runtime: Runtime::Exec,
            owner: "test".into(),
            ..Default::default()
        };
        cluster
            .deploy(shell(
                "whoami",
                "id -u; pwd; env | sort",
                vec![
                    ("PATH".into(), "/usr/bin:/bin".into()),
                    ("ONLY".into(), "this".into()),
                ],
            ))
            .await;
        let client = cluster.client(0).await;
        let out = invoke(&client, request("whoami", "standard", ""))
            .await
            .unwrap();
        let text = String::from_utf8(out.run.output).unwrap();
        let mut lines = text.lines();
        let uid: u32 = lines.next().unwrap().parse().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_ne!(uid, 0, "functions do not run as root");
        }
        let cwd = lines.next().unwrap();
        assert!(
            cwd.contains("instances"),
            "private working directory: {cwd}"
        );
        let env: Vec<&str> = lines.collect();
        assert!(env.contains(&"ONLY=this"), "{env:?}");
        assert!(
            !env.iter()
                .any(|l| l.starts_with("HOME=") || l.starts_with("RUST_LOG=")),
            "{env:?}"
        );

        let spun = invoke(&client, request("spin", "high", "100"))
            .await
            .unwrap();
        assert!(spun.run.cold_start);
        assert!(
            spun.run.cpu_time_us >= 80_000,
            "cpu {}",
            spun.run.cpu_time_us
        );
        assert!(spun.run.peak_memory_bytes > 0);
        assert!(spun.run.start_us > 0);
    });
}
