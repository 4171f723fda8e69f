//! Shared input handling for the example functions, kept in one place so every binary reads
//! its payload the same way: the arguments if any were given, otherwise stdin.
//!
//! Std only, so the binaries stay tiny and start in well under a millisecond.

use std::io::Read;
use std::process::exit;

/// Exit status for a payload the function cannot understand (status 3 is `fail`'s on purpose).
pub const BAD_INPUT_EXIT: i32 = 2;

/// The function's input: the command-line arguments joined by spaces if there are any (handy
/// by hand), otherwise all of stdin (how Tariff passes the payload). Trimmed.
pub fn input() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return args.join(" ").trim().to_owned();
    }
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        die(&format!("could not read stdin: {e}"));
    }
    text.trim().to_owned()
}

/// Parses the whitespace-separated numbers of `input`, at least `min` and at most `max` of them;
/// exits with [`BAD_INPUT_EXIT`] and a message naming `usage` otherwise.
pub fn numbers(input: &str, min: usize, max: usize, usage: &str) -> Vec<u64> {
    let parsed: Result<Vec<u64>, _> = input.split_whitespace().map(str::parse).collect();
    match parsed {
        Ok(values) if (min..=max).contains(&values.len()) => values,
        _ => die(&format!("expected payload `{usage}`, got {input:?}")),
    }
}

/// Reports a bad payload on stderr and exits with [`BAD_INPUT_EXIT`].
pub fn die(message: &str) -> ! {
    eprintln!("{message}");
    exit(BAD_INPUT_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parses_within_bounds() {
        assert_eq!(numbers("50", 1, 1, "N"), vec![50]);
        assert_eq!(numbers(" 8  20 ", 1, 2, "N [STEP_MS]"), vec![8, 20]);
    }
}
