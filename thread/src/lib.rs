//! A thread's kernel scheduling (policy with its reset-on-fork flag, real-time priority, nice
//! value, CPUs): read it, and give it to another thread or back to the same one.
//!
//! Why a crate of its own: two services need the same snapshot. The machine scheduler
//! (`tariff-machine-sched`) gives a blocking-pool thread its scheduling back after a launch
//! changed it; the shard (`tariff-scheduler`) gives its ledger thread the scheduling of the
//! thread that opened the ledger. The two are siblings on one layer and must not depend on
//! each other, and the crates both already use (`tariff-types`, `tariff-policy`) are pure and
//! may not call the kernel (`tests/crate_boundaries.rs`). So the snapshot lives here, on the
//! lowest layer, with `libc` as its only dependency, and the machine scheduler's `rt` module
//! builds its priorities on the same calls.

use std::io;

/// Sets thread `tid`'s (0: the calling thread's) scheduling policy and real-time priority.
/// `policy` may carry `SCHED_RESET_ON_FORK`.
pub fn set_scheduler(tid: i32, policy: libc::c_int, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call; the kernel only
    // reads it. A stale tid makes the call fail with ESRCH, which we report.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the calling thread's nice value. Best effort: an unprivileged process may not lower
/// it, and then keeps its own.
pub fn set_nice(nice: i32) {
    let _ = set_thread_nice(0, nice);
}

/// Sets thread `tid`'s (0: the calling thread's) nice value: Linux applies `PRIO_PROCESS`
/// with a thread id to that one thread.
pub fn set_thread_nice(tid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: a plain syscall without pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins thread or process `tid` to `cpus`.
pub fn set_affinity(tid: i32, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in allowed_cpus; CPU_SET only touches bits inside the set for cpu numbers
    // below CPU_SETSIZE, which the filter guarantees.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A thread's scheduling (policy with its reset-on-fork flag, real-time priority, nice value
/// and CPUs), to give to a thread that should run as this one does, or to put back after work
/// that had to change it.
///
/// Why: a process that runs functions (`tariff local`, the load harness) raises its runtime
/// threads above every function with reset-on-fork. Two kinds of thread would otherwise end
/// up as normal tasks, behind the cheapest class's functions, without anyone having decided
/// so:
/// - a thread it starts (the shard's ledger thread, the harness's generator) begins as a
///   normal task at nice 0, since reset-on-fork applies to new threads too;
/// - a runtime blocking-pool thread that a launch moved out of real time and onto the
///   function CPUs, if it went back to the pool that way, takes the next user (a shard's
///   ledger call, the harness's send schedule) with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadScheduling {
    /// `sched_getscheduler`'s answer, with `SCHED_RESET_ON_FORK` if set.
    policy: libc::c_int,
    /// The real-time priority (0 for normal policies).
    priority: i32,
    /// The nice value.
    nice: i32,
    /// The CPUs the thread may run on.
    cpus: Vec<usize>,
}

impl ThreadScheduling {
    /// The calling thread's scheduling.
    pub fn current() -> ThreadScheduling {
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: queries about the calling thread; `param` is a valid out-pointer.
        let (policy, nice) = unsafe {
            let policy = libc::sched_getscheduler(0);
            libc::sched_getparam(0, &mut param);
            (policy, libc::getpriority(libc::PRIO_PROCESS, 0))
        };
        ThreadScheduling {
            policy: policy.max(libc::SCHED_OTHER),
            priority: param.sched_priority,
            nice,
            cpus: allowed_cpus(),
        }
    }

    /// Gives the calling thread this scheduling (best effort: what the thread may not do, it
    /// keeps; a refused real-time policy leaves it a normal task).
    pub fn apply(&self) {
        if !self.cpus.is_empty() {
            let _ = set_affinity(0, &self.cpus);
        }
        let _ = set_scheduler(0, self.policy, self.priority);
        set_nice(self.nice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_its_scheduling_back() {
        std::thread::spawn(|| {
            let before = ThreadScheduling::current();
            set_nice(5);
            let _ = set_affinity(0, &before.cpus[..1]);
            assert_ne!(ThreadScheduling::current(), before);
            before.apply();
            assert_eq!(ThreadScheduling::current(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_new_thread_takes_the_scheduling_of_the_thread_that_starts_it() {
        std::thread::spawn(|| {
            set_nice(3);
            let opener = ThreadScheduling::current();
            // What the ledger and the harness's generator do: read on the starting thread,
            // apply on the new one.
            let started = std::thread::spawn(move || {
                let _ = set_affinity(0, &allowed_cpus()[..1]);
                opener.apply();
                ThreadScheduling::current()
            })
            .join()
            .unwrap();
            assert_eq!(started, ThreadScheduling::current());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn this_process_has_cpus() {
        assert!(!allowed_cpus().is_empty());
    }
}
