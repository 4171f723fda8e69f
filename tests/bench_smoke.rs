//! Smoke test of `tariff bench`: the real binary, an embedded cluster in a private cluster
//! directory, the small `smoke` workload against Tariff and the FIFO baseline. It checks that
//! the run succeeds, that `report.json` is complete (every policy, phase and class with every
//! field) and that per class ok + failed adds up to what was scheduled: no invocation is lost.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest the harness may run before the test kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Classes of the embedded cluster, most expensive first.
const CLASSES: [&str; 4] = ["critical", "high", "standard", "batch"];
/// Policies of a `--compare fifo` run, in report order.
const POLICIES: [&str; 2] = ["tariff", "fifo"];
/// Reported phases of `bench/workloads/smoke.toml` (the warm-up is not reported).
const PHASES: [&str; 2] = ["low", "high"];
/// Fields every class report carries.
const CLASS_FIELDS: [&str; 9] = [
    "class",
    "scheduled",
    "ok",
    "failed",
    "errors",
    "latency_us",
    "stages_us",
    "throughput_per_s",
    "cdf",
];
/// Stages every class report breaks latency into.
const STAGES: [&str; 7] = [
    "queued",
    "placement",
    "start",
    "run",
    "preempted",
    "inbound",
    "outbound",
];
/// Percentiles every latency summary carries.
const PERCENTILES: [&str; 7] = ["count", "mean", "p50", "p90", "p99", "p999", "max"];

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn bench_smoke_report_is_complete_and_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let child = bench(dir.path(), "smoke.toml", &["--compare", "fifo"]);
    let (status, stdout) = wait_bounded(child, RUN_TIMEOUT);
    assert!(status.success(), "tariff bench failed: {status}\n{stdout}");
    assert!(
        stdout.contains("fifo / tariff"),
        "no ratio lines:\n{stdout}"
    );
    for file in ["cdf.svg", "over_time.svg"] {
        let svg = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline"),
            "{file}"
        );
    }

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["classes"], serde_json::json!(CLASSES));
    let scheduled = u(&report["scheduled"]);
    assert!(
        scheduled > 50,
        "too small a run to mean anything: {scheduled}"
    );
    let policies = report["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, POLICIES);
    for policy in policies {
        let name = policy["policy"].as_str().unwrap();
        let phases = policy["phases"].as_array().unwrap();
        let phase_names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(phase_names, PHASES, "{name}");
        assert!(policy["top_class_p99_ratio"]["ratio"].as_f64().unwrap() > 0.0);
        let mut policy_total = 0;
        for phase in phases {
            let classes = phase["classes"].as_array().unwrap();
            assert_eq!(classes.len(), CLASSES.len());
            let mut phase_total = 0;
            for class in classes {
                for field in CLASS_FIELDS {
                    assert!(
                        !class[field].is_null(),
                        "{name}: {field} missing in {class}"
                    );
                }
                for stage in STAGES {
                    for p in PERCENTILES {
                        assert!(!class["stages_us"][stage][p].is_null(), "{stage}.{p}");
                    }
                }
                let (ok, failed) = (u(&class["ok"]), u(&class["failed"]));
                let errors: u64 = class["errors"].as_object().unwrap().values().map(u).sum();
                assert_eq!(errors, failed, "{name}: errors by kind");
                assert_eq!(ok + failed, u(&class["scheduled"]), "{name}: {class}");
                assert_eq!(u(&class["latency_us"]["count"]), ok);
                assert!(u(&class["scheduled"]) > 0, "every class gets traffic");
                phase_total += u(&class["scheduled"]);
            }
            assert_eq!(phase_total, u(&phase["scheduled"]));
            assert_eq!(u(&phase["ok"]) + u(&phase["failed"]), phase_total);
            policy_total += phase_total;
        }
        assert_eq!(
            policy_total, scheduled,
            "{name}: every scheduled call answered"
        );
    }
    let ratios = report["ratios"].as_array().unwrap();
    assert!(!ratios.is_empty(), "--compare gives ratios");
}

/// Longest the chaos run may take: 1 s of warm-up, 8 s of load, the processes' start and the
/// drain.
const CHAOS_TIMEOUT: Duration = Duration::from_secs(50);

/// `--chaos kill-dispatcher@3s` with `bench/workloads/chaos.toml`: a real `tariff dispatcher`
/// process is killed with SIGKILL under load; every call is answered (none cut off, none
/// lost), the only failures are "machine lost", the machine held some of each kind of job,
/// and the kill and the counts are in the report and the table.
#[test]
fn bench_chaos_kills_a_dispatcher_and_every_call_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let started = Instant::now();
    let child = bench(dir.path(), "chaos.toml", &["--chaos", "kill-dispatcher@3s"]);
    let (status, stdout) = wait_bounded(child, CHAOS_TIMEOUT);
    eprintln!("{stdout}");
    assert!(status.success(), "tariff bench failed: {status}\n{stdout}");
    assert!(
        stdout.contains("chaos: kill-dispatcher@3000ms killed bench-chaos-1"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let policy = &report["policies"][0];
    let kill = &policy["chaos"][0];
    assert_eq!(kill["killed"], "bench-chaos-1", "{kill}");
    let phase = &policy["phases"][0];
    let fates = &phase["fates"];
    let scheduled = u(&phase["scheduled"]);
    assert_eq!(u(&fates["lost"]), 0, "{fates}");
    assert_eq!(u(&fates["cut_off"]), 0, "{fates}");
    assert_eq!(
        u(&fates["answered"]),
        scheduled,
        "every call answered: {fates}"
    );
    let mut machine_lost = 0;
    for class in phase["classes"].as_array().unwrap() {
        for (kind, n) in class["errors"].as_object().unwrap() {
            assert_eq!(kind, "machine_lost", "{class}");
            machine_lost += u(n);
        }
    }
    let retried = u(&fates["retried"]);
    assert!(
        retried > 0 && machine_lost > 0,
        "the killed machine ran both kinds of job: {retried} placed again, {machine_lost} lost"
    );
    let detected =
        fates["first_error_s"]["machine_lost"].as_f64().unwrap() - kill["at_s"].as_f64().unwrap();
    eprintln!(
        "chaos smoke: {scheduled} calls, {retried} placed again, {machine_lost} machine lost, \
         first answered {:.0} ms after the kill; whole run {:?}",
        detected * 1000.0,
        started.elapsed()
    );
    assert!(
        (0.0..=2.2).contains(&detected),
        "machine loss answered {detected} s after the kill"
    );
}

/// Starts `tariff bench` with `bench/workloads/WORKLOAD` and `extra` flags, quiet, one
/// connection per shard, in a cluster directory under `dir`, writing to `dir/out`.
fn bench(dir: &Path, workload: &str, extra: &[&str]) -> std::process::Child {
    let workload = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench/workloads")
        .join(workload);
    Command::new(env!("CARGO_BIN_EXE_tariff"))
        .arg("--cluster")
        .arg(dir.join("cluster"))
        .arg("bench")
        .arg("--workload")
        .arg(&workload)
        .arg("--out")
        .arg(dir.join("out"))
        .args(["--quiet", "--connections", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting tariff bench")
}

/// Waits for `child` at most `limit` (killing it then); its status and standard output.
fn wait_bounded(
    mut child: std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tariff bench did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    (status, stdout)
}

/// `tariff bench` is the harness binary behind the `tariff` command: its help comes through.
#[test]
fn tariff_bench_runs_the_harness() {
    let out = Command::new(env!("CARGO_BIN_EXE_tariff"))
        .args(["bench", "--help"])
        .output()
        .expect("running tariff bench --help");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("--workload") && stdout.contains("--compare"),
        "{stdout}"
    );
}
