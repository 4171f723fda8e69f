//! `sleep`: waits without using CPU, then prints `slept N ms`.
//!
//! Payload: `N`, a number of milliseconds, as text on stdin (e.g. `50`) or as the first
//! argument. Models I/O-bound work, which holds memory but no core.

use std::time::Duration;

use tariff_example_functions::{input, numbers};

fn main() {
    let millis = numbers(&input(), 1, 1, "N")[0];
    std::thread::sleep(Duration::from_millis(millis));
    println!("slept {millis} ms");
}
