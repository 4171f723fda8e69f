//! `tariff-bench`'s command line refuses bad input clearly, before starting anything. Having
//! integration tests also makes `cargo test --workspace` build the binary, which `tariff
//! bench` runs.

use std::process::{Command, Output};

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tariff-bench"))
        .args(args)
        .env(
            "TARIFF_CLUSTER",
            std::env::temp_dir().join("tariff-bench-cli-test"),
        )
        .output()
        .expect("running tariff-bench")
}

#[test]
fn a_missing_workload_is_named() {
    let out = harness(&["--workload", "/nonexistent/w.toml", "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/w.toml"), "{stderr}");
}

#[test]
fn compare_takes_a_baseline_only() {
    let out = harness(&["--workload", "x.toml", "--compare", "tariff"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("baseline"), "{stderr}");
    let out = harness(&["--workload", "x.toml", "--compare", "edf"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown policy"), "{stderr}");
}
