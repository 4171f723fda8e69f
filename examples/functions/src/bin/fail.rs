//! `fail`: writes its payload (stdin, any bytes) to stderr and exits with status 3.
//!
//! For error-path tests: the caller should see `exit status 3` and the payload as the stderr
//! tail.

use std::io::{self, Write};

/// The exit status `fail` always ends with.
const FAIL_EXIT: i32 = 3;

fn main() {
    let mut stderr = io::stderr().lock();
    // Errors copying are irrelevant: the function fails either way.
    let _ = io::copy(&mut io::stdin().lock(), &mut stderr).and_then(|_| stderr.flush());
    std::process::exit(FAIL_EXIT);
}
