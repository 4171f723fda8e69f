//! Swapping a stopped function out and back in, against the real kernel, with a real swap
//! file the test makes: the two page-out mechanisms docs/memory.md compares (freeze +
//! `process_madvise(MADV_PAGEOUT)`, and squeezing the group's v1 limit), and the cost of
//! resuming a function whose 64 MiB went to swap against a bare swap-in of 64 MiB measured in
//! the same run. Prints the figures; skipped, with the reason, without root or cgroup v1.

#[path = "../../tests/common/swap.rs"]
mod swap;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tariff_machine_sched::cgroup::{CgroupRoot, CgroupVersion, InstanceCgroup};
use tariff_machine_sched::page_out::{page_out, prefetch, PAGE_OUT_BATCH_BYTES};

/// The working set swapped out and back in.
const WORKING_SET: usize = 64 << 20;
/// Page size for touching.
const PAGE: usize = 4096;
/// Runs of each measurement.
const RUNS: usize = 5;
/// Where v1 mounts the memory hierarchy on this machine.
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// A function stand-in: on `alloc` it makes 64 MiB resident, on `touch` it writes every page
/// again and answers the µs that took (its resume cost), on end of input it exits.
const HOLDER: &str = r#"
import sys, time
buf = None
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "alloc":
        buf = bytearray(64 << 20)
        for i in range(0, len(buf), 4096): buf[i] = 1
        print("ready", flush=True)
    elif cmd == "touch":
        t = time.perf_counter_ns()
        for i in range(0, len(buf), 4096): buf[i] = 2
        print((time.perf_counter_ns() - t) // 1000, flush=True)
"#;

struct Holder<'a> {
    /// Its group, thawed before the holder is killed: a frozen task does not die until then.
    group: &'a InstanceCgroup,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl<'a> Holder<'a> {
    /// Starts the holder in `group` and has it allocate.
    fn start(group: &'a InstanceCgroup) -> Holder<'a> {
        let mut child = Command::new("python3")
            .args(["-c", HOLDER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        group
            .add_process(child.id() as i32)
            .expect("joining the group");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut holder = Holder {
            group,
            child,
            stdin,
            stdout,
        };
        assert_eq!(holder.ask("alloc"), "ready");
        holder
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Holder<'_> {
    fn drop(&mut self) {
        let _ = self.group.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Most time a page-out may take to leave the memory out of RAM.
const PAGE_OUT_DEADLINE: Duration = Duration::from_secs(5);
/// How often the page-out is repeated while written pages wait to be freed.
const PAGE_OUT_REPEAT: Duration = Duration::from_millis(5);

/// Pages the frozen holder out until its group's mapped anonymous memory is below an eighth
/// of the working set. Returns the time that took. (The pages are then unmapped and written,
/// but still in RAM as swap cache: see the squeeze after it.)
fn page_out_fully(holder: &Holder<'_>) -> Duration {
    let started = Instant::now();
    loop {
        page_out(holder.pid(), PAGE_OUT_BATCH_BYTES, || true).unwrap();
        let anon = holder.group.memory_stat().unwrap().anon;
        if anon < (WORKING_SET as u64) / 8 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PAGE_OUT_DEADLINE,
            "still {anon} bytes resident after {PAGE_OUT_DEADLINE:?}"
        );
        std::thread::sleep(PAGE_OUT_REPEAT);
    }
}

/// Median and maximum of `samples`, in ms.
fn summary(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "median {:.1} ms, max {:.1} ms ({} runs)",
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        samples.len()
    )
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Pages 64 MiB of this process's own memory out and times touching it back before anything
/// reclaimed it: the pages come back from the swap cache, not the disk.
fn swap_cache_hit() -> f64 {
    let mut backing = vec![1u8; WORKING_SET + PAGE];
    // madvise wants a page-aligned start.
    let offset = backing.as_ptr().align_offset(PAGE);
    let memory = &mut backing[offset..offset + WORKING_SET];
    for byte in memory.iter_mut().step_by(PAGE) {
        *byte = 3;
    }
    // SAFETY: the range is inside this Vec's own allocation, alive across the call, and page
    // aligned; MADV_PAGEOUT only moves pages, it never changes their contents.
    let done =
        unsafe { libc::madvise(memory.as_mut_ptr().cast(), WORKING_SET, libc::MADV_PAGEOUT) };
    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
    let started = Instant::now();
    for byte in memory.iter_mut().step_by(PAGE) {
        *byte = std::hint::black_box(*byte) + 1;
    }
    let took = millis(started.elapsed());
    assert!(memory.iter().step_by(PAGE).all(|&b| b == 4));
    took
}

#[test]
fn page_out_mechanisms_and_resume_cost_are_measured() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: cgroups and swap files need root");
        return;
    }
    let root = match CgroupRoot::detect(&format!("tariff-test-pageout-{}", std::process::id())) {
        Ok(root) if root.version() == CgroupVersion::V1 => root,
        Ok(_) => {
            eprintln!("skipped: the limit squeeze measured here is cgroup v1's");
            return;
        }
        Err(e) => {
            eprintln!("skipped: no cgroups: {e}");
            return;
        }
    };
    let _swap = match swap::SwapFile::create() {
        Ok(swap) => {
            eprintln!("swap file of {} MiB on", swap.bytes >> 20);
            swap
        }
        Err(reason) => {
            eprintln!("skipped: cannot make a swap file: {reason}");
            return;
        }
    };
    let group = root.create("holder").unwrap();
    let limit_file: PathBuf = root
        .base_dirs()
        .into_iter()
        .find(|d| d.starts_with(V1_MEMORY))
        .unwrap()
        .join("holder/memory.limit_in_bytes");
    let (mut madvise_out, mut then_squeeze, mut squeeze_out) = (Vec::new(), Vec::new(), Vec::new());
    let (mut resume, mut untouched, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cached, mut prefetched) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        // Resume cost without swap: the holder's own touching loop.
        let mut holder = Holder::start(&group);
        untouched.push(holder.ask("touch").parse::<f64>().unwrap() / 1e3);
        // Freeze + process_madvise(MADV_PAGEOUT), then thaw and touch: a resume.
        group.freeze().unwrap();
        madvise_out.push(millis(page_out_fully(&holder)));
        // The pages written are unmapped but stay in RAM as swap cache until reclaimed:
        // squeezing the group's limit frees them (clean pages, no I/O).
        let started = Instant::now();
        std::fs::write(&limit_file, (1u64 << 20).to_string()).expect("squeezing the limit");
        std::fs::write(&limit_file, "-1").unwrap();
        then_squeeze.push(millis(started.elapsed()));
        let swapped = group.memory_stat().unwrap().swapped;
        assert!(
            swapped >= (WORKING_SET as u64) / 2,
            "only {swapped} bytes reached swap"
        );
        group.thaw().unwrap();
        resume.push(holder.ask("touch").parse::<f64>().unwrap() / 1e3);
        drop(holder);
        // Squeezing the group's limit: the kernel reclaims to fit before the write returns.
        let holder = Holder::start(&group);
        group.freeze().unwrap();
        let started = Instant::now();
        let squeezed = std::fs::write(&limit_file, (1u64 << 20).to_string());
        squeeze_out.push(millis(started.elapsed()));
        std::fs::write(&limit_file, "-1").unwrap();
        group.thaw().unwrap();
        squeezed.expect("squeezing the limit");
        let swapped = group.memory_stat().unwrap().swapped;
        assert!(
            swapped >= (WORKING_SET as u64) / 2,
            "squeeze: only {swapped} bytes reached swap"
        );
        drop(holder);
        cached.push(swap_cache_hit());
        // A bare swap-in of the same memory: the same page-out, no freezer, then touch.
        let mut holder = Holder::start(&group);
        page_out_fully(&holder);
        group.reclaim().unwrap();
        bare.push(holder.ask("touch").parse::<f64>().unwrap() / 1e3);
        drop(holder);
        // A resume that prefetches (MADV_WILLNEED) before thawing.
        let mut holder = Holder::start(&group);
        group.freeze().unwrap();
        page_out_fully(&holder);
        group.reclaim().unwrap();
        let started = Instant::now();
        prefetch(holder.pid()).unwrap();
        group.thaw().unwrap();
        let touch = holder.ask("touch").parse::<f64>().unwrap() / 1e3;
        prefetched.push(millis(started.elapsed()).max(touch));
        drop(holder);
    }
    eprintln!(
        "page-out of 64 MiB, freeze + process_madvise: {}",
        summary(&mut madvise_out)
    );
    eprintln!(
        "then squeezing the limit to free the written pages: {}",
        summary(&mut then_squeeze)
    );
    eprintln!(
        "page-out of 64 MiB, squeezing memory.limit_in_bytes alone: {}",
        summary(&mut squeeze_out)
    );
    eprintln!(
        "resume of a swapped 64 MiB function (touch every page): {}",
        summary(&mut resume)
    );
    eprintln!("same touch, nothing swapped: {}", summary(&mut untouched));
    eprintln!(
        "bare swap-in of the same 64 MiB (no freezer): {}",
        summary(&mut bare)
    );
    eprintln!(
        "resume with MADV_WILLNEED prefetch before the thaw (prefetch to touched): {}",
        summary(&mut prefetched)
    );
    eprintln!(
        "64 MiB faulted back from the swap cache (paged out, not reclaimed): {}",
        summary(&mut cached)
    );
    let _ = group.remove();
    for dir in root.base_dirs() {
        let _ = std::fs::remove_dir(dir);
    }
}
