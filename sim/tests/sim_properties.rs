//! The paper's claims as properties of the simulator, on set-ups small enough for debug builds:
//! at high load Tariff keeps its top class far better than Hermod and close to EDF; Tariff
//! swaps only lower classes; a seed fully determines the result.

use std::time::Instant;

use tariff_sim::{report, run_experiment, run_sweep, ExperimentReport, SchedulerKind, SimConfig};

/// Machines in the small set-up.
const MACHINES: usize = 20;
/// Simulated seconds of the small set-up.
const DURATION_S: f64 = 10.0;
/// "High load": above capacity, where the schedulers differ most.
const HIGH_LOAD: f64 = 1.15;

fn small(load: f64) -> SimConfig {
    SimConfig {
        machines: MACHINES,
        duration_s: DURATION_S,
        ..SimConfig::paper(load)
    }
}

fn top_p99_slowdown(report: &ExperimentReport, kind: SchedulerKind) -> f64 {
    let s = report
        .schedulers
        .iter()
        .find(|s| s.scheduler == kind)
        .expect("scheduler ran");
    assert!(s.classes[0].completed > 0, "{kind:?} completed nothing");
    s.classes[0].slowdown.p99
}

#[test]
fn at_high_load_tariff_protects_the_top_class() {
    let report = run_experiment(&SimConfig {
        schedulers: vec![
            SchedulerKind::TARIFF,
            SchedulerKind::HERMOD,
            SchedulerKind::Edf,
        ],
        ..small(HIGH_LOAD)
    })
    .expect("synthetic workloads cannot fail");
    let tariff = top_p99_slowdown(&report, SchedulerKind::TARIFF);
    let hermod = top_p99_slowdown(&report, SchedulerKind::HERMOD);
    let edf = top_p99_slowdown(&report, SchedulerKind::Edf);
    eprintln!("top-class p99 slowdown: tariff {tariff}, hermod {hermod}, edf {edf}");
    assert!(
        tariff < hermod / 3.0,
        "tariff {tariff} not far below hermod {hermod}"
    );
    assert!(tariff < edf * 4.0, "tariff {tariff} not close to edf {edf}");
}

#[test]
fn tariff_swaps_only_lower_classes() {
    let report = run_experiment(&SimConfig {
        machines: MACHINES,
        duration_s: DURATION_S,
        ..SimConfig::paper_memory(HIGH_LOAD)
    })
    .expect("synthetic workloads cannot fail");
    let tariff = &report.schedulers[0];
    let swapped: Vec<f64> = tariff.classes.iter().map(|c| c.swapped_mb).collect();
    eprintln!("swapped MB per class: {swapped:?}");
    assert_eq!(swapped[0], 0.0, "the top class was swapped");
    assert!(
        swapped[1..].iter().any(|&mb| mb > 0.0),
        "nothing swapped: memory was never under pressure"
    );
    let per_machine = tariff
        .swapped_mb_per_machine
        .as_ref()
        .expect("memory model on");
    assert_eq!(per_machine.len(), MACHINES);
}

#[test]
fn same_seed_same_report_different_seed_different_report() {
    let config = SimConfig {
        machines: 8,
        duration_s: 5.0,
        ..SimConfig::paper(1.0)
    };
    let json = |seed| {
        run_sweep(
            &SimConfig {
                seed,
                ..config.clone()
            },
            &[0.9, 1.1],
        )
        .expect("synthetic")
        .to_json()
    };
    let a = json(7);
    assert_eq!(a, json(7));
    assert_ne!(a, json(8));
}

#[test]
fn figures_are_svg() {
    let sweep = run_sweep(
        &SimConfig {
            machines: 4,
            duration_s: 2.0,
            ..SimConfig::paper_memory(1.0)
        },
        &[0.8, 1.2],
    )
    .expect("synthetic");
    for svg in [report::fig4_svg(&sweep), report::fig5_svg(&sweep)] {
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for (x, size, text) in end_anchored_labels(&svg) {
            // A generous 0.6 em per character of a sans-serif digit.
            let width = 0.6 * size * text.chars().count() as f64;
            assert!(
                x - width >= 0.0,
                "label {text:?} at x {x} runs off the left edge"
            );
        }
    }
    let fig4 = report::fig4_svg(&sweep);
    let lines: Vec<&str> = fig4
        .lines()
        .filter(|l| l.starts_with("<polyline"))
        .map(|l| l.split('"').nth(1).expect("points"))
        .collect();
    for (i, a) in lines.iter().enumerate() {
        for b in &lines[i + 1..] {
            assert_ne!(a, b, "two class lines drawn on top of each other");
        }
    }
    assert!(report::table(&sweep).contains("tariff"));
}

/// (x, font size, text) of every right-aligned label of an SVG figure (the axis labels).
fn end_anchored_labels(svg: &str) -> Vec<(f64, f64, String)> {
    let attr = |line: &str, name: &str| -> f64 {
        let start = line.find(&format!(" {name}=\"")).expect("attribute") + name.len() + 3;
        line[start..]
            .split('"')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("number")
    };
    svg.lines()
        .filter(|l| l.starts_with("<text") && l.contains(r#"text-anchor="end""#))
        .map(|l| {
            let text = l
                .split('>')
                .nth(1)
                .and_then(|t| t.split('<').next())
                .unwrap_or_default();
            (attr(l, "x"), attr(l, "font-size"), text.to_owned())
        })
        .collect()
}

/// The default experiment's speed (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore = "measures the full default experiment; run in release"]
fn default_experiment_speed() {
    let config = SimConfig::paper(1.0);
    let start = Instant::now();
    let one = run_experiment(&config).expect("synthetic");
    let one_wall = start.elapsed();
    let events: u64 = one.schedulers.iter().map(|s| s.events).sum();
    eprintln!(
        "one load point (4 schedulers, 60 s simulated): {:.2} s wall, {events} events",
        one_wall.as_secs_f64()
    );
    for s in &one.schedulers {
        eprintln!("  {:?}: {} events", s.scheduler, s.events);
    }
    let start = Instant::now();
    let loads = [0.5, 0.7, 0.9, 1.0, 1.1, 1.2];
    let sweep = run_sweep(&config, &loads).expect("synthetic");
    let sweep_wall = start.elapsed();
    let events: u64 = sweep
        .experiments
        .iter()
        .flat_map(|e| &e.schedulers)
        .map(|s| s.events)
        .sum();
    eprintln!(
        "full sweep: {:.2} s wall, {events} events, {:.2} M events/s (all threads)",
        sweep_wall.as_secs_f64(),
        events as f64 / sweep_wall.as_secs_f64() / 1e6
    );
    eprintln!("{}", report::table(&sweep));
    let fig = std::env::temp_dir().join("tariff-sim-fig4.svg");
    std::fs::write(&fig, report::fig4_svg(&sweep)).expect("figure written");
    eprintln!("figure: {}", fig.display());
}

/// Bytes per GB.
const GB: u64 = 1 << 30;

/// The paper's memory claim (section 4.3, Fig. 5): with a 500 GB swap device no invocation is
/// killed, and the swap space the busiest machine needed is far below it.
#[test]
fn with_the_papers_swap_device_nothing_is_killed() {
    let config = SimConfig {
        machines: MACHINES,
        duration_s: DURATION_S,
        ..SimConfig::paper_memory(HIGH_LOAD)
    };
    let swap_mb = config.swap_bytes.expect("the experiment limits swap") as f64 / (1 << 20) as f64;
    let report = run_experiment(&config).expect("synthetic");
    let tariff = &report.schedulers[0];
    let killed: Vec<u64> = tariff.classes.iter().map(|c| c.killed).collect();
    let peak = tariff
        .peak_swap_mb_per_machine
        .as_ref()
        .expect("memory model on")
        .iter()
        .copied()
        .fold(0.0, f64::max);
    eprintln!("killed per class {killed:?}; peak swap {peak:.0} MB of {swap_mb:.0} MB");
    assert!(peak > 0.0, "memory was never under pressure");
    assert_eq!(killed.iter().sum::<u64>(), 0, "killed: {killed:?}");
    assert!(peak < swap_mb, "peak swap {peak} MB above the device");
}

/// When swap space does run out, kills take cheaper classes first: the top class is never
/// killed while a cheaper class on the machine holds memory, resident or swapped.
#[test]
fn kills_never_pass_over_a_cheaper_class() {
    let report = run_experiment(&SimConfig {
        machines: MACHINES,
        duration_s: DURATION_S,
        swap_bytes: Some(GB),
        ..SimConfig::paper_memory(HIGH_LOAD)
    })
    .expect("synthetic");
    let tariff = &report.schedulers[0];
    let killed: Vec<u64> = tariff.classes.iter().map(|c| c.killed).collect();
    eprintln!("killed per class with 1 GB of swap: {killed:?}");
    assert!(killed.iter().sum::<u64>() > 0, "1 GB of swap never ran out");
    assert_eq!(tariff.kills_over_cheaper, Some(0));
    let cheapest = *killed.last().expect("classes");
    assert!(
        killed[0] < cheapest,
        "the top class lost {} to the cheapest's {cheapest}",
        killed[0]
    );
}

/// Class `class`'s p50 latency in ms under Tariff.
fn tariff_p50_ms(report: &ExperimentReport, class: usize) -> f64 {
    report.schedulers[0].classes[class].latency_ms.p50
}

/// Cold starts cost at most their time on the median invocation, and more than nothing: most
/// starts find a warm instance once each machine has run a function.
#[test]
fn cold_starts_add_time_only_to_cold_invocations() {
    const COLD_MS: f64 = 40.0;
    let base = SimConfig {
        schedulers: vec![SchedulerKind::TARIFF],
        ..small(0.5)
    };
    let free = run_experiment(&base).expect("synthetic");
    let mut config = base.clone();
    config.overheads.cold_start = Some((COLD_MS * 1e6) as u64);
    config.overheads.keep_alive = (tariff_sim::DEFAULT_KEEP_ALIVE_S * 1e9) as u64;
    let cold = run_experiment(&config).expect("synthetic");
    assert!(cold.overheads.is_some() && free.overheads.is_none());
    for class in 0..base.classes {
        let (a, b) = (tariff_p50_ms(&free, class), tariff_p50_ms(&cold, class));
        eprintln!("class {class}: p50 {a:.1} ms free, {b:.1} ms with {COLD_MS} ms cold starts");
        assert!(b > a, "class {class}: cold starts cost nothing");
        assert!(b < a + COLD_MS, "class {class}: every start was cold");
    }
    let mut short = config.clone();
    short.overheads.keep_alive = 0;
    let always_cold = run_experiment(&short).expect("synthetic");
    let p50 = tariff_p50_ms(&always_cold, 0);
    assert!(
        p50 >= tariff_p50_ms(&free, 0) + COLD_MS * 0.9,
        "with no keep-alive every start is cold: {p50}"
    );
}

/// Faulting swapped memory back in slows the classes that are swapped, not the top class.
#[test]
fn swap_in_time_falls_on_the_swapped_classes() {
    let base = SimConfig {
        machines: MACHINES,
        duration_s: DURATION_S,
        ..SimConfig::paper_memory(HIGH_LOAD)
    };
    let free = run_experiment(&base).expect("synthetic");
    let mut config = base.clone();
    // A slow disk, 100 MB/s, so the effect is clear in a short run.
    config.overheads.swap_in_bytes_per_s = Some(100.0 * (1 << 20) as f64);
    let slow = run_experiment(&config).expect("synthetic");
    let (f, s) = (&free.schedulers[0], &slow.schedulers[0]);
    let cheapest = base.classes - 1;
    eprintln!(
        "p99 slowdown free {:?} / slow swap {:?}",
        f.classes.iter().map(|c| c.slowdown.p99).collect::<Vec<_>>(),
        s.classes.iter().map(|c| c.slowdown.p99).collect::<Vec<_>>()
    );
    assert!(s.classes[cheapest].completed < f.classes[cheapest].completed);
    assert_eq!(f.classes[0].swapped_mb, 0.0);
    assert!(
        s.classes[0].slowdown.p99 <= f.classes[0].slowdown.p99 * 1.1,
        "the top class, never swapped, slowed down"
    );
}

/// The memory experiment at full size (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore = "runs the full memory experiment; run in release"]
fn memory_experiment_full() {
    let start = Instant::now();
    let sweep = run_sweep(&SimConfig::paper_memory(1.0), &[0.7, 0.9, 1.1]).expect("synthetic");
    eprintln!("memory sweep: {:.2} s wall", start.elapsed().as_secs_f64());
    eprintln!("{}", report::table(&sweep));
    let fig = std::env::temp_dir().join("tariff-sim-fig5.svg");
    std::fs::write(&fig, report::fig5_svg(&sweep)).expect("figure written");
    eprintln!("figure: {}", fig.display());
    for e in &sweep.experiments {
        let s = &e.schedulers[0];
        let peak = s.peak_swap_mb_per_machine.as_ref().unwrap();
        eprintln!(
            "  peak swap per machine: max {:.0} MB, mean {:.0} MB",
            peak.iter().copied().fold(0.0, f64::max),
            peak.iter().sum::<f64>() / peak.len() as f64
        );
        eprintln!(
            "load {}: memory util {:?}; swapped per machine min {:.0} max {:.0} MB; killed {:?}",
            e.load,
            s.memory_utilisation,
            s.swapped_mb_per_machine
                .as_ref()
                .unwrap()
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min),
            s.swapped_mb_per_machine
                .as_ref()
                .unwrap()
                .iter()
                .copied()
                .fold(0.0, f64::max),
            s.classes.iter().map(|c| c.killed).collect::<Vec<_>>()
        );
    }
}
