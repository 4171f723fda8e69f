//! Cross-process tests of the cluster core: real `tariff shard` and `tariff dispatcher`
//! processes talking QUIC on 127.0.0.1, real function processes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{invoke, request, runtime, TestCluster};
use tariff_types::wire::{ClientResponse, InvokeError};

/// One shard, one dispatcher, the examples deployed.
async fn small_cluster(cores: u32) -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.start_shard(&[]);
    cluster.start_dispatcher("m1", cores, &[]);
    cluster.wait_for_machines(1).await;
    cluster.deploy_examples().await;
    cluster
}

#[test]
fn round_trip_through_the_cli() {
    runtime().block_on(async {
        let cluster = small_cluster(1).await;
        let shard = cluster.shard_addrs[0].to_string();
        let deploy = cluster
            .command()
            .args(["deploy", "--shard", &shard, "--name", "greet", "--command"])
            .arg(common::example("echo"))
            .output()
            .unwrap();
        assert!(deploy.status.success(), "{deploy:?}");
        let out = cluster
            .command()
            .args(["invoke", "--shard", &shard, "--function", "greet"])
            .args(["--class", "critical", "--payload", "hello tariff", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["output"], "hello tariff");
        assert_eq!(json["machine"], "m1");
        let t = &json["timings"];
        let at = |k: &str| t[k].as_u64().unwrap();
        assert!(at("queued_at_us") <= at("placed_at_us"));
        assert!(at("placed_at_us") <= at("started_at_us"));
        assert!(at("started_at_us") <= at("finished_at_us"));
        assert!(json["peak_memory_bytes"].as_u64().unwrap() > 0);

        let plain = cluster
            .command()
            .args(["invoke", "--shard", &shard, "--function", "echo"])
            .args(["--class", "batch", "--payload", "plain"])
            .output()
            .unwrap();
        assert_eq!(plain.stdout, b"plain");
    });
}

#[test]
fn two_hundred_concurrent_mixed_invocations_are_each_answered_once() {
    runtime().block_on(async {
        let mut cluster = TestCluster::new();
        let a = cluster.start_shard(&[]).to_string();
        cluster.start_shard(&["--peers", &a]);
        cluster.start_dispatcher("m1", 2, &[]);
        cluster.start_dispatcher("m2", 2, &[]);
        cluster.wait_for_machines(2).await;
        cluster.deploy_examples().await;
        let clients = [cluster.client(0).await, cluster.client(1).await];
        let classes = ["critical", "high", "standard", "batch"];
        let mut tasks = Vec::new();
        for i in 0..200 {
            let client = clients[i % 2].clone();
            let payload = format!("payload-{i}");
            let req = request("echo", classes[i % 4], &payload);
            tasks.push(tokio::spawn(async move {
                (payload, invoke(&client, req).await)
            }));
        }
        let mut ids = HashSet::new();
        let mut machines = HashSet::new();
        for task in tasks {
            let (payload, answer) = task.await.unwrap();
            let outcome = answer.unwrap_or_else(|e| panic!("{payload}: {e}"));
            assert_eq!(
                outcome.run.output,
                payload.as_bytes(),
                "each answer is its own"
            );
            assert!(ids.insert(outcome.id), "invocation ids are unique");
            machines.insert(outcome.machine);
        }
        assert_eq!(ids.len(), 200);
        assert_eq!(machines.len(), 2, "both machines took work: {machines:?}");
    });
}

#[test]
fn critical_is_placed_before_a_batch_backlog() {
    runtime().block_on(async {
        let cluster = small_cluster(1).await;
        let client = cluster.client(0).await;
        // Occupy the only slot, then queue a backlog of batch work behind it.
        let mut batch = Vec::new();
        for _ in 0..5 {
            let client = client.clone();
            batch.push(tokio::spawn(async move {
                invoke(&client, request("sleep", "batch", "300")).await
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let critical = invoke(&client, request("echo", "critical", "urgent"))
            .await
            .expect("critical succeeds");
        let mut batch_placed = Vec::new();
        for task in batch {
            batch_placed.push(task.await.unwrap().expect("batch succeeds").timings());
        }
        let first_batch_start = batch_placed.iter().map(|t| t.placed_at_us).min().unwrap();
        let backlog: Vec<_> = batch_placed
            .iter()
            .filter(|t| t.placed_at_us > first_batch_start)
            .collect();
        assert_eq!(
            backlog.len(),
            4,
            "four batch invocations waited in the queue"
        );
        for t in backlog {
            assert!(
                critical.placed_at_us < t.placed_at_us,
                "critical placed at {} after a queued batch placed at {}",
                critical.placed_at_us,
                t.placed_at_us
            );
        }
        assert!(
            critical.timings().queued_us() < 250_000,
            "critical did not wait for a batch slot"
        );
    });
}

#[test]
fn bad_requests_get_clear_errors_and_the_cluster_keeps_serving() {
    runtime().block_on(async {
        let cluster = small_cluster(1).await;
        let client = cluster.client(0).await;
        assert_eq!(
            invoke(&client, request("nope", "critical", "")).await.unwrap_err(),
            InvokeError::UnknownFunction("nope".into())
        );
        let bad_class = invoke(&client, request("echo", "gold", "")).await.unwrap_err();
        assert!(
            matches!(&bad_class, InvokeError::BadClass(m) if m.contains("gold") && m.contains("critical")),
            "{bad_class}"
        );
        let mut big = request("echo", "critical", "");
        big.payload = vec![b'x'; 2 << 20];
        assert!(matches!(
            invoke(&client, big).await.unwrap_err(),
            InvokeError::PayloadTooLarge { size, limit } if size == 2 << 20 && limit == 1 << 20
        ));
        let failed = invoke(&client, request("fail", "high", "broken input"))
            .await
            .unwrap_err();
        assert!(
            matches!(&failed, InvokeError::FunctionFailed { status, stderr_tail }
                if status.contains('3') && stderr_tail.contains("broken input")),
            "{failed}"
        );
        let mut slow = request("sleep", "standard", "5000");
        slow.timeout_ms = 300;
        assert_eq!(
            invoke(&client, slow).await.unwrap_err(),
            InvokeError::TimedOut(300)
        );
        let ok = invoke(&client, request("echo", "critical", "still here")).await;
        assert_eq!(ok.unwrap().run.output, b"still here");

        let shard = cluster.shard_addrs[0].to_string();
        let cli = |args: &[&str]| {
            cluster
                .command()
                .args(["invoke", "--shard", &shard])
                .args(args)
                .output()
                .unwrap()
        };
        let out = cli(&["--function", "nope", "--class", "critical"]);
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown function `nope`"));
        let out = cli(&["--function", "echo", "--class", "gold"]);
        assert_eq!(out.status.code(), Some(4));
        // Over the shard's 1 MiB limit and over the 8 MiB frame limit alike: the payload is
        // too large (exit 5), not an unreachable shard.
        for mib in [7, 9] {
            let file = cluster.dir.path().join(format!("payload-{mib}"));
            std::fs::write(&file, vec![b'x'; mib << 20]).unwrap();
            let out = cluster
                .command()
                .args(["invoke", "--shard", &shard, "--function", "echo", "--class", "batch"])
                .arg("--payload-file")
                .arg(&file)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(5), "{mib} MiB: {out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("larger than the limit"));
        }
        let unreachable = cluster
            .command()
            .args(["invoke", "--shard", "127.0.0.1:9", "--function", "echo"])
            .args(["--class", "critical"])
            .output()
            .unwrap();
        assert_eq!(unreachable.status.code(), Some(10));
        assert!(String::from_utf8_lossy(&unreachable.stderr).contains("no shard reachable"));
    });
}

#[test]
fn garbage_on_a_raw_stream_does_not_disturb_other_clients() {
    runtime().block_on(async {
        let cluster = small_cluster(2).await;
        let addr = cluster.shard_addrs[0];
        let good = cluster.client(0).await;
        let steady = tokio::spawn(async move {
            for i in 0..50 {
                let payload = format!("steady-{i}");
                let outcome = invoke(&good, request("echo", "standard", &payload))
                    .await
                    .expect("steady client is undisturbed");
                assert_eq!(outcome.run.output, payload.as_bytes());
            }
        });
        // A tenant's client: no certificate, only its token (the garbage carries none).
        let endpoint = cluster.cluster.client_endpoint(addr, None).unwrap();
        let conn = endpoint
            .connect(addr, tariff_cluster::cluster::CLUSTER_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let garbage: [&[u8]; 3] = [
            &[0, 0, 0, 5, 1, 0xff, 0xfe, 0xfd, 0xfc],
            &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            &[0, 0, 0, 3, 9, 9, 9],
        ];
        for bytes in garbage {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(bytes).await.unwrap();
            let _ = send.finish();
            let answer: ClientResponse = tariff_cluster::codec::read_message(&mut recv)
                .await
                .unwrap()
                .unwrap();
            assert!(
                matches!(&answer, ClientResponse::ProtocolError(m) if !m.is_empty()),
                "{answer:?}"
            );
        }
        // The same connection still serves well-formed requests.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let open = tariff_types::wire::StreamOpen::Client {
            token: Some(cluster.token().await),
            request: tariff_types::wire::ClientRequest::Invoke(request(
                "echo", "critical", "after",
            )),
        };
        tariff_cluster::codec::write_message(&mut send, &open)
            .await
            .unwrap();
        let _ = send.finish();
        let answer: ClientResponse = tariff_cluster::codec::read_message(&mut recv)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&answer, ClientResponse::Invoked(Ok(o)) if o.run.output == b"after"),
            "{answer:?}"
        );
        steady.await.unwrap();
    });
}

#[test]
fn a_session_stream_answers_many_requests_each_once_and_garbage_ends_only_its_session() {
    runtime().block_on(async {
        let cluster = small_cluster(2).await;
        let client = cluster.client(0).await.with_session().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let client = client.clone();
            let class = ["critical", "batch"][i % 2];
            tasks.push(tokio::spawn(async move {
                let payload = format!("s-{i}");
                (
                    payload.clone(),
                    invoke(&client, request("echo", class, &payload)).await,
                )
            }));
        }
        let mut ids = HashSet::new();
        for task in tasks {
            let (payload, answer) = task.await.unwrap();
            let outcome = answer.unwrap();
            assert_eq!(outcome.run.output, payload.as_bytes());
            assert!(ids.insert(outcome.id));
        }
        // Errors travel on the session like results do.
        assert_eq!(
            invoke(&client, request("nope", "critical", ""))
                .await
                .unwrap_err(),
            InvokeError::UnknownFunction("nope".into())
        );
        // Garbage on another session stream ends only that session.
        let (mut send, mut recv) = client.connection().open_bi().await.unwrap();
        let open = tariff_types::wire::StreamOpen::ClientSession {
            token: Some(cluster.token().await),
        };
        tariff_cluster::codec::write_message(&mut send, &open)
            .await
            .unwrap();
        send.write_all(&[0, 0, 0, 4, 1, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let answer: tariff_types::wire::SessionResponse =
            tariff_cluster::codec::read_message(&mut recv)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(answer.id, 0);
        assert!(matches!(answer.response, ClientResponse::ProtocolError(_)));
        let after = invoke(&client, request("echo", "high", "after"))
            .await
            .unwrap();
        assert_eq!(after.run.output, b"after");
    });
}

#[test]
fn a_lost_machine_answers_its_invocations_with_an_error() {
    runtime().block_on(async {
        let mut cluster = small_cluster(1).await;
        let client = cluster.client(0).await;
        let running = {
            let client = client.clone();
            tokio::spawn(async move { invoke(&client, request("sleep", "standard", "1500")).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.dispatchers[0].kill();
        let answer = tokio::time::timeout(Duration::from_secs(20), running)
            .await
            .expect("answered within the QUIC idle timeout")
            .unwrap();
        assert_eq!(answer.unwrap_err(), InvokeError::MachineLost("m1".into()));
    });
}

#[test]
fn deploys_reach_every_shard_and_a_full_backlog_sheds_batch_before_critical() {
    runtime().block_on(async {
        let mut cluster = TestCluster::new();
        let a = cluster.start_shard(&[]).to_string();
        cluster.start_shard(&["--peers", &a, "--max-queued", "4"]);
        cluster.deploy_examples().await;
        let b = cluster.client(1).await;
        let functions = b
            .request(tariff_types::wire::ClientRequest::ListFunctions)
            .await
            .unwrap();
        assert!(matches!(functions, ClientResponse::Functions(f) if f.len() == 5));
        // No machines: invocations queue at shard 1. `batch` may fill half of the backlog of
        // 4, `critical` all of it.
        let mut queued = Vec::new();
        let mut queue = |class: &'static str| {
            let b = b.clone();
            let mut req = request("echo", class, "x");
            req.timeout_ms = 2_000;
            queued.push(tokio::spawn(async move { invoke(&b, req).await }));
        };
        queue("batch");
        queue("batch");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shed = invoke(&b, request("echo", "batch", "x")).await.unwrap_err();
        assert!(
            matches!(shed, InvokeError::Overloaded { queued: 2, limit: 2, retry_after_ms } if retry_after_ms > 0),
            "{shed}"
        );
        assert!(shed.to_string().contains("retry after"), "{shed}");
        queue("critical");
        queue("critical");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = invoke(&b, request("echo", "critical", "x"))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, InvokeError::Overloaded { queued: 4, limit: 4, .. }),
            "{refused}"
        );
        for task in queued {
            assert_eq!(
                task.await.unwrap().unwrap_err(),
                InvokeError::TimedOut(2_000)
            );
        }
    });
}
