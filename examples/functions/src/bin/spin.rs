//! `spin`: burns N milliseconds of CPU time, then prints `spun N ms`.
//!
//! Payload: `N`, a number of milliseconds, as text on stdin (e.g. `50`) or as the first
//! argument. The loop counts this thread's CPU time, not wall time, so the work is the same
//! however the machine schedules it: when a higher class preempts it, its wall time exceeds N
//! while its CPU time stays N. That is what makes it the workload for preemption tests.

use std::ffi::{c_int, c_long};
use std::time::Duration;

use tariff_example_functions::{die, input, numbers};

/// `CLOCK_THREAD_CPUTIME_ID` from Linux's `<time.h>`: CPU time consumed by the calling thread.
const CLOCK_THREAD_CPUTIME_ID: c_int = 3;

/// Layout of C's `struct timespec` on Linux (`time_t` and `long` are both `long` there).
#[repr(C)]
struct Timespec {
    tv_sec: c_long,
    tv_nsec: c_long,
}

extern "C" {
    fn clock_gettime(clock_id: c_int, tp: *mut Timespec) -> c_int;
}

/// CPU time used by this thread so far.
fn thread_cpu_time() -> Duration {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` is the libc function of this signature; `ts` is a valid,
    // exclusively borrowed `struct timespec` for the duration of the call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        die("clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

fn main() {
    let millis = numbers(&input(), 1, 1, "N")[0];
    let budget = Duration::from_millis(millis);
    let start = thread_cpu_time();
    let mut counter: u64 = 0;
    while thread_cpu_time() - start < budget {
        // Some real work between clock reads so the loop is not all system calls.
        for _ in 0..1_000 {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
    println!("spun {millis} ms");
}
