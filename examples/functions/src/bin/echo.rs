//! `echo`: copies its payload (stdin, any bytes) to stdout unchanged.
//!
//! The smallest possible function: it measures the platform's own overhead.

use std::io::{self, Write};

fn main() {
    let mut stdout = io::stdout().lock();
    if let Err(e) = io::copy(&mut io::stdin().lock(), &mut stdout).and_then(|_| stdout.flush()) {
        tariff_example_functions::die(&format!("echo failed: {e}"));
    }
}
