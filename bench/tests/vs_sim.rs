//! `tariff bench --vs-sim` for real: the small overload workload on the embedded cluster
//! (the whole machine, real-time mode), its schedule replayed through the simulator, and the
//! two sides compared per class. 21 s on the 2-CPU development machine when quiet, about a
//! minute while other builds run.
//!
//! Needs the example functions beside the harness (`cargo build --release` at the workspace
//! root, then `cargo test --release -p tariff-bench --test vs_sim`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Reported phases of `bench/workloads/vs-sim-small.toml`.
const PHASES: [&str; 2] = ["unloaded", "overload"];
/// Its classes, most expensive first.
const CLASSES: [&str; 2] = ["critical", "batch"];
/// Agreement required of the top class's median in every phase. Measured (docs/simulator.md,
/// "Live against simulated"): −16 % to +1 % over the phases of five runs on the shared 2-CPU
/// machine; its path (measured in the run and given to the simulator) and its CPU are all
/// there is to it. Its p99 is not checked: the model misses it (−13 % to −56 %), as that
/// section explains.
const CRITICAL_P50_TOLERANCE: f64 = 0.25;
/// Agreement required of the cheapest class's median in the overload. Measured with the
/// per-phase CPU share: −8 % to +16 % in the same runs (+2 % on a quiet host). A build starting or ending on the
/// host *within* the phase moves its CPU share after and before it was measured (one run with
/// the share measured a phase earlier was off by 51 %), which is what the slack is for.
const BATCH_P50_TOLERANCE: f64 = 0.5;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn live_and_simulated_agree_on_a_small_overload() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let workload = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/vs-sim-small.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_tariff-bench"))
        .env("TARIFF_CLUSTER", dir.path().join("cluster"))
        .arg("--workload")
        .arg(&workload)
        .arg("--out")
        .arg(&out)
        .args(["--vs-sim", "--quiet"])
        .output()
        .expect("running tariff-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "tariff-bench failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("live vs simulated"), "no table:\n{stdout}");
    let text = std::fs::read_to_string(out.join("vs_sim.json")).expect("vs_sim.json written");
    let report: Value = serde_json::from_str(&text).unwrap();
    eprintln!("{stdout}");
    assert!(f(&report["dispatch_overhead_ms"]) > 0.0, "{report}");
    assert_eq!(
        report["shared_speed_measured"],
        Value::Bool(true),
        "{report}"
    );
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, PHASES);
    for phase in phases {
        let speed = f(&phase["shared_speed"]);
        assert!(speed > 0.0 && speed <= 1.0, "{phase}");
        let classes = phase["classes"].as_array().unwrap();
        let names: Vec<&str> = classes
            .iter()
            .map(|c| c["class"].as_str().unwrap())
            .collect();
        assert_eq!(names, CLASSES, "{phase}");
        for class in classes {
            // The same calls on both sides, every one answered and every one simulated.
            assert!(class["live_ok"].as_u64().unwrap() > 0, "{class}");
            assert_eq!(class["live_ok"], class["sim_completed"], "{class}");
        }
        let critical = f(&classes[0]["p50_error"]);
        assert!(
            critical.abs() <= CRITICAL_P50_TOLERANCE,
            "{} critical p50 off by {:.0} %:\n{stdout}",
            phase["phase"],
            critical * 100.0
        );
    }
    let batch = f(&phases[1]["classes"][1]["p50_error"]);
    assert!(
        batch.abs() <= BATCH_P50_TOLERANCE,
        "overload batch p50 off by {:.0} %:\n{stdout}",
        batch * 100.0
    );
}
