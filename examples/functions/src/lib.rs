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

/// `CLOCK_THREAD_CPUTIME_ID` from Linux's `<time.h>`: CPU time consumed by the calling thread.
const CLOCK_THREAD_CPUTIME_ID: std::ffi::c_int = 3;

/// Work between clock reads, so a spin loop is not all system calls.
const SPIN_STEPS_PER_CLOCK_READ: u32 = 1_000;

/// Layout of C's `struct timespec` on Linux (`time_t` and `long` are both `long` there).
#[repr(C)]
struct Timespec {
    tv_sec: std::ffi::c_long,
    tv_nsec: std::ffi::c_long,
}

extern "C" {
    fn clock_gettime(clock_id: std::ffi::c_int, tp: *mut Timespec) -> std::ffi::c_int;
}

/// CPU time used by the calling thread so far.
pub fn thread_cpu_time() -> Result<std::time::Duration, String> {
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
    Ok(std::time::Duration::new(secs, nanos))
}

/// Burns `budget` of this thread's CPU time. It counts CPU time, not wall time, so the work is
/// the same however the machine schedules it: preempted, its wall time exceeds `budget` while
/// its CPU time stays `budget`. That is what makes it the workload for preemption tests.
pub fn spin_cpu(budget: std::time::Duration) -> Result<(), String> {
    let start = thread_cpu_time()?;
    let mut counter: u64 = 0;
    while thread_cpu_time()? - start < budget {
        for _ in 0..SPIN_STEPS_PER_CLOCK_READ {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
    Ok(())
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
