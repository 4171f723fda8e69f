//! The one progress bar of Tariff's long jobs: the harness's phases (`tariff bench`), the
//! simulator's sweeps and trace replays, and trace conversion (`tariff sim`).
//!
//! A thin wrapper over `indicatif`, so every job shows the same thing — label, bar, count,
//! rate and ETA — and so the rule "draw only on a terminal" is written once: in a log file or
//! CI a carriage-return animation is noise, so when stderr is not a terminal the bar is
//! hidden and costs nothing. The bar is drawn at most 20 times a second whatever the rate of
//! updates, so callers may update it from hot loops.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second at most: enough to look live, too few to cost anything.
const REFRESH_HZ: u8 = 20;
/// How often a bar redraws by itself, so the rate and ETA move even between updates.
const TICK: Duration = Duration::from_millis(250);

/// A progress bar on stderr; hidden when stderr is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` steps counted in `unit` (e.g. "invocations", "runs"), labelled
    /// `label`.
    pub fn new(label: impl Into<Cow<'static, str>>, total: u64, unit: &str) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(REFRESH_HZ)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template = format!(
            "{{prefix:<24}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
        );
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("#>-"),
        );
        bar.set_prefix(label);
        bar.enable_steady_tick(TICK);
        Self { bar }
    }

    /// Whether the bar is drawn (stderr is a terminal).
    pub fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Sets how many steps are done.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Sets the number of steps when it is learnt late (a conversion knows its minutes only
    /// once the input is read).
    pub fn set_length(&self, total: u64) {
        self.bar.set_length(total);
    }

    /// Counts `n` more steps done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the text after the numbers (e.g. "failed 3").
    pub fn message(&self, text: impl Into<Cow<'static, str>>) {
        self.bar.set_message(text);
    }

    /// Removes the bar, leaving the terminal as it was before it, for a summary line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_even_when_hidden() {
        // Under `cargo test` stderr is captured, not a terminal: the bar is hidden but works.
        let p = Progress::new("test", 10, "steps");
        p.inc(3);
        p.set(7);
        p.message("ok");
        assert_eq!(p.bar.position(), 7);
        p.finish();
    }
}
