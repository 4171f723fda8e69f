//! Trace replay end to end: convert the Azure Functions 2019 sample (if present) to the trace
//! CSV format and replay it through the simulator.
//!
//! Data: Azure Public Dataset (CC-BY 4.0), Shahrad et al., USENIX ATC 2020; sample drawn by
//! vHive's invitro loader (MIT).

use std::path::PathBuf;

use tariff_sim::workload::{convert_azure, summarize_trace, TRACE_HEADER};
use tariff_sim::{run_experiment, SchedulerKind, SimConfig};

/// Where the shared sample lives, relative to this crate.
const SAMPLE_DIR: &str = "../../shared/traces/azure2019-104";
/// Minutes of the day converted: enough for thousands of invocations, quick in debug builds.
const MINUTES: usize = 3;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tariff-sim-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn azure_sample_converts_and_replays() {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SAMPLE_DIR);
    if !sample.is_dir() {
        eprintln!("skipping: {} not found", sample.display());
        return;
    }
    let dir = scratch("azure");
    let out = dir.join("trace.csv");
    let summary = convert_azure(&sample, &out, 4, Some(MINUTES), 1).expect("converts");
    assert!(
        summary.functions > 0 && summary.invocations > 0,
        "{summary:?}"
    );
    let text = std::fs::read_to_string(&out).expect("written");
    assert_eq!(text.lines().next(), Some(TRACE_HEADER));
    let trace = summarize_trace(&out).expect("valid trace");
    assert_eq!(trace.invocations, summary.invocations);

    let report = run_experiment(&SimConfig {
        machines: 10,
        duration_s: 30.0,
        trace: Some(out),
        schedulers: vec![SchedulerKind::TARIFF, SchedulerKind::HERMOD],
        ..SimConfig::paper(0.8)
    })
    .expect("replays");
    for s in &report.schedulers {
        let completed: u64 = s.classes.iter().map(|c| c.completed).sum();
        assert!(completed > 0, "{:?} completed nothing", s.scheduler);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn malformed_traces_are_rejected_with_the_line() {
    let dir = scratch("bad");
    let path = dir.join("bad.csv");
    std::fs::write(
        &path,
        format!("{TRACE_HEADER}\n0.5,f,10,100,0\n0.1,f,10,100,0\n"),
    )
    .expect("written");
    let err = summarize_trace(&path).expect_err("unsorted");
    assert!(err.to_string().contains(":3:"), "{err}");
    std::fs::write(&path, "0.5,f,ten,100,0\n").expect("written");
    assert!(summarize_trace(&path).is_err());
    let _ = std::fs::remove_dir_all(dir);
}
