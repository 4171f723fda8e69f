//! `counter`: a persistent function (built with `tariff-function`) that counts the invocations
//! its instance has served, so tests can tell warm reuse from a cold start.
//!
//! One process serves many invocations over frames on stdin/stdout (see
//! `docs/persistent-functions.md`); it is not meant to be run by hand. Payloads:
//!
//! - `crash`: writes a line to stderr and exits with status [`CRASH_EXIT`] mid-request, for
//!   crash tests (Tariff answers that invocation with the status and the stderr tail).
//! - `spin MS`: burns MS ms of this thread's CPU time, like the `spin` function, then answers
//!   `spun MS ms`: the workload for preemption tests with warm instances.
//! - `call FUNCTION CLASS PAYLOAD`: invokes FUNCTION at CLASS with PAYLOAD as part of this
//!   invocation's call chain (`tariff_function::context`), by running `tariff invoke --json`
//!   (the binary named by `TARIFF_BIN`, else `tariff` on the PATH), and answers with its
//!   output: how a persistent function calls another without its tenant's token.
//! - anything else: answers `invocation N: <payload>`, where N counts this instance's
//!   invocations from 1, so N > 1 means the instance was warm.
//!
//! Every payload counts as an invocation. A malformed `spin` is an error answer, which leaves
//! the instance serving.

use std::process::exit;
use std::time::Duration;

/// Exit status of the `crash` payload (distinct from the other examples' 2 and 3).
const CRASH_EXIT: i32 = 7;

/// Exit status when serving itself fails (a broken pipe, stdin ending mid-frame).
const SERVE_FAILED_EXIT: i32 = 1;

/// The payload that makes the instance exit mid-request.
const CRASH: &str = "crash";

/// The first word of a `spin MS` payload.
const SPIN: &str = "spin";

/// The first word of a `call FUNCTION CLASS PAYLOAD` payload.
const CALL: &str = "call";

fn main() {
    let mut invocations: u64 = 0;
    let served = tariff_function::serve(|payload| {
        invocations += 1;
        invoke(invocations, payload)
    });
    if let Err(e) = served {
        eprintln!("counter: serving failed after {invocations} invocations: {e}");
        exit(SERVE_FAILED_EXIT);
    }
}

/// Answers invocation number `n` (from 1) of this instance.
fn invoke(n: u64, payload: &[u8]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(payload);
    let text = text.trim();
    if text == CRASH {
        eprintln!("counter: crashing on request in invocation {n}");
        exit(CRASH_EXIT);
    }
    let mut words = text.split_whitespace();
    let first = words.next();
    if first == Some(CALL) {
        return match (words.next(), words.next(), words.next()) {
            (Some(function), Some(class), Some(payload)) => call(function, class, payload),
            _ => Err(format!(
                "expected payload `call FUNCTION CLASS PAYLOAD`, got {text:?}"
            )),
        };
    }
    if first == Some(SPIN) {
        let millis = match (words.next().map(str::parse::<u64>), words.next()) {
            (Some(Ok(millis)), None) => millis,
            _ => return Err(format!("expected payload `spin MS`, got {text:?}")),
        };
        tariff_example_functions::spin_cpu(Duration::from_millis(millis))?;
        return Ok(format!("spun {millis} ms").into_bytes());
    }
    let mut answer = format!("invocation {n}: ").into_bytes();
    answer.extend_from_slice(payload);
    Ok(answer)
}

/// Invokes `function` as part of the current invocation's chain and returns its JSON answer.
fn call(function: &str, class: &str, payload: &str) -> Result<Vec<u8>, String> {
    let context = tariff_function::context::current()
        .ok_or("no invocation context: not running as an invocation")?;
    let tariff = std::env::var("TARIFF_BIN").unwrap_or_else(|_| "tariff".to_owned());
    let mut command = std::process::Command::new(tariff);
    command.args(["invoke", "--function", function, "--class", class, "--json"]);
    command.args(["--payload", payload]);
    context.apply(&mut command);
    let output = command
        .output()
        .map_err(|e| format!("running tariff invoke: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "tariff invoke failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_echoes() {
        assert_eq!(invoke(1, b"hi").unwrap(), b"invocation 1: hi");
        assert_eq!(invoke(2, b"").unwrap(), b"invocation 2: ");
    }

    #[test]
    fn spins_for_the_asked_cpu_time() {
        assert_eq!(invoke(1, b"spin 5\n").unwrap(), b"spun 5 ms");
        assert!(invoke(1, b"spin five").is_err());
        assert!(invoke(1, b"spin 5 6").is_err());
        assert!(invoke(1, b"spin").is_err());
    }
}
