//! Real-time priorities and CPU confinement: how a price class becomes a kernel priority.
//!
//! Every paying class's function process runs under `SCHED_FIFO` at a priority derived from its
//! invocation's class, so the kernel preempts a cheaper class the moment a dearer one becomes
//! runnable, and runs equal priorities first come, first served. The cheapest class runs as a
//! normal task (`SCHED_BATCH`) on every function CPU ([`runs_real_time`]): every real-time class
//! preempts it, it cannot starve the kernel, and so it may keep the CPUs busy that real-time
//! functions must leave alone. The dispatcher's own threads run above every function priority (with
//! `SCHED_RESET_ON_FORK`, so the processes they start begin as normal tasks) and are never
//! starved by the functions they manage.
//!
//! Three kernel facts shape this module (measured on these machines, see MACHINE-NOTES):
//! - **RT throttling** (`kernel.sched_rt_runtime_us` = 950000 of 1000000): once real-time
//!   tasks use 95 % of a period, *all* of them wait, the top class included. Confining
//!   real-time functions to fewer CPUs than the host has ([`function_cpus`]) keeps the rest of
//!   the machine, and the throttle's budget, out of their reach; where the kernel has group
//!   budgets, a budget of [`real_time_share`] of every CPU does the same without taking a CPU
//!   from the paying classes ([`crate::cgroup::rt_budget`]).
//! - **Priority inversion in fork/exec/exit**: these take memory-management locks without
//!   priority inheritance, and kernel threads starved by real-time load may hold them for
//!   seconds. So processes are spawned at normal priority and raised only after `exec`, warm
//!   instances are preferred, and real-time functions never have a CPU to themselves: either
//!   one CPU is kept from them (the cheapest class, a normal task, still uses it) or a
//!   real-time group budget keeps a share of every CPU for normal tasks.
//! - **CONFIG_RT_GROUP_SCHED**: a task in a `cpu` cgroup without an RT budget cannot become
//!   real-time (EPERM). Instances are never put in `cpu` cgroups (see `cgroup`), and
//!   [`probe`] reports such a dispatcher cgroup as the reason for falling back.

use std::io;

use tariff_types::ClassId;
// The thread-level calls live in `tariff-thread`, which the shard uses too (its ledger thread
// takes its opener's scheduling); the machine scheduler's callers keep reaching them here.
use tariff_thread::set_scheduler;
pub use tariff_thread::{allowed_cpus, set_affinity, set_nice, set_thread_nice, ThreadScheduling};

/// Priority of the dispatcher's threads: above every function priority.
pub const DISPATCHER_PRIORITY: i32 = 50;
/// Priority of the cheapest class.
pub const LOWEST_FUNCTION_PRIORITY: i32 = 10;
/// Gap between adjacent classes, leaving room for finer grades later.
pub const PRIORITY_STEP: i32 = 2;
/// `SCHED_RESET_ON_FORK` flag from `<linux/sched.h>`.
const SCHED_RESET_ON_FORK: libc::c_int = 0x4000_0000;
const RT_RUNTIME: &str = "/proc/sys/kernel/sched_rt_runtime_us";
const RT_PERIOD: &str = "/proc/sys/kernel/sched_rt_period_us";

/// The `SCHED_FIFO` priority of a class: the top class highest, each cheaper class
/// [`PRIORITY_STEP`] lower, the cheapest at [`LOWEST_FUNCTION_PRIORITY`].
pub fn function_priority(class: ClassId, classes: usize) -> i32 {
    let below_top = classes.saturating_sub(1 + class.index()) as i32;
    (LOWEST_FUNCTION_PRIORITY + below_top * PRIORITY_STEP).min(DISPATCHER_PRIORITY - 1)
}

/// How the machine enforces class order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedMode {
    /// The kernel does it: functions run under `SCHED_FIFO`.
    RealTime,
    /// The dispatcher does it: at most `cores` functions run, cheaper ones are stopped
    /// (`SIGSTOP`) while dearer ones need their CPU. The reason says why.
    UserSpace {
        /// Why real-time scheduling is not used.
        reason: String,
    },
    /// No ordering at all: every function runs at once at normal priority and the kernel
    /// time-shares the CPUs (processor sharing). Only the Hermod baseline runs this way.
    ProcessorSharing,
}

/// Puts thread `tid` under `SCHED_FIFO` at `priority`.
pub fn set_fifo(tid: i32, priority: i32) -> io::Result<()> {
    set_scheduler(tid, libc::SCHED_FIFO, priority)
}

/// Returns thread `tid` to normal (CFS) scheduling.
pub fn set_normal(tid: i32) -> io::Result<()> {
    set_scheduler(tid, libc::SCHED_OTHER, 0)
}

/// Nice value of the dispatcher's launch threads (working directory, cgroups, the new
/// process) where functions are normal tasks (user-space and processor-sharing modes, or a
/// real-time launch the kernel refused): the strongest normal-priority weight, so a cold start
/// is not kept waiting by whatever else runs at normal priority (a build on a shared host
/// delayed launches by a CFS slice or more). In real-time mode launches run at their call's
/// `SCHED_FIFO` priority instead (`priority::on_launch_thread`). The launched process keeps
/// its launch's scheduling until `exec` and is returned to nice 0 when it is confined.
pub const LAUNCH_NICE: i32 = -20;

/// Puts thread `tid` under `SCHED_BATCH`: a normal (CFS) task at its nice value, marked
/// CPU-bound, so its wake-ups do not preempt other tasks (the cheapest class, see
/// [`runs_real_time`]).
pub fn set_batch(tid: i32) -> io::Result<()> {
    set_scheduler(tid, libc::SCHED_BATCH, 0)
}

/// Applies `set` to every thread in `tids`, ignoring threads that have exited meanwhile.
/// Returns how many were set.
pub fn set_all(tids: &[i32], set: impl Fn(i32) -> io::Result<()>) -> io::Result<usize> {
    let mut done = 0;
    for &tid in tids {
        match set(tid) {
            Ok(()) => done += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Raises the calling thread to the dispatcher's priority, with reset-on-fork so that the
/// function processes it starts begin as normal tasks. Call it on every runtime thread.
pub fn raise_current_thread() -> io::Result<()> {
    set_scheduler(
        0,
        libc::SCHED_FIFO | SCHED_RESET_ON_FORK,
        DISPATCHER_PRIORITY,
    )
}

/// Sets every thread in `tids` to `SCHED_FIFO` at `priority`, ignoring threads that have
/// exited meanwhile. Returns how many were set.
pub fn set_fifo_all(tids: &[i32], priority: i32) -> io::Result<usize> {
    set_all(tids, |tid| set_fifo(tid, priority))
}

/// Thread ids of process `pid` (from `/proc/PID/task`).
pub fn threads_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Finds out whether this process may use `SCHED_FIFO`, by raising and lowering a
/// short-lived probe thread.
pub fn probe() -> SchedMode {
    let attempt = std::thread::spawn(|| {
        let result = set_fifo(0, LOWEST_FUNCTION_PRIORITY);
        let _ = set_normal(0);
        result
    })
    .join();
    match attempt {
        Ok(Ok(())) => SchedMode::RealTime,
        Ok(Err(e)) => SchedMode::UserSpace {
            reason: explain_refusal(&e),
        },
        Err(_) => SchedMode::UserSpace {
            reason: "the SCHED_FIFO probe thread panicked".into(),
        },
    }
}

fn explain_refusal(error: &io::Error) -> String {
    if error.raw_os_error() != Some(libc::EPERM) {
        return format!("sched_setscheduler(SCHED_FIFO) failed: {error}");
    }
    let cpu_group = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.split_once(":cpu:").map(|(_, path)| path.to_owned()))
        });
    match cpu_group {
        Some(group) if group != "/" => format!(
            "SCHED_FIFO refused (EPERM): no CAP_SYS_NICE, or cpu cgroup {group} has no real-time \
             budget (cpu.rt_runtime_us = 0 on a CONFIG_RT_GROUP_SCHED kernel)"
        ),
        _ => "SCHED_FIFO refused (EPERM): the dispatcher lacks CAP_SYS_NICE".into(),
    }
}

/// The kernel's RT throttle as (runtime, period) in µs; runtime -1 means no throttling.
pub fn rt_throttle() -> Option<(i64, i64)> {
    let read = |path| std::fs::read_to_string(path).ok()?.trim().parse().ok();
    Some((read(RT_RUNTIME)?, read(RT_PERIOD)?))
}

/// Which CPUs functions run on: every class on `functions`, the real-time (paying) classes only
/// on `real_time`, a subset of it (see [`runs_real_time`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCpus {
    /// CPUs any function may run on: the cheapest class, outside real time, uses all of them.
    pub functions: Vec<usize>,
    /// CPUs the real-time classes are confined to. In real-time mode never every CPU of the
    /// host, so kernel threads and normal tasks always have a CPU no real-time function takes.
    pub real_time: Vec<usize>,
}

/// The CPUs functions run on, chosen from `allowed`: the `cores` highest-numbered ones, so
/// that CPU 0 (where interrupts and most kernel threads land) is the last a function gets.
///
/// In real-time mode the real-time classes get at least one allowed CPU fewer than the
/// functions: real-time functions on every CPU can stall the kernel threads that fork, exec
/// and exit depend on (MACHINE-NOTES: stalls of seconds). The cheapest class runs outside
/// real time ([`runs_real_time`]), so it may use every CPU and keep the whole machine at work.
/// The second value explains any reduction.
pub fn function_cpus(
    allowed: &[usize],
    cores: usize,
    real_time: bool,
) -> (FunctionCpus, Option<String>) {
    let mut cpus: Vec<usize> = allowed.to_vec();
    cpus.sort_unstable();
    let take = cores.clamp(1, cpus.len().max(1));
    let functions = cpus.split_off(cpus.len().saturating_sub(take));
    let real_time_limit = if real_time && allowed.len() > 1 {
        allowed.len() - 1
    } else {
        allowed.len()
    };
    let rt_take = functions.len().min(real_time_limit.max(1));
    let real_time_cpus = functions[functions.len() - rt_take..].to_vec();
    let note = if take < cores {
        Some(format!(
            "--cores {cores}: only {} CPUs are available",
            allowed.len()
        ))
    } else if real_time && rt_take < functions.len() {
        Some(format!(
            "--cores {cores}: the cheapest class runs on all {} CPUs outside real time; the \
             real-time classes get {rt_take}, leaving one CPU no real-time function takes \
             (kernel threads, the dispatcher's launches)",
            functions.len()
        ))
    } else {
        None
    };
    (
        FunctionCpus {
            functions,
            real_time: real_time_cpus,
        },
        note,
    )
}

/// The share of each CPU the paying classes may take when a real-time group budget lets them
/// onto every CPU ([`crate::cgroup::rt_budget`]): the real-time capacity that confinement to
/// all CPUs but one gave, `cpus − 1` CPUs' worth, spread over all `cpus`, so that every CPU
/// keeps `1/cpus` of its time for kernel threads and normal tasks whatever the paying classes
/// do. Zero for one CPU: there a budget would only take from the kernel.
pub fn real_time_share(cpus: usize) -> f64 {
    if cpus < 2 {
        return 0.0;
    }
    (cpus - 1) as f64 / cpus as f64
}

impl FunctionCpus {
    /// Whether the real-time classes are kept off some function CPU, so that a real-time
    /// budget ([`real_time_share`]) would let them onto more.
    pub fn real_time_confined(&self) -> bool {
        self.real_time.len() < self.functions.len()
    }

    /// The real-time classes on every function CPU: under a real-time group budget the kernel,
    /// not confinement, keeps a share of every CPU for normal tasks.
    pub fn with_real_time_everywhere(self) -> FunctionCpus {
        FunctionCpus {
            real_time: self.functions.clone(),
            functions: self.functions,
        }
    }
}

/// Whether a `class` function runs under `SCHED_FIFO` in real-time mode. Every class but the
/// cheapest does; the cheapest runs as a normal task (`SCHED_BATCH`) on every function CPU.
///
/// Why: the cheapest class is the one that saturates a machine (2× overload on issue 11's
/// preempt-2x workload is 98 % `batch` CPU). As a real-time class it had to be kept off one
/// CPU, or it would starve kernel threads and trip the RT throttle, which then holds back the
/// top class too; so functions got one CPU of two. As a normal task it cannot starve anything
/// (the kernel shares CPUs fairly among normal tasks and kernel threads), and every real-time
/// class still preempts it at once, so it can be let onto every CPU. `SCHED_BATCH` rather than
/// `SCHED_OTHER` because it is CPU-bound work that should not preempt others on wake-up;
/// rather than `SCHED_IDLE`, which yields to *every* normal task: measured on this shared
/// host, a concurrent build starved `SCHED_IDLE` work so that the preempt-2x overload took
/// 130–210 s instead of ~62 s, with calls timing out.
pub fn runs_real_time(class: ClassId, classes: usize) -> bool {
    class.index() + 1 < classes
}

/// Nanoseconds per microsecond, for schedstat's figures.
const NANOS_PER_MICRO: u64 = 1_000;

/// Time a task has spent runnable but waiting for a CPU, in ns: the second field of its
/// `schedstat` file (`/proc/PID/schedstat` for a thread, `/proc/PID/task/TID/schedstat`).
fn schedstat_wait_ns(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_schedstat_wait_ns(&text)
}

/// The run-queue wait (second field, ns) of a `schedstat` line.
fn parse_schedstat_wait_ns(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Time thread `pid` has spent runnable but waiting for a CPU, from `/proc/PID/schedstat`,
/// in µs. This is the time it was preempted or queued.
pub fn runqueue_wait_us(pid: i32) -> Option<u64> {
    schedstat_wait_ns(&format!("/proc/{pid}/schedstat")).map(|ns| ns / NANOS_PER_MICRO)
}

/// Time every thread of process `pid` has spent runnable but waiting for a CPU, in µs, summed
/// (a thread that has exited no longer counts); 0 if none can be read.
pub fn process_runqueue_wait_us(pid: i32) -> u64 {
    threads_of(pid)
        .into_iter()
        .filter_map(|tid| schedstat_wait_ns(&format!("/proc/{pid}/task/{tid}/schedstat")))
        .sum::<u64>()
        / NANOS_PER_MICRO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dearer_classes_get_higher_priorities_below_the_dispatcher() {
        let prios: Vec<i32> = (0..4).map(|c| function_priority(ClassId(c), 4)).collect();
        assert_eq!(prios, [16, 14, 12, 10]);
        assert!(prios.iter().all(|&p| p < DISPATCHER_PRIORITY));
        assert_eq!(function_priority(ClassId(0), 1), LOWEST_FUNCTION_PRIORITY);
        assert!(function_priority(ClassId(0), 100) < DISPATCHER_PRIORITY);
    }

    fn cpus(functions: &[usize], real_time: &[usize]) -> FunctionCpus {
        FunctionCpus {
            functions: functions.to_vec(),
            real_time: real_time.to_vec(),
        }
    }

    #[test]
    fn real_time_functions_never_get_every_cpu_but_functions_do() {
        assert_eq!(function_cpus(&[0, 1], 1, true), (cpus(&[1], &[1]), None));
        let (chosen, note) = function_cpus(&[0, 1], 2, true);
        assert_eq!(chosen, cpus(&[0, 1], &[1]));
        assert!(note.unwrap().contains("no real-time function takes"));
        assert_eq!(
            function_cpus(&[0, 1], 2, false),
            (cpus(&[0, 1], &[0, 1]), None)
        );
        assert_eq!(function_cpus(&[0], 1, true), (cpus(&[0], &[0]), None));
        assert_eq!(
            function_cpus(&[0, 1, 2, 3], 2, true),
            (cpus(&[2, 3], &[2, 3]), None)
        );
        assert_eq!(
            function_cpus(&[0, 1, 2, 3], 4, true).0,
            cpus(&[0, 1, 2, 3], &[1, 2, 3])
        );
        let (chosen, note) = function_cpus(&[0, 1], 3, true);
        assert_eq!(chosen, cpus(&[0, 1], &[1]));
        assert!(note.unwrap().contains("only 2 CPUs"));
    }

    #[test]
    fn a_budget_spreads_all_cpus_but_one_over_every_cpu() {
        assert_eq!(real_time_share(1), 0.0);
        assert_eq!(real_time_share(2), 0.5);
        assert_eq!(real_time_share(4), 0.75);
        let (chosen, _) = function_cpus(&[0, 1], 2, true);
        assert!(chosen.real_time_confined());
        let everywhere = chosen.with_real_time_everywhere();
        assert_eq!(everywhere, cpus(&[0, 1], &[0, 1]));
        assert!(!everywhere.real_time_confined());
    }

    #[test]
    fn only_the_cheapest_class_runs_outside_real_time() {
        let real_time: Vec<bool> = (0..4).map(|c| runs_real_time(ClassId(c), 4)).collect();
        assert_eq!(real_time, [true, true, true, false]);
        assert!(!runs_real_time(ClassId(0), 1));
    }

    #[test]
    fn this_thread_has_cpus_and_schedstat() {
        assert!(!allowed_cpus().is_empty());
        assert!(runqueue_wait_us(std::process::id() as i32).is_some());
        assert_eq!(parse_schedstat_wait_ns("12 3400 5\n"), Some(3400));
        assert_eq!(parse_schedstat_wait_ns("12"), None);
        assert!(!threads_of(std::process::id() as i32).is_empty());
    }
}
