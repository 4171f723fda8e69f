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
//! - anything else: answers `invocation N: <payload>`, where N counts this instance's
//!   invocations from 1, so N > 1 means the instance was warm.
//!
//! Every payload counts as an invocation. A malformed `spin` is an error answer, which leaves
//! the instance serving.

use std::ffi::{c_int, c_long};
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

/// `CLOCK_THREAD_CPUTIME_ID` from Linux's `<time.h>`: CPU time consumed by the calling thread.
const CLOCK_THREAD_CPUTIME_ID: c_int = 3;

/// Work between clock reads, so the spin loop is not all system calls.
const SPIN_STEPS_PER_CLOCK_READ: u32 = 1_000;

/// Layout of C's `struct timespec` on Linux (`time_t` and `long` are both `long` there).
#[repr(C)]
struct Timespec {
    tv_sec: c_long,
    tv_nsec: c_long,
}

extern "C" {
    fn clock_gettime(clock_id: c_int, tp: *mut Timespec) -> c_int;
}

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
    if words.next() == Some(SPIN) {
        let millis = match (words.next().map(str::parse::<u64>), words.next()) {
            (Some(Ok(millis)), None) => millis,
            _ => return Err(format!("expected payload `spin MS`, got {text:?}")),
        };
        spin(Duration::from_millis(millis))?;
        return Ok(format!("spun {millis} ms").into_bytes());
    }
    let mut answer = format!("invocation {n}: ").into_bytes();
    answer.extend_from_slice(payload);
    Ok(answer)
}

/// Burns `budget` of this thread's CPU time: under preemption wall time exceeds it, CPU time
/// does not.
fn spin(budget: Duration) -> Result<(), String> {
    let start = thread_cpu_time()?;
    let mut counter: u64 = 0;
    while thread_cpu_time()? - start < budget {
        for _ in 0..SPIN_STEPS_PER_CLOCK_READ {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
    Ok(())
}

/// CPU time used by this thread so far.
fn thread_cpu_time() -> Result<Duration, String> {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` is the libc function of this signature; `ts` is a valid,
    // exclusively borrowed `struct timespec` for the duration of the call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err("clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed".to_owned());
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
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
