//! Resident memory of processes, read from `/proc`.
//!
//! Functions pay for memory actually used, and the idle list is defined by free memory, so
//! the dispatcher measures resident memory rather than trusting declared sizes. Instance
//! cgroups give the same figure per instance where they exist; this works everywhere.

use std::fs;

/// Bytes in a page, for `/proc/PID/statm` (in pages).
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 only for unknown names.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Resident bytes of one process, or 0 if it has already gone.
pub fn resident_bytes(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page_size())
        .unwrap_or(0)
}

/// Resident bytes of all these processes together.
pub fn used_bytes(pids: &[i32]) -> u64 {
    pids.iter().map(|&pid| resident_bytes(pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_resident_memory_and_a_dead_pid_has_none() {
        assert!(resident_bytes(std::process::id() as i32) > 0);
        assert_eq!(resident_bytes(i32::MAX), 0);
    }
}
