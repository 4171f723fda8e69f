//! The real-time budget group against the real kernel (a v1 `cpu` hierarchy with
//! `CONFIG_RT_GROUP_SCHED`): what machines leave behind when they leave in any order, when one
//! is killed, and when a test cleans up after one it killed. Skipped (with a note) unless root
//! with [`CPU_MOUNT`]`/cpu.rt_runtime_us`.
//!
//! Each test works under a top group of its own, `tariff-test-<pid>-<tag>`, which it gives a
//! budget of [`TOP_RUNTIME_US`], the least two machines need: the machines under it compete
//! for that, not for the host's, and a dispatcher starting on the host meanwhile (a benchmark)
//! still finds the rest. The tests run one at a time, so that they never hold more than that,
//! and a guard removes the whole subtree when a test ends, pass or fail.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tariff_machine_sched::cgroup::remove_listed_subtrees;
use tariff_machine_sched::cgroup::rt_budget::{
    RtBudget, BUDGET_PERIOD_US, CPU_RT_PERIOD, CPU_RT_RUNTIME,
};

/// The v1 `cpu` hierarchy on these hosts.
const CPU_MOUNT: &str = "/sys/fs/cgroup/cpu";
/// Each test's top group's runtime per [`BUDGET_PERIOD_US`] (a quarter of a CPU): room for
/// two machines of [`SMALL_SHARE`], not for two of [`LARGE_SHARE`]; a machine needs at least
/// `MIN_RUNTIME_US`, a tenth.
const TOP_RUNTIME_US: u64 = 25_000;
/// A machine's share where two must fit.
const SMALL_SHARE: f64 = 0.11;
/// A machine's share where two do not fit: the second gets what the first left, if enough.
const LARGE_SHARE: f64 = 0.15;
/// How long a test waits for the host's real-time bandwidth that groups just removed hold.
const RELEASE_WAIT: Duration = Duration::from_millis(500);
/// Pause between attempts meanwhile.
const RELEASE_POLL: Duration = Duration::from_millis(2);
/// One test at a time (see the module header).
static SERIAL: Mutex<()> = Mutex::new(());
/// Tells [`child_holds_a_budget_until_killed`] which group to make (`<base>`); unset, it
/// does nothing.
const CHILD_BASE: &str = "TARIFF_TEST_RT_BUDGET_BASE";
/// Where the child keeps its lock.
const CHILD_LOCKS: &str = "TARIFF_TEST_RT_BUDGET_LOCKS";
/// The child's share.
const CHILD_SHARE: &str = "TARIFF_TEST_RT_BUDGET_SHARE";
/// The child's line once its group exists, followed by its runtime.
const READY: &str = "budget ready";
/// Longest the child lives if nobody kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

/// A test's top group and lock directory, removed with everything under them when dropped.
struct Scratch {
    /// Held for the test's whole run, cleanup included (fields drop after `drop`).
    _serial: MutexGuard<'static, ()>,
    /// `<CPU_MOUNT>/tariff-test-<pid>-<tag>`.
    top: PathBuf,
    /// The machines' lock files.
    locks: tempfile::TempDir,
    /// A child standing in for a dispatcher, killed first.
    child: Option<Child>,
}

impl Scratch {
    /// A top group with [`TOP_RUNTIME_US`], or `None` (with a note) where this host cannot
    /// have one.
    fn new(tag: &str) -> Option<Scratch> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: not root");
            return None;
        }
        if !Path::new(CPU_MOUNT).join(CPU_RT_RUNTIME).exists() {
            eprintln!("skipping: no {CPU_MOUNT}/{CPU_RT_RUNTIME} (no v1 cpu hierarchy with real-time group budgets)");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let top = Path::new(CPU_MOUNT).join(format!("tariff-test-{}-{tag}", std::process::id()));
        fs::create_dir(&top).expect("creating the test's top group");
        let scratch = Scratch {
            _serial: serial,
            top,
            locks: tempfile::tempdir().unwrap(),
            child: None,
        };
        fs::write(
            scratch.top.join(CPU_RT_PERIOD),
            BUDGET_PERIOD_US.to_string(),
        )
        .unwrap();
        // The groups of the test before count against the host for an RCU grace period after
        // they are removed (see `RtBudget::create`): wait that out before giving up.
        let start = Instant::now();
        let written = loop {
            match fs::write(scratch.top.join(CPU_RT_RUNTIME), TOP_RUNTIME_US.to_string()) {
                Err(_) if start.elapsed() < RELEASE_WAIT => std::thread::sleep(RELEASE_POLL),
                written => break written,
            }
        };
        if let Err(e) = written {
            eprintln!(
                "skipping: the host has not {TOP_RUNTIME_US} µs of real-time runtime left ({e}); \
                 a running dispatcher's budget may hold it"
            );
            return None;
        }
        Some(scratch)
    }

    /// The base (relative to the mount) of machine `name` under `<top>/tariff`.
    fn base(&self, name: &str) -> String {
        format!(
            "{}/tariff/{name}",
            self.top.file_name().unwrap().to_str().unwrap()
        )
    }

    /// The group of machine `name`.
    fn group(&self, name: &str) -> PathBuf {
        self.top.join("tariff").join(name)
    }

    /// Makes machine `name`'s budget in this process.
    fn create(&self, name: &str, share: f64) -> Result<RtBudget, String> {
        RtBudget::create(
            Path::new(CPU_MOUNT),
            self.locks.path(),
            &self.base(name),
            share,
            1,
        )
        .map_err(|e| e.to_string())
    }

    /// Starts a process (this test binary, running only
    /// [`child_holds_a_budget_until_killed`]) that makes machine `name`'s budget and keeps
    /// it; the runtime it got.
    fn spawn_machine(&mut self, name: &str, share: f64) -> u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_holds_a_budget_until_killed",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD_BASE, self.base(name))
            .env(CHILD_LOCKS, self.locks.path())
            .env(CHILD_SHARE, share.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        self.child = Some(child);
        for line in stdout.lines() {
            let line = line.unwrap();
            // The harness may print the test's name on the same line first.
            if let Some((_, runtime)) = line.split_once(READY) {
                return runtime.trim().parse().unwrap();
            }
        }
        panic!("the child exited before its budget was ready");
    }

    /// Kills the child as `SIGKILL` kills a dispatcher: nothing of it runs again.
    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.kill_child();
        remove_tree(&self.top);
    }
}

/// Removes `dir` and the groups under it, deepest first, killing what is in them.
fn remove_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            remove_tree(&entry.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(dir) {
        if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > deadline {
            return;
        }
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
            // SAFETY: a plain syscall; the pids are in the test's own group.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Not a test on its own: the stand-in dispatcher of [`Scratch::spawn_machine`].
#[test]
fn child_holds_a_budget_until_killed() {
    let (Ok(base), Ok(locks)) = (std::env::var(CHILD_BASE), std::env::var(CHILD_LOCKS)) else {
        return;
    };
    let share: f64 = std::env::var(CHILD_SHARE).unwrap().parse().unwrap();
    let budget =
        RtBudget::create(Path::new(CPU_MOUNT), Path::new(&locks), &base, share, 1).unwrap();
    println!("{READY} {}", budget.runtime_us());
    std::thread::sleep(CHILD_LIFETIME);
    panic!("nobody killed the child");
}

#[test]
fn the_last_machine_to_leave_removes_the_intermediate_whoever_made_it() {
    let Some(scratch) = Scratch::new("order") else {
        return;
    };
    let first = scratch.create("m1", SMALL_SHARE).unwrap();
    let second = scratch.create("m2", SMALL_SHARE).unwrap();
    // `first` made `<top>/tariff`; it leaves first, as either may.
    first.remove().unwrap();
    assert!(scratch.top.join("tariff").exists(), "m2 is still in it");
    second.remove().unwrap();
    assert!(
        !scratch.top.join("tariff").exists(),
        "an empty intermediate was left behind, holding its budget"
    );
}

#[test]
fn a_killed_machines_empty_group_goes_at_the_next_start_a_live_ones_stays() {
    let Some(mut scratch) = Scratch::new("killed") else {
        return;
    };
    let full = scratch.spawn_machine("m1", LARGE_SHARE);
    // Alive and without a task (no function yet): its group must stay, and the next machine
    // gets only what is left, if that is enough for a budget at all.
    match scratch.create("m2", LARGE_SHARE) {
        Ok(beside) => {
            assert!(
                beside.runtime_us() < full,
                "{} vs {full}",
                beside.runtime_us()
            );
            beside.remove().unwrap();
        }
        Err(e) => assert!(e.contains("left for"), "{e}"),
    }
    assert!(
        scratch.group("m1").exists(),
        "a live machine's group was removed"
    );

    scratch.kill_child();
    assert!(scratch.group("m1").exists(), "nobody cleaned up after it");
    let next = scratch.create("m2", LARGE_SHARE).unwrap();
    assert!(
        !scratch.group("m1").exists(),
        "the killed machine's empty group stayed"
    );
    assert_eq!(
        next.runtime_us(),
        full,
        "the dead machine's budget is free again"
    );
    next.remove().unwrap();
    assert!(!scratch.top.join("tariff").exists());
}

#[test]
fn a_killed_machines_group_with_a_task_stays() {
    let Some(mut scratch) = Scratch::new("task") else {
        return;
    };
    scratch.spawn_machine("m1", LARGE_SHARE);
    scratch.kill_child();
    // A function process that outlived its dispatcher.
    let mut survivor = Command::new("sleep").arg("30").spawn().unwrap();
    fs::write(
        scratch.group("m1").join("cgroup.procs"),
        survivor.id().to_string(),
    )
    .unwrap();
    let next = scratch.create("m2", LARGE_SHARE);
    let _ = survivor.kill();
    let _ = survivor.wait();
    assert!(
        scratch.group("m1").exists(),
        "a group with a task was removed"
    );
    drop(next);
}

#[test]
fn cleaning_up_after_a_killed_machine_leaves_no_intermediate() {
    let Some(mut scratch) = Scratch::new("listing") else {
        return;
    };
    scratch.spawn_machine("m1", SMALL_SHARE);
    let other = scratch.create("m2", SMALL_SHARE).unwrap();
    scratch.kill_child();
    // What a test's cluster does when it ends: the live machine shuts down first, then the
    // killed one's recorded groups are removed for it.
    other.remove().unwrap();
    assert!(
        scratch.top.join("tariff").exists(),
        "the killed m1 is still in it"
    );
    let listing = scratch.locks.path().join("cgroups");
    fs::write(&listing, format!("{}\n", scratch.group("m1").display())).unwrap();
    remove_listed_subtrees(&listing);
    assert!(
        !scratch.top.join("tariff").exists(),
        "an empty intermediate was left behind, holding its budget"
    );
}
