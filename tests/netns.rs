//! Machines in network namespaces: real `tariff shard` and `tariff dispatcher` processes, each
//! in a network namespace of its own with its own address, joined by veth pairs to a bridge
//! the test talks through (`common::netns::Lab`). A cable is pulled (the veth's bridge end goes
//! down) and plugged back in; nobody is told. The tests check that every invocation is
//! answered exactly once and soon, that the machine or shard comes back and takes work again,
//! and print how long each side took to notice.
//!
//! They need root and `ip netns`; without them they print why and pass without running.

mod common;

use std::time::{Duration, Instant};

use common::netns::Lab;
use common::{
    invoke, request, runtime, wait_for_log, wait_running, TestCluster, DETECTION_SLACK,
    HEARTBEAT_TIMEOUT,
};
use tariff_cluster::client::Client;
use tariff_types::wire::{InvocationOutcome, InvokeError};

/// How long the sleeping invocations run: long enough to be running when the cable is
/// pulled and still running when the loss is noticed.
const SLEEP_MS: &str = "3000";
/// Longest a test waits for any one answer.
const ANSWER_BOUND: Duration = Duration::from_secs(20);
/// Longest a machine may take to register again once its cable is back: the dispatcher's
/// reconnect backoff (at most 5 s) plus a connection attempt.
const REJOIN_BOUND: Duration = Duration::from_secs(20);
/// What a dispatcher logs when it stops the work of a shard session it lost.
const STOPPED_LOG: &str = "stopping invocations of a lost shard session";

/// A lab, or `None` (with the reason printed) where network namespaces cannot be made.
fn lab() -> Option<Lab> {
    if let Some(reason) = Lab::unavailable() {
        eprintln!("skipping: {reason}");
        return None;
    }
    Some(Lab::new())
}

/// Sends `function` with `payload` through `client` in its own task; the answer and when it
/// came.
fn spawn_call(
    client: &Client,
    function: &'static str,
    payload: &'static str,
) -> tokio::task::JoinHandle<(
    &'static str,
    Result<InvocationOutcome, InvokeError>,
    Instant,
)> {
    let client = client.clone();
    tokio::spawn(async move {
        let answer = invoke(&client, request(function, "standard", payload)).await;
        (function, answer, Instant::now())
    })
}

/// Waits (bounded) until shard `i` lists machine `name`; when it did.
async fn wait_registered(cluster: &TestCluster, i: usize, name: &str) -> Instant {
    let started = Instant::now();
    loop {
        let listed = tokio::time::timeout(Duration::from_secs(2), cluster.machines(i)).await;
        if listed.is_ok_and(|machines| machines.iter().any(|m| m == name)) {
            return Instant::now();
        }
        assert!(
            started.elapsed() < REJOIN_BOUND,
            "{name} did not register with shard {i} again within {REJOIN_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends rounds of eight concurrent half-second sleeps through `client` until one runs on
/// `machine` (at most `rounds` rounds): with four slots per machine, one machine alone cannot
/// take them all at once.
async fn takes_work(client: &Client, machine: &str, rounds: usize) -> bool {
    for _ in 0..rounds {
        let calls: Vec<_> = (0..8).map(|_| spawn_call(client, "sleep", "500")).collect();
        let mut ran_there = false;
        for call in calls {
            let (_, answer, _) = tokio::time::timeout(ANSWER_BOUND, call)
                .await
                .expect("answered")
                .unwrap();
            let outcome = answer.expect("a healthy cluster runs it");
            ran_there |= outcome.machine == machine;
        }
        if ran_there {
            return true;
        }
    }
    false
}

#[test]
fn a_dispatcher_cut_off_is_answered_for_within_the_bound_and_takes_work_again_when_plugged_in() {
    let Some(mut lab) = lab() else { return };
    runtime().block_on(async {
        let shard = lab.host("s0");
        let (m1, m2) = (lab.host("m1"), lab.host("m2"));
        let mut cluster = TestCluster::new();
        cluster.start_shard_on(&shard, &[], "warn");
        cluster.start_dispatcher_on(&m1, "m1", 1, &["--slots", "4"]);
        cluster.start_dispatcher_on(&m2, "m2", 1, &["--slots", "4"]);
        cluster.wait_for_machines(2).await;
        cluster.deploy_safe_and_unsafe("sleep", 2).await;
        cluster.deploy(common::example_spec("sleep")).await;
        let client = cluster.client(0).await;
        let pattern = ["safe", "safe", "unsafe", "unsafe"];
        let calls: Vec<_> = pattern
            .iter()
            .cycle()
            .take(8)
            .map(|&function| spawn_call(&client, function, SLEEP_MS))
            .collect();
        wait_running(&cluster, "m1", 4).await;
        wait_running(&cluster, "m2", 4).await;

        let cut = Instant::now();
        lab.cut(&m1);
        // Watched from the cut on, so the time is when it happened, not when it was looked at.
        let stopped = {
            let log = cluster.dispatcher_log("m1");
            tokio::spawn(async move { wait_for_log(&log, STOPPED_LOG, 1, ANSWER_BOUND).await })
        };
        let (mut lost, mut retried, mut finished) = (Vec::new(), 0, 0);
        for call in calls {
            let (function, answer, at) = tokio::time::timeout(ANSWER_BOUND, call)
                .await
                .expect("every invocation is answered")
                .unwrap();
            match (function, answer) {
                (_, Ok(outcome)) if outcome.attempts == 1 => {
                    assert_eq!(outcome.machine, "m2", "m1 was cut off mid-run");
                    finished += 1;
                }
                ("safe", Ok(outcome)) => {
                    assert_eq!(outcome.machine, "m2", "placed again on the connected one");
                    assert_eq!(outcome.attempts, 2);
                    retried += 1;
                }
                ("unsafe", Err(InvokeError::MachineLost(machine))) => {
                    assert_eq!(machine, "m1");
                    lost.push(at - cut);
                }
                (function, other) => panic!("{function}: {other:?}"),
            }
        }
        assert_eq!(finished, 4, "m2's four ran undisturbed");
        assert_eq!(retried + lost.len(), 4, "each of m1's four answered once");
        assert!(
            retried > 0 && !lost.is_empty(),
            "m1 ran both kinds: {retried} placed again, {} lost",
            lost.len()
        );
        let detected = *lost.iter().min().unwrap();
        eprintln!(
            "cut-off dispatcher: `machine lost` answered {detected:?} after the cable was \
             pulled ({} lost, {retried} placed again on m2)",
            lost.len()
        );
        assert!(
            detected <= HEARTBEAT_TIMEOUT + DETECTION_SLACK,
            "took {detected:?}"
        );
        // The cut-off machine, for its part, stopped what the shard it lost had placed.
        let stopped = stopped.await.expect("m1 stopped its work") - cut;
        eprintln!("cut-off dispatcher: stopped its own work {stopped:?} after the cut");
        assert!(
            stopped <= HEARTBEAT_TIMEOUT + DETECTION_SLACK,
            "took {stopped:?}"
        );

        let plugged = Instant::now();
        lab.restore(&m1);
        let back = wait_registered(&cluster, 0, "m1").await;
        eprintln!(
            "cut-off dispatcher: registered again {:?} after the cable was back ({:?} after the cut)",
            back - plugged,
            back - cut
        );
        assert!(
            takes_work(&client, "m1", 5).await,
            "m1 never took work again"
        );
    });
}

#[test]
fn a_partitioned_shard_is_given_up_within_the_bound_others_serve_on_and_it_serves_again() {
    let Some(mut lab) = lab() else { return };
    runtime().block_on(async {
        let (s0, s1, m1) = (lab.host("s0"), lab.host("s1"), lab.host("m1"));
        let mut cluster = TestCluster::new();
        cluster.start_shard_on(&s0, &[], "warn");
        cluster.start_shard_on(&s1, &[], "warn");
        cluster.start_dispatcher_on(&m1, "m1", 1, &["--slots", "4"]);
        cluster.wait_for_machines(1).await;
        cluster.deploy(common::example_spec("sleep")).await;
        cluster.deploy(common::example_spec("echo")).await;
        let (client0, client1) = (cluster.client(0).await, cluster.client(1).await);
        // Answered by the shard (machine lost), or by the client's own transport when the
        // cut outlasts its QUIC idle timeout: either way once, and soon.
        let orphans: Vec<_> = (0..2)
            .map(|_| {
                let client = client0.clone();
                tokio::spawn(async move {
                    let answer = client.invoke(request("sleep", "standard", SLEEP_MS)).await;
                    (answer, Instant::now())
                })
            })
            .collect();
        wait_running(&cluster, "m1", 2).await;

        let cut = Instant::now();
        lab.cut(&s0);
        // The machine notices the silence and kills what the lost shard placed.
        let stopped = wait_for_log(
            &cluster.dispatcher_log("m1"),
            STOPPED_LOG,
            1,
            Duration::from_secs(10),
        )
        .await;
        let noticed = stopped - cut;
        eprintln!("partitioned shard: its dispatcher stopped its work {noticed:?} after the cut");
        assert!(
            noticed <= HEARTBEAT_TIMEOUT + DETECTION_SLACK,
            "took {noticed:?}"
        );
        // The other shard serves on, on the same machine.
        let asked = Instant::now();
        let echo = invoke(&client1, request("echo", "standard", "still here")).await;
        let echo = echo.expect("the other shard serves");
        assert_eq!(echo.run.output, b"still here");
        assert_eq!(echo.machine, "m1");
        eprintln!(
            "partitioned shard: the other shard answered in {:?} meanwhile",
            asked.elapsed()
        );

        tokio::time::sleep(Duration::from_millis(2_500).saturating_sub(cut.elapsed())).await;
        let plugged = Instant::now();
        lab.restore(&s0);
        for orphan in orphans {
            let (answer, at) = tokio::time::timeout(ANSWER_BOUND, orphan)
                .await
                .expect("every invocation is answered")
                .unwrap();
            match answer {
                Ok(answer) => {
                    assert_eq!(answer.unwrap_err(), InvokeError::MachineLost("m1".into()));
                    eprintln!(
                        "partitioned shard: `machine lost` reached its client {:?} after the cable was back",
                        at.saturating_duration_since(plugged)
                    );
                }
                Err(lost) => {
                    let after = at - cut;
                    eprintln!(
                        "partitioned shard: its client gave the connection up {after:?} after the cut ({lost})"
                    );
                    assert!(after <= Duration::from_secs(4), "took {after:?}");
                }
            }
        }
        let back = wait_registered(&cluster, 0, "m1").await;
        eprintln!(
            "partitioned shard: m1 registered with it again {:?} after the cable was back",
            back - plugged
        );
        let client0 = cluster.client(0).await;
        let echo = invoke(&client0, request("echo", "standard", "back")).await;
        assert_eq!(echo.expect("it serves again").run.output, b"back");
    });
}
