//! What `tariff bench` shows on the terminal: a summary line after each phase (its progress
//! bar is `tariff_progress`'s, drawn by the driver), and the table
//! of results at the end. Everything goes through [`write_terminal`], the harness's one
//! printing function, so the library stays quiet unless a command asks it to speak.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use super::record::{BenchReport, STAGE_NAMES};

/// µs per ms.
const US_PER_MS: f64 = 1000.0;
/// ms per s.
const MS_PER_S: f64 = 1000.0;

/// Where a piece of terminal output goes.
#[derive(Debug, Clone, Copy)]
enum Stream {
    /// Results.
    Stdout,
    /// Progress.
    Stderr,
}

/// The one place the harness prints.
fn write_terminal(stream: Stream, text: &str) {
    match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        Stream::Stderr => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }
}

/// Ends a phase (its progress bar, `tariff_progress`, is cleared first) with a summary line.
pub fn progress_done(label: &str, total: u64, failed: u64, elapsed: Duration) {
    write_terminal(
        Stream::Stderr,
        &format!(
            "{label}: {total} invocations answered in {:.1} s, {failed} failed\n",
            elapsed.as_secs_f64()
        ),
    );
}

/// Prints the results table and where the files went.
pub fn print_report(report: &BenchReport, files: &[std::path::PathBuf]) {
    let mut text = table(report);
    for file in files {
        let _ = writeln!(text, "wrote {}", file.display());
    }
    write_terminal(Stream::Stdout, &text);
}

/// Prints more results (a table made elsewhere, such as `--vs-sim`'s) on stdout.
pub fn print_results(text: &str) {
    write_terminal(Stream::Stdout, text);
}

/// Milliseconds with a precision that suits the size: 0.213, 21.3, 1234.
fn ms(us: u64) -> String {
    let ms = us as f64 / US_PER_MS;
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 1000.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// The results table: one line per policy, phase and class, then throughput and ratio lines.
pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let c = &report.cluster;
    let shape = if c.local {
        format!(
            "local cluster: {} shard(s), {} dispatcher(s) x {} core(s), function CPUs {:?}, {}",
            c.shards,
            c.dispatchers.unwrap_or(0),
            c.cores.unwrap_or(0),
            c.function_cpus,
            if c.rt == Some(true) {
                "real-time"
            } else {
                "no-rt"
            }
        )
    } else {
        format!("running cluster: {} shard(s)", c.shards)
    };
    let _ = writeln!(
        out,
        "\nworkload `{}` (seed {}) on a {}-CPU host, {shape}, {} connection(s) per shard",
        report.workload.name, report.workload.seed, c.host_cpus, c.connections_per_shard
    );
    let _ = writeln!(
        out,
        "{:<7} {:<10} {:<9} {:>7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} | p50 ms: {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} | errors",
        "policy", "phase", "class", "sent", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms",
        STAGE_NAMES[0], "place", STAGE_NAMES[2], STAGE_NAMES[3], "preempt", "in", "out"
    );
    for policy in &report.policies {
        for phase in &policy.phases {
            for class in phase.classes.iter().filter(|c| c.scheduled > 0) {
                let l = &class.latency_us;
                let stage = |name: &str| ms(class.stages_us.get(name).map_or(0, |p| p.p50));
                let mut errors: Vec<String> = class
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let memory = class.memory;
                if memory != Default::default() {
                    errors.push(format!(
                        "swapped out {} MB, in {} MB, held {:.2} s",
                        memory.swapped_out_bytes >> 20,
                        memory.swapped_in_bytes >> 20,
                        memory.held_us as f64 / 1e6
                    ));
                }
                let _ = writeln!(
                    out,
                    "{:<7} {:<10} {:<9} {:>7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} |         {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} | {}",
                    policy.policy,
                    phase.name,
                    class.class,
                    class.scheduled,
                    class.ok,
                    class.failed,
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p999),
                    ms(l.max),
                    stage(STAGE_NAMES[0]),
                    stage(STAGE_NAMES[1]),
                    stage(STAGE_NAMES[2]),
                    stage(STAGE_NAMES[3]),
                    stage(STAGE_NAMES[4]),
                    stage(STAGE_NAMES[5]),
                    stage(STAGE_NAMES[6]),
                    if errors.is_empty() { "-".into() } else { errors.join(" ") }
                );
            }
        }
    }
    if report.policies.iter().any(|p| !p.chaos.is_empty()) {
        out.push_str(&fates_table(report));
    }
    let several_tenants = report
        .policies
        .iter()
        .flat_map(|p| &p.phases)
        .any(|ph| ph.tenants.len() > 1);
    if several_tenants {
        let _ = writeln!(
            out,
            "\n{:<7} {:<10} {:<12} {:>7} {:>6} {:>8} {:>8} {:>8} {:>12} {:>8} {:>11} {:>10}",
            "policy",
            "phase",
            "tenant",
            "ok",
            "failed",
            "ok/s",
            "p50 ms",
            "p99 ms",
            "spent",
            "degraded",
            "degraded at",
            "refused at"
        );
        for policy in &report.policies {
            for phase in &policy.phases {
                for t in &phase.tenants {
                    let at =
                        |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.2} s"));
                    let _ = writeln!(
                        out,
                        "{:<7} {:<10} {:<12} {:>7} {:>6} {:>8.1} {:>8} {:>8} {:>12.6} {:>8} {:>11} {:>10}",
                        policy.policy,
                        phase.name,
                        t.tenant,
                        t.ok,
                        t.failed,
                        t.throughput_per_s,
                        ms(t.latency_us.p50),
                        ms(t.latency_us.p99),
                        t.spent,
                        t.degraded,
                        at(t.first_degraded_s),
                        at(t.first_refused_s),
                    );
                }
            }
        }
    }
    let _ = writeln!(out);
    for policy in &report.policies {
        for phase in &policy.phases {
            let _ = writeln!(
                out,
                "{} {}: offered {:.0}/s ({:?}); {} ok of {} in {:.2} s = {:.0}/s, {:.0}/s per shard",
                policy.policy,
                phase.name,
                phase.offered_rate_per_s,
                phase.arrival,
                phase.ok,
                phase.scheduled,
                phase.elapsed_s,
                phase.throughput_per_s,
                phase.placements_per_s_per_shard
            );
        }
        if let Some(r) = &policy.top_class_p99_ratio {
            let _ = writeln!(
                out,
                "{}: top class `{}` p99 {} / {} = {:.2}x ({} ms vs {} ms)",
                policy.policy,
                r.class,
                r.phase,
                r.reference_phase,
                r.ratio,
                ms(r.p99_us),
                ms(r.reference_p99_us)
            );
        }
    }
    if !report.ratios.is_empty() {
        let baseline = report.policies.get(1).map_or("baseline", |p| &p.policy);
        let _ = writeln!(
            out,
            "\n{baseline} / tariff latency (above 1: tariff faster):"
        );
        for r in &report.ratios {
            let _ = writeln!(
                out,
                "  {:<10} {:<9} p50 {:>8.2}x   p99 {:>8.2}x",
                r.phase, r.class, r.p50, r.p99
            );
        }
    }
    out
}

/// With `--chaos`: each kill, then per phase what became of every call (answered, of which
/// ok and placed again, and failed by kind; cut off; lost) and when each error kind was first
/// answered, which after a kill is how long the cluster took to notice.
fn fates_table(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out);
    for policy in &report.policies {
        for c in &policy.chaos {
            let _ = writeln!(
                out,
                "chaos: {} killed {} in phase `{}` at {:.2} s",
                c.event,
                c.killed.as_deref().unwrap_or("nothing (none left)"),
                c.phase,
                c.at_s
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<7} {:<10} {:>7} {:>8} {:>7} {:>7} {:>6} {:>7} {:>5} | failed by kind; first answer of each kind",
        "policy", "phase", "sent", "answered", "ok", "retried", "failed", "cut off", "lost"
    );
    for policy in &report.policies {
        for phase in &policy.phases {
            let f = &phase.fates;
            let mut errors = std::collections::BTreeMap::<&str, u64>::new();
            for class in &phase.classes {
                for (kind, n) in &class.errors {
                    *errors.entry(kind).or_default() += n;
                }
            }
            let kinds: Vec<String> = errors
                .iter()
                .map(|(kind, n)| {
                    let first = f.first_error_s.get(*kind).copied().unwrap_or(0.0);
                    // Timed from the last kill in this phase before it: the failure it shows.
                    let kill = policy
                        .chaos
                        .iter()
                        .filter(|c| c.phase == phase.name && c.at_s <= first)
                        .map(|c| c.at_s)
                        .reduce(f64::max);
                    match kill {
                        Some(at) => format!(
                            "{kind}={n} (first at {first:.2} s, {:.0} ms after the kill before it)",
                            (first - at) * MS_PER_S
                        ),
                        None => format!("{kind}={n} (first at {first:.2} s)"),
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<7} {:<10} {:>7} {:>8} {:>7} {:>7} {:>6} {:>7} {:>5} | {}",
                policy.policy,
                phase.name,
                phase.scheduled,
                f.answered,
                phase.ok,
                f.retried,
                f.answered.saturating_sub(phase.ok),
                f.cut_off,
                f.lost,
                if kinds.is_empty() {
                    "-".to_owned()
                } else {
                    kinds.join(", ")
                }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(ms(213), "0.213");
        assert_eq!(ms(21_300), "21.3");
        assert_eq!(ms(1_234_000), "1234");
    }
}
