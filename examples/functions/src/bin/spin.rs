//! `spin`: burns N milliseconds of CPU time, then prints `spun N ms`.
//!
//! Payload: `N`, a number of milliseconds, as text on stdin (e.g. `50`) or as the first
//! argument. The loop counts this thread's CPU time, not wall time, so the work is the same
//! however the machine schedules it: when a higher class preempts it, its wall time exceeds N
//! while its CPU time stays N. That is what makes it the workload for preemption tests.

use std::time::Duration;

use tariff_example_functions::{die, input, numbers, spin_cpu};

fn main() {
    let millis = numbers(&input(), 1, 1, "N")[0];
    if let Err(e) = spin_cpu(Duration::from_millis(millis)) {
        die(&e);
    }
    println!("spun {millis} ms");
}
