//! Trace replay end to end: convert the Azure Functions 2019 sample (if present) to the trace
//! CSV format and replay it through the simulator.
//!
//! Data: Azure Public Dataset (CC-BY 4.0), Shahrad et al., USENIX ATC 2020; sample drawn by
//! vHive's invitro loader (MIT).

use std::path::{Path, PathBuf};

use clap::Parser as _;
use tariff_sim::workload::{convert_azure, summarize_trace, WorkloadError, TRACE_HEADER};
use tariff_sim::{run_experiment, run_sweep, SchedulerKind, SimArgs, SimConfig, SimError};

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
    // Another layout's header is named as the problem, with the header expected.
    std::fs::write(&path, "app,func,end_timestamp,duration\na,f,0.5,0.1\n").expect("written");
    let err = summarize_trace(&path).expect_err("another layout");
    assert!(err.to_string().contains(TRACE_HEADER), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The sample's directory, if present.
fn sample() -> Option<PathBuf> {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SAMPLE_DIR);
    sample.is_dir().then_some(sample)
}

/// The flags `tariff sim ARGS…` would parse to.
fn sim_args(args: &[&str]) -> SimArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }
    Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied()))
        .expect("flags parse")
        .sim
}

/// How a test renames the sample's files.
type Rename = fn(&str) -> String;

/// Copies the sample's three files into `dir` under the names `rename` gives them.
fn copy_sample(sample: &Path, dir: &Path, rename: impl Fn(&str) -> String) {
    for name in ["104_inv.csv", "104_run.csv", "104_mem.csv"] {
        std::fs::copy(sample.join(name), dir.join(rename(name))).expect("copied");
    }
}

#[test]
fn azure_files_are_found_under_any_sample_prefix_and_the_data_sets_names() {
    let Some(sample) = sample() else {
        eprintln!("skipping: sample not found");
        return;
    };
    let reference = scratch("names-ref");
    let summary = convert_azure(&sample, &reference.join("t.csv"), 4, Some(1), 1).expect("104");
    let renamings: [(&str, Rename); 2] = [
        ("1000", |n| n.replace("104_", "1000_")),
        ("dataset", |n| {
            match n {
                "104_inv.csv" => "invocations_per_function_md.anon.d01.csv",
                "104_run.csv" => "function_durations_percentiles.anon.d01.csv",
                _ => "app_memory_percentiles.anon.d01.csv",
            }
            .to_owned()
        }),
    ];
    for (name, rename) in renamings {
        let dir = scratch(&format!("names-{name}"));
        copy_sample(&sample, &dir, rename);
        let out = dir.join("t.csv");
        let got = convert_azure(&dir, &out, 4, Some(1), 1).expect(name);
        assert_eq!(got, summary, "{name}");
        assert_eq!(
            std::fs::read(&out).expect("written"),
            std::fs::read(reference.join("t.csv")).expect("written"),
            "{name}: same rows as the 104_ names"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_dir_all(reference);
}

#[test]
fn azure_directory_problems_are_named_once() {
    let Some(sample) = sample() else {
        eprintln!("skipping: sample not found");
        return;
    };
    let dir = scratch("missing");
    std::fs::copy(sample.join("104_inv.csv"), dir.join("104_inv.csv")).expect("copied");
    let err = convert_azure(&dir, &dir.join("t.csv"), 4, Some(1), 1).expect_err("no run file");
    assert!(
        matches!(err, WorkloadError::AzureFileMissing { role, .. } if role == "duration percentiles"),
        "{err}"
    );
    assert!(err.to_string().contains("104_inv.csv"), "{err}");

    let missing = dir.join("nowhere");
    let err = anyhow::Error::from(
        convert_azure(&missing, &dir.join("t.csv"), 4, None, 1).expect_err("no directory"),
    );
    let message = format!("{err:#}");
    assert_eq!(
        message.matches("No such file or directory").count(),
        1,
        "{message}"
    );

    let two = scratch("two-days");
    copy_sample(&sample, &two, |n| n.replace("104_", "a_"));
    std::fs::copy(sample.join("104_inv.csv"), two.join("b_inv.csv")).expect("copied");
    let err = convert_azure(&two, &two.join("t.csv"), 4, None, 1).expect_err("two inv files");
    assert!(
        matches!(err, WorkloadError::AzureFileAmbiguous { .. }),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(two);
}

#[test]
fn azure_headers_are_read_by_name() {
    let dir = scratch("layout");
    // The public data set's layout: owner first, and a Trigger column before the counts.
    std::fs::write(
        dir.join("d_inv.csv"),
        "HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,3,2\n",
    )
    .expect("written");
    std::fs::write(
        dir.join("d_run.csv"),
        "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,\
         percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,\
         percentile_Average_99,percentile_Average_100\no,a,f,5,5,1,9,1,1,2,5,7,9,9\n",
    )
    .expect("written");
    std::fs::write(
        dir.join("d_mem.csv"),
        "HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,\
         AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,\
         AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,\
         AverageAllocatedMb_pct100\no,a,10,150,100,110,120,150,160,170,180,200\n",
    )
    .expect("written");
    let out = dir.join("t.csv");
    let summary = convert_azure(&dir, &out, 4, None, 1).expect("data set layout converts");
    assert_eq!((summary.functions, summary.invocations), (1, 5));
    let trace = summarize_trace(&out).expect("valid");
    assert_eq!(trace.invocations, 5);

    // A layout without the percentile columns is refused by name, not by a parse error.
    std::fs::write(
        dir.join("d_run.csv"),
        "HashApp,HashFunction,Average\na,f,5\n",
    )
    .expect("written");
    let err = convert_azure(&dir, &out, 4, None, 1).expect_err("no percentiles");
    match &err {
        WorkloadError::MissingColumn { column, .. } => {
            assert_eq!(column, "percentile_Average_0");
        }
        other => panic!("{other}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn traces_that_cannot_be_scaled_are_refused() {
    let dir = scratch("one-row");
    let path = dir.join("one.csv");
    std::fs::write(&path, format!("{TRACE_HEADER}\n1.0,f,10,100,0\n")).expect("written");
    let config = SimConfig {
        trace: Some(path.clone()),
        ..SimConfig::paper(0.5)
    };
    let err = run_experiment(&config).expect_err("one row");
    assert!(
        matches!(
            err,
            SimError::Workload(WorkloadError::NoSpan { invocations: 1, .. })
        ),
        "{err}"
    );
    let args = sim_args(&["--trace", path.to_str().expect("utf-8"), "--loads", "0.5"]);
    let message = format!("{:#}", tariff_sim::run(&args).expect_err("CLI refuses it"));
    assert!(message.contains("1 invocation(s)"), "{message}");
    std::fs::write(&path, format!("{TRACE_HEADER}\n")).expect("written");
    assert!(tariff_sim::run(&args).is_err(), "an empty trace is refused");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn impossible_set_ups_are_refused() {
    for flags in [
        &["--k", "0"][..],
        &["--k", "11", "--machines", "10"],
        &["--machines", "0"],
        &["--duration", "0"],
        &["--slots", "0"],
        &["--loads", "0"],
    ] {
        let args = sim_args(flags);
        let err = tariff_sim::run(&args).expect_err("refused");
        assert!(!format!("{err:#}").is_empty(), "{flags:?}");
    }
    let err = run_sweep(
        &SimConfig {
            k: 0,
            ..SimConfig::paper(1.0)
        },
        &[1.0],
    )
    .expect_err("k = 0");
    assert!(err.to_string().contains("invalid"), "{err}");
    assert!(format!("{:#}", anyhow::Error::from(err)).contains("k = 0"));
}

#[test]
fn a_trace_is_replayed_whole_unless_a_duration_is_given() {
    let dir = scratch("whole");
    let path = dir.join("t.csv");
    // 200 s of arrivals, one every second, 50 ms each: tiny on 2 machines × 2 cores.
    let mut text = format!("{TRACE_HEADER}\n");
    for i in 0..=200 {
        text.push_str(&format!("{i}.0,f{},50,100,{}\n", i % 7, i % 4));
    }
    std::fs::write(&path, text).expect("written");
    let trace = path.to_str().expect("utf-8");
    let common = [
        "--machines",
        "2",
        "--cores",
        "2",
        "--shards",
        "1",
        "--k",
        "2",
    ];
    let arrived = |extra: &[&str]| -> (u64, f64) {
        let mut flags: Vec<&str> = common.to_vec();
        flags.extend_from_slice(&["--trace", trace, "--schedulers", "tariff"]);
        flags.extend_from_slice(extra);
        let args = sim_args(&flags);
        let config = args.config().expect("valid");
        let sweep = run_sweep(&config, &args.loads().expect("loads")).expect("runs");
        let e = &sweep.experiments[0];
        (
            e.schedulers[0].classes.iter().map(|c| c.arrived).sum(),
            e.duration_s,
        )
    };
    let (whole, duration) = arrived(&["--loads", "0.5"]);
    assert_eq!(whole, 201, "every row replayed");
    let trace_busy_s = 201.0 * 0.05;
    let expected_end = 200.0 * (trace_busy_s / 200.0) / (4.0 * 0.5);
    assert!(
        (duration - expected_end).abs() < 0.01,
        "{duration} vs {expected_end}"
    );
    let (part, _) = arrived(&["--loads", "0.5", "--duration", "1"]);
    assert!(part < whole / 2, "--duration 1 replays a part: {part}");
    let _ = std::fs::remove_dir_all(dir);
}
