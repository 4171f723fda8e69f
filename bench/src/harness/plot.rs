//! The harness's figures, as hand-written SVG (no plotting dependency), drawn with the
//! simulator's [`Svg`] primitives so both commands' figures look alike.
//!
//! `cdf.svg`: per policy (rows) and phase (columns), the latency CDF of each class on a log
//! x-axis, where a 100× gap between classes is as visible as a 2× one. `over_time.svg`: per
//! policy and phase, each class's p99 (line with dots) and p50 (thin line) per second of
//! scheduled send time on a log y-axis, which shows backlogs building up.

use tariff_sim::report::{Svg, CLASS_COLOURS, MARGIN, PANEL_H, PANEL_W};

use super::record::{BenchReport, PolicyReport};

/// µs per ms (the axes are in ms).
const US_PER_MS: f64 = 1000.0;
/// Smallest latency an axis shows, ms: below loopback QUIC's floor.
const MIN_AXIS_MS: f64 = 0.01;
/// Width of a p50 line.
const P50_WIDTH: f64 = 1.0;

/// One panel's axes: x and y, each linear or log10.
struct Axes {
    x0: f64,
    y0: f64,
    xs: (f64, f64),
    ys: (f64, f64),
    xlog: bool,
    ylog: bool,
}

impl Axes {
    fn w() -> f64 {
        PANEL_W - 2.0 * MARGIN
    }
    fn h() -> f64 {
        PANEL_H - 2.0 * MARGIN
    }
    fn scale(v: f64, range: (f64, f64), log: bool) -> f64 {
        let f = |x: f64| {
            if log {
                x.max(f64::MIN_POSITIVE).log10()
            } else {
                x
            }
        };
        let span = (f(range.1) - f(range.0)).max(f64::EPSILON);
        ((f(v) - f(range.0)) / span).clamp(0.0, 1.0)
    }
    fn px(&self, x: f64) -> f64 {
        self.x0 + Self::scale(x, self.xs, self.xlog) * Self::w()
    }
    fn py(&self, y: f64) -> f64 {
        self.y0 + Self::h() - Self::scale(y, self.ys, self.ylog) * Self::h()
    }

    /// Draws the frame, title, axis labels and tick labels (decades on a log axis, ends on a
    /// linear one).
    fn draw(&self, svg: &mut Svg, title: &str, labels: (&str, &str)) {
        let (w, h) = (Self::w(), Self::h());
        let (x0, y0) = (self.x0, self.y0);
        svg.line((x0, y0 + h), (x0 + w, y0 + h), "black", 1.0);
        svg.line((x0, y0), (x0, y0 + h), "black", 1.0);
        svg.text(x0 + w / 2.0, y0 - 8.0, title, "middle", 11.0);
        svg.text(x0 + w / 2.0, y0 + h + 30.0, labels.0, "middle", 10.0);
        svg.text(x0 - 35.0, y0 - 8.0, labels.1, "start", 10.0);
        for x in ticks(self.xs, self.xlog) {
            svg.text(self.px(x), y0 + h + 13.0, &tick_label(x), "middle", 9.0);
        }
        for y in ticks(self.ys, self.ylog) {
            svg.text(x0 - 4.0, self.py(y) + 3.0, &tick_label(y), "end", 9.0);
        }
    }
}

/// Powers of ten within a log range; the two ends of a linear one.
fn ticks(range: (f64, f64), log: bool) -> Vec<f64> {
    if !log {
        return vec![range.0, range.1];
    }
    let (lo, hi) = (
        range.0.log10().floor() as i32,
        range.1.log10().ceil() as i32,
    );
    (lo..=hi)
        .map(|e| 10f64.powi(e))
        .filter(|v| *v >= range.0 * 0.999 && *v <= range.1 * 1.001)
        .collect()
}

fn tick_label(v: f64) -> String {
    if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A log range covering `values` (ms), widened to whole decades.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi <= 0.0 {
        return (MIN_AXIS_MS, 1.0);
    }
    let lo = 10f64.powf(lo.max(MIN_AXIS_MS).log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// Grid size: columns = phases of the widest policy, rows = policies.
fn grid(report: &BenchReport) -> (usize, usize) {
    let cols = report
        .policies
        .iter()
        .map(|p| p.phases.len())
        .max()
        .unwrap_or(0)
        .max(1);
    (cols, report.policies.len().max(1))
}

fn legend(svg: &mut Svg, classes: &[String]) {
    for (c, name) in classes.iter().enumerate() {
        let x = svg.width - 90.0;
        let y = MARGIN / 3.0 + 12.0 * c as f64;
        svg.rect(x, y - 8.0, 10.0, 10.0, colour(c));
        svg.text(x + 14.0, y + 1.0, name, "start", 10.0);
    }
}

fn colour(class: usize) -> &'static str {
    CLASS_COLOURS[class % CLASS_COLOURS.len()]
}

fn origin(col: usize, row: usize) -> (f64, f64) {
    (
        col as f64 * PANEL_W + MARGIN,
        row as f64 * PANEL_H + MARGIN * 1.5,
    )
}

/// `cdf.svg`.
pub fn cdf_svg(report: &BenchReport) -> String {
    let (cols, rows) = grid(report);
    let mut svg = Svg::new(
        cols,
        rows,
        &format!("{}: latency CDF per class", report.workload.name),
    );
    let all_ms = report.policies.iter().flat_map(|p| {
        p.phases
            .iter()
            .flat_map(|ph| ph.classes.iter().flat_map(|c| c.cdf.iter()))
            .map(|pt| pt.us as f64 / US_PER_MS)
    });
    let xs = decades(all_ms);
    for (row, policy) in report.policies.iter().enumerate() {
        for (col, phase) in policy.phases.iter().enumerate() {
            let (x0, y0) = origin(col, row);
            let axes = Axes {
                x0,
                y0,
                xs,
                ys: (0.0, 1.0),
                xlog: true,
                ylog: false,
            };
            axes.draw(
                &mut svg,
                &format!("{} — {}", policy.policy, phase.name),
                ("latency (ms, log)", "fraction"),
            );
            for (c, class) in phase.classes.iter().enumerate() {
                let points: Vec<(f64, f64)> = class
                    .cdf
                    .iter()
                    .map(|pt| (axes.px(pt.us as f64 / US_PER_MS), axes.py(pt.quantile)))
                    .collect();
                if !points.is_empty() {
                    svg.polyline(&points, colour(c));
                }
            }
        }
    }
    legend(&mut svg, &report.classes);
    svg.finish()
}

/// `over_time.svg`.
pub fn over_time_svg(report: &BenchReport) -> String {
    let (cols, rows) = grid(report);
    let mut svg = Svg::new(
        cols,
        rows,
        &format!(
            "{}: latency per second (p99 dots, p50 thin)",
            report.workload.name
        ),
    );
    let all_ms = report.policies.iter().flat_map(|p| {
        p.phases
            .iter()
            .flat_map(|ph| ph.over_time.iter().flat_map(|s| s.classes.iter()))
            .flat_map(|c| [c.p50_us, c.p99_us])
            .map(|us| us as f64 / US_PER_MS)
    });
    let ys = decades(all_ms);
    for (row, policy) in report.policies.iter().enumerate() {
        for (col, phase) in policy.phases.iter().enumerate() {
            draw_over_time(&mut svg, policy, phase, (col, row), ys, &report.classes);
        }
    }
    legend(&mut svg, &report.classes);
    svg.finish()
}

fn draw_over_time(
    svg: &mut Svg,
    policy: &PolicyReport,
    phase: &super::record::PhaseReport,
    (col, row): (usize, usize),
    ys: (f64, f64),
    classes: &[String],
) {
    let (x0, y0) = origin(col, row);
    let seconds = phase.over_time.len().max(1) as f64;
    let axes = Axes {
        x0,
        y0,
        xs: (0.0, seconds),
        ys,
        xlog: false,
        ylog: true,
    };
    axes.draw(
        svg,
        &format!("{} — {}", policy.policy, phase.name),
        ("second of the phase", "ms (log)"),
    );
    for (c, name) in classes.iter().enumerate() {
        let series: Vec<(f64, u64, u64)> = phase
            .over_time
            .iter()
            .filter_map(|s| {
                let v = s.classes.iter().find(|x| &x.class == name)?;
                Some((s.second as f64 + 0.5, v.p50_us, v.p99_us))
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let point = |x: f64, us: u64| (axes.px(x), axes.py(us as f64 / US_PER_MS));
        let p99: Vec<(f64, f64)> = series.iter().map(|&(x, _, p)| point(x, p)).collect();
        svg.polyline(&p99, colour(c));
        for pair in series.windows(2) {
            svg.line(
                point(pair[0].0, pair[0].1),
                point(pair[1].0, pair[1].1),
                colour(c),
                P50_WIDTH,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ranges_are_whole_decades() {
        let (lo, hi) = decades([0.2, 35.0].into_iter());
        assert!((lo - 0.1).abs() < 1e-12 && (hi - 100.0).abs() < 1e-9);
        assert_eq!(ticks((0.1, 100.0), true).len(), 4);
        assert_eq!(decades(std::iter::empty()), (MIN_AXIS_MS, 1.0));
    }
}
