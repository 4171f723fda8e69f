//! Memory without reservations, against the real kernel (issue 15): a real `tariff dispatcher`
//! whose `--memory` its functions outgrow, real allocating processes, a real swap file made by
//! the test. With swap, the cheapest class is frozen and swapped out and resumes and finishes
//! with its memory intact while `critical` calls run untouched; without swap, the cheapest
//! class's latest arrival is killed with a clear error, nothing dearer is, and the dispatcher
//! goes on serving. Skipped, with the reason printed, where cgroups or swap files are not
//! available (they need root).

mod common;

use std::time::{Duration, Instant};

use common::swap::SwapFile;
use common::{invoke, request, runtime, TestCluster};
use tariff_machine_sched::page_out::MachineMemory;
use tariff_types::wire::{InvocationOutcome, InvokeError};
use tariff_types::Stage;

/// Swap is machine-wide: these tests must not see each other's swap file. One at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Longest either test may take; a hang fails instead of blocking the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The dispatcher's `--memory` in the swap test.
const SWAP_MEMORY: &str = "192M";
/// Each `batch` call makes this many MiB resident, 1 MiB every `BATCH_STEP_MS`: two run at
/// once (one per CPU), 2 × 112 = 224 MiB plus the `critical` calls' 24 MiB is 1.3× the
/// machine's memory at once, and the four calls together ask for 448 MiB, 2.3× of it.
const BATCH_MB: u64 = 112;
const BATCH_STEP_MS: u64 = 8;
const BATCH_CALLS: usize = 4;
/// Each `critical` call makes this many MiB resident.
const CRITICAL_MB: u64 = 24;
const CRITICAL_CALLS: usize = 6;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why cgroup memory limits cannot be tested here, if they cannot.
fn cannot_limit_memory() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("memory limits and freezing need root".into());
    }
    if let Err(e) = tariff_machine_sched::cgroup::Layout::detect() {
        return Some(format!("no usable cgroup hierarchy: {e}"));
    }
    None
}

/// One shard and one two-CPU dispatcher whose functions may use `memory`, with the examples
/// deployed; four calls of a class may be placed on it at once.
/// A swap file for a test that needs memory limits and swap, or `None` (with the reason
/// printed) when this machine cannot give it one: the test is then skipped. The file is
/// removed when the returned guard drops, also if the test fails.
fn swap_or_skip() -> Option<SwapFile> {
    if let Some(reason) = cannot_limit_memory() {
        eprintln!("skipped: {reason}");
        return None;
    }
    match SwapFile::create() {
        Ok(swap) => {
            eprintln!("swap file of {} MiB on", swap.bytes >> 20);
            Some(swap)
        }
        Err(reason) => {
            eprintln!("skipped: cannot make a swap file: {reason}");
            None
        }
    }
}

async fn machine(memory: &str) -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.start_shard(&[]);
    cluster.start_dispatcher("m1", 2, &["--memory", memory, "--slots", "4"]);
    cluster.wait_for_machines(1).await;
    cluster.deploy_examples().await;
    cluster
}

fn log_of(cluster: &TestCluster) -> String {
    std::fs::read_to_string(cluster.dispatcher_log("m1")).unwrap_or_default()
}

/// Sends an `alloc` call of `mb` MiB at `class`, as a task.
fn alloc(
    client: &tariff_cluster::client::Client,
    class: &'static str,
    mb: u64,
    step_ms: u64,
) -> tokio::task::JoinHandle<Result<InvocationOutcome, InvokeError>> {
    let client = client.clone();
    tokio::spawn(async move {
        invoke(&client, request("alloc", class, &format!("{mb} {step_ms}"))).await
    })
}

/// With swap, `batch` calls oversubscribing the machine are swapped out and resumed and all
/// answer correctly; no `critical` call is killed or has any memory swapped.
#[test]
fn oversubscribed_batch_is_swapped_out_and_resumed_while_critical_is_untouched() {
    let _serial = serial();
    let Some(_swap) = swap_or_skip() else {
        return;
    };
    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let cluster = machine(SWAP_MEMORY).await;
            let client = cluster.client(0).await;
            let started = Instant::now();
            let mut batch = Vec::new();
            for _ in 0..BATCH_CALLS {
                batch.push(alloc(&client, "batch", BATCH_MB, BATCH_STEP_MS));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut critical = Vec::new();
            for _ in 0..CRITICAL_CALLS {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let outcome = alloc(&client, "critical", CRITICAL_MB, 1).await.unwrap();
                critical.push(outcome);
            }
            let mut batch_done = Vec::new();
            for task in batch {
                batch_done.push(task.await.unwrap());
            }
            let log = log_of(&cluster);
            assert!(
                log.contains("memory: swap present"),
                "start-up says swap exists:\n{log}"
            );
            for outcome in &critical {
                let outcome = outcome.as_ref().unwrap_or_else(|e| {
                    panic!("critical call failed: {e}\ndispatcher log:\n{log}")
                });
                assert_eq!(
                    outcome.run.output,
                    format!("allocated {CRITICAL_MB} MB\n").as_bytes()
                );
                assert_eq!(
                    outcome.run.memory.swapped_out_bytes, 0,
                    "{:?}",
                    outcome.run.memory
                );
                assert_eq!(outcome.run.memory.held_us, 0, "{:?}", outcome.run.memory);
            }
            let mut swapped = 0;
            for outcome in &batch_done {
                let outcome = outcome
                    .as_ref()
                    .unwrap_or_else(|e| panic!("batch call failed: {e}\ndispatcher log:\n{log}"));
                assert_eq!(
                    outcome.run.output,
                    format!("allocated {BATCH_MB} MB\n").as_bytes()
                );
                eprintln!(
                    "batch: {:?} peak {} MiB",
                    outcome.run.memory,
                    outcome.run.peak_memory_bytes >> 20
                );
                if outcome.run.memory.swapped_out_bytes > 0 {
                    swapped += 1;
                    assert!(outcome.run.memory.held_us > 0, "{:?}", outcome.run.memory);
                }
            }
            assert!(
                swapped > 0,
                "no batch call was swapped out: the machine was not under pressure?\n{log}"
            );
            eprintln!(
                "{} batch calls swapped; all done in {:?}",
                swapped,
                started.elapsed()
            );
            // The dispatcher survived: it still answers.
            let echo = invoke(&client, request("echo", "critical", "still here"))
                .await
                .unwrap();
            assert_eq!(echo.run.output, b"still here");
            // `tariff status` shows what the pressure cost each class on the machine.
            let memory = status_memory_once(&cluster, |m| {
                m["per_class"]["batch"]["swapped_out_bytes"].as_u64() > Some(0)
            })
            .await;
            assert_eq!(memory["per_class"]["critical"]["swapped_out_bytes"], 0);
            assert_eq!(memory["per_class"]["critical"]["held_for_memory_ms"], 0);
            assert_eq!(memory["per_class"]["batch"]["killed_memory_pressure"], 0);
            assert!(memory["swap_total_bytes"].as_u64() > Some(0), "{memory:#}");
            let table = cluster.command().args(["status"]).output().unwrap();
            let table = String::from_utf8_lossy(&table.stdout);
            assert!(
                table.contains("SWAPPED OUT") && table.contains("swap "),
                "{table}"
            );
        })
        .await
        .expect("the test finished in time");
    });
}

/// `m1`'s memory as `tariff status --json` shows it, once `ready` holds for it (its
/// dispatcher reports memory with every heartbeat, so a run's figures reach the shard within
/// a heartbeat of its end).
async fn status_memory_once(
    cluster: &TestCluster,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let json = cluster.status_json();
        let memory = json["dispatchers"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == "m1"))
            .map(|d| d["memory"].clone())
            .unwrap_or_default();
        if ready(&memory) {
            return memory;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `batch` call frozen for memory whose run limit passes while a `critical` call holds the
/// memory is answered at its limit, not when the guard would next thaw it (after the
/// `critical` call): a frozen process takes its `SIGKILL` only once thawed (cgroup v1), so
/// the timeout thaws it. The run limit is the machine's alone to keep (the shard keeps the
/// caller's deadline, and cancels at it, which thaws too), so it shows the machine's timer.
#[test]
fn a_run_frozen_past_its_timeout_ends_at_its_timeout() {
    let _serial = serial();
    let Some(_swap) = swap_or_skip() else {
        return;
    };
    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let cluster = machine(SWAP_MEMORY).await;
            let client = cluster.client(0).await;
            // The batch call grows to 120 MiB over 3 s; from 0.5 s the critical one grows to
            // 150 MiB over 4.5 s. Together they pass the low watermark (85 % of 192 MiB) at
            // about 2.5 s: the batch call is frozen and swapped out, and cannot come back
            // before the critical call ends (about 5 s), long after its 3.5 s run limit.
            let mut timing_out = request("alloc", "batch", "120 25");
            timing_out.limits.run_ms = 3_500;
            let batch = {
                let client = client.clone();
                tokio::spawn(async move { invoke(&client, timing_out).await })
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let critical = alloc(&client, "critical", 150, 30);
            let batch = batch.await.unwrap();
            let critical_still_running = !critical.is_finished();
            let critical = critical.await.unwrap();
            let log = log_of(&cluster);
            assert!(
                log.contains("memory: timeout passed while frozen"),
                "the batch call was frozen when its timeout passed:\n{log}"
            );
            assert_eq!(
                batch.as_ref().err(),
                Some(&InvokeError::StageTimedOut {
                    stage: Stage::Run,
                    limit_ms: 3_500
                }),
                "{batch:?}\n{log}"
            );
            assert!(
                critical_still_running,
                "the timed-out call was answered only after the critical call ended\n{log}"
            );
            let critical =
                critical.unwrap_or_else(|e| panic!("the critical call failed: {e}\n{log}"));
            assert_eq!(critical.run.output, b"allocated 150 MB\n");
            assert_eq!(critical.run.memory.held_us, 0, "{:?}", critical.run.memory);
            // The dispatcher survived: it still answers.
            let echo = invoke(&client, request("echo", "critical", "still here"))
                .await
                .unwrap();
            assert_eq!(echo.run.output, b"still here");
        })
        .await
        .expect("the test finished in time");
    });
}

/// Without swap, the cheapest class's latest arrival is killed first with the clear error,
/// the dearer call finishes, and the dispatcher goes on serving.
#[test]
fn without_swap_the_cheapest_class_is_killed_first() {
    let _serial = serial();
    if let Some(reason) = cannot_limit_memory() {
        eprintln!("skipped: {reason}");
        return;
    }
    let swap_total = MachineMemory::read().map_or(0, |m| m.swap_total_bytes);
    if swap_total > 0 {
        eprintln!(
            "skipped: this machine has {} MiB of swap: no kill-only case to see",
            swap_total >> 20
        );
        return;
    }
    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let cluster = machine("160M").await;
            let client = cluster.client(0).await;
            let high = alloc(&client, "high", 50, 12);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let first_batch = alloc(&client, "batch", 100, 6);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let last_batch = alloc(&client, "batch", 100, 6);
            let high = high.await.unwrap();
            let first_batch = first_batch.await.unwrap();
            let last_batch = last_batch.await.unwrap();
            let log = log_of(&cluster);
            assert!(
                log.contains("memory: no swap on this machine"),
                "start-up says there is no swap:\n{log}"
            );
            let high = high.unwrap_or_else(|e| panic!("the high call failed: {e}\n{log}"));
            assert_eq!(high.run.output, b"allocated 50 MB\n");
            assert_eq!(
                last_batch.as_ref().err(),
                Some(&InvokeError::KilledUnderMemoryPressure),
                "the latest batch call goes first: {last_batch:?}\n{log}"
            );
            assert!(InvokeError::KilledUnderMemoryPressure
                .to_string()
                .contains("killed under memory pressure"));
            eprintln!(
                "first batch call: {:?}",
                first_batch.as_ref().map(|o| &o.run.memory)
            );
            // The dispatcher survived: it still answers.
            let echo = invoke(&client, request("echo", "critical", "still here"))
                .await
                .unwrap();
            assert_eq!(echo.run.output, b"still here");
        })
        .await
        .expect("the test finished in time");
    });
}
