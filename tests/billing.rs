//! Billing and budgets with real processes: costs from the kernel's accounting of real
//! function processes, the shard's ledger across `kill -9`, budgets held across shards that
//! share only the cluster store (issue "Billing, budgets and call chains").

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{invoke, request, runtime, TestCluster};
use tariff_cluster::client::Client;
use tariff_types::billing::Throttle;
use tariff_types::wire::{InvocationOutcome, InvokeError};

/// Default price of `critical` per CPU-second (`DEFAULT_CLASSES`).
const CRITICAL_PRICE: f64 = 2.0;

async fn cluster(shards: usize, cores: u32) -> TestCluster {
    let mut cluster = TestCluster::new();
    for _ in 0..shards {
        cluster.start_shard(&[]);
    }
    cluster.start_dispatcher("m1", cores, &[]);
    cluster.wait_for_machines(1).await;
    cluster.deploy_examples().await;
    cluster
}

fn bill_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("bill JSON")
}

#[test]
fn cpu_is_billed_as_the_kernel_counted_it_and_memory_by_use_over_time() {
    runtime().block_on(async {
        let cluster = cluster(1, 1).await;
        let client = cluster.client(0).await;
        // A 200 ms CPU spin: billed CPU is the kernel's count for its cgroup, within 15 % of
        // the 200 ms the function counted itself (process start and exit add a little).
        let spin = invoke(&client, request("spin", "critical", "200"))
            .await
            .unwrap();
        let cost = &spin.cost;
        assert_eq!(cost.class, "critical");
        assert_eq!(cost.cpu_seconds, spin.run.cpu_time_us as f64 / 1e6);
        assert!(
            (0.2..0.23).contains(&cost.cpu_seconds),
            "billed {} CPU-seconds for a 200 ms spin",
            cost.cpu_seconds
        );
        assert!((cost.cpu_charge - cost.cpu_seconds * CRITICAL_PRICE).abs() < 1e-12);
        assert!((cost.total - cost.cpu_charge - cost.memory_charge).abs() < 1e-12);

        // Memory: a function that grows to 20 MiB in 20 ms steps holds about 20 × 21 / 2 × 20
        // MiB·ms; one that grows to 60 MiB holds nine times that. Billed memory follows use
        // over time, not the peak.
        let small = invoke(&client, request("alloc", "batch", "20 20"))
            .await
            .unwrap();
        let large = invoke(&client, request("alloc", "batch", "60 20"))
            .await
            .unwrap();
        let expected_small_gb_s = (20.0 * 21.0 / 2.0) * 20.0 * (1 << 20) as f64 / 1e3 / 1e9;
        assert!(
            small.cost.gb_seconds > expected_small_gb_s * 0.5
                && small.cost.gb_seconds < expected_small_gb_s * 3.0,
            "billed {} GB-s, expected about {expected_small_gb_s}",
            small.cost.gb_seconds
        );
        eprintln!(
            "spin 200 ms billed {} CPU-s; alloc 20 MiB billed {} GB-s (about {expected_small_gb_s} \
             expected), 60 MiB {} GB-s",
            cost.cpu_seconds, small.cost.gb_seconds, large.cost.gb_seconds
        );
        assert!(
            large.cost.gb_seconds > small.cost.gb_seconds * 4.0,
            "{} vs {}",
            large.cost.gb_seconds,
            small.cost.gb_seconds
        );
        assert!(large.cost.memory_charge > 0.0);

        // The bill is the ledger: itemised by function and class, and the sum of what every
        // answer said it cost.
        let answered = [&spin, &small, &large];
        let expected: f64 = answered.iter().map(|o| o.cost.total).sum();
        let shard = cluster.shard_addrs[0].to_string();
        let bill = bill_json(
            &cluster
                .command()
                .args(["bill", "--shard", &shard, "--json"])
                .output()
                .unwrap(),
        );
        assert!(
            (bill["total"].as_f64().unwrap() - expected).abs() < 1e-9,
            "{bill}"
        );
        let lines = bill["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 2, "{bill}");
        let alloc = lines.iter().find(|l| l["function"] == "alloc").unwrap();
        assert_eq!(alloc["class"], "batch");
        assert_eq!(alloc["invocations"], 2);
    });
}

#[test]
fn the_ledger_survives_kill_9_of_the_shard() {
    runtime().block_on(async {
        let mut cluster = cluster(1, 1).await;
        let client = cluster.client(0).await;
        let mut expected = 0.0;
        for i in 0..20 {
            let out = invoke(&client, request("echo", "high", &format!("{i}")))
                .await
                .unwrap();
            expected += out.cost.total;
        }
        // Every answered invocation is in the ledger before its answer left: kill -9 now.
        cluster.shards[0].kill();
        let data_dir = cluster.dir.path().join("shard-0");
        let addr = cluster.start_shard_in(&data_dir, &[], "warn");
        let out = cluster
            .command()
            .args(["bill", "--shard", &addr.to_string(), "--json"])
            .output()
            .unwrap();
        let bill = bill_json(&out);
        let lines = bill["lines"].as_array().unwrap();
        assert_eq!(lines[0]["invocations"], 20, "{bill}");
        assert!((bill["total"].as_f64().unwrap() - expected).abs() < 1e-9);
    });
}

/// Shares the `spin` example with `tenant`, adds it with `budget` and returns a client of
/// shard 0 presenting its token.
async fn spinning_tenant(cluster: &TestCluster, tenant: &str, budget: f64) -> Client {
    let mut spin = common::example_spec("spin");
    spin.shared_with = vec![tenant.into()];
    cluster.deploy(spin).await;
    let token = cluster.add_tenant_with_budget(tenant, Some(budget)).await;
    cluster.client_as(0, Some(token)).await
}

#[test]
fn a_runaway_tenant_is_degraded_then_refused_and_others_carry_on() {
    runtime().block_on(async {
        let cluster = cluster(1, 1).await;
        let runaway = spinning_tenant(&cluster, "runaway", 2.0).await;
        let steady = cluster.client(0).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut classes_seen = Vec::new();
        let refused = loop {
            assert!(
                Instant::now() < deadline,
                "never refused; billed at {classes_seen:?}"
            );
            match invoke(&runaway, request("spin", "critical", "10")).await {
                Ok(out) => {
                    if classes_seen.last() != Some(&out.cost.class) {
                        classes_seen.push(out.cost.class.clone());
                    }
                }
                Err(InvokeError::OverBudget(message)) => break message,
                Err(other) => panic!("unexpected error {other}"),
            }
            // The other tenant is served at its own class throughout.
            let other = invoke(&steady, request("echo", "critical", "ok"))
                .await
                .unwrap();
            assert_eq!(other.cost.class, "critical");
        };
        assert_eq!(
            classes_seen,
            ["critical", "batch"],
            "first at its class, then degraded to the cheapest, then refused"
        );
        assert!(
            refused.contains("runaway") && refused.contains("budget"),
            "{refused}"
        );
        // The CLI shows the state; raising the budget lets it in again at once.
        let shown = cluster
            .command()
            .args(["tenant", "show", "runaway", "--json"])
            .output()
            .unwrap();
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown["throttle"], Throttle::Exhausted.name(), "{shown}");
        assert!(shown["spent"].as_f64().unwrap() >= 2.0);
        let raised = cluster
            .command()
            .args(["tenant", "set-budget", "runaway", "1000"])
            .output()
            .unwrap();
        assert!(raised.status.success(), "{raised:?}");
        assert!(invoke(&runaway, request("spin", "critical", "1"))
            .await
            .is_ok());
        let out = invoke(&steady, request("echo", "critical", "still"))
            .await
            .unwrap();
        assert_eq!(out.run.output, b"still");
    });
}

#[test]
fn shards_racing_hold_a_tenant_to_its_budget_within_the_bound() {
    runtime().block_on(async {
        let cluster = cluster(2, 2).await;
        let budget = 1.0;
        let on_0 = spinning_tenant(&cluster, "racer", budget).await;
        // The same token on the other shard.
        let token = on_0.token().cloned();
        let on_1 = cluster.client_as(1, token).await;
        let per_shard = 4;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client in [on_0, on_1] {
            for _ in 0..per_shard {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut billed: Vec<InvocationOutcome> = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        match invoke(&client, request("spin", "critical", "10")).await {
                            Ok(out) => billed.push(out),
                            Err(InvokeError::OverBudget(_)) => return billed,
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                    panic!("never refused");
                }));
            }
        }
        let mut spent = 0.0;
        let mut largest: f64 = 0.0;
        for task in tasks {
            for out in task.await.unwrap() {
                spent += out.cost.total;
                largest = largest.max(out.cost.total);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        // The bound of docs/billing.md: the tenant's spend rate across the cluster over two
        // publish intervals, plus every invocation in flight when the budget ran out.
        let rate = spent / seconds;
        let interval = tariff_scheduler::spend::PUBLISH_INTERVAL.as_secs_f64();
        let in_flight = (2 * per_shard) as f64 * largest;
        let bound = rate * 2.0 * interval + in_flight;
        eprintln!(
            "racing: spent {spent:.4} of budget {budget} in {seconds:.2} s; bound {bound:.4} \
             (rate {rate:.4}/s, in flight {in_flight:.4})"
        );
        assert!(
            spent >= budget,
            "spent {spent} never reached the budget {budget}"
        );
        assert!(
            spent <= budget + bound,
            "spent {spent} > budget {budget} + bound {bound} (rate {rate}/s)"
        );
    });
}

/// A function that calls `next` at `batch` with `tariff invoke` and answers with the call's
/// JSON: what a page view calling a helper does, with nothing but its environment.
fn caller(name: &str, next: &str) -> tariff_types::FunctionSpec {
    let tariff = common::tariff().to_string_lossy().into_owned();
    let mut spec = common::example_spec("echo");
    spec.name = name.into();
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("exec {tariff} invoke --function \"$NEXT\" --class batch --payload hop --json"),
    ];
    spec.env = vec![("NEXT".into(), next.into())];
    spec
}

#[test]
fn calls_inherit_the_callers_class_and_tenant_and_chains_do_not_deadlock() {
    runtime().block_on(async {
        // One core, one slot: a chain that waited for its caller's slot would never finish.
        let cluster = cluster(1, 1).await;
        cluster.deploy(caller("top", "middle")).await;
        cluster.deploy(caller("middle", "echo")).await;
        let client = cluster.client(0).await;
        let top = invoke(&client, request("top", "critical", ""))
            .await
            .unwrap();
        assert_eq!(top.chain.depth, 0);
        assert_eq!(top.chain.root, Some(top.id));
        let middle: serde_json::Value = serde_json::from_slice(&top.run.output).unwrap();
        assert_eq!(middle["chain"]["depth"], 1, "{middle}");
        assert_eq!(middle["chain"]["parent"], top.id.to_string());
        assert_eq!(middle["chain"]["root"], top.id.to_string());
        // Asked for at `batch`, run and billed at its caller's `critical`.
        assert_eq!(middle["cost"]["class"], "critical", "{middle}");
        let leaf: serde_json::Value =
            serde_json::from_str(middle["output"].as_str().unwrap()).unwrap();
        assert_eq!(leaf["chain"]["depth"], 2);
        assert_eq!(leaf["chain"]["root"], top.id.to_string());
        assert_eq!(leaf["output"], "hop");
        assert_eq!(leaf["cost"]["class"], "critical");
        // All three are billed to the caller's tenant.
        let shard = cluster.shard_addrs[0].to_string();
        let bill = bill_json(
            &cluster
                .command()
                .args(["bill", "--shard", &shard, "--json"])
                .output()
                .unwrap(),
        );
        let lines = bill["lines"].as_array().unwrap();
        for function in ["top", "middle", "echo"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l["function"] == function && l["class"] == "critical"),
                "{function} missing from {bill}"
            );
        }
        // A chain that never ends is cut at the depth limit with its own error.
        cluster.deploy(caller("forever", "forever")).await;
        match invoke(&client, request("forever", "high", "")).await {
            Err(InvokeError::FunctionFailed { stderr_tail, .. }) => {
                assert!(stderr_tail.contains("call chain too deep"), "{stderr_tail}")
            }
            other => panic!("expected the chain to be cut, got {other:?}"),
        }
    });
}

#[test]
fn a_persistent_function_calls_within_its_chain_through_its_context_file() {
    runtime().block_on(async {
        let cluster = cluster(1, 1).await;
        let mut counter = common::example_spec("counter");
        counter.runtime = tariff_types::function::Runtime::Persistent {
            keep_alive_ms: 60_000,
        };
        counter.env = vec![(
            "TARIFF_BIN".into(),
            common::tariff().to_string_lossy().into_owned(),
        )];
        cluster.deploy(counter).await;
        let client = cluster.client(0).await;
        // Twice: the second call is served by the warm instance, with the second call's token.
        for round in 0..2 {
            let top = invoke(&client, request("counter", "high", "call echo batch hi"))
                .await
                .unwrap();
            let child: serde_json::Value = serde_json::from_slice(&top.run.output).unwrap();
            assert_eq!(child["output"], "hi", "{child}");
            assert_eq!(child["cost"]["class"], "high", "{child}");
            assert_eq!(
                child["chain"]["parent"],
                top.id.to_string(),
                "round {round}"
            );
            assert_eq!(top.run.cold_start, round == 0);
        }
    });
}
