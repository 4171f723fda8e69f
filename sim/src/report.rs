//! What a simulation reports: the JSON structures, the SVG figures (in the spirit of the
//! paper's Figures 4 and 5, drawn by hand so no plotting crate is needed) and the table the
//! CLI prints.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::stats::{Percentiles, Spread, Stats};
use super::workload::ConvertSummary;
use super::{to_mb, SchedulerKind, SimConfig, GB};

/// One class's results under one scheduler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    /// Class id (0 = most expensive).
    pub class: u8,
    /// Its price.
    pub price: f64,
    /// Invocations that arrived.
    pub arrived: u64,
    /// Invocations that completed before the end of the run.
    pub completed: u64,
    /// Invocations still queued or running at the end.
    pub unfinished: u64,
    /// Invocations killed for memory.
    pub killed: u64,
    /// Latency (arrival to completion) in ms.
    pub latency_ms: Percentiles,
    /// Latency ÷ runtime.
    pub slowdown: Percentiles,
    /// Memory swapped out, MB.
    pub swapped_mb: f64,
}

/// One scheduler's results at one load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerReport {
    /// Scheduler name.
    pub scheduler: SchedulerKind,
    /// Events the simulation processed.
    pub events: u64,
    /// Per class, most expensive first.
    pub classes: Vec<ClassReport>,
    /// Busy-core fraction across machines and time.
    pub utilisation: Spread,
    /// Resident-memory fraction across machines and time (memory model only).
    pub memory_utilisation: Option<Spread>,
    /// MB swapped out per machine over the run (memory model only).
    pub swapped_mb_per_machine: Option<Vec<f64>>,
    /// Most MB held in swap at once per machine: the swap space each needed.
    pub peak_swap_mb_per_machine: Option<Vec<f64>>,
    /// Kills of an instance while a cheaper class on its machine held memory (memory model
    /// only; the kill rule keeps it 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kills_over_cheaper: Option<u64>,
}

/// One experiment: a set-up at one load, every scheduler on the same workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentReport {
    /// Offered load (fraction of the cluster's cores).
    pub load: f64,
    /// Seed.
    pub seed: u64,
    /// Machines.
    pub machines: usize,
    /// Cores per machine.
    pub cores: usize,
    /// Tariff shards.
    pub shards: usize,
    /// k of power-of-k.
    pub k: usize,
    /// Simulated seconds.
    pub duration_s: f64,
    /// Memory per machine in GB, if limited.
    pub memory_gb: Option<f64>,
    /// Swap space per machine in GB, if limited (memory model only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_gb: Option<f64>,
    /// Whether Tariff used the idle list.
    pub idle_list: bool,
    /// Modelled overheads, when any is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overheads: Option<super::Overheads>,
    /// The live machine model, when on (`--rt-cpus`): without it a report of that model could
    /// not be told from one of the paper's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_machine: Option<LiveMachine>,
    /// Whether EDF's deadlines counted from arrival.
    pub edf_absolute_deadlines: bool,
    /// Trace replayed, if any.
    pub trace: Option<String>,
    /// Mean runtime of the workload, s.
    pub mean_runtime_s: f64,
    /// Arrival rate per second (synthetic workload; 0 for traces).
    pub arrival_rate: f64,
    /// Each scheduler's results.
    pub schedulers: Vec<SchedulerReport>,
}

/// The live machine model a run used ([`SimConfig::rt_cpus`] and what goes with it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LiveMachine {
    /// Cores per machine the paying classes ran on.
    pub rt_cpus: usize,
    /// The real-time budget's share of each of those cores per period, if any.
    pub rt_budget: Option<f64>,
    /// The cheapest class's share of its fair share of a core.
    pub shared_speed: f64,
}

/// A load sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    /// One experiment per load.
    pub experiments: Vec<ExperimentReport>,
}

impl SweepReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialise")
    }
}

/// Builds an experiment's header (schedulers are added as they finish).
pub(crate) fn experiment_report(
    config: &SimConfig,
    mean_runtime_s: f64,
    arrival_rate: f64,
) -> ExperimentReport {
    ExperimentReport {
        load: config.load,
        seed: config.seed,
        machines: config.machines,
        cores: config.cores,
        shards: config.shards,
        k: config.k,
        duration_s: config.duration_s,
        memory_gb: config.memory_bytes.map(|b| b as f64 / GB),
        swap_gb: config
            .memory_bytes
            .and(config.swap_bytes)
            .map(|b| b as f64 / GB),
        idle_list: config.idle_list,
        overheads: config.overheads.any().then_some(config.overheads),
        live_machine: config.rt_cpus.map(|rt_cpus| LiveMachine {
            rt_cpus,
            rt_budget: config.rt_budget,
            shared_speed: config.shared_speed,
        }),
        edf_absolute_deadlines: config.edf_absolute_deadlines,
        trace: config.trace.as_ref().map(|p| p.display().to_string()),
        mean_runtime_s,
        arrival_rate,
        schedulers: Vec::new(),
    }
}

/// Summarises one scheduler's measurements.
pub(crate) fn scheduler_report(
    config: &SimConfig,
    kind: SchedulerKind,
    stats: &Stats,
    events: u64,
) -> SchedulerReport {
    let prices = config.prices();
    let classes = stats
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| ClassReport {
            class: i as u8,
            price: prices[i],
            arrived: c.arrived,
            completed: c.completed,
            unfinished: c.arrived.saturating_sub(c.completed + c.killed),
            killed: c.killed,
            latency_ms: Percentiles::latency_ms(&c.latency),
            slowdown: Percentiles::slowdown(&c.slowdown),
            swapped_mb: to_mb(c.swapped_bytes),
        })
        .collect();
    let memory = config.memory_bytes.is_some() && kind == SchedulerKind::TARIFF;
    SchedulerReport {
        scheduler: kind,
        events,
        classes,
        utilisation: Spread::of(&stats.utilisation),
        memory_utilisation: memory.then(|| Spread::of(&stats.memory_utilisation)),
        swapped_mb_per_machine: memory.then(|| {
            stats
                .swapped_per_machine
                .iter()
                .map(|&b| to_mb(b))
                .collect()
        }),
        peak_swap_mb_per_machine: memory.then(|| {
            stats
                .peak_swap_per_machine
                .iter()
                .map(|&b| to_mb(b))
                .collect()
        }),
        kills_over_cheaper: memory.then_some(stats.kills_over_cheaper),
    }
}

/// Prints the compact per-scheduler, per-class table: the CLI's only output to stdout.
pub fn print_table(sweep: &SweepReport) {
    println!("{}", table(sweep));
}

/// Prints what `--convert-azure` wrote (the CLI's other output).
pub fn print_conversion(summary: &ConvertSummary, out: &Path) {
    println!(
        "wrote {} invocations of {} functions to {} ({} functions without durations skipped)",
        summary.invocations,
        summary.functions,
        out.display(),
        summary.skipped
    );
}

/// The table [`print_table`] prints.
pub fn table(sweep: &SweepReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>6}",
        "load",
        "sched",
        "class",
        "done",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "p50 sd",
        "p99 sd",
        "util",
        "swap MB",
        "unfin"
    );
    for e in &sweep.experiments {
        for s in &e.schedulers {
            for c in &s.classes {
                let _ = writeln!(
                    out,
                    "{:>5.2} {:>7} {:>5} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>8.3} {:>10.0} {:>6}",
                    e.load,
                    s.scheduler.name(),
                    c.class,
                    c.completed,
                    c.latency_ms.p50,
                    c.latency_ms.p99,
                    c.latency_ms.p999,
                    c.slowdown.p50,
                    c.slowdown.p99,
                    s.utilisation.mean,
                    c.swapped_mb,
                    c.unfinished,
                );
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// SVG.

/// Width of one panel in px.
pub const PANEL_W: f64 = 320.0;
/// Height of one panel in px.
pub const PANEL_H: f64 = 220.0;
/// Margin around a panel's plot area in px (room for axes and labels).
pub const MARGIN: f64 = 45.0;
/// Colours of classes 0, 1, 2, … (cycled).
pub const CLASS_COLOURS: [&str; 6] = [
    "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b",
];
/// Lowest slowdown drawn on the log axis.
const MIN_SLOWDOWN: f64 = 1.0;
/// Horizontal offset in px between the lines of neighbouring classes, so lines that coincide
/// (every class at slowdown 1 below capacity) are drawn side by side instead of on top of each
/// other; small next to the ≥ 30 px between loads.
const CLASS_DODGE_PX: f64 = 3.0;
/// Significant digits of an axis label: "248.3M" rather than "248336817.000", which ran off
/// the figure's left edge.
const LABEL_DIGITS: usize = 4;

/// Pixel x offset of class `c` of `classes`, centred on the true x.
fn dodge(c: usize, classes: usize) -> f64 {
    (c as f64 - (classes.saturating_sub(1)) as f64 / 2.0) * CLASS_DODGE_PX
}

/// A compact axis label: at most [`LABEL_DIGITS`] significant digits, with a k/M/G/T suffix.
pub fn axis_label(value: f64) -> String {
    const SUFFIXES: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    let (scaled, suffix) = SUFFIXES
        .iter()
        .find(|(unit, _)| value.abs() >= *unit)
        .map_or((value, ""), |(unit, suffix)| (value / unit, *suffix));
    let magnitude = if scaled == 0.0 {
        0
    } else {
        scaled.abs().log10().floor() as i32
    };
    let decimals = (LABEL_DIGITS as i32 - 1 - magnitude).clamp(0, LABEL_DIGITS as i32 - 1);
    let text = format!("{scaled:.*}", decimals as usize);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    format!("{text}{suffix}")
}

/// An SVG document being assembled.
pub struct Svg {
    /// The markup so far.
    body: String,
    /// Width in px.
    pub width: f64,
    /// Height in px.
    height: f64,
}

/// A plot area with linear x and linear-or-log y.
struct Panel {
    /// Left edge of the plot area.
    x0: f64,
    /// Top edge of the plot area.
    y0: f64,
    /// x range.
    xs: (f64, f64),
    /// y range (log10 values if `log`).
    ys: (f64, f64),
    /// Whether y is logarithmic.
    log: bool,
}

impl Panel {
    /// Pixel x of value `x`.
    fn px(&self, x: f64) -> f64 {
        let w = PANEL_W - 2.0 * MARGIN;
        let span = (self.xs.1 - self.xs.0).max(f64::EPSILON);
        self.x0 + (x - self.xs.0) / span * w
    }

    /// Pixel y of value `y`.
    fn py(&self, y: f64) -> f64 {
        let h = PANEL_H - 2.0 * MARGIN;
        let y = if self.log {
            y.max(f64::MIN_POSITIVE).log10()
        } else {
            y
        };
        let span = (self.ys.1 - self.ys.0).max(f64::EPSILON);
        let t = ((y - self.ys.0) / span).clamp(0.0, 1.0);
        self.y0 + h - t * h
    }
}

impl Svg {
    /// An empty document of `cols × rows` panels.
    pub fn new(cols: usize, rows: usize, title: &str) -> Self {
        let mut svg = Self {
            body: String::new(),
            width: PANEL_W * cols as f64,
            height: PANEL_H * rows as f64 + MARGIN / 2.0,
        };
        svg.text(svg.width / 2.0, MARGIN / 3.0, title, "middle", 14.0);
        svg
    }

    /// Adds a text label.
    pub fn text(&mut self, x: f64, y: f64, s: &str, anchor: &str, size: f64) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}" font-family="sans-serif">{}</text>"#,
            escape(s)
        );
    }

    /// Adds a line.
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), colour: &str, width: f64) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="{width}"/>"#,
            a.0, a.1, b.0, b.1
        );
    }

    /// Adds a filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, colour: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.8"/>"#,
            w.max(0.0),
            h.max(0.0)
        );
    }

    /// Adds a polyline through `points` (in pixels).
    pub fn polyline(&mut self, points: &[(f64, f64)], colour: &str) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                self.body,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
            );
        }
    }

    /// Draws a panel's frame, title and axis labels at grid cell (`col`, `row`).
    fn panel(
        &mut self,
        (col, row): (usize, usize),
        title: &str,
        xs: (f64, f64),
        ys: (f64, f64),
        log: bool,
        labels: (&str, &str),
    ) -> Panel {
        let x0 = col as f64 * PANEL_W + MARGIN;
        let y0 = row as f64 * PANEL_H + MARGIN;
        let ys = if log {
            (
                ys.0.max(f64::MIN_POSITIVE).log10(),
                ys.1.max(f64::MIN_POSITIVE).log10(),
            )
        } else {
            ys
        };
        let panel = Panel {
            x0,
            y0,
            xs,
            ys,
            log,
        };
        let (w, h) = (PANEL_W - 2.0 * MARGIN, PANEL_H - 2.0 * MARGIN);
        self.line((x0, y0 + h), (x0 + w, y0 + h), "black", 1.0);
        self.line((x0, y0), (x0, y0 + h), "black", 1.0);
        self.text(x0 + w / 2.0, y0 - 8.0, title, "middle", 12.0);
        self.text(x0 + w / 2.0, y0 + h + 32.0, labels.0, "middle", 10.0);
        self.text(x0 - 35.0, y0 - 8.0, labels.1, "start", 10.0);
        // Axis ticks: ends of each range.
        for x in [xs.0, xs.1] {
            self.text(
                panel.px(x),
                y0 + h + 14.0,
                &format!("{x:.2}"),
                "middle",
                9.0,
            );
        }
        for y in [ys.0, ys.1] {
            let value = if log { 10f64.powf(y) } else { y };
            let label = axis_label(value);
            let py = if log { panel.py(value) } else { panel.py(y) };
            self.text(x0 - 4.0, py + 3.0, &label, "end", 9.0);
        }
        panel
    }

    /// Draws a spread as a box plot at `load`: a whisker from p5 to p95, a box from p25 to
    /// p75 and a bar at the median.
    fn spread_box(&mut self, panel: &Panel, load: f64, u: &Spread, colour: &str) {
        const HALF_WIDTH: f64 = 4.0;
        let x = panel.px(load);
        self.line((x, panel.py(u.p5)), (x, panel.py(u.p95)), "gray", 1.0);
        self.rect(
            x - HALF_WIDTH,
            panel.py(u.p75),
            2.0 * HALF_WIDTH,
            panel.py(u.p25) - panel.py(u.p75),
            colour,
        );
        self.line(
            (x - HALF_WIDTH, panel.py(u.p50)),
            (x + HALF_WIDTH, panel.py(u.p50)),
            "black",
            2.0,
        );
    }

    /// Adds a legend of classes in one row along the bottom edge, clear of every panel.
    fn class_legend(&mut self, classes: usize) {
        const ITEM_WIDTH: f64 = 70.0;
        for c in 0..classes {
            let x = self.width - ITEM_WIDTH * (classes - c) as f64;
            let y = self.height - 8.0;
            self.rect(
                x,
                y - 8.0,
                10.0,
                10.0,
                CLASS_COLOURS[c % CLASS_COLOURS.len()],
            );
            self.text(x + 14.0, y + 1.0, &format!("class {c}"), "start", 10.0);
        }
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}">
<rect width="100%" height="100%" fill="white"/>
{}</svg>
"#,
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// Escapes text for XML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The loads of a sweep as an x range.
fn load_range(sweep: &SweepReport) -> (f64, f64) {
    let loads = sweep.experiments.iter().map(|e| e.load);
    let lo = loads.clone().fold(f64::INFINITY, f64::min);
    let hi = loads.fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() {
        (lo, hi.max(lo + f64::EPSILON))
    } else {
        (0.0, 1.0)
    }
}

/// Figure 4: per scheduler, p99 slowdown per class against load (log scale), and the spread
/// of utilisation across machines against load.
pub fn fig4_svg(sweep: &SweepReport) -> String {
    let kinds: Vec<SchedulerKind> = sweep
        .experiments
        .first()
        .map(|e| e.schedulers.iter().map(|s| s.scheduler).collect())
        .unwrap_or_default();
    let classes = sweep
        .experiments
        .first()
        .and_then(|e| e.schedulers.first())
        .map_or(0, |s| s.classes.len());
    let mut svg = Svg::new(
        2,
        kinds.len().max(1),
        "p99 slowdown per class and utilisation vs load",
    );
    let xs = load_range(sweep);
    let max_sd = sweep
        .experiments
        .iter()
        .flat_map(|e| &e.schedulers)
        .flat_map(|s| &s.classes)
        .map(|c| c.slowdown.p99)
        .fold(MIN_SLOWDOWN * 10.0, f64::max);
    for (row, kind) in kinds.iter().enumerate() {
        let runs: Vec<(f64, &SchedulerReport)> = sweep
            .experiments
            .iter()
            .filter_map(|e| {
                e.schedulers
                    .iter()
                    .find(|s| s.scheduler == *kind)
                    .map(|s| (e.load, s))
            })
            .collect();
        let panel = svg.panel(
            (0, row),
            &format!("{}: p99 slowdown", kind.name()),
            xs,
            (MIN_SLOWDOWN, max_sd),
            true,
            ("load", "slowdown"),
        );
        for c in 0..classes {
            let points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|(_, s)| s.classes[c].completed > 0)
                .map(|(load, s)| {
                    (
                        panel.px(*load) + dodge(c, classes),
                        panel.py(s.classes[c].slowdown.p99.max(MIN_SLOWDOWN)),
                    )
                })
                .collect();
            svg.polyline(&points, CLASS_COLOURS[c % CLASS_COLOURS.len()]);
        }
        let panel = svg.panel(
            (1, row),
            &format!("{}: utilisation p5–p95", kind.name()),
            xs,
            (0.0, 1.0),
            false,
            ("load", "busy cores"),
        );
        for (load, s) in &runs {
            svg.spread_box(&panel, *load, &s.utilisation, "#1f77b4");
        }
    }
    svg.class_legend(classes);
    svg.finish()
}

/// Figure 5: Tariff's swapping. Swapped MB per class against load; swapped MB per machine at
/// the highest load (sorted); the spread of memory utilisation against load.
pub fn fig5_svg(sweep: &SweepReport) -> String {
    let tariff: Vec<(f64, &SchedulerReport)> = sweep
        .experiments
        .iter()
        .filter_map(|e| {
            e.schedulers
                .iter()
                .find(|s| s.scheduler == SchedulerKind::TARIFF)
                .map(|s| (e.load, s))
        })
        .collect();
    let classes = tariff.first().map_or(0, |(_, s)| s.classes.len());
    let mut svg = Svg::new(3, 1, "Tariff's swapping (memory in MB)");
    let xs = load_range(sweep);
    let max_class = tariff
        .iter()
        .flat_map(|(_, s)| &s.classes)
        .map(|c| c.swapped_mb)
        .fold(1.0, f64::max);
    let panel = svg.panel(
        (0, 0),
        "swapped per class",
        xs,
        (0.0, max_class),
        false,
        ("load", "MB"),
    );
    for c in 0..classes {
        let points: Vec<(f64, f64)> = tariff
            .iter()
            .map(|(load, s)| {
                (
                    panel.px(*load) + dodge(c, classes),
                    panel.py(s.classes[c].swapped_mb),
                )
            })
            .collect();
        svg.polyline(&points, CLASS_COLOURS[c % CLASS_COLOURS.len()]);
    }
    let mut per_machine: Vec<f64> = tariff
        .last()
        .and_then(|(_, s)| s.swapped_mb_per_machine.clone())
        .unwrap_or_default();
    per_machine.sort_by(|a, b| a.total_cmp(b));
    let max_machine = per_machine.iter().copied().fold(1.0, f64::max);
    let panel = svg.panel(
        (1, 0),
        "swapped per machine (highest load)",
        (0.0, per_machine.len().max(1) as f64),
        (0.0, max_machine),
        false,
        ("machine (sorted)", "MB"),
    );
    for (i, mb) in per_machine.iter().enumerate() {
        let x = panel.px(i as f64);
        let w = panel.px(i as f64 + 1.0) - x;
        svg.rect(
            x,
            panel.py(*mb),
            w * 0.8,
            panel.py(0.0) - panel.py(*mb),
            "#1f77b4",
        );
    }
    let panel = svg.panel(
        (2, 0),
        "memory utilisation p5–p95",
        xs,
        (0.0, 1.0),
        false,
        ("load", "resident / RAM"),
    );
    for (load, s) in &tariff {
        if let Some(u) = &s.memory_utilisation {
            svg.spread_box(&panel, *load, u, "#2ca02c");
        }
    }
    svg.class_legend(classes);
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short_and_keep_four_digits() {
        assert_eq!(axis_label(0.0), "0");
        assert_eq!(axis_label(1.0), "1");
        assert_eq!(axis_label(0.5), "0.5");
        assert_eq!(axis_label(885.247), "885.2");
        assert_eq!(axis_label(248_336_817.0), "248.3M");
        assert_eq!(axis_label(1_000.0), "1k");
        assert_eq!(axis_label(12_345_678_901.0), "12.35G");
    }

    #[test]
    fn neighbouring_classes_are_drawn_apart_around_the_true_x() {
        let offsets: Vec<f64> = (0..4).map(|c| dodge(c, 4)).collect();
        assert!(offsets.windows(2).all(|w| w[1] - w[0] >= CLASS_DODGE_PX));
        assert!(offsets.iter().sum::<f64>().abs() < 1e-9);
    }
}
