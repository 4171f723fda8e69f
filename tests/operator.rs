//! Cross-process tests of the operator's experience: clients find the cluster's shards from
//! the cluster directory, fail fast when none answers, and the logs of a local cluster name
//! their process and stay free of warnings on a clean stop.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{runtime, wait_for_file, Proc, TestCluster};
use tariff_cluster::directory::{recorded_shards, shards_dir};

/// Exit status of `tariff invoke` when no shard could be reached (`EXIT_UNREACHABLE`).
const EXIT_UNREACHABLE: i32 = 10;

#[test]
fn clients_find_recorded_shards_and_a_stopped_shard_removes_its_record() {
    runtime().block_on(async {
        let mut cluster = TestCluster::new();
        let addr = cluster.start_shard(&[]);
        assert_eq!(recorded_shards(&cluster.cluster_dir()).unwrap(), vec![addr]);
        cluster.start_dispatcher("m1", 1, &[]);
        cluster.wait_for_machines(1).await;
        cluster.deploy_examples().await;

        let out = cluster
            .command()
            .args(["invoke", "--function", "echo", "--class", "critical"])
            .args(["--payload", "found you"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"found you");

        // A dispatcher given no --shards serves the recorded ones.
        let child = cluster
            .command()
            .args([
                "dispatcher",
                "--cores",
                "1",
                "--memory",
                "1G",
                "--name",
                "m2",
            ])
            .arg("--data-dir")
            .arg(cluster.dir.path().join("dispatcher-m2"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning tariff dispatcher");
        let mut second = Proc {
            child,
            name: "m2".into(),
        };
        cluster.wait_for_machines(2).await;
        second.stop();

        cluster.shards[0].stop();
        assert!(
            recorded_shards(&cluster.cluster_dir()).unwrap().is_empty(),
            "a cleanly stopped shard leaves no record"
        );
    });
}

#[test]
fn with_no_shard_answering_invoke_fails_fast_and_lists_the_addresses_tried() {
    let cluster = TestCluster::new();
    // A stale record: an address where nothing answers QUIC (a bound, silent UDP socket).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stale = silent.local_addr().unwrap();
    let _record = tariff_cluster::directory::ShardRecord::write(&cluster.cluster_dir(), stale)
        .expect("writing a record");
    let started = Instant::now();
    let out = cluster
        .command()
        .args(["invoke", "--function", "echo", "--class", "critical"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{stderr}");
    assert!(stderr.contains(&stale.to_string()), "{stderr}");
    assert!(
        stderr.contains(&shards_dir(&cluster.cluster_dir()).display().to_string()),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // With no record at all, the default address is tried and the hint says how to start one.
    drop(_record);
    let out = cluster.command().args(["status"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("127.0.0.1:7400"), "{stderr}");
    assert!(stderr.contains("tariff local"), "{stderr}");
}

/// Starts `tariff local` with two dispatchers, waits until it runs, stops it with SIGTERM and
/// returns its log.
fn local_cluster_log(cluster: &TestCluster) -> String {
    let log_path = cluster.dir.path().join("local.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = cluster
        .command()
        .env("RUST_LOG", "info")
        .args(["local", "--shards", "1", "--dispatchers", "2", "--no-rt"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawning tariff local");
    let mut local = Proc {
        child,
        name: "local".into(),
    };
    let stdout = local.child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("running") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(common::START_TIMEOUT)
        .expect("tariff local did not come up in time");
    assert_eq!(recorded_shards(&cluster.cluster_dir()).unwrap().len(), 1);
    local.stop();
    assert!(
        local.child.try_wait().unwrap().is_some_and(|s| s.success()),
        "tariff local exits cleanly on SIGTERM"
    );
    assert!(
        recorded_shards(&cluster.cluster_dir()).unwrap().is_empty(),
        "tariff local removes its shards' records"
    );
    wait_for_file(&log_path)
}

#[test]
fn local_cluster_logs_name_their_process_and_a_clean_stop_warns_of_nothing() {
    let cluster = TestCluster::new();
    let log = local_cluster_log(&cluster);
    for machine in ["local-1", "local-2"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("dispatcher{{machine={machine}}}"))
                    && l.contains("registered with shard")),
            "no registration line naming {machine}:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("shard{id=") && l.contains("shard listening")),
        "{log}"
    );
    let stopping = log
        .find("shutting down")
        .unwrap_or_else(|| panic!("no shutdown line:\n{log}"));
    let after: Vec<&str> = log[stopping..]
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        after.is_empty(),
        "warnings on a clean stop: {after:#?}\n{log}"
    );
}

#[test]
fn metrics_count_a_known_load_per_class_and_promtool_accepts_them() {
    runtime().block_on(async {
        let mut cluster = TestCluster::new();
        cluster.start_shard(&["--metrics", "127.0.0.1:0"]);
        cluster.start_dispatcher("m1", 1, &["--metrics", "127.0.0.1:0"]);
        cluster.wait_for_machines(1).await;
        cluster.deploy_examples().await;
        let shard_metrics = common::metrics_addr(&cluster.dir.path().join("shard-0"));
        let dispatcher_metrics = common::metrics_addr(&cluster.dir.path().join("dispatcher-m1"));

        let client = cluster.client(0).await;
        let sent = [("critical", 3), ("batch", 2)];
        for (class, count) in sent {
            for i in 0..count {
                let answer =
                    common::invoke(&client, common::request("echo", class, &i.to_string())).await;
                assert!(answer.is_ok(), "{answer:?}");
            }
        }
        let missing =
            common::invoke(&client, common::request("no-such-function", "critical", "")).await;
        assert!(missing.is_err());

        let shard = common::scrape(shard_metrics);
        let s = |series: &str| common::sample(&shard, series);
        assert_eq!(
            s(r#"tariff_shard_invocations_total{class="critical",outcome="ok"}"#),
            3.0,
            "{shard}"
        );
        assert_eq!(
            s(r#"tariff_shard_invocations_total{class="batch",outcome="ok"}"#),
            2.0,
            "{shard}"
        );
        assert_eq!(
            s(r#"tariff_shard_invocations_total{class="critical",outcome="unknown_function"}"#),
            1.0,
            "{shard}"
        );
        assert_eq!(
            s(r#"tariff_shard_latency_seconds_count{class="critical"}"#),
            3.0
        );
        assert_eq!(
            s(r#"tariff_shard_queue_wait_seconds_count{class="batch"}"#),
            2.0
        );
        assert_eq!(
            s(r#"tariff_shard_run_seconds_count{class="critical"}"#),
            3.0
        );
        assert_eq!(
            s(r#"tariff_shard_starts_total{class="critical",start="cold"}"#),
            3.0
        );
        let placements: f64 = ["warm", "idle_list", "power_of_k"]
            .iter()
            .map(|p| s(&format!("tariff_shard_placements_total{{path=\"{p}\"}}")))
            .sum();
        assert_eq!(placements, 5.0, "{shard}");
        assert_eq!(s("tariff_shard_machines"), 1.0);
        assert_eq!(s(r#"tariff_shard_queue_length{class="critical"}"#), 0.0);

        let dispatcher = common::scrape(dispatcher_metrics);
        let d = |series: &str| common::sample(&dispatcher, series);
        assert_eq!(
            d(r#"tariff_dispatcher_runs_total{class="critical",outcome="ok"}"#),
            3.0,
            "{dispatcher}"
        );
        assert_eq!(
            d(r#"tariff_dispatcher_runs_total{class="batch",outcome="ok"}"#),
            2.0,
            "{dispatcher}"
        );
        assert_eq!(
            d(r#"tariff_dispatcher_run_seconds_count{class="batch"}"#),
            2.0
        );
        assert_eq!(d("tariff_dispatcher_cores"), 1.0);
        assert!(
            d("tariff_dispatcher_free_memory_bytes") > 0.0,
            "{dispatcher}"
        );
        assert_eq!(d("tariff_dispatcher_shards"), 1.0);

        common::promtool_check(&shard);
        common::promtool_check(&dispatcher);

        // Every series the Grafana dashboard queries is one the processes expose.
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/grafana/tariff.json"
        ))
        .unwrap();
        serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
        let queried: std::collections::BTreeSet<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("tariff_"))
            .map(|name| name.strip_suffix("_bucket").unwrap_or(name))
            .collect();
        assert!(queried.len() > 5, "{queried:?}");
        for name in queried {
            assert!(
                shard.contains(name) || dispatcher.contains(name),
                "the dashboard queries {name}, which no process exposes"
            );
        }
    });
}

#[test]
fn status_lists_every_process_of_a_two_shard_two_dispatcher_cluster() {
    runtime().block_on(async {
        let mut cluster = TestCluster::new();
        cluster.start_shard(&[]);
        cluster.start_shard(&[]);
        cluster.start_dispatcher("m1", 1, &[]);
        cluster.start_dispatcher("m2", 1, &[]);
        cluster.wait_for_machines(2).await;

        let json = cluster.status_json();
        let mut shard_addrs: Vec<String> = json["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["addr"].as_str().unwrap().to_owned())
            .collect();
        shard_addrs.sort();
        let mut expected: Vec<String> = cluster
            .shard_addrs
            .iter()
            .map(ToString::to_string)
            .collect();
        expected.sort();
        assert_eq!(shard_addrs, expected, "{json:#}");
        for shard in json["shards"].as_array().unwrap() {
            assert_eq!(
                shard["machines"],
                serde_json::json!(["m1", "m2"]),
                "{json:#}"
            );
            assert_eq!(shard["queued"]["critical"], 0, "{json:#}");
        }
        let dispatchers = json["dispatchers"].as_array().unwrap();
        let names: Vec<&str> = dispatchers
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["m1", "m2"], "{json:#}");
        for d in dispatchers {
            assert_eq!(d["shards"].as_array().unwrap().len(), 2, "{json:#}");
            assert_eq!(d["cores"], 1);
            // Every heartbeat carries the machine's memory, from the first one on.
            let memory = &d["memory"];
            assert!(memory["free_bytes"].as_u64().unwrap() > 0, "{json:#}");
            assert!(memory["used_bytes"].is_u64(), "{json:#}");
            assert_eq!(
                memory["per_class"]["batch"]["killed_memory_pressure"], 0,
                "{json:#}"
            );
        }

        let table = cluster.command().args(["status"]).output().unwrap();
        assert!(table.status.success(), "{table:?}");
        let text = String::from_utf8_lossy(&table.stdout);
        for name in ["m1", "m2", "DISPATCHER", "SHARD", "MEMORY", "SWAPPED OUT"] {
            assert!(text.contains(name), "{text}");
        }
        for addr in &expected {
            assert!(text.contains(addr.as_str()), "{text}");
        }
    });
}

#[test]
fn slow_and_failed_invocations_are_logged_with_their_stages_and_ids() {
    runtime().block_on(async {
        let mut cluster = TestCluster::new();
        // Every success is "slow" at 1 µs; no samples, so only slow and failed ones appear.
        cluster.start_shard_logging(&["--slow", "1us", "--trace-sample", "0s"], "info");
        cluster.start_dispatcher("m1", 1, &[]);
        cluster.wait_for_machines(1).await;
        cluster.deploy_examples().await;
        let client = cluster.client(0).await;
        let ok = common::invoke(&client, common::request("echo", "high", "secret-payload"))
            .await
            .expect("echo answers");
        let failed =
            common::invoke(&client, common::request("no-such-function", "batch", "")).await;
        assert!(failed.is_err());

        let log = std::fs::read_to_string(cluster.shard_log(0)).unwrap();
        let slow = log
            .lines()
            .find(|l| l.contains("slow invocation"))
            .unwrap_or_else(|| panic!("no slow-invocation line:\n{log}"));
        for field in [
            format!("id={}", ok.id),
            "class=high".into(),
            "tenant=test".into(),
            "function=echo".into(),
            "queued_us=".into(),
            "start_us=".into(),
            "run_us=".into(),
            "preempted_us=".into(),
            "total_us=".into(),
            "machine=m1".into(),
        ] {
            assert!(slow.contains(&field), "{field} missing from {slow}");
        }
        let failure = log
            .lines()
            .find(|l| l.contains("invocation failed"))
            .unwrap_or_else(|| panic!("no failed-invocation line:\n{log}"));
        assert!(
            failure.contains("kind=\"unknown_function\"")
                || failure.contains("kind=unknown_function"),
            "{failure}"
        );
        assert!(failure.contains("class=batch"), "{failure}");
        assert!(!log.contains("secret-payload"), "payloads are never logged");
    });
}
