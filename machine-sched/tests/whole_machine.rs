//! The whole machine at work, against the real kernel: in real-time mode the paying classes
//! run under `SCHED_FIFO` on the real-time CPUs, the cheapest class under `SCHED_BATCH` on every
//! function CPU, and the cheapest class still runs first come, first served; under a real-time
//! group budget the paying classes run on every CPU inside the budget group. Skipped (with a
//! note) where `SCHED_FIFO` is refused, the host has one CPU, or (for the budget) the kernel
//! has no real-time group budgets.

use std::sync::Arc;
use std::time::Duration;

use tariff_machine_sched::cgroup::rt_budget::RtBudget;
use tariff_machine_sched::machine::{Job, MachineOptions, MachineScheduler};
use tariff_machine_sched::rt::{self, FunctionCpus, SchedMode};
use tariff_types::function::Runtime;
use tariff_types::{ClassId, FunctionSpec};

/// Classes of the test cluster: `ClassId(0)` is the dearest, `ClassId(3)` the cheapest.
const CLASSES: usize = 4;
/// Longest any test here may take; a hang fails instead of blocking the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each cheapest-class job of the order test sleeps.
const SLEEP_MS: u64 = 200;
/// Linux's `SCHED_BATCH` and `SCHED_FIFO` as `/proc/PID/stat` shows them (field 41).
const POLICY_FIFO: &str = "1";
const POLICY_BATCH: &str = "3";
/// Reports the policy and the allowed CPUs of a process the function forks after its raise
/// (the sleep leaves the dispatcher time to raise it after `exec`, as it does every function).
const REPORT_SCHEDULING: &str = "sleep 0.3; cut -d' ' -f41 /proc/self/stat; \
                                 grep Cpus_allowed_list /proc/self/status | cut -f2; \
                                 grep -E '^[0-9]+:cpu:' /proc/self/cgroup | cut -d: -f3";

/// A real-time machine with every allowed CPU for functions, or `None` (with a note) where
/// this host cannot show the split.
fn machine(work: &std::path::Path) -> Option<(Arc<MachineScheduler>, FunctionCpus)> {
    let mode = rt::probe();
    let allowed = rt::allowed_cpus();
    if mode != SchedMode::RealTime || allowed.len() < 2 {
        eprintln!(
            "real-time mode unavailable or one CPU ({mode:?}, {allowed:?}): nothing to check"
        );
        return None;
    }
    let (cpus, _) = rt::function_cpus(&allowed, allowed.len(), true);
    let scheduler = MachineScheduler::new(MachineOptions {
        cores: cpus.functions.len(),
        mode,
        cpus: cpus.clone(),
        cgroups: None,
        rt_budget: None,
        user: None,
        work_root: work.to_owned(),
    });
    Some((scheduler, cpus))
}

/// A real-time budget group made for one test and removed when dropped, also when the test
/// fails (the machine's shutdown removes it first when it can).
struct BudgetGroup(RtBudget);

impl Drop for BudgetGroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.procs_file()) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: a plain syscall; the pids are the test's own function processes.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for _ in 0..100 {
            if self.0.remove().is_ok() || !self.0.dir().exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn shell_job(id: u64, class: u8, script: &str) -> Job {
    Job {
        id,
        class: ClassId(class),
        classes: CLASSES,
        function: FunctionSpec {
            name: "sh".into(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            version: 0,
            runtime: Runtime::Exec,
            owner: "test".into(),
            ..Default::default()
        },
        tenant: "test".into(),
        env: Vec::new(),
        payload: Vec::new(),
        timeout: TEST_TIMEOUT,
        max_output: 4096,
        claim: None,
    }
}

/// "0-1" or "1,3" as the kernel lists CPUs, expanded.
fn cpu_list(text: &str) -> Vec<usize> {
    text.trim()
        .split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

async fn scheduling_of(machine: &Arc<MachineScheduler>, job: Job) -> (String, Vec<usize>) {
    let (policy, cpus, _) = scheduling_and_group_of(machine, job).await;
    (policy, cpus)
}

/// A function's policy, CPUs and `cpu` cgroup, as it reports them.
async fn scheduling_and_group_of(
    machine: &Arc<MachineScheduler>,
    job: Job,
) -> (String, Vec<usize>, String) {
    let report = machine.run(job).await.expect("the shell function runs");
    let output = String::from_utf8(report.output).unwrap();
    let mut lines = output.lines();
    let policy = lines.next().unwrap_or_default().to_owned();
    let cpus = cpu_list(lines.next().unwrap_or_default());
    let group = lines.next().unwrap_or_default().to_owned();
    (policy, cpus, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_budget_paying_classes_run_real_time_on_every_cpu_inside_it() {
    let work = tempfile::tempdir().unwrap();
    let mode = rt::probe();
    let allowed = rt::allowed_cpus();
    if mode != SchedMode::RealTime || allowed.len() < 2 {
        eprintln!(
            "real-time mode unavailable or one CPU ({mode:?}, {allowed:?}): nothing to check"
        );
        return;
    }
    let base = format!("tariff-test/budget-{}", std::process::id());
    let budget = match RtBudget::detect(&base, rt::real_time_share(allowed.len()), allowed.len()) {
        Ok(budget) => BudgetGroup(budget),
        Err(e) => {
            eprintln!("no real-time group budget here ({e}): nothing to check");
            return;
        }
    };
    let (cpus, _) = rt::function_cpus(&allowed, allowed.len(), true);
    let cpus = cpus.with_real_time_everywhere();
    let machine = MachineScheduler::new(MachineOptions {
        cores: cpus.functions.len(),
        mode,
        cpus: cpus.clone(),
        cgroups: None,
        rt_budget: Some(budget.0.clone()),
        user: None,
        work_root: work.path().to_owned(),
    });
    let check = async {
        let critical = scheduling_and_group_of(&machine, shell_job(1, 0, REPORT_SCHEDULING)).await;
        let batch = scheduling_and_group_of(&machine, shell_job(2, 3, REPORT_SCHEDULING)).await;
        (critical, batch)
    };
    let (critical, batch) = tokio::time::timeout(TEST_TIMEOUT, check)
        .await
        .expect("bounded");
    machine.shutdown().await;
    let group = format!("/{base}");
    assert_eq!(
        critical,
        (POLICY_FIFO.to_owned(), allowed.clone(), group.clone())
    );
    assert_eq!(batch, (POLICY_BATCH.to_owned(), allowed, group));
    // Dropping `budget` removes what shutdown may have left.
    drop(budget);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_classes_run_real_time_the_cheapest_everywhere_as_batch() {
    let work = tempfile::tempdir().unwrap();
    let Some((machine, cpus)) = machine(work.path()) else {
        return;
    };
    assert!(
        cpus.real_time.len() < cpus.functions.len(),
        "real-time functions never get every CPU: {cpus:?}"
    );
    let check = async {
        let critical = scheduling_of(&machine, shell_job(1, 0, REPORT_SCHEDULING)).await;
        let batch = scheduling_of(&machine, shell_job(2, 3, REPORT_SCHEDULING)).await;
        (critical, batch)
    };
    let (critical, batch) = tokio::time::timeout(TEST_TIMEOUT, check)
        .await
        .expect("bounded");
    machine.shutdown().await;
    assert_eq!(critical, (POLICY_FIFO.to_owned(), cpus.real_time.clone()));
    assert_eq!(batch, (POLICY_BATCH.to_owned(), cpus.functions.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cheapest_class_runs_first_come_first_served() {
    let work = tempfile::tempdir().unwrap();
    let Some((machine, cpus)) = machine(work.path()) else {
        return;
    };
    // One more job than function CPUs: the last must wait for the first to end.
    let jobs = cpus.functions.len() + 1;
    let script = format!("sleep {}", SLEEP_MS as f64 / 1000.0);
    let mut runs = Vec::new();
    for id in 0..jobs {
        let ticket = machine.admit(ClassId(3));
        let machine = Arc::clone(&machine);
        let job = shell_job(id as u64, 3, &script);
        runs.push(tokio::spawn(async move {
            machine.run_admitted(job, ticket).await
        }));
    }
    let all = async {
        let mut reports = Vec::new();
        for run in runs {
            reports.push(run.await.unwrap().expect("sleep runs"));
        }
        reports
    };
    let reports = tokio::time::timeout(TEST_TIMEOUT, all)
        .await
        .expect("bounded");
    machine.shutdown().await;
    let starts: Vec<u64> = reports.iter().map(|r| r.started_at_us).collect();
    let ends: Vec<u64> = reports.iter().map(|r| r.finished_at_us).collect();
    let last = jobs - 1;
    // The last job started only when the first ended (and not before any other ended).
    assert!(
        starts[last] + 1_000 >= ends[0],
        "job {last} started at {} before job 0 ended at {}: starts {starts:?}, ends {ends:?}",
        starts[last],
        ends[0]
    );
    assert!(
        starts[..last].iter().all(|&s| s < ends[0]),
        "the first {last} ran at once: starts {starts:?}, ends {ends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_starts_at_nice_0_after_a_launch_at_nice_minus_20() {
    let work = tempfile::tempdir().unwrap();
    let allowed = rt::allowed_cpus();
    // User-space mode launches as a normal task at the launch nice value, which the process
    // keeps until it is confined.
    let (cpus, _) = rt::function_cpus(&allowed, allowed.len(), false);
    let machine = MachineScheduler::new(MachineOptions {
        cores: cpus.functions.len(),
        mode: SchedMode::UserSpace {
            reason: "this test".into(),
        },
        cpus,
        cgroups: None,
        rt_budget: None,
        user: None,
        work_root: work.path().to_owned(),
    });
    // Field 19 of /proc/self/stat, read by a process the function starts after its confining.
    let job = shell_job(1, 0, "sleep 0.3; cut -d' ' -f19 /proc/self/stat");
    let report = tokio::time::timeout(TEST_TIMEOUT, machine.run(job))
        .await
        .expect("bounded")
        .expect("the shell function runs");
    machine.shutdown().await;
    assert_eq!(String::from_utf8(report.output).unwrap().trim(), "0");
}
