//! Instance cgroups against the real kernel: accounting, freezing, killing and removal of a
//! real process. Skipped (with a note) unless running as root on a machine with cgroups.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use tariff_machine_sched::cgroup::{CgroupRoot, CgroupVersion, InstanceCgroup};

/// Busy for a while (so CPU time accrues), then idle, so that freezing is observable.
const WORKLOAD: &str = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5";

/// Kills the child, removes the instance group and the base dirs, even when an assertion
/// fails half-way.
struct Cleanup {
    child: Option<Child>,
    group: Option<InstanceCgroup>,
    base_dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = group.thaw();
            if let Err(e) = group.remove() {
                eprintln!("cleanup: removing instance group: {e}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deepest first: `tariff-test-<pid>/m`, then `tariff-test-<pid>`.
        for dir in &self.base_dirs {
            let mut dir = dir.clone();
            for _ in 0..2 {
                if let Err(e) = fs::remove_dir(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        eprintln!("cleanup: rmdir {}: {e}", dir.display());
                    }
                }
                dir.pop();
            }
        }
    }
}

/// The one-letter state in `/proc/<pid>/stat` (after the parenthesised command name).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_for(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn instance_group_accounts_freezes_and_kills_a_real_process() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping cgroup_real: not root");
        return;
    }
    if !PathBuf::from("/sys/fs/cgroup").is_dir() {
        eprintln!("skipping cgroup_real: no /sys/fs/cgroup");
        return;
    }
    let base = format!("tariff-test-{}/m", std::process::id());
    let root = match CgroupRoot::detect(&base) {
        Ok(root) => root,
        Err(e) => {
            eprintln!("skipping cgroup_real: no usable cgroup layout: {e}");
            return;
        }
    };
    eprintln!("cgroup_real: using {:?}", root.version());
    let mut cleanup = Cleanup {
        child: None,
        group: None,
        base_dirs: root.base_dirs(),
    };

    // A leftover from an earlier run is cleaned.
    drop(root.create("stale").unwrap());
    assert_eq!(root.clean_stale().unwrap(), 1);

    // Before any instance exists: v1 refuses to shrink a parent below a child's CPUs.
    let confined = root.confine_cpus(&[0]).unwrap();

    let group = root.create("inst-1").unwrap();
    assert_eq!(group.name(), "inst-1");
    assert!(group.procs_files().iter().all(|f| f.exists()));
    // Join every hierarchy through `procs_files()` before exec, as the launcher does, so that
    // the exec'd workload's memory is charged to the group (v1 does not move old charges).
    let join: String = group
        .procs_files()
        .iter()
        .map(|f| format!("echo 0 > '{}' && ", f.display()))
        .collect();
    let script = format!("{join}exec /bin/sh -c '{WORKLOAD}'");
    let child = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let pid = child.id();
    cleanup.child = Some(child);
    cleanup.group = Some(group);
    let group = cleanup.group.as_ref().unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || group
            .processes()
            .unwrap()
            .contains(&(pid as i32))),
        "child never joined the group"
    );
    // add_process on a member is a no-op move, and must succeed.
    group.add_process(pid as i32).unwrap();

    if confined {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(str::trim);
        assert_eq!(allowed, Some("0"), "cpuset confinement not applied");
    }
    // The group must not be a `cpu` group: with RT group scheduling, SCHED_FIFO would be
    // refused (EPERM) in a child `cpu` group without an RT budget.
    let chrt = Command::new("chrt")
        .args(["-f", "-p", "10", &pid.to_string()])
        .status();
    match chrt {
        Ok(status) => assert!(status.success(), "SCHED_FIFO refused inside the group"),
        Err(e) => eprintln!("cgroup_real: no chrt ({e}); real-time check skipped"),
    }

    assert!(group.threads().unwrap().contains(&(pid as i32)));

    assert!(
        wait_for(Duration::from_secs(5), || group.cpu_usage_us().unwrap() > 0),
        "no CPU time accounted"
    );
    assert!(group.memory_current().unwrap() > 0 || group.memory_peak().unwrap() > 0);
    assert!(group.memory_peak().unwrap() > 0);
    if group.reset_memory_peak().unwrap() {
        // After a reset the peak restarts from the current usage, never above the old peak.
        assert!(group.memory_peak().unwrap() > 0);
    }

    group.freeze().unwrap();
    // Let accounting of the last running slice settle before taking the reference.
    thread::sleep(Duration::from_millis(20));
    let usage_frozen = group.cpu_usage_us().unwrap();
    // Frozen tasks show as `D` (v1 legacy freezer) or `S` stopped in the refrigerator; either
    // way they burn no CPU: a running spinner would use ~100 ms of it in this window.
    thread::sleep(Duration::from_millis(100));
    let used = group.cpu_usage_us().unwrap() - usage_frozen;
    assert!(used < 1_000, "frozen group used {used} µs of CPU in 100 ms");
    let state = proc_state(pid);
    assert!(matches!(state, Some('D' | 'S' | 'T')), "state {state:?}");
    group.thaw().unwrap();

    group.kill_all().unwrap();
    let mut child = cleanup.child.take().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed shell exited with {status}");
    assert!(group.processes().unwrap().is_empty());

    let dirs: Vec<PathBuf> = group
        .procs_files()
        .iter()
        .map(|f| f.parent().unwrap().to_owned())
        .collect();
    cleanup.group.take().unwrap().remove().unwrap();
    assert!(dirs.iter().all(|d| !d.exists()));
    if root.version() == CgroupVersion::V1 {
        assert!(dirs.len() >= 2, "v1 spans several hierarchies: {dirs:?}");
    }
}
