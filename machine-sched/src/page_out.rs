//! Paging a stopped process's memory out to swap with `process_madvise(MADV_PAGEOUT)`, in
//! bounded batches, and reading how much swap the machine has.
//!
//! Why this mechanism (docs/memory.md has the measurements): it reclaims exactly the process
//! chosen, works the same on cgroup v1 and v2, and is bounded by the size of each call, so the
//! caller can stop between batches. Squeezing the group's limit instead makes the kernel's
//! reclaim pick pages class-blind across the subtree's LRU walk and blocks the writer until the
//! whole squeeze is done.

use std::fs;
use std::io;

/// `MADV_PAGEOUT` (Linux 5.4): reclaim these pages now, to swap for anonymous memory.
const MADV_PAGEOUT: libc::c_int = 21;
/// `MADV_WILLNEED`: start reading these pages back now.
const MADV_WILLNEED: libc::c_int = 3;
/// Most bytes one `process_madvise` call is asked to page out: at the measured ~1.6 GB/s
/// one batch takes about 10 ms, so a caller between batches is never held up longer.
pub const PAGE_OUT_BATCH_BYTES: usize = 16 << 20;
/// Most ranges per call (the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;
/// Where the kernel reports memory and swap, in kB.
const MEMINFO: &str = "/proc/meminfo";
/// Bytes per kB in `/proc/meminfo`.
const KB: u64 = 1024;

/// Why a page-out failed.
#[derive(Debug, thiserror::Error)]
pub enum PageOutError {
    /// The process's memory map could not be read (it may have ended).
    #[error("reading the memory map of pid {pid}: {source}")]
    Maps {
        /// The process.
        pid: i32,
        /// The cause.
        source: io::Error,
    },
    /// `pidfd_open` failed (the process ended, or the kernel is older than 5.3).
    #[error("pidfd_open({pid}): {source}")]
    Pidfd {
        /// The process.
        pid: i32,
        /// The cause.
        source: io::Error,
    },
    /// `process_madvise` failed (kernel older than 5.10, or not permitted).
    #[error("process_madvise(MADV_PAGEOUT) on pid {pid}: {source}")]
    Madvise {
        /// The process.
        pid: i32,
        /// The cause.
        source: io::Error,
    },
}

/// The private, writable mappings of `pid` (heap, stacks, anonymous and copied-on-write
/// pages): what swapping can move out. Read-only and shared mappings are left alone.
fn swappable_ranges(pid: i32) -> Result<Vec<(usize, usize)>, PageOutError> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|source| PageOutError::Maps { pid, source })?;
    Ok(maps.lines().filter_map(parse_swappable).collect())
}

/// One `/proc/PID/maps` line as `(start, length)` if it is private and writable and not one of
/// the kernel's special mappings.
fn parse_swappable(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3).unwrap_or("");
    if !perms.starts_with("rw") || !perms.ends_with('p') || path.starts_with("[v") {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then_some((start, end - start))
}

/// Splits `ranges` into calls of at most `batch` bytes (and [`MAX_IOV`] ranges) each.
fn batches(ranges: &[(usize, usize)], batch: usize) -> Vec<Vec<(usize, usize)>> {
    let mut calls = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &(mut start, mut len) in ranges {
        while len > 0 {
            let take = len.min(batch - bytes);
            current.push((start, take));
            bytes += take;
            start += take;
            len -= take;
            if bytes == batch || current.len() == MAX_IOV {
                calls.push(std::mem::take(&mut current));
                bytes = 0;
            }
        }
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

/// Pages out the swappable memory of `pid` in calls of at most `batch` bytes, calling
/// `between()` after each: it returns `false` to stop early (the caller has something more
/// urgent to do). Returns the bytes of address space advised (not all of it was resident).
/// The process should be frozen first, or it faults its pages straight back in.
pub fn page_out(
    pid: i32,
    batch: usize,
    between: impl FnMut() -> bool,
) -> Result<u64, PageOutError> {
    advise(pid, MADV_PAGEOUT, batch, between)
}

/// Asks the kernel to read the swapped memory of `pid` back now (`MADV_WILLNEED`), before it
/// runs: a resume does this just before the thaw. Measured: a swapped 64 MiB working set was
/// back and touched in 125 ms with it against 311 ms faulting page by page (docs/memory.md);
/// the reads go out together instead of one readahead window per fault.
pub fn prefetch(pid: i32) -> Result<u64, PageOutError> {
    advise(pid, MADV_WILLNEED, usize::MAX, || true)
}

/// `process_madvise(advice)` over the swappable memory of `pid`, in calls of at most `batch`
/// bytes, calling `between()` after each (`false` stops).
fn advise(
    pid: i32,
    advice: libc::c_int,
    batch: usize,
    mut between: impl FnMut() -> bool,
) -> Result<u64, PageOutError> {
    let ranges = swappable_ranges(pid)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(PageOutError::Pidfd {
            pid,
            source: io::Error::last_os_error(),
        });
    }
    let fd = fd as libc::c_int;
    let mut advised = 0u64;
    let mut result = Ok(());
    for call in batches(&ranges, batch.max(1)) {
        let iov: Vec<libc::iovec> = call
            .iter()
            .map(|&(start, len)| libc::iovec {
                iov_base: start as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: `iov` lives across the call and describes ranges in the *target's* address
        // space, which the kernel checks; nothing in this process is read or written.
        let done = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                fd,
                iov.as_ptr(),
                iov.len(),
                advice,
                0,
            )
        };
        if done < 0 {
            let source = io::Error::last_os_error();
            // A range unmapped since the map was read is not worth failing for.
            if source.raw_os_error() != Some(libc::ENOMEM) {
                result = Err(PageOutError::Madvise { pid, source });
                break;
            }
        } else {
            advised += done as u64;
        }
        if !between() {
            break;
        }
    }
    // SAFETY: `fd` is the descriptor pidfd_open returned, closed once.
    unsafe { libc::close(fd) };
    result.map(|()| advised)
}

/// The machine's memory and swap, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineMemory {
    /// Memory the kernel could give out now without swapping (`MemAvailable`), in bytes.
    pub available_bytes: u64,
    /// Swap configured (`SwapTotal`), in bytes.
    pub swap_total_bytes: u64,
    /// Swap unused (`SwapFree`), in bytes.
    pub swap_free_bytes: u64,
}

impl MachineMemory {
    /// Reads `/proc/meminfo`; a missing field reads as 0.
    pub fn read() -> io::Result<MachineMemory> {
        Ok(Self::parse(&fs::read_to_string(MEMINFO)?))
    }

    /// Parses the text of `/proc/meminfo`.
    pub fn parse(text: &str) -> MachineMemory {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kb| kb * KB)
        };
        MachineMemory {
            available_bytes: field("MemAvailable"),
            swap_total_bytes: field("SwapTotal"),
            swap_free_bytes: field("SwapFree"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_writable_ordinary_mappings_are_swappable() {
        let maps = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 r-xp 00000000 fd:01 1234                       /usr/lib/libc.so.6
7f0000200000-7f0000300000 rw-s 00000000 00:05 99                         /dev/shm/x
7ffd00000000-7ffd00002000 r--p 00000000 00:00 0                          [vvar]
7ffd00002000-7ffd00004000 rw-p 00000000 00:00 0                          [vdso]";
        let ranges: Vec<_> = maps.lines().filter_map(parse_swappable).collect();
        assert_eq!(
            ranges,
            vec![(0x55d0_c000_0000, 0x21000), (0x7f00_0000_0000, 0x10_0000)]
        );
    }

    #[test]
    fn batches_split_ranges_at_the_batch_size() {
        let calls = batches(&[(0, 10), (100, 3)], 4);
        assert_eq!(
            calls,
            vec![
                vec![(0, 4)],
                vec![(4, 4)],
                vec![(8, 2), (100, 2)],
                vec![(102, 1)]
            ]
        );
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let m = MachineMemory::parse(
            "MemTotal: 100 kB\nMemAvailable: 50 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
        );
        assert_eq!(m.available_bytes, 50 * 1024);
        assert_eq!(m.swap_total_bytes, 0);
    }

    /// A child that touches 8 MiB and waits is paged out: its resident set drops.
    #[test]
    fn a_real_process_is_paged_out_when_swap_exists() {
        let memory = MachineMemory::read().unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "x=$(head -c 8388608 /dev/zero | tr '\\0' a); sleep 5; echo ${#x}",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let pid = child.id() as i32;
        let before = crate::memory::resident_bytes(pid);
        let advised = page_out(pid, PAGE_OUT_BATCH_BYTES, || true).unwrap();
        let after = crate::memory::resident_bytes(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(advised > 0);
        if memory.swap_free_bytes == 0 {
            eprintln!("no swap on this machine: page-out ran but could not move anonymous memory");
            return;
        }
        assert!(after < before, "resident {before} -> {after}");
    }
}
